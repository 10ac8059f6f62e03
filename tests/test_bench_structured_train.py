"""structured_train: the library trainer on tiny models, and the benchmark suite end to end on a tiny setting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparseforge.bench import list_suites, run_suite
from sparseforge.data import fashion_mnist_available
from sparseforge.errors import ConfigError
from sparseforge.structured import trace_groups
from sparseforge.structured_train import _hold_zero_fn, run_structured, train_structured, zero_group_count
from sparseforge.structured.shrink import kept_indices


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_zero_group_count_by_hand():
    m = _mlp()
    graph = trace_groups(m, torch.randn(2, 4))
    assert len(graph.groups) == 8 + 6  # the last layer's outputs reach the model output and are kept
    assert zero_group_count(m, graph) == 0
    with torch.no_grad():
        m[0].weight[3] = 0  # weight row alone: bias and the next layer's column are still nonzero
    assert zero_group_count(m, graph) == 0
    with torch.no_grad():
        m[0].bias[3] = 0
        m[2].weight[:, 3] = 0
    assert zero_group_count(m, graph) == 1


def test_hold_zero_restores_exact_zeros():
    m = _mlp()
    graph = trace_groups(m, torch.randn(2, 4))
    kept = kept_indices(graph, [0, 9])
    hold = _hold_zero_fn(m, kept)
    hold()
    assert zero_group_count(m, graph) == 2
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    assert zero_group_count(m, graph) == 0
    hold()
    assert zero_group_count(m, graph) == 2


@pytest.mark.parametrize("method,kw", [("hesso", {}), ("group_lasso", {"lam": 1e-3}), ("wgsef", {"lam": 1e-2})])
def test_methods_reach_target_and_export_matches(method, kw):
    x, y = _data()
    res = train_structured(_mlp(), x, y, method=method, epochs=3, batch_size=8, target_group_sparsity=0.5, seed=1,
                           hesso_periods=2, **kw)
    n = 14
    want = int(n * 0.5) if method == "hesso" else round(0.5 * n)
    assert res.num_groups == n and res.target_groups == want
    assert len(res.removed) == want and res.zero_groups == want
    assert len(res.history) == 3 and all(h["epoch"] == i + 1 for i, h in enumerate(res.history))
    torch.testing.assert_close(res.small(x), res.model(x), atol=1e-5, rtol=0)
    widths = sorted(l.out_features for l in res.small if isinstance(l, nn.Linear))
    assert sum(widths) - 3 == n - want  # hidden units left; the 3 outputs are kept


@settings(max_examples=8, deadline=None)
@given(s=st.sampled_from([0.25, 0.4, 0.5, 0.6, 0.75]), seed=st.integers(0, 3))
def test_oneshot_fine_tune_keeps_removed_groups_at_zero(s, seed):
    x, y = _data(seed=seed)
    m = _mlp(seed)
    train_structured(m, x, y, method="dense", epochs=1, batch_size=16, seed=seed)
    res = train_structured(m, x, y, method="oneshot", epochs=2, batch_size=16, target_group_sparsity=s, seed=seed,
                           scope="layer")
    want = round(s * 8) + round(s * 6)
    assert res.target_groups == len(res.removed) == want
    assert res.zero_groups == want  # fine-tuning did not revive any removed group
    torch.testing.assert_close(res.small(x), res.model(x), atol=1e-5, rtol=0)


def test_dense_changes_nothing_structurally():
    x, y = _data()
    m = _mlp()
    res = train_structured(m, x, y, method="dense", epochs=1, batch_size=16)
    assert res.small is m and res.removed == [] and res.kept == {} and res.target_groups == 0


@pytest.mark.parametrize("kw,match", [
    ({"method": "magic"}, "method must be one of"),
    ({"method": "hesso", "target_group_sparsity": 1.0}, r"target_group_sparsity must be in \[0, 1\); got 1.0"),
    ({"method": "hesso", "target_group_sparsity": 0.0}, "needs target_group_sparsity > 0"),
    ({"method": "wgsef", "target_group_sparsity": 0.5}, "needs lam > 0"),
    ({"method": "group_lasso", "target_group_sparsity": 0.5, "lam": -1.0}, "needs lam > 0"),
    ({"method": "hesso", "target_group_sparsity": 0.5, "hesso_warmup": 0.6, "hesso_pruning": 0.5}, "must be <= 1"),
    ({"method": "hesso", "target_group_sparsity": 0.5, "hesso_pruning": 0.0}, r"hesso_pruning must be in \(0, 1\); got 0.0"),
    ({"method": "hesso", "target_group_sparsity": 0.5, "hesso_periods": 0}, "hesso_periods"),
    ({"method": "dense", "epochs": 0}, "epochs"),
])
def test_bad_input(kw, match):
    x, y = _data()
    args = {"epochs": 1, **kw}
    with pytest.raises(ConfigError, match=match):
        train_structured(_mlp(), x, y, **args)


def test_mismatched_data():
    x, y = _data()
    with pytest.raises(ConfigError, match="same"):
        train_structured(_mlp(), x, y[:10], method="dense", epochs=1)


def test_run_structured_oneshot_needs_a_trained_model(tmp_path):
    with pytest.raises(ConfigError, match="method 'oneshot' prunes a trained model: pass init_from"):
        run_structured(model="small-cnn", dataset="fashion-mnist", method="oneshot", epochs=1, seed=0,
                       out_dir=str(tmp_path), target_group_sparsity=0.5)


def test_listed():
    assert "structured_train" in list_suites()


@pytest.mark.parametrize("args,match", [
    (["--epochs", "2", "--finetune-epochs", "2"], r"--finetune-epochs must be in \[1, 1\]"),
    (["--sparsities", "1.0"], r"--sparsities must be in \(0, 1\)"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lam-gl", "0.5=1e-3"], r"--lam-gl: no value for sparsity\(ies\) \[0.7\]"),
    (["--lam-sef", "0.5=x"], "--lam-sef: expected a positive number or SPARSITY=NUMBER; got '0.5=x'"),
    (["--lam-sef", "-1"], "--lam-sef: expected a positive number"),
])
def test_suite_bad_args(args, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        run_suite("structured_train", [*args, "--cache", str(tmp_path), "--out", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files not installed")
def test_suite_tiny(tmp_path, capsys):
    args = ["--n-train", "256", "--n-test", "128", "--seeds", "0", "--epochs", "2", "--finetune-epochs", "1",
            "--sparsities", "0.5", "--lam-gl", "0.5=1e-3", "--lam-sef", "0.02", "--latency-rounds", "1",
            "--latency-calls", "2", "--batches", "8",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    run_suite("structured_train", args)
    first = capsys.readouterr().out
    assert "5 runs, 0 cached, 5 to train" in first and "1 runs, 0 cached, 1 to train" in first
    data = json.loads((tmp_path / "structured-train.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench structured_train")
    runs = data["runs"]
    assert sorted(r["role"] for r in runs) == ["dense", "group_lasso", "hesso", "oneshot", "pretrain", "wgsef"]
    for r in runs:
        assert r["num_groups"] == 32 + 64 + 128
        assert r["exported_accuracy"] == r["zeroed_accuracy"] and r["max_logit_diff"] < 1e-5
        if r["method"] == "dense":
            assert r["removed_groups"] == r["zero_groups"] == 0 and r["params_after"] == r["params_before"]
            continue
        assert r["target_groups"] == 112 and r["removed_groups"] == 112 and r["zero_groups"] == 112
        assert r["params_after"] < r["params_before"] and r["macs_after"] < r["macs_before"]
        lat = r["latency"]["8"]
        assert lat["speedup"] == pytest.approx(lat["dense_s"] / lat["exported_s"])
    lam = {r["role"]: r["train_kwargs"].get("lam") for r in runs}
    assert lam["group_lasso"] == 1e-3 and lam["wgsef"] == 0.02 and lam["hesso"] is None
    pre = next(r for r in runs if r["role"] == "pretrain")
    one = next(r for r in runs if r["role"] == "oneshot")
    assert pre["epochs"] + one["epochs"] == 2 and one["init_from"].endswith(pre["key"])
    md = (tmp_path / "structured-train.md").read_text()
    for m in ("dense", "hesso", "oneshot", "group_lasso", "wgsef"):
        assert f"| {m} |" in md
    assert "112 / 112 of 224 (112)" in md and "yes (" in md and "load average" in md
    # second call: everything from the cache, same accuracies
    run_suite("structured_train", args)
    again = capsys.readouterr().out
    assert "5 runs, 5 cached, 0 to train" in again and "1 runs, 1 cached, 0 to train" in again
    data2 = json.loads((tmp_path / "structured-train.json").read_text())
    assert [r["exported_accuracy"] for r in data2["runs"]] == [r["exported_accuracy"] for r in runs]
    assert not math.isnan(data2["summary"][0]["macs_after"])
