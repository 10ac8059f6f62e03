"""The N:M benchmark suites (nm_lm, nm_cnn, nm_kernels) end to end on tiny settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparseforge.bench import list_suites, run_suite
from sparseforge.data import fashion_mnist_available
from sparseforge.errors import ConfigError, LayerError

pytestmark = pytest.mark.slow

PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want "
         "of a wife. However little known the feelings or views of such a man may be on his first entering a "
         "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 40


@pytest.fixture
def text_corpus(tmp_path: Path) -> str:
    path = tmp_path / "prose.txt"
    path.write_text(PROSE, encoding="utf-8")
    return f"text:{path}"


def _lm_args(corpus: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["--corpus", corpus, "--steps", "4", "--batch", "2", "--block", "16", "--d-model", "16", "--n-layer", "1",
            "--n-head", "2", "--val-windows", "6", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), *extra]


def test_suites_are_listed() -> None:
    suites = list_suites()
    assert "nm_lm" in suites and "nm_cnn" in suites
    assert "nm-lm" in suites["nm_lm"] and "nm-cnn" in suites["nm_cnn"]


def test_nm_lm_suite_tiny(tmp_path: Path, text_corpus: str) -> None:
    args = _lm_args(text_corpus, tmp_path, "--methods", "srste", "mdgf", "--patterns", "2:4", "1:8", "--seeds", "0", "1",
                    "--jobs", "2")
    run_suite("nm_lm", args)
    data = json.loads((tmp_path / "nm_lm.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench nm_lm")
    runs = data["runs"]
    assert len(runs) == 2 * (1 + 2 * 2)  # seeds x (dense + methods x patterns)
    for r in runs:
        assert r["tokens"] == 4 * 2 * 16 and r["val_windows"] == 6
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        if r["method"] == "dense":
            assert r["sparsity"] == 0.0
        else:
            n, m = (int(v) for v in r["pattern"].split(":"))
            assert r["nm_violations"] == 0 and r["sparsity"] == pytest.approx(1 - n / m)
            assert r["masked_layers"] == [f"blocks.0.{l}.weight" for l in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    mdgf = [r for r in runs if r["method"] == "mdgf"][0]
    # beta falls to 1 % a quarter of the way through the 4 steps
    assert math.exp(-mdgf["method_params"]["decay_coef"] * 1) == pytest.approx(0.01)
    srste = [s for s in data["summary"] if s["method"] == "srste" and s["pattern"] == "1:8"][0]
    assert srste["seeds"] == 2 and srste["density"] == 0.125
    md = (tmp_path / "nm_lm.md").read_text()
    lines = md.splitlines()
    table = lines.index(next(l for l in lines if l.startswith("| method | dense | 2:4 (50 %) | 1:8 (12.5 %) |")))
    assert lines[table + 2].startswith("| dense | ") and lines[table + 3].startswith("| srste | |")
    assert "embeddings and the output head stay dense" in md and "finalize()" in md
    assert (tmp_path / "nm_lm.png").stat().st_size > 0
    # a second call reads every run from the cache instead of training again
    before = sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "cache").iterdir())
    run_suite("nm_lm", args)
    assert sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "cache").iterdir()) == before
    # a different budget is a different run, not a stale cache hit
    run_suite("nm_lm", _lm_args(text_corpus, tmp_path, "--methods", "srste", "--patterns", "2:4", "--no-dense",
                                "--steps", "5"))
    assert len(list((tmp_path / "cache").iterdir())) == len(before) + 1


@pytest.mark.parametrize("extra, error, needle", [
    (["--patterns", "4:4"], ConfigError, "--patterns: expected N:M with 0 < N < M"),
    (["--steps", "0"], ConfigError, "--steps must be >= 1; got 0"),
    (["--mdgf-decay-at", "0"], ConfigError, r"--mdgf-decay-at must be in \(0, 1\]"),
    (["--threads", "0"], ConfigError, "--threads must be >= 1; got 0"),
    (["--d-model", "12", "--patterns", "1:8"], LayerError, "not divisible"),
])
def test_nm_lm_bad_settings_fail_before_training(tmp_path: Path, text_corpus: str, extra, error, needle) -> None:
    with pytest.raises(error, match=needle):
        run_suite("nm_lm", _lm_args(text_corpus, tmp_path, "--methods", "srste", *extra))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files not installed")


def _cnn_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--epochs", "1", "--n-train", "256", "--n-test", "128", "--seeds", "0", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path), *extra]


@needs_fmnist
def test_nm_cnn_suite_tiny(tmp_path: Path) -> None:
    run_suite("nm_cnn", _cnn_args(tmp_path, "--methods", "srste", "sdgf", "--patterns", "2:4", "1:16", "--jobs", "2"))
    data = json.loads((tmp_path / "nm_cnn.json").read_text())
    runs = data["runs"]
    assert len(runs) == 1 + 2 * 2
    for r in runs:
        assert r["accuracy"] == r["finalized_accuracy"]  # the reported number is the finalized model's
        if r["method"] != "dense":
            n, m = (int(v) for v in r["pattern"].split(":"))
            assert r["nm_violations"] == 0 and r["sparsity"] == pytest.approx(1 - n / m)
            assert r["masked_layers"] == ["conv2.weight", "fc1.weight", "fc2.weight"]  # conv1 dense
            assert r["skipped"] == []
    md = (tmp_path / "nm_cnn.md").read_text()
    assert "| method | dense | 2:4 (50 %) | 1:16 (6.25 %) |" in md
    assert "indivisible='skip'" in md and "conv1 (1 input channel) stays dense" in md and "identical in every run" in md
    assert (tmp_path / "nm_cnn.png").stat().st_size > 0


@needs_fmnist
def test_nm_cnn_indivisible_layers_are_skipped_and_listed(tmp_path: Path) -> None:
    # 1:64: conv2 has 32 input channels (left dense, listed); fc1 (3136 = 49 x 64) stays N:M; fc2 dense by flag
    run_suite("nm_cnn", _cnn_args(tmp_path, "--methods", "ste", "--patterns", "1:64", "--no-dense",
                                  "--last-layer", "dense", "--n-train", "128"))
    r = json.loads((tmp_path / "nm_cnn.json").read_text())["runs"][0]
    assert r["masked_layers"] == ["fc1.weight"] and r["accuracy"] == r["finalized_accuracy"]
    assert len(r["skipped"]) == 1 and r["skipped"][0].startswith("conv2.weight: input dimension 32 not divisible")
    md = (tmp_path / "nm_cnn.md").read_text()
    assert "skipped here: conv2.weight: input dimension 32" in md and "fc2 stays dense" in md


def test_nm_cnn_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--patterns: expected N:M"):
        run_suite("nm_cnn", _cnn_args(tmp_path, "--patterns", "2:1"))
    with pytest.raises(ConfigError, match="--epochs must be >= 1; got 0"):
        run_suite("nm_cnn", _cnn_args(tmp_path, "--epochs", "0"))
    with pytest.raises(SystemExit):  # BDWP handles Linear layers only; the CNN suite does not offer it
        run_suite("nm_cnn", _cnn_args(tmp_path, "--methods", "bdwp"))


def test_nm_kernels_is_listed_and_checks_its_options_before_cuda(tmp_path: Path) -> None:
    assert "nm_kernels" in list_suites()
    out = ["--out", str(tmp_path)]
    with pytest.raises(ConfigError, match=r"--sizes and --e2e-width must be multiples of 64.*\[1000\]"):
        run_suite("nm_kernels", ["--sizes", "1000", *out])
    with pytest.raises(ConfigError, match=r"--batches must all be >= 1; got \[0\]"):
        run_suite("nm_kernels", ["--batches", "0", *out])
    with pytest.raises(ConfigError, match="--repeats must be >= 1; got 0"):
        run_suite("nm_kernels", ["--repeats", "0", *out])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_nm_kernels_without_cuda_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs an NVIDIA GPU \(CUDA\); none is available"):
        run_suite("nm_kernels", ["--out", str(tmp_path)])
    assert not (tmp_path / "nm_kernels.json").exists()


def test_nm_kernels_prunes_2to4_by_magnitude() -> None:
    import sys

    from sparseforge.core.patterns import is_valid_nm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from nm_kernels import prune_2to4_
    finally:
        sys.path.pop(0)
    lin = torch.nn.Linear(8, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3],
                                       [4.0, 3.0, 2.0, 1.0, -1.0, 1.0, -1.0, 1.0]]))
    prune_2to4_(lin)
    expect = torch.tensor([[0.0, -4.0, 3.0, 0.0, 0.5, 0.0, 0.0, 0.3],
                           [4.0, 3.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0]])  # ties: the higher index is kept
    assert torch.equal(lin.weight.detach(), expect)
    assert is_valid_nm(lin.weight != 0, 2, 4)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 sparse kernels need an NVIDIA GPU with compute capability >= 8.0")
def test_nm_kernels_tiny_grid_on_gpu(tmp_path: Path) -> None:
    run_suite("nm_kernels", ["--sizes", "1024", "--batches", "64", "--dtypes", "fp16", "--e2e-width", "1024",
                             "--blocks", "1", "--repeats", "5", "--warmup", "2", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "nm_kernels.json").read_text())
    (row,) = data["layers"]
    assert row["speedup"] > 0 and row["rel_err"] < 1e-2
    (e2e,) = data["e2e"]
    assert e2e["layers"] == 2 and e2e["rel_err"] < 1e-2
