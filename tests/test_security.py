"""No code ever runs from a file: a malicious pickle planted at every place the package reads
a file is refused with a one-line error, and a source lint keeps unsafe loading out of the code.

The payload's ``__reduce__`` asks the unpickler to call ``os.system("touch MARKER")``: if any
loader ran it, the marker file would exist afterwards.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from sparseforge.errors import SparseforgeError

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


FORMATS = ["zip", "legacy", "raw-pickle"]
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def plant(path: Path, marker: Path, fmt: str = "zip") -> Path:
    """Write a file at ``path`` whose unpickling would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": "sparseforge-checkpoint-v1", "model": {"w": torch.ones(2)}, "evil": _Payload(marker)}
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a file's code ran"


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_payload_runs_when_unpickled_unsafely(tmp_path: Path, fmt: str) -> None:
    # the control: without weights_only the planted file does run its code, so the tests below
    # that check it does not are meaningful
    m = tmp_path / "ran"
    p = plant(tmp_path / "evil.pt", m, fmt)
    if fmt == "raw-pickle":
        pickle.loads(p.read_bytes())
    else:
        torch.load(p, weights_only=False)
    assert m.exists()


def _recipe(tmp_path: Path) -> Path:
    r = {"name": "sec", "seed": 0, "epochs": 1, "model": {"name": "mlp1d"},
         "data": {"name": "mnist1d", "batch_size": 64, "n_train": 128, "n_test": 64},
         "method": {"name": "static", "sparsity": 0.5}, "optimizer": {"name": "sgd", "lr": 0.05}}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _cli_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from sparseforge.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparseforge: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_train_resume_refuses_a_planted_checkpoint(tmp_path, marker, capsys, fmt) -> None:
    run = tmp_path / "run"
    plant(run / "checkpoint.pt", marker, fmt)
    err = _cli_refuses(["train", str(_recipe(tmp_path)), "--run-dir", str(run), "--no-progress"], capsys)
    assert "checkpoint" in err


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("target", ["folder", "file"])
def test_cli_report_refuses_a_planted_checkpoint(tmp_path, marker, capsys, fmt, target) -> None:
    ck = plant(tmp_path / "run" / "checkpoint.pt", marker, fmt)
    _cli_refuses(["report", str(ck.parent if target == "folder" else ck)], capsys)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_materialize_refuses_a_planted_checkpoint(tmp_path, marker, capsys, fmt) -> None:
    ck = plant(tmp_path / "run" / "checkpoint.pt", marker, fmt)
    _cli_refuses(["materialize", str(ck.parent)], capsys)


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_of_a_planted_state_dict_file(tmp_path, marker, fmt) -> None:
    from sparseforge.report import report_for_path

    with pytest.raises(SparseforgeError, match="refusing to load|cannot read"):
        report_for_path(plant(tmp_path / "weights.pth", marker, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_train_lm_refuses_a_planted_checkpoint(tmp_path, marker, fmt) -> None:
    from sparseforge.lm import train_lm
    from sparseforge.text import load_text_corpus

    text = tmp_path / "prose.txt"
    text.write_text("It is a truth universally acknowledged, that a single man must be in want of a wife. " * 20)
    corpus = load_text_corpus(f"text:{text}", val_fraction=0.2)
    ck = plant(tmp_path / "lm.pt", marker, fmt)
    with pytest.raises(SparseforgeError, match="checkpoint: (refusing to load|cannot read)"):
        train_lm(corpus, "dense", model_params={"d_model": 16, "n_layer": 1, "n_head": 2, "block_size": 16},
                 steps=2, batch_size=2, val_windows=2, checkpoint=ck)


@pytest.mark.parametrize("fmt", FORMATS)
def test_calibration_tokens_refuse_a_planted_file(tmp_path, marker, fmt) -> None:
    from sparseforge.oneshot.io import load_tokens

    with pytest.raises(SparseforgeError, match="calibration tokens: (refusing to load|cannot read)"):
        load_tokens(plant(tmp_path / "tokens.pt", marker, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_hugging_face_bin_weights_refuse_a_planted_file(tmp_path, marker, fmt) -> None:
    transformers = pytest.importorskip("transformers")
    from sparseforge.oneshot.io import load_model

    folder = tmp_path / "hf"
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "architectures": ["BertModel"]}))
    plant(folder / "pytorch_model.bin", marker, fmt)
    with pytest.raises(SparseforgeError, match="(refusing to load|cannot read) Hugging Face weight file"):
        load_model(folder)


def _pickle_as_safetensors(path: Path, marker: Path) -> Path:
    # a pickle under a safetensors name: the safetensors reader must refuse it, never fall back
    return plant(path, marker, "zip")


def test_sparseforge_model_folder_refuses_a_pickle_named_safetensors(tmp_path, marker) -> None:
    from sparseforge.oneshot.io import load_model

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"format": "sparseforge-model-v1", "model_name": "tiny-gpt",
         "model": {"vocab_size": 10, "block_size": 8, "d_model": 8, "n_layer": 1, "n_head": 2}}))
    _pickle_as_safetensors(folder / "model.safetensors", marker)
    with pytest.raises(SparseforgeError, match="cannot read model weights"):
        load_model(folder)


def test_austen_cache_refuses_a_pickle_named_safetensors(tmp_path, marker) -> None:
    from sparseforge.oneshot.pretrained import _load

    folder = tmp_path / "austen-gpt" / "k"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "x"}))
    (folder / "train_log.json").write_text("{}")
    _pickle_as_safetensors(folder / "model.safetensors", marker)
    with pytest.raises(SparseforgeError, match="cannot read cached model weights"):
        _load(folder)


def test_load_structured_refuses_a_pickle_named_safetensors(tmp_path, marker) -> None:
    from torch import nn

    from sparseforge.structured import load_structured
    from sparseforge.structured.shrink import FORMAT

    (tmp_path / "structure.json").write_text(json.dumps({"format": FORMAT, "kept": [], "extra": {}}))
    _pickle_as_safetensors(tmp_path / "model.safetensors", marker)
    with pytest.raises(SparseforgeError, match="cannot read"):
        load_structured(tmp_path, lambda: nn.Linear(2, 2))


def test_load_compressed_refuses_a_pickle(tmp_path, marker) -> None:
    from torch import nn

    from sparseforge.export import load_compressed

    with pytest.raises(SparseforgeError, match="not a readable safetensors file"):
        load_compressed(nn.Linear(2, 2), _pickle_as_safetensors(tmp_path / "c.safetensors", marker))


# ------------------------------------------------------------------------------- source lint
_UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("marshal", "load"), ("marshal", "loads"),
    ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
    ("yaml", "unsafe_load_all"), ("yaml", "full_load_all"),
}
# the one module allowed to call torch.load (always with weights_only=True)
_TORCH_LOAD_HOME = Path("src/sparseforge/fileio.py")


def unsafe_loads(source: str, rel: Path) -> list[str]:
    """Every unsafe deserialisation in ``source``, as ``"path:line: what"``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = (f.value.id, f.attr) if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        where = f"{rel}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "weights_only" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                found.append(f"{where}: weights_only other than True")
            if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: allow_pickle")
            if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: trust_remote_code")
        if name in _UNSAFE_CALLS:
            found.append(f"{where}: {name[0]}.{name[1]}")
        if name == ("torch", "load") and rel != _TORCH_LOAD_HOME:
            found.append(f"{where}: torch.load outside sparseforge.fileio (use load_torch)")
        if name == ("np", "load") or name == ("numpy", "load"):
            if not any(kw.arg == "allow_pickle" for kw in node.keywords):
                found.append(f"{where}: numpy.load without allow_pickle=False")
        if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
            found.append(f"{where}: {f.id}")
    return found


def test_no_unsafe_deserialisation_in_the_code() -> None:
    files = [p for d in ("src", "benchmarks", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 50
    found = [hit for p in files for hit in unsafe_loads(p.read_text(), p.relative_to(ROOT))]
    assert not found, "unsafe loading (use sparseforge.fileio):\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "torch.load(p, weights_only=False)", "torch.load(p)", "pickle.load(f)", "pickle.loads(b)",
    "yaml.load(t)", "yaml.unsafe_load(t)", "np.load(p, allow_pickle=True)", "np.load(p)", "eval(s)",
    "AutoModel.from_pretrained(p, trust_remote_code=True)",
])
def test_the_lint_catches_each_unsafe_call(snippet: str) -> None:
    assert unsafe_loads(snippet, Path("src/sparseforge/x.py"))


def test_the_lint_allows_safe_calls() -> None:
    assert not unsafe_loads("yaml.safe_load(t)\nnp.load(p, allow_pickle=False)\njson.loads(s)",
                            Path("src/sparseforge/x.py"))
    assert not unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)", _TORCH_LOAD_HOME)


# ------------------------------------------------------------------------------- one reader for every file
# modules allowed to open safetensors files themselves: fileio (the reader), the compressed
# format's header-first reader, and report's probe that only asks whether a header is sparseforge's
_SAFETENSORS_HOMES = {Path("src/sparseforge/fileio.py"), Path("src/sparseforge/export/compressed.py"),
                      Path("src/sparseforge/report/paths.py")}


def direct_reads(source: str, rel: Path) -> list[str]:
    """File reads that bypass :mod:`sparseforge.fileio`, as ``"path:line: what"``.

    Safetensors readers (``load_file``, ``load``, ``safe_open``, ``load_model``) imported and
    called outside the allowed modules, and JSON parsed straight from a file
    (``json.loads(p.read_text())``, ``json.load(f)``), which skips fileio's one-line errors.
    """
    tree = ast.parse(source)
    st_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
            st_names |= {a.asname or a.name for a in node.names if a.name in ("load_file", "load", "safe_open", "load_model")}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, where = node.func, f"{rel}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in st_names and rel not in _SAFETENSORS_HOMES:
            found.append(f"{where}: safetensors {f.id} (use fileio.load_safetensors)")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "json":
            arg = node.args[0] if node.args else None
            reads_file = isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and \
                arg.func.attr in ("read_text", "read_bytes", "read")
            if (f.attr == "loads" and reads_file) or f.attr == "load":
                found.append(f"{where}: json.{f.attr} of a file (use fileio.read_json)")
    return found


def test_every_file_read_goes_through_fileio() -> None:
    files = sorted((ROOT / "src" / "sparseforge").rglob("*.py"))
    found = [hit for p in files if p.name != "fileio.py" for hit in direct_reads(p.read_text(), p.relative_to(ROOT))]
    assert not found, "read files through sparseforge.fileio:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "from safetensors.torch import load_file\nload_file(p)",
    "from safetensors.torch import load_model as lm\nlm(m, p)",
    "from safetensors import safe_open\nsafe_open(p, 'pt')",
    "json.loads(path.read_text())", "json.load(f)",
])
def test_the_reader_lint_catches_each_direct_read(snippet: str) -> None:
    assert direct_reads(snippet, Path("src/sparseforge/x.py"))


def test_the_reader_lint_allows_fileio_and_text_json() -> None:
    assert not direct_reads("from sparseforge.fileio import read_json\nread_json(p)\njson.loads(s)\n"
                            "from safetensors.torch import save_file\nsave_file(t, p)", Path("src/sparseforge/x.py"))
