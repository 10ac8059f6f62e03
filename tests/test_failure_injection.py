"""Failure injection: processes killed mid-run resume to the same result, a full disk keeps the
previous artefact, and every corrupted file the package writes is one clear error that changes nothing.

The killed runs use a small shim around ``sparseforge train`` / ``train_lm``: it SIGKILLs its own
process when the checkpoint of a chosen step is written, either right after the checkpoint is on
disk or half-way through writing it (the temporary file holds half the bytes). The steps are drawn
from a seeded generator, so every kill point is reproducible.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# SF_KILL="STEP:PHASE" -> SIGKILL when the checkpoint of STEP is saved; PHASE "after" (file on disk)
# or "during" (half written). Patched before the runners import atomic_save.
_SHIM = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from sparseforge import fileio
    kill = os.environ.get("SF_KILL", "")
    step, phase = (int(kill.split(":")[0]), kill.split(":")[1]) if kill else (-1, "")
    original = fileio.atomic_save

    def atomic_save(obj, path):
        if isinstance(obj, dict) and obj.get("step") == step:
            if phase == "during":
                def write(f):
                    buf = io.BytesIO()
                    torch.save(obj, buf)
                    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                fileio.atomic_write(path, write)
            original(obj, path)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(obj, path)

    fileio.atomic_save = atomic_save
""")

_TRAIN = _SHIM + textwrap.dedent("""
    from sparseforge.cli import main
    sys.exit(main(sys.argv[1:]))
""")

_LM = _SHIM + textwrap.dedent("""
    import json
    from sparseforge.lm import train_lm
    from sparseforge.text import load_text_corpus
    text, ck, out = sys.argv[1:4]
    corpus = load_text_corpus(f"text:{text}", val_fraction=0.2)
    r = train_lm(corpus, "rigl", method_params={"sparsity": 0.5},
                 model_params={"d_model": 16, "n_layer": 1, "n_head": 2, "block_size": 16},
                 steps=8, batch_size=4, val_windows=4, checkpoint=ck, checkpoint_every=1, return_model=True)
    model = r.pop("model_object")
    fileio.atomic_save(model.state_dict(), out + ".pt")
    timing = ("seconds", "seconds_per_step", "train_seconds", "resumed_from")
    fileio.atomic_write_text(out + ".json", json.dumps({k: v for k, v in r.items() if k not in timing},
                                                      default=str, sort_keys=True))
""")


def _run(script: str, args: list[str], kill: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env={**ENV, "SF_KILL": kill}, timeout=300)


def _kill_points(rng: random.Random, total: int, n: int) -> list[str]:
    steps = sorted(rng.sample(range(1, total), n))
    return [f"{s}:{rng.choice(['after', 'during'])}" for s in steps]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _history(run: Path) -> list[dict]:
    # wall-clock seconds are the one thing a resumed run may not share
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


_RECIPE = {"name": "kill", "seed": 0, "epochs": 2, "model": {"name": "mlp1d"},
           "data": {"name": "mnist1d", "batch_size": 32, "n_train": 128, "n_test": 64},
           "method": {"name": "rigl", "sparsity": 0.8, "update_interval": 3},
           "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "checkpoint_every_steps": 1}
_TOTAL_STEPS = 8  # 2 epochs of 128 / 32


def _train_kill_points() -> list[str]:
    # mid-epoch kills only: the two runner defects at epoch boundaries have their own test below
    rng = random.Random(27)
    return [p for p in _kill_points(rng, _TOTAL_STEPS, 4) if not p.startswith("4:")][:2]


def _train(recipe: Path, run: Path, kill: str = "") -> None:
    r = _run(_TRAIN, ["train", str(recipe), "--run-dir", str(run), "--no-progress"], kill=kill)
    assert r.returncode == (-9 if kill else 0), (kill, r.stderr[-2000:])  # -9: died where it was told


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ref")
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_RECIPE))
    _train(recipe, tmp / "ref")
    return recipe, tmp / "ref"


def _without(rows: list[dict], key: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != key} for r in rows]


@pytest.mark.slow
def test_sparseforge_train_killed_at_random_steps_resumes_to_the_same_run(reference_run, tmp_path: Path) -> None:
    from sparseforge.fileio import load_torch, read_json

    recipe, ref = reference_run
    run = tmp_path / "run"
    points = _train_kill_points()
    assert len(points) == 2
    for point in points:
        _train(recipe, run, kill=point)
        assert not (run / "result.json").exists()
    _train(recipe, run)
    a, b = load_torch(ref / "checkpoint.pt"), load_torch(run / "checkpoint.pt")
    assert a["step"] == b["step"] == _TOTAL_STEPS
    _same_state(a["model"], b["model"])  # weights and masks, bit for bit
    _same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert any(k.endswith("_mask") for k in a["model"])
    assert a["method"].keys() == b["method"].keys()
    # every metric but the epoch's mean train loss (see the next test)
    assert _without(_history(ref), "train_loss") == _without(_history(run), "train_loss")
    assert read_json(ref / "report.json") == read_json(run / "report.json")
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())  # no temporary left over


@pytest.mark.slow
def test_resumed_runs_keep_the_same_metrics_at_epoch_boundaries(reference_run, tmp_path: Path) -> None:
    recipe, ref = reference_run
    run = tmp_path / "run"
    for point in ("2:after", "4:after"):
        _train(recipe, run, kill=point)
    _train(recipe, run)
    assert _history(ref) == _history(run)


@pytest.mark.slow
def test_train_lm_killed_at_random_steps_resumes_to_the_same_model(tmp_path: Path) -> None:
    text = tmp_path / "prose.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 40)
    r = _run(_LM, [str(text), str(tmp_path / "ref.ck"), str(tmp_path / "ref")])
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "lm.ck"
    for point in _kill_points(random.Random(5), 8, 2):
        r = _run(_LM, [str(text), str(ck), str(tmp_path / "out")], kill=point)
        assert r.returncode == -9, (point, r.stderr)
        assert not (tmp_path / "out.json").exists()
    r = _run(_LM, [str(text), str(ck), str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr
    from sparseforge.fileio import load_torch, read_json

    _same_state(load_torch(tmp_path / "ref.pt"), load_torch(tmp_path / "out.pt"))
    ref, out = read_json(tmp_path / "ref.json"), read_json(tmp_path / "out.json")
    assert ref == out and ref["finished"] is True
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
