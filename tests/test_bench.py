"""The benchmark harness and suites run end to end on tiny settings and write provenance."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from sparseforge.bench import interleaved_medians, list_suites, parallel_map, provenance, run_suite
from sparseforge.errors import ConfigError

pytestmark = pytest.mark.slow


def test_suites_are_listed_with_descriptions() -> None:
    suites = list_suites()
    assert {"fmnist", "overhead"} <= set(suites)
    assert all(doc for doc in suites.values())


def test_unknown_suite_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="fmnist"):
        run_suite("fmnsit", [])


def test_fmnist_suite_tiny(tmp_path: Path) -> None:
    run_suite("fmnist", ["--models", "lenet300100", "--methods", "dense", "rigl", "--sparsities", "0.9",
                         "--seeds", "0", "1", "--epochs", "1", "--dataset", "mnist1d", "--jobs", "2",
                         "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), "--name", "tiny"])
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["provenance"]["command"].startswith("sparseforge bench fmnist")
    assert data["provenance"]["machine"]["cores"] >= 1 and data["provenance"]["date"]
    rigl = [s for s in data["summary"] if s["method"] == "rigl"][0]
    assert rigl["seeds"] == 2 and abs(rigl["achieved_sparsity"] - 0.9) < 1e-3
    md = (tmp_path / "tiny.md").read_text()
    assert "| rigl |" in md and "command" in md
    # R_s table: RigL explored more than its 10 % of active weights; dense has no row
    assert 0.1 < rigl["exploration_rate"] < 1 and "exploration_rate" not in data["summary"][0]
    assert f"| rigl | {rigl['exploration_rate']:.3f} |" in md.split("In-time over-parameterization")[1]
    # a second call reuses the cached runs instead of training again
    before = sorted(p.stat().st_mtime for p in (tmp_path / "cache").iterdir())
    run_suite("fmnist", ["--models", "lenet300100", "--methods", "dense", "rigl", "--sparsities", "0.9",
                         "--seeds", "0", "1", "--epochs", "1", "--dataset", "mnist1d", "--jobs", "2",
                         "--cache", str(tmp_path / "cache"), "--out", str(tmp_path), "--name", "tiny"])
    assert sorted(p.stat().st_mtime for p in (tmp_path / "cache").iterdir()) == before


def _overhead():
    """The ``benchmarks/overhead.py`` module (benchmarks are not a package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import overhead
    finally:
        sys.path.pop(0)
    return overhead


def test_overhead_suite_tiny(tmp_path: Path) -> None:
    run_suite("overhead", ["--models", "lenet300100", "--rounds", "1", "--calls", "3", "--batch", "8",
                           "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    res = data["results"]["lenet300100"]
    assert res["dense"]["ratio_to_dense"] == 1.0
    assert {"static", "rigl", "set", "torch.nn.utils.prune", "torch.ao WeightNormSparsifier", "dense (control)"} <= set(res)
    assert res["torch.nn.utils.prune"]["hook_seconds_per_step"] > 0  # timed in its forward and backward
    assert res["torch.ao WeightNormSparsifier"]["hook_seconds_per_step"] is None
    assert res["static"]["hook_seconds_per_step"] > 0 and len(res["static"]["instance_ratios"]) == 5
    assert res["static"]["same_instance_ratio"] > 0 and len(res["static"]["same_instance_ratios"]) == 5
    assert res["torch.nn.utils.prune"]["same_instance_ratio"] > 0
    assert res["torch.ao WeightNormSparsifier"]["same_instance_ratio"] is None
    assert res["srste 2:4"]["same_instance_ratio"] is None


def test_overhead_toggles_switch_the_machinery_off_and_on_on_the_same_tensors() -> None:
    _setup = _overhead()._setup
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
    for kind in ("static", "torch.nn.utils.prune"):
        step = _setup("lenet300100", kind, 0.9, batch)
        model = step.keep[0]
        lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        mask = lin.weight_mask.bool().clone()  # ours: a bool buffer; prune's: a float one
        step.toggle(False)
        for _ in range(3):
            step()
        trained = lin.weight_orig if kind != "static" else lin.weight
        assert int((trained.detach()[~mask] != 0).sum()) > 0, kind  # off: plain dense steps
        step.toggle(True)
        step()
        with torch.no_grad():
            model(batch[0])  # prune recomputes its weight in the forward
        assert lin.weight is not getattr(lin, "weight_orig", None), kind
        w = lin.weight if kind == "static" else lin.weight_orig * lin.weight_mask
        assert int((lin.weight.detach()[~mask] != 0).sum()) == 0, kind  # on again: the mask holds
        assert torch.equal(lin.weight.detach(), w.detach()), kind


def test_hook_clock_times_only_the_hooks_between_open_and_close() -> None:
    import time

    HookClock = _overhead().HookClock
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    clock = HookClock(opt)
    opt.register_step_post_hook(lambda *_: time.sleep(0.02))  # inside: counted
    clock.close(opt)
    opt.register_step_pre_hook(lambda *_: time.sleep(0.05))  # after the closing hook: not counted
    for _ in range(3):
        w.grad = torch.ones(3)
        opt.step()
    assert clock.steps == 3
    assert 0.02 <= clock.per_step < 0.045
    clock.reset()
    assert clock.steps == 0 and clock.seconds == 0.0


def test_hook_clock_times_gradient_hooks_in_backward() -> None:
    import time

    HookClock = _overhead().HookClock
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    clock = HookClock(opt)
    w.register_post_accumulate_grad_hook(lambda p: time.sleep(0.02))  # between open and close: counted
    clock.close(opt)
    w.register_post_accumulate_grad_hook(lambda p: time.sleep(0.05))  # after the closing hook: not counted
    for _ in range(2):
        opt.zero_grad()
        (w * 2).sum().backward()
        opt.step()
    assert clock.steps == 2
    assert 0.02 <= clock.per_step < 0.045


def test_hook_clock_times_end_of_backward_callbacks_queued_between_open_and_close() -> None:
    # Masking masks gradients in a callback queued from its gradient hooks: that work is counted
    # (as is any other callback queued during backward; the benchmark queues no others)
    import time

    HookClock = _overhead().HookClock
    engine = torch.autograd.Variable._execution_engine
    w = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))  # its gradient accumulates first, and it has no hook of ours
    opt = torch.optim.SGD([w, b], lr=0.1)
    clock = HookClock(opt)
    order = []
    b.register_post_accumulate_grad_hook(lambda p: order.append("b"))
    w.register_post_accumulate_grad_hook(lambda p: (order.append("w"), engine.queue_callback(lambda: time.sleep(0.02)))[0])
    clock.close(opt)
    for _ in range(2):
        opt.zero_grad()
        h = w.sum()
        (h * b.sum()).backward()
        opt.step()
    assert order[:2] == ["b", "w"]  # the case that matters: the clock's hooks fire before ours exist
    assert clock.steps == 2
    assert 0.02 <= clock.per_step < 0.045


def test_prune_clock_times_the_forward_pre_hooks_and_counts_steps() -> None:
    import time

    import torch.nn.utils.prune as prune

    PruneClock = _overhead().PruneClock
    lin = torch.nn.Linear(4, 3)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    lin.register_forward_pre_hook(lambda *_: time.sleep(0.02))  # sits among prune's pre-hooks: counted
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    clock = PruneClock(lin, opt)
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(2, 4)).sum().backward()
        opt.step()
    assert clock.steps == 2
    assert 0.02 <= clock.per_step < 0.04
    assert not clock._t_grad  # every backward closed its interval


def test_structured_zoo_suite_tiny(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    threads = torch.get_num_threads()
    run_suite("structured_zoo", ["--only", "edge-chunk", "edge-multihead-attention", "--no-tp", "--rounds", "1",
                                 "--latency-scale", "2", "--out", str(tmp_path / "zoo")])
    assert torch.get_num_threads() == threads  # the suite times with one thread and puts the setting back
    rows = {r["model"]: r["sparseforge"] for r in json.loads((tmp_path / "zoo.json").read_text())["results"]}
    for row in rows.values():
        assert row["success"] and row["shape_kept"] and row["onnx_max_diff"] <= 1e-4
        assert row["layers"] and all(0.0 <= l["achieved"] <= 1.0 for l in row["layers"])
        # latency is timed at twice the width: more MACs than the coverage model
        assert row["latency_macs_before"] > row["macs_before"] and row["latency_dense_ms"] > 0
        assert row["weight_ops_dense_ms"] > 0
    md = (tmp_path / "zoo.md").read_text()
    assert "speedup / MAC reduction" in md and "Speedup at least 0.9 x the MAC reduction" in md


def test_interleaved_medians_counts_calls() -> None:
    calls = {"a": 0, "b": 0}

    def make(k):
        def f():
            calls[k] += 1
        return f

    med = interleaved_medians({k: make(k) for k in calls}, rounds=3, calls=4, warmup=2)
    assert calls == {"a": 14, "b": 14} and set(med) == {"a", "b"}
    assert provenance(["x"])["command"] == "sparseforge bench x"


def test_interleaved_medians_rotates_the_order() -> None:
    seen: list[str] = []
    fns = {k: (lambda k=k: seen.append(k)) for k in "abc"}
    interleaved_medians(fns, rounds=3, calls=1, warmup=0)
    assert seen == list("abc") + list("bca") + list("cab")  # each candidate leads one round


@pytest.mark.parametrize("spec, needle", [(["0"], "positive integer"), (["lenet300100=x"], "MODEL=INT"),
                                          (["small-cnn=3"], "no epoch count")])
def test_fmnist_bad_epochs_is_a_clear_error(tmp_path: Path, spec, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_suite("fmnist", ["--models", "lenet300100", "--epochs", *spec, "--dataset", "mnist1d",
                             "--cache", str(tmp_path), "--out", str(tmp_path)])


def test_parallel_map_rejects_bad_jobs() -> None:
    with pytest.raises(ConfigError, match="jobs"):
        list(parallel_map(dict, [{}], jobs=0))
    assert list(parallel_map(dict, [{"a": 1}, {"b": 2}])) == [(0, {"a": 1}), (1, {"b": 2})]


def test_per_key_values_one_value_for_all_or_per_key_and_bad_items() -> None:
    from sparseforge.bench import per_key_values

    assert per_key_values(["5"], ["a", "b"], "--x") == {"a": 5.0, "b": 5.0}
    assert per_key_values(["2", "b=0.5"], ["a", "b"], "--x") == {"a": 2.0, "b": 0.5}
    assert per_key_values(["a=3", "b=4"], ["a", "b"], "--n", kind=int, unit="model") == {"a": 3, "b": 4}
    with pytest.raises(ConfigError, match="--n: expected a positive integer or MODEL=INT; got 'a=1.5'"):
        per_key_values(["a=1.5"], ["a"], "--n", kind=int, unit="model")
    with pytest.raises(ConfigError, match=r"--x: no value for dataset\(s\) \['b'\]"):
        per_key_values(["a=1"], ["a", "b"], "--x")


def test_rigl_sweep_suite_tiny(tmp_path: Path) -> None:
    run_suite("rigl_sweep", ["--settings", "default", "dT=50", "--seeds", "0", "--epochs", "1", "--dataset", "mnist1d",
                             "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    data = json.loads((tmp_path / "rigl_sweep.json").read_text())
    assert [s["setting"] for s in data["summary"]] == ["default", "dT=50"]
    assert all(0 < s["mean"] <= 100 and abs(r["sparsity"] - 0.9) < 0.01 for s in data["summary"] for r in data["runs"])
    assert all(0.1 < s["exploration_rate"] < 1 for s in data["summary"])
    with pytest.raises(ConfigError, match="unknown"):
        run_suite("rigl_sweep", ["--settings", "fastest", "--out", str(tmp_path)])


def test_lr_tuned_suite_chooses_each_rate_on_validation(tmp_path: Path) -> None:
    run_suite("lr_tuned", ["--methods", "dense", "rigl-mlp", "--lrs", "0.2", "0.02", "--seeds", "0", "1", "--epochs", "1",
                           "--dataset", "mnist1d", "--n-val", "400", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    data = json.loads((tmp_path / "lr_tuned.json").read_text())
    assert len(data["runs"]) == 8 and {r["lr"] for r in data["runs"]} == {0.02, 0.2}
    for s in data["summary"]:
        runs = [r for r in data["runs"] if r["method"] == s["method"]]
        val = {lr: sum(100 * r["val_accuracy"] for r in runs if r["lr"] == lr) / 2 for lr in (0.02, 0.2)}
        assert s["chosen_lr"] == max(val, key=lambda lr: (val[lr], -lr))  # picked on validation, never on test
        test = [100 * r["test_accuracy"] for r in runs if r["lr"] == s["chosen_lr"]]
        assert s["test"] == pytest.approx(sum(test) / 2)
    assert {r["method"]: r["sparsity"] for r in data["summary"]} == {"dense": 0.0, "rigl-mlp": 0.9}
    assert "| rigl-mlp | 90 % |" in (tmp_path / "lr_tuned.md").read_text()


def test_lr_tuned_tie_goes_to_the_lower_rate() -> None:
    from sparseforge.bench import benchmarks_dir
    import importlib.util

    spec = importlib.util.spec_from_file_location("lr_tuned_t", benchmarks_dir() / "lr_tuned.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.choose({0.1: {"val": 80.0}, 0.05: {"val": 80.0}, 0.2: {"val": 79.0}}) == 0.05
    assert mod.choose({0.1: {"val": 81.0}, 0.05: {"val": 80.0}}) == 0.1
    assert mod.choose({0.3: {"failed": 1}, 0.1: {"val": 70.0}, 0.05: {"val": 60.0}}) == 0.1  # a failed rate never wins


def _fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


@pytest.mark.parametrize("jobs", [1, 2])
def test_parallel_map_can_return_errors(jobs: int) -> None:
    got = dict(parallel_map(_fail_on_odd, [{"x": x} for x in range(4)], jobs=jobs, errors="return"))
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], ValueError) and str(got[3]) == "odd 3"
    with pytest.raises(ValueError, match="odd [13]"):  # whichever finishes first
        list(parallel_map(_fail_on_odd, [{"x": x} for x in range(4)], jobs=jobs))
    with pytest.raises(ConfigError, match="errors must be 'raise' or 'return'; got 'ignore'"):
        list(parallel_map(_fail_on_odd, [{"x": 0}], errors="ignore"))


@pytest.mark.parametrize("argv, needle", [
    (["--lrs", "0.1", "0"], r"--lrs must be positive finite learning rates; got \[0.0\]"),
    (["--lrs", "nan"], "--lrs must be positive"),
    (["--methods", "rigl-fast"], "unknown method preset 'rigl-fast'"),
    (["--dataset", "mnist1d", "--n-val", "0"], "n_val must be"),
    (["--dataset", "mnist1d", "--n-val", "4000"], "n_val=4000 must be below the 4000 training samples"),
])
def test_lr_tuned_bad_arguments(tmp_path: Path, argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_suite("lr_tuned", [*argv, "--out", str(tmp_path), "--cache", str(tmp_path / "c")])


@pytest.mark.parametrize("suite, argv, needle", [
    ("overhead", ["--instances", "0"], "--instances and --rounds must be >= 1; got 0"),
    ("overhead", ["--rounds", "0"], "--instances and --rounds must be >= 1"),
    ("structured_zoo", ["--latency-scale", "0"], "--latency-scale must be >= 1; got 0"),
])
def test_bench_bad_counts_are_clear_errors(suite, argv, needle, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        run_suite(suite, [*argv, "--out", str(tmp_path)])
    assert needle in capsys.readouterr().err


def test_nm_grid_helpers() -> None:
    import argparse

    from sparseforge.bench import add_nm_grid_args, check_nm_grid_args, mdgf_decay_coef, mean_std_cell, nm_density

    assert nm_density("2:4") == 0.5 and nm_density("1:16") == 1 / 16
    assert mean_std_cell([]) == "-" and mean_std_cell([1.5]) == "1.500"
    assert mean_std_cell([1.0, 3.0], "{:.1f}") == "2.0 ± 1.4"
    assert abs(math.exp(-mdgf_decay_coef(1000, 0.25) * 250) - 0.01) < 1e-12
    p = argparse.ArgumentParser()
    add_nm_grid_args(p, ["ste"], ["ste", "srste"], ["2:4"])
    p.add_argument("--epochs", type=int, default=1)
    check_nm_grid_args(p.parse_args([]), positive=("epochs",))
    for argv, needle in ((["--patterns", "4:2"], "--patterns: expected N:M with 0 < N < M"),
                         (["--patterns", "2-4"], "got '2-4'"),
                         (["--epochs", "0"], "--epochs must be >= 1; got 0"),
                         (["--jobs", "0"], "--jobs must be >= 1"),
                         (["--mdgf-decay-at", "1.5"], r"--mdgf-decay-at must be in \(0, 1\]"),
                         (["--mdgf-decay-coef", "0"], "--mdgf-decay-coef must be > 0"),
                         (["--threads", "0"], "--threads must be >= 1")):
        with pytest.raises(ConfigError, match=needle):
            check_nm_grid_args(p.parse_args(argv), positive=("epochs",))


def test_check_at_least_and_check_fractions() -> None:
    import argparse

    from sparseforge.bench import check_at_least, check_fractions

    a = argparse.Namespace(jobs=2, score_size=0, seqlen=None)
    check_at_least(a, "jobs", "seqlen")  # None: an optional option left unset
    with pytest.raises(ConfigError, match=r"--score-size must be >= 1; got 0"):
        check_at_least(a, "jobs", "score_size")
    with pytest.raises(ConfigError, match=r"--jobs must be >= 3; got 2"):
        check_at_least(a, "jobs", minimum=3)
    check_fractions([0.5, 0.99])
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match=rf"--sparsities must be in \(0, 1\); got {bad}"):
            check_fractions([0.5, bad])
    with pytest.raises(ConfigError, match=r"--keep must be in \(0, 1\)"):
        check_fractions([2.0], "--keep")


def test_split_cached_returns_stored_runs_and_the_rest_in_order(tmp_path: Path) -> None:
    from sparseforge.bench import split_cached

    cache = tmp_path / "c" / "d"
    jobs = [{"n": 1}, {"n": 2}, {"n": 3}]
    results, todo = split_cached(jobs, cache, lambda j: f"run{j['n']}")
    assert cache.is_dir() and results == {} and todo == jobs
    (cache / "run2.json").write_text(json.dumps({"acc": 0.5}))
    results, todo = split_cached(jobs, cache, lambda j: f"run{j['n']}")
    assert results == {"run2": {"acc": 0.5}} and todo == [{"n": 1}, {"n": 3}]
