"""End-to-end training on small real data (MNIST-1D subsets): every method, resume, fresh-process reload, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseforge.data import load_dataset
from sparseforge.errors import CheckpointError, ConfigError
from sparseforge.recipes import Recipe
from sparseforge.train import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist1d", n_train=512, n_test=256)


def recipe(method: dict, epochs: int = 3, **kw) -> Recipe:
    return Recipe(name=f"t-{method['name']}", seed=0, epochs=epochs, model={"name": "mlp1d"},
                  data={"name": "mnist1d", "batch_size": 64, "n_train": 512, "n_test": 256}, method=method,
                  optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}, **kw)


METHODS = [
    {"name": "dense"},
    {"name": "static", "sparsity": 0.9, "allocation": "erk"},
    {"name": "snip", "sparsity": 0.9},
    {"name": "gmp", "sparsity": 0.9, "begin": 0, "end": "50%", "frequency": 2},
    {"name": "set", "sparsity": 0.9},
    {"name": "rigl", "sparsity": 0.9, "update_interval": 4},
    {"name": "imp", "sparsity": 0.5, "fraction": 0.3, "rewind_step": 3},
]


@pytest.fixture(scope="module")
def bigger_data():
    return load_dataset("mnist1d", n_train=2048, n_test=512)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["name"])
def test_every_method_trains_and_hits_its_sparsity(method: dict, bigger_data) -> None:
    r = recipe(method, epochs=4)
    r.data.update(n_train=2048, n_test=512)
    r.optimizer["lr"] = 0.1
    t = Trainer(r, progress=False, dataset=bigger_data)
    res = t.fit()
    assert t.step == t.total_steps
    target = method.get("sparsity", 0.0)
    for layer in t.method.layers:
        assert not layer.weight[~layer.mask].any()  # pruned entries exactly zero
    kept = sum(int(l.mask.sum()) for l in t.method.layers)
    total = sum(l.mask.numel() for l in t.method.layers)
    assert abs((1 - kept / total) - target) < 2e-3
    assert res.final["test_accuracy"] > 0.2  # chance is 0.1; dense reaches ~0.43 here
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    if method["name"] == "imp":
        assert t.method.round == t.method.rounds == 2
        assert t.total_steps == 128 + 2 * (128 - 3)  # 32 steps per epoch, rounds restart at step 3


def test_trainer_gives_set_the_run_length(data) -> None:
    # SET updates once per epoch but not after the last one (official SciPy code)
    t = Trainer(recipe({"name": "set", "sparsity": 0.9}, epochs=2), progress=False, dataset=data)
    assert t.method.update_interval == 8 and t.method.total_steps == t.total_steps == 16
    t.fit()
    assert t.method.last_update["step"] == 8


def test_recipe_n_val_holds_out_a_validation_split_scored_every_epoch() -> None:
    from sparseforge.train import evaluate

    r = recipe({"name": "rigl", "sparsity": 0.9, "update_interval": 4}, epochs=2)
    r.data.update(n_train=448, n_val=64)
    t = Trainer(r, progress=False)
    # 64 samples held out of the 4,000 training samples, and n_train counts what stays: 7 steps of 64 per epoch
    assert (t.dataset.num_train, int(t.dataset.x_val.shape[0]), t.steps_per_epoch) == (448, 64, 7)
    res = t.fit()
    assert [h["epoch"] for h in res.history] == [1, 2]
    ev = evaluate(t.model, t.dataset.x_val, t.dataset.y_val)
    assert res.final["val_accuracy"] == ev["accuracy"] and res.final["val_loss"] == pytest.approx(ev["loss"])
    assert res.final["val_accuracy"] != res.final["test_accuracy"] or res.final["val_loss"] != res.final["test_loss"]
    # a preloaded dataset without a validation split gets the recipe's (never trains on it); a different split is refused
    from sparseforge.data import load_dataset

    full = load_dataset("mnist1d")
    given = Trainer(r, progress=False, dataset=full)
    assert given.dataset.num_train == full.num_train - 64 and torch.equal(given.dataset.x_val, full.x_train[-64:])
    with pytest.raises(ConfigError, match="data.n_val=64, but the dataset given holds out 32 samples"):
        Trainer(r, progress=False, dataset=full.split_validation(32))
    # without n_val nothing is held out and nothing is logged
    plain = Trainer(recipe({"name": "dense"}, epochs=1), progress=False)
    assert plain.dataset.x_val is None and "val_accuracy" not in plain.fit().final


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", [METHODS[5], METHODS[6], METHODS[3], {**METHODS[4], "init_scale": "unit"}],
                         ids=["rigl", "imp", "gmp", "set-sinit"])
def test_interrupted_run_resumes_on_the_same_trajectory(tmp_path: Path, method: dict, data) -> None:
    full = Trainer(recipe(method), tmp_path / "a", progress=False, dataset=data)
    full.fit()
    for stop in (10, 13):  # one stop mid-epoch (8 steps per epoch), one later
        part = Trainer(recipe(method), tmp_path / "b", progress=False, dataset=data, max_steps=stop)
        part.fit()
    assert part.step == 23 and part.step < part.total_steps
    resumed = Trainer(recipe(method), tmp_path / "b", progress=False, dataset=data)
    resumed.fit()
    assert resumed.step == full.step
    a, b = _params(full.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "b" / "result.json").exists()
    assert [h["epoch"] for h in resumed.history] == [h["epoch"] for h in full.history]
    if method["name"] == "rigl":  # the explored positions survive the interruption too
        rates = [h["exploration_rate"] for h in full.history]
        assert [h["exploration_rate"] for h in resumed.history] == rates
        assert rates == sorted(rates) and rates[0] > 0.1
        churn = [h["regrown_dropped_next"] for h in full.history]
        assert [h["regrown_dropped_next"] for h in resumed.history] == churn and churn[-1] is not None


def test_resume_refuses_a_different_recipe(tmp_path: Path, data) -> None:
    Trainer(recipe(METHODS[5]), tmp_path, progress=False, dataset=data, max_steps=5).fit()
    with pytest.raises(CheckpointError, match="different recipe"):
        Trainer(recipe(METHODS[4]), tmp_path, progress=False, dataset=data).fit()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path, data) -> None:
    Trainer(recipe(METHODS[5]), tmp_path, progress=False, dataset=data, max_steps=5).fit()
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read sparseforge training checkpoint .*truncated"):
        Trainer(recipe(METHODS[5]), tmp_path, progress=False, dataset=data).fit()


RELOAD = r"""
import sys, torch
from sparseforge.recipes import Recipe
from sparseforge.data import load_dataset
from sparseforge.models import build_model
from sparseforge.masking import load_masked_state_dict, find_masked_layers
ck = torch.load(sys.argv[1], weights_only=True)
r = Recipe.from_dict(ck["recipe"])
model = build_model(r.model["name"], load_dataset("mnist1d", n_train=512, n_test=256))
load_masked_state_dict(model, ck["model"])
model.eval()
x = torch.load(sys.argv[2])
torch.save({"out": model(x), "masks": {l.qualname: l.mask for l in find_masked_layers(model)}}, sys.argv[3])
"""


def test_checkpoint_reloads_in_a_fresh_process(tmp_path: Path, data) -> None:
    t = Trainer(recipe(METHODS[5]), tmp_path / "run", progress=False, dataset=data)
    t.fit()
    x = data.x_test[:32]
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "run" / "checkpoint.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=120)
    got = torch.load(tmp_path / "out.pt")
    t.model.eval()
    with torch.no_grad():
        assert torch.equal(got["out"], t.model(x))
    for l in t.method.layers:
        assert torch.equal(got["masks"][l.qualname], l.mask)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparseforge.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def _write_recipe(tmp_path: Path, method: dict, epochs: int = 3, **extra) -> Path:
    import yaml

    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({**recipe(method, epochs).to_dict(), **extra}))
    return p


def test_cli_train_stops_resumes_and_reports(tmp_path: Path) -> None:
    rp = _write_recipe(tmp_path, METHODS[5])
    run = tmp_path / "run"
    first = _cli("train", str(rp), "--run-dir", str(run), "--max-steps", "9", "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "stopped at step 9/24" in first.stdout
    second = _cli("train", str(rp), "--run-dir", str(run), "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "from step 9/24" in second.stderr
    assert "final test accuracy" in second.stdout
    for f in ("checkpoint.pt", "metrics.jsonl", "report.json", "report.txt", "recipe.yaml", "result.json"):
        assert (run / f).exists(), f
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    rep = _cli("report", str(run))
    assert rep.returncode == 0 and "simulated" in rep.stdout and "fc1.weight" in rep.stdout
    js = json.loads(_cli("report", str(run / "checkpoint.pt"), "--json").stdout)
    assert abs(js["totals"]["global_sparsity"] - 0.9) < 1e-3


def test_cli_errors_are_one_line_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: rigl, sparsity: 1.5}\n")
    r = _cli("train", str(bad), "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "sparsity" in r.stderr and "1.5" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    # far more steps than can finish in the half second before the signal, even on an idle machine
    # (400 epochs of this tiny run once completed in under a second and exited 0)
    epochs = 100_000
    rp = _write_recipe(tmp_path, METHODS[5], epochs=epochs, checkpoint_every_steps=5)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell starts background jobs with SIGINT ignored, and the child would inherit that (then
    # Ctrl-C never reaches it): give it the default disposition, which Python turns into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "sparseforge.cli", "train", str(rp), "--run-dir", str(run), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the signal must reach the training loop: a checkpoint on disk proves the child got there
    # (sent earlier, e.g. while a loaded machine is still importing torch, it tests nothing)
    deadline = time.time() + 600
    while not (run / "checkpoint.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"train exited with {proc.returncode} before its first checkpoint: {proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint within 600 s: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"train did not stop within 300 s of SIGINT: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 0 < ck["step"] < epochs * 8
    part = _cli("train", str(rp), "--run-dir", str(run), "--no-progress", "--max-steps", "3")
    assert f"from step {ck['step']}/" in part.stderr


def test_demo_prints_a_comparison_table(capsys) -> None:
    from sparseforge.demo import run_demo

    rows = run_demo(epochs=1, methods=["dense", "rigl"], dataset="mnist1d", progress=False)
    out = capsys.readouterr().out
    assert "test acc" in out and "rigl" in out and "simulated" in out
    assert rows[1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows[0]["sparse_flops"] == rows[0]["dense_flops"] > rows[1]["sparse_flops"]


def test_process_group_single_process_and_a_torchrun_launch_without_distributed(monkeypatch) -> None:
    from sparseforge.errors import ConfigError
    from sparseforge.train import process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_group() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="WORLD_SIZE > 1.*no torch.distributed"):
        process_group()


def test_process_group_it_creates_is_destroyed_at_exit(monkeypatch) -> None:
    # a gloo group left to static destructors aborts a finished rank with SIGABRT
    import atexit

    from sparseforge import train

    calls: list[str] = []
    exit_hooks: list = []
    state = {"initialized": False}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend: (calls.append(f"init {backend}"), state.update(initialized=True)))
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda: (calls.append("destroy"), state.update(initialized=False)))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(atexit, "register", exit_hooks.append)
    assert train.process_group() == (1, 2)
    assert calls == ["init gloo"] and len(exit_hooks) == 1
    exit_hooks[0]()
    exit_hooks[0]()  # already destroyed (e.g. by the user's own code): nothing to do
    assert calls == ["init gloo", "destroy"]


def _rows(history: list[dict], event: str) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history if h["event"] == event]


@pytest.mark.parametrize("method", [{"name": "imp", "sparsity": 0.488, "fraction": 0.2},
                                    {"name": "imp", "schedule": [0.3, 0.6], "rewind_step": 3}],
                         ids=["epoch-rounds", "rewind-mid-epoch"])
def test_imp_logs_each_rounds_trained_network_not_the_rewound_one(tmp_path: Path, method: dict, data) -> None:
    import copy

    from sparseforge.train import evaluate

    t = Trainer(recipe(method, epochs=1), tmp_path, progress=False, dataset=data)
    trained, rewound = {}, {}
    # registered after the trainer's own listener and hooks: sees the same network, then the rewound one
    t.method.on("round_end", lambda e: trained.__setitem__(e.step, copy.deepcopy(t.model)))
    t.optimizer.register_step_post_hook(
        lambda opt, a, k: rewound.__setitem__(t.method.step, copy.deepcopy(t.model)) if t.method.step in trained else None)
    res = t.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["event"] == "round_end"] == [h for h in res.history if h["event"] == "round_end"]
    rounds = _rows(res.history, "round_end")
    assert [r["round"] for r in rounds] == list(range(t.method.rounds + 1)) == [0, 1, 2, 3][: t.method.rounds + 1]
    assert [r["step"] for r in rounds] == [t.method.round_end(i) for i in range(t.method.rounds + 1)]
    assert rounds[0]["sparsity"] == 0.0 and rounds[-1]["sparsity"] == pytest.approx(t.method.sparsity, abs=2e-3)
    for r in rounds:
        ev = evaluate(trained[r["step"]], data.x_test, data.y_test)
        assert (r["test_accuracy"], r["test_loss"]) == (ev["accuracy"], pytest.approx(ev["loss"], rel=1e-6))
        if r["round"] < t.method.rounds:  # pruned and rewound right after: a different, untrained network
            assert evaluate(rewound[r["step"]], data.x_test, data.y_test)["loss"] != pytest.approx(r["test_loss"])
    epochs = _rows(res.history, "epoch_end")
    assert len(epochs) == -(-t.total_steps // t.steps_per_epoch)  # the last, short epoch too
    for e in epochs:  # an epoch that ends with a round reports that round's trained network too
        same = [r for r in rounds if r["step"] == e["step"]]
        if same:
            assert (e["test_accuracy"], e["test_loss"], e["sparsity"]) == (
                same[0]["test_accuracy"], same[0]["test_loss"], same[0]["sparsity"])
    assert res.final == res.history[-1] and res.final["event"] == "epoch_end"


def test_imp_random_controls_run_from_a_recipe_and_resume_mid_round(tmp_path: Path, data) -> None:
    method = {"name": "imp", "schedule": [0.4, 0.7], "score": "random", "reinit": "random"}
    full = Trainer(recipe(method, epochs=1), tmp_path / "a", progress=False, dataset=data)
    full.fit()
    part = Trainer(recipe(method, epochs=1), tmp_path / "b", progress=False, dataset=data, max_steps=12)
    part.fit()
    assert 8 < part.step < 16  # stopped inside round 1
    resumed = Trainer(recipe(method, epochs=1), tmp_path / "b", progress=False, dataset=data)
    resumed.fit()
    assert _rows(resumed.history, "round_end") == _rows(full.history, "round_end")
    assert [r["sparsity"] for r in _rows(full.history, "round_end")] == pytest.approx([0.0, 0.4, 0.7], abs=2e-3)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_set_epoch_row_measures_the_network_before_its_topology_update(data) -> None:
    import copy

    from sparseforge.train import evaluate

    t = Trainer(recipe({"name": "set", "sparsity": 0.9}, epochs=2), progress=False, dataset=data)
    before = {}
    t.method.on("before_topology_update", lambda e: before.__setitem__(e.step, copy.deepcopy(t.model)))
    res = t.fit()
    assert list(before) == [8]  # after epoch 1 only (not after the last)
    ev = evaluate(before[8], data.x_test, data.y_test)
    row = res.history[0]
    assert (row["event"], row["step"], row["test_accuracy"]) == ("epoch_end", 8, ev["accuracy"])
    assert row["test_loss"] == pytest.approx(ev["loss"], rel=1e-6)
