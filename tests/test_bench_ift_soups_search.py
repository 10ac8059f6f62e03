"""The sparse_ift, soups and random_search benchmark suites end to end on tiny settings (MNIST-1D)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparseforge.bench import list_suites, run_suite
from sparseforge.errors import ConfigError
from sparseforge.experiments import NormMLP

pytestmark = pytest.mark.slow

TINY = ["--datasets", "mnist1d", "--n-train", "192", "--n-test", "64", "--seeds", "0", "1"]


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [*TINY, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), *extra]


def test_suites_listed_and_help_states_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    suites = list_suites()
    assert {"sparse_ift", "soups", "random_search"} <= set(suites)
    for name, needle in (("sparse_ift", "default: [0.5, 0.75, 0.9]"), ("soups", "default: [0.8, 0.9, 0.95]"),
                         ("random_search", "default: [0.5, 0.75, 0.9, 0.95]")):
        with pytest.raises(SystemExit):
            run_suite(name, ["--help"])
        out = capsys.readouterr().out
        assert needle in out and "default: [0, 1, 2]" in out and "fashion-mnist" in out


def test_sparse_ift_suite_tiny(tmp_path: Path) -> None:
    args = _args(tmp_path, "--kinds", "wide", "doped", "--sparsities", "0.5", "0.9", "--epochs", "1",
                 "--hidden", "32", "32", "32")
    run_suite("sparse_ift", args)
    data = json.loads((tmp_path / "sparse_ift.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench sparse_ift")
    runs = data["runs"]
    assert len(runs) == 2 * (1 + 2 * 2 * 2)  # seeds x (dense + kinds x sparsities x {ift, param-matched})
    for r in runs:
        if r["kind"] in ("wide", "doped"):
            assert r["iso_flop_ratio"] == pytest.approx(1.0, abs=0.01) and r["flops_ratio"] == pytest.approx(1.0, abs=0.01)
        elif r["kind"].startswith("dense-params:"):
            # the width is the best integer: its neighbours miss the target parameter count by at least as much
            n = lambda w: sum(p.numel() for p in NormMLP(40, (w, w, w), 10).parameters())  # noqa: E731
            assert n(r["width"]) == r["params"]
            assert abs(n(r["width"]) - r["target_params"]) <= min(abs(n(r["width"] + d) - r["target_params"]) for d in (-1, 1))
    assert all(r["params"] > 0 for r in runs)
    md = (tmp_path / "sparse_ift.md").read_text()
    assert "has BatchNorm after each hidden layer" in md
    assert "| wide |" in md and "| dense, params of doped |" in md and "beats the dense MLP at equal FLOPs" in md
    assert (tmp_path / "sparse_ift.png").stat().st_size > 0
    before = sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "cache").iterdir())
    run_suite("sparse_ift", args)  # everything cached: nothing retrained
    assert sorted((p.name, p.stat().st_mtime) for p in (tmp_path / "cache").iterdir()) == before


def test_soups_suite_tiny(tmp_path: Path) -> None:
    run_suite("soups", _args(tmp_path, "--sparsities", "0.8", "--pretrain-epochs", "1", "--retrain-epochs", "1",
                             "--val-size", "32", "--hidden", "32", "32", "--m", "2", "--phases", "2"))
    data = json.loads((tmp_path / "soups.json").read_text())
    runs = data["runs"]
    assert sorted(r["m"] for r in runs) == [1, 1, 2, 2]
    for r in runs:
        assert len(r["phases"]) == 2 and r["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
        assert len(r["phases"][-1]["ingredients"]) == r["m"]
    md = (tmp_path / "soups.md").read_text()
    for row in ("| SMS greedy |", "| SMS uniform |", "| best ingredient |", "| IMP |"):
        assert row in md
    assert "vs IMP:" in md and (tmp_path / "soups.png").stat().st_size > 0


def test_random_search_suite_tiny(tmp_path: Path) -> None:
    run_suite("random_search", _args(tmp_path, "--sparsities", "0.5", "0.9", "--epochs", "2", "--samples", "4",
                                     "--score-size", "32", "--hidden", "32", "32"))
    data = json.loads((tmp_path / "random_search.json").read_text())
    runs = data["runs"]
    assert len(runs) == 2 * 3
    for r in runs:
        if r["sparsity"] == 0:
            assert set(r["runs"]) == {"dense"}
        else:
            assert set(r["runs"]) == {"searched", "random"}
            keep = 32 - int(r["sparsity"] * 32 + 0.5)
            assert r["kept_nodes"] == [keep, keep] and r["init_loss_best"] <= r["init_loss_random"] + 1.0
            assert all(len(v["history"]) == 2 for v in r["runs"].values())  # one evaluation per epoch
    md = (tmp_path / "random_search.md").read_text()
    assert "| 50 % |" in md and "| 90 % |" in md and "dense parent: final" in md


@pytest.mark.parametrize("suite, extra, needle", [
    ("sparse_ift", ["--hidden", "32", "32"], "--hidden needs at least 3 widths"),
    ("sparse_ift", ["--sparsities", "1.0"], "--sparsities must be in \\(0, 1\\)"),
    ("sparse_ift", ["--epochs", "fashion-mnist=3"], "--epochs: no value for dataset\\(s\\) \\['mnist1d'\\]"),
    ("soups", ["--m", "1"], "--m must be >= 2"),
    ("random_search", ["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_settings_fail_before_training(tmp_path: Path, suite: str, extra: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_suite(suite, _args(tmp_path, *extra))
    assert not (tmp_path / "cache").exists()
