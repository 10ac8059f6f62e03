"""Every kind of file sparseforge writes, damaged every way a disk or a user damages it, is refused
with one clear line of a package error, and the model handed to the loader is left bit-identical.

A full disk (a file-size quota) while each writer replaces an earlier artefact keeps that artefact
whole, with no temporary file or folder left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sparseforge.errors import SparseforgeError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY_GPT = {"vocab_size": 30, "block_size": 8, "d_model": 16, "n_layer": 1, "n_head": 2}
LM_ARGS = dict(model_params={"d_model": 16, "n_layer": 1, "n_head": 2, "block_size": 16}, steps=3, batch_size=2,
               val_windows=2)
PROSE = "It is a truth universally acknowledged, that a single man must be in want of a wife. " * 30


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _masked_mlp() -> nn.Sequential:
    m = _mlp()
    g = torch.Generator().manual_seed(1)
    for layer in (m[0], m[2]):
        keep = torch.rand(layer.weight.shape, generator=g) >= 0.5
        layer.register_buffer("weight_mask", keep)
        with torch.no_grad():
            layer.weight.mul_(keep)
    return m


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One artefact of every kind, written by the package; tests copy and damage them."""
    from sparseforge import StructuredPruner, materialize, save_compressed, save_materialized
    from sparseforge.data import load_dataset
    from sparseforge.lm import train_lm
    from sparseforge.models import TinyGPT
    from sparseforge.oneshot.io import save_model_folder
    from sparseforge.pretrained import austen_gpt
    from sparseforge.recipes import Recipe
    from sparseforge.structured import save_structured
    from sparseforge.text import load_text_corpus
    from sparseforge.train import Trainer

    root = tmp_path_factory.mktemp("artefacts")
    recipe = Recipe(name="c", seed=0, epochs=1, model={"name": "mlp1d"},
                    data={"name": "mnist1d", "batch_size": 64, "n_train": 128, "n_test": 64},
                    method={"name": "static", "sparsity": 0.5}, optimizer={"name": "sgd", "lr": 0.05})
    Trainer(recipe, root / "run", progress=False, dataset=load_dataset("mnist1d", n_train=128, n_test=64)).fit()
    (root / "prose.txt").write_text(PROSE)
    corpus = load_text_corpus(f"text:{root / 'prose.txt'}", val_fraction=0.2)
    train_lm(corpus, "dense", checkpoint=root / "lm.ck", max_steps=1, **LM_ARGS)
    save_compressed(_masked_mlp(), root / "c.safetensors")
    pruner = StructuredPruner(_mlp(), torch.randn(2, 16), sparsity=0.5)
    small = pruner.prune().model
    save_structured(small, pruner.kept, root / "structured")
    masked = _masked_mlp()
    result = materialize(masked, kernel="torch-csr", targets={"include": ["0"]})
    fast, dec = result.model, result.layers
    save_materialized(fast, root / "materialized", decisions=dec)
    save_model_folder(TinyGPT(**TINY_GPT), {"model_name": "tiny-gpt", "model": TINY_GPT}, root / "model")
    lm = austen_gpt(cache_dir=root / "cache", corpus=f"text:{root / 'prose.txt'}", d_model=16, n_layer=1, n_head=2,
                    block_size=16, steps=2, batch_size=2)
    return {"run": root / "run", "lm": root / "lm.ck", "corpus": root / "prose.txt", "compressed": root / "c.safetensors",
            "structured": root / "structured", "materialized": root / "materialized", "model": root / "model",
            "austen": lm.path}


CORRUPTIONS = ["truncated", "header-flipped", "payload-flipped", "empty", "wrong-type"]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    n = len(data)
    if how == "truncated":
        out = data[: n // 2]
    elif how == "empty":
        out = b""
    elif how == "wrong-type":  # a file of another kind under this name
        from safetensors.torch import save

        out = b'{"format": "something else"}\n' if not data.lstrip().startswith(b"{") else save({"w": torch.ones(3)})
    else:
        # XOR 0xFF: in a JSON file this also makes invalid UTF-8, so every flip is detectable
        lo, hi = (0, min(n, 64)) if how == "header-flipped" else (n * 3 // 4, n * 3 // 4 + 16)
        buf = bytearray(data)
        for i in range(lo, min(hi, n)):
            buf[i] ^= 0xFF
        out = bytes(buf)
    path.write_bytes(out)


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = m.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip(), msg
    return msg


# ------------------------------------------------------------------------------- each kind, each damage
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_training_checkpoint(artefacts, tmp_path, how, capsys) -> None:
    from sparseforge.cli import main

    run = _copy(artefacts["run"], tmp_path / "run")
    corrupt(run / "checkpoint.pt", how)
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["report", str(run / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparseforge: error:") and "\n" not in err and "checkpoint.pt" in err, err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_training_checkpoint_resume_refuses_a_damaged_file_and_keeps_it(artefacts, tmp_path, capsys) -> None:
    from sparseforge.cli import main

    run = _copy(artefacts["run"], tmp_path / "run")
    corrupt(run / "checkpoint.pt", "payload-flipped")
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", str(run / "recipe.yaml"), "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # nothing rewritten


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_lm_checkpoint(artefacts, tmp_path, how) -> None:
    from sparseforge.lm import train_lm
    from sparseforge.text import load_text_corpus

    ck = _copy(artefacts["lm"], tmp_path / "lm.ck")
    corrupt(ck, how)
    corpus = load_text_corpus(f"text:{artefacts['corpus']}", val_fraction=0.2)
    with pytest.raises(SparseforgeError, match=r"^checkpoint: cannot read") as e:
        train_lm(corpus, "dense", checkpoint=ck, **LM_ARGS)
    assert "lm.ck" in _one_line(e)


@pytest.mark.parametrize("name", ["report.json", "result.json"])
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_report_and_result_json(artefacts, tmp_path, how, name) -> None:
    from sparseforge.fileio import read_json
    from sparseforge.report import Report, report_for_path

    p = _copy(artefacts["run"] / name, tmp_path / name)
    corrupt(p, how)
    with pytest.raises(SparseforgeError) as e:
        Report.from_json(p) if name == "report.json" else read_json(p, what="run result")
    assert name in _one_line(e)
    if name == "report.json":
        with pytest.raises(SparseforgeError):
            report_for_path(p)


def test_metrics_jsonl_is_rewritten_from_the_checkpoint_on_resume(artefacts, tmp_path) -> None:
    # metrics.jsonl is an output only: the history lives in the checkpoint, so a damaged one is never read
    from sparseforge.fileio import load_torch

    run = _copy(artefacts["run"], tmp_path / "run")
    history = load_torch(run / "checkpoint.pt")["history"]
    assert [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] == history


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_compressed_checkpoint(artefacts, tmp_path, how) -> None:
    from sparseforge import load_compressed

    p = _copy(artefacts["compressed"], tmp_path / "c.safetensors")
    corrupt(p, how)
    model = _masked_mlp()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # differs from the file: a partial load would show
    before = _state(model)
    with pytest.raises(SparseforgeError) as e:
        load_compressed(model, p)
    assert "c.safetensors" in _one_line(e)
    _unchanged(model, before)


@pytest.mark.parametrize("file", ["model.safetensors", "structure.json"])
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_structured_folder(artefacts, tmp_path, how, file) -> None:
    from sparseforge.structured import load_structured

    folder = _copy(artefacts["structured"], tmp_path / "s")
    corrupt(folder / file, how)
    with pytest.raises(SparseforgeError) as e:
        load_structured(folder, _mlp)
    assert file in _one_line(e) or "structure" in str(e.value)


@pytest.mark.parametrize("file", ["model.safetensors", "materialized.json"])
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_materialized_folder(artefacts, tmp_path, how, file) -> None:
    from sparseforge import load_materialized

    folder = _copy(artefacts["materialized"], tmp_path / "m")
    corrupt(folder / file, how)
    model = _mlp()
    before = _state(model)
    with pytest.raises(SparseforgeError) as e:
        load_materialized(folder, model)
    assert file in _one_line(e)
    _unchanged(model, before)
    assert isinstance(model[0], nn.Linear)


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_sparseforge_model_folder(artefacts, tmp_path, how, file) -> None:
    from sparseforge.oneshot.io import load_model

    folder = _copy(artefacts["model"], tmp_path / "m")
    corrupt(folder / file, how)
    with pytest.raises(SparseforgeError) as e:
        load_model(folder)
    assert "config.json" in _one_line(e) or file in str(e.value)


@pytest.mark.parametrize("file", ["model.safetensors", "config.json", "train_log.json"])
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_austen_cache_folder(artefacts, tmp_path, how, file) -> None:
    from sparseforge.oneshot.pretrained import _load

    folder = _copy(artefacts["austen"], tmp_path / "austen-gpt" / "k")
    corrupt(folder / file, how)
    with pytest.raises(SparseforgeError) as e:
        _load(folder)
    assert "delete" in _one_line(e)  # says how to recover: delete the entry, train again


def test_a_folder_where_a_file_is_expected_and_the_reverse(artefacts, tmp_path) -> None:
    from sparseforge import load_compressed, load_materialized

    with pytest.raises(SparseforgeError, match="is a folder, not a compressed checkpoint"):
        load_compressed(_mlp(), artefacts["structured"])
    with pytest.raises(SparseforgeError, match="not a materialized model folder"):
        load_materialized(artefacts["compressed"], _mlp())
    with pytest.raises(SparseforgeError, match="not a materialized model folder"):
        load_materialized(artefacts["structured"], _mlp())  # a folder of another writer


# ------------------------------------------------------------------------------- a full disk
_QUOTA = textwrap.dedent("""
    import json, resource, signal, sys, traceback
    from pathlib import Path
    import torch
    from torch import nn
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
    root = Path(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limited(limit, fn):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            fn()
            return "no error"
        except BaseException as e:
            return type(e).__name__
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    from sparseforge import materialize, save_compressed, save_materialized, StructuredPruner, sparsity_report
    from sparseforge.lm import train_lm
    from sparseforge.commands.prune import run_prune
    from sparseforge.structured import save_structured
    from sparseforge.text import load_text_corpus
    sys.path.insert(0, sys.argv[2])
    from test_corrupt_files import LM_ARGS, _masked_mlp, _mlp

    corpus = load_text_corpus(f"text:{root / 'prose.txt'}", val_fraction=0.2)
    pruner = StructuredPruner(_mlp(), torch.randn(2, 16), sparsity=0.5)
    small = pruner.prune().model
    result = materialize(_masked_mlp(), kernel="torch-csr", targets={"include": ["0"]})
    fast, dec = result.model, result.layers
    size = lambda p: max(f.stat().st_size for f in ([p] if p.is_file() else p.iterdir()))
    out = {
        "lm": limited(size(root / "lm.ck") // 2, lambda: train_lm(corpus, "dense", checkpoint=root / "lm.ck", **LM_ARGS)),
        "compressed": limited(size(root / "c.safetensors") // 2, lambda: save_compressed(_masked_mlp(), root / "c.safetensors")),
        "structured": limited(size(root / "structured") // 2, lambda: save_structured(small, pruner.kept, root / "structured")),
        "materialized": limited(size(root / "materialized") // 2,
                                lambda: save_materialized(fast, root / "materialized", decisions=dec, overwrite=True)),
        "prune": limited(size(root / "pruned") // 2, lambda: run_prune(str(root / "model"), out=root / "pruned",
                         method="magnitude", sparsity=0.5, calibration="none", overwrite=True, progress=False)),
        "report": limited(size(root / "report.json") // 2,
                          lambda: sparsity_report(_masked_mlp(), torch.randn(1, 16)).to_json(root / "report.json")),
    }
    print(json.dumps(out))
""")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_full_disk_during_each_writer_keeps_the_previous_artefact(artefacts, tmp_path) -> None:
    from sparseforge import sparsity_report
    from sparseforge.models import TinyGPT
    from sparseforge.commands.prune import run_prune
    from sparseforge.oneshot.io import save_model_folder

    root = tmp_path / "w"
    root.mkdir()
    for name in ("lm", "compressed", "structured", "materialized", "corpus"):
        _copy(artefacts[name], root / artefacts[name].name)
    save_model_folder(TinyGPT(**TINY_GPT), {"model_name": "tiny-gpt", "model": TINY_GPT}, root / "model")
    run_prune(str(root / "model"), out=root / "pruned", method="magnitude", sparsity=0.5, calibration="none",
              progress=False)
    sparsity_report(_masked_mlp(), torch.randn(1, 16)).to_json(root / "report.json")
    before = _snapshot(root)
    r = subprocess.run([sys.executable, "-c", _QUOTA, str(root), str(Path(__file__).parent)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(v != "no error" for v in results.values()), results  # every writer hit the quota and said so
    assert _snapshot(root) == before  # every earlier artefact whole; no temporary file or folder left
