"""Runners: the method registry and its plugins, method run knowledge, the loop core, step specs, LR schedules."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sparseforge.core.lr import LRSchedule, build_lr_scheduler
from sparseforge.core.steps import resolve_steps
from sparseforge.data import load_dataset
from sparseforge.errors import ConfigError
from sparseforge.methods import (GMP, IMP, MDGF, METHODS, SET, RigL, SparsityMethod, StaticSparse, build_method,
                                 method_entry, method_names, register_method)
from sparseforge.methods import registry
from sparseforge.recipes import Recipe, method_parameters
from sparseforge.runners.loop import TrainLoop
from sparseforge.runners.setup import method_arguments
from sparseforge.train import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"

# a method written outside the package: dense until `at` (a step spec, default half the run),
# then one magnitude pruning to the target sparsity
PLUGIN = '''
import torch
from sparseforge.methods import SparsityMethod, register_method


class Halfway(SparsityMethod):
    """Dense until step `at`, then one magnitude pruning to `sparsity`."""

    name = "halfway"
    step_params = frozenset({"at"})

    def __init__(self, model, optimizer=None, *, sparsity, at, **kwargs):
        self.at = at
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)

    @classmethod
    def run_defaults(cls, total_steps, steps_per_epoch):
        return {"at": "50%"}

    @torch.no_grad()
    def update(self, t):
        if t + 1 == self.at:
            self.set_masks(self.masks_from_scores([l.canonical(l.weight.abs()) for l in self.layers]))
'''


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "METHODS", registry.METHODS)  # same object; restored below
    methods, aliases = dict(registry.METHODS), dict(registry._ALIASES)
    yield
    registry.METHODS.clear()
    registry.METHODS.update(methods)
    registry._ALIASES.clear()
    registry._ALIASES.update(aliases)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "halfway_plugin.py").write_text(PLUGIN + '\nregister_method("halfway", Halfway)\n')
    monkeypatch.syspath_prepend(str(d))
    yield d
    sys.modules.pop("halfway_plugin", None)


def _recipe(method: dict, **kw) -> dict:
    return {"method": method, "epochs": 2, "seed": 1, "model": "mlp1d",
            "data": {"name": "mnist1d", "batch_size": 100, "n_train": 400, "n_test": 100}, **kw}


# --- the registry -------------------------------------------------------------------------------


def test_built_in_names_and_the_snip_alias() -> None:
    assert {"dense", "static", "gmp", "imp", "set", "rigl", "ste", "srste", "mdgf", "sdgf", "bdwp"} <= set(METHODS)
    assert "snip" in method_names() and "snip" not in METHODS
    entry = method_entry("snip")
    assert entry.cls is StaticSparse and entry.presets == {"score": "snip"}
    assert method_parameters("snip") == method_parameters("static")
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    m = build_method("snip", model, sparsity=0.5, data=(torch.randn(4, 8), torch.tensor([0, 1, 0, 1])))
    assert isinstance(m, StaticSparse) and m.score_name == "snip"


def test_unknown_method_lists_the_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'rigel'; available: \[.*'rigl'.*'snip'"):
        method_entry("rigel")


def test_register_method_refuses_bad_input(clean_registry) -> None:
    class Mine(SparsityMethod):
        pass

    with pytest.raises(ConfigError, match="method name must be a lower-case name .* got 'Bad Name'"):
        register_method("Bad Name", Mine)
    with pytest.raises(ConfigError, match="cls must be a SparsityMethod subclass; got <class 'int'>"):
        register_method("mine", int)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'rigl' is already registered for sparseforge.methods.dst.RigL"):
        register_method("rigl", Mine)
    with pytest.raises(ConfigError, match="'snip' is already registered"):
        register_method("mine", Mine, aliases=["snip"])
    with pytest.raises(ConfigError, match="presets of alias 'mine2' must be a mapping"):
        register_method("mine", Mine, aliases={"mine2": 3})  # type: ignore[dict-item]
    assert "mine" not in METHODS
    register_method("mine", Mine, aliases={"mine-half": {"sparsity": 0.5}})
    assert method_entry("mine-half").presets == {"sparsity": 0.5} and method_entry("mine").cls is Mine
    register_method("rigl", Mine, replace=True)
    assert METHODS["rigl"] is Mine


def test_recipe_imports_are_module_names(clean_registry) -> None:
    with pytest.raises(ConfigError, match="imports must be a list of module names; got 'x'"):
        Recipe.from_dict(_recipe({"name": "dense"}, imports="x"))
    with pytest.raises(ConfigError, match="imports: '../evil.py' is not a module name"):
        Recipe.from_dict(_recipe({"name": "dense"}, imports=["../evil.py"]))
    with pytest.raises(ConfigError, match="imports: cannot import 'no_such_sparseforge_plugin'"):
        Recipe.from_dict(_recipe({"name": "dense"}, imports=["no_such_sparseforge_plugin"]))
    # a recipe without imports serializes as before the key existed (old run folders resume)
    assert "imports" not in Recipe.from_dict(_recipe({"name": "dense"})).to_dict()


# --- a method defined outside the package trains through the Trainer and the CLI -----------------


def test_plugin_method_trains_through_the_python_trainer(plugin_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown method 'halfway'"):
        Recipe.from_dict(_recipe({"name": "halfway", "sparsity": 0.75}))
    recipe = Recipe.from_dict(_recipe({"name": "halfway", "sparsity": 0.75}, imports=["halfway_plugin"]))
    trainer = Trainer(recipe, progress=False)
    assert type(trainer.method).__name__ == "Halfway"
    assert trainer.method.at == trainer.total_steps // 2 == 4  # "50%" of 2 epochs x 4 steps, resolved
    result = trainer.fit()
    assert [round(h["sparsity"], 6) for h in result.history] == [0.75, 0.75]
    # a recipe value wins over the method's run default, and may be a step spec too
    t2 = Trainer(Recipe.from_dict(_recipe({"name": "halfway", "sparsity": 0.5, "at": "1ep"}, imports=["halfway_plugin"])),
                 progress=False)
    assert t2.method.at == 4


def test_plugin_method_trains_through_the_cli(plugin_dir: Path, tmp_path: Path) -> None:
    rp = tmp_path / "recipe.yaml"
    rp.write_text(yaml.safe_dump(_recipe({"name": "halfway", "sparsity": 0.75}, imports=["halfway_plugin"])))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(plugin_dir)])}
    r = subprocess.run([sys.executable, "-m", "sparseforge", "train", str(rp), "--run-dir", str(tmp_path / "run"),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    result = yaml.safe_load((tmp_path / "run" / "result.json").read_text())
    assert result["method"] == "halfway" and abs(result["totals"]["global_sparsity"] - 0.75) < 1e-6


def test_plugin_method_found_through_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    clean_registry) -> None:
    (tmp_path / "halfway_ep.py").write_text(PLUGIN)
    info = tmp_path / "halfway_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: halfway-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sparseforge.methods]\nhalfway-ep = halfway_ep:Halfway\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert type(build_method("halfway-ep", nn.Sequential(nn.Linear(4, 4)), sparsity=0.5, at=3)).__name__ == "Halfway"
        assert "halfway-ep" in method_names()
    finally:
        sys.modules.pop("halfway_ep", None)


# --- run knowledge lives in the method classes ----------------------------------------------------


def test_run_defaults_of_the_built_in_methods() -> None:
    assert GMP.run_defaults(1000, 50) == {"begin": 0, "end": "75%"}
    assert GMP.run_defaults(10, None) == {"begin": 0, "end": 7}  # no epochs: the LM trainer's floor
    assert SET.run_defaults(1000, 50) == {"total_steps": 1000, "update_interval": 50}
    assert SET.run_defaults(1000, None) == {"total_steps": 1000}
    assert RigL.run_defaults(1000, 50) == {"total_steps": 1000}
    assert MDGF.run_defaults(1000, None) == {"total_steps": 1000}
    assert IMP.run_defaults(1000, 50) == {"steps_per_round": 1000}
    assert IMP.trains_in_rounds and IMP.lr_horizon({"steps_per_round": 300}, 1000) == 300
    assert GMP.lr_horizon({}, 1000) == 1000 and not GMP.trains_in_rounds
    assert StaticSparse.needs_calibration_batch({"score": "snip"})
    assert not StaticSparse.needs_calibration_batch({"score": "magnitude"}) and not StaticSparse.needs_calibration_batch({})
    assert MDGF.logs_mask_flips and not RigL.logs_mask_flips
    assert IMP.runner_args == {"lr_scheduler"} and StaticSparse.runner_args == {"data", "loss_fn"}


def test_method_arguments_order_presets_params_defaults_then_step_specs() -> None:
    p = method_arguments(method_entry("gmp"), {"sparsity": 0.9}, seed=3, total_steps=1000, steps_per_epoch=50)
    assert p == {"sparsity": 0.9, "seed": 3, "begin": 0, "end": 750}
    p = method_arguments(method_entry("gmp"), {"sparsity": 0.9, "end": "2ep", "seed": 5}, seed=3, total_steps=1000,
                         steps_per_epoch=50)
    assert p["end"] == 100 and p["seed"] == 5
    p = method_arguments(method_entry("snip"), {"sparsity": 0.9, "score": "taylor"}, seed=0, total_steps=10,
                         steps_per_epoch=None)
    assert p["score"] == "taylor"  # explicit values win over an alias's presets
    with pytest.raises(ConfigError, match="method_params.end = '1ep' counts epochs, but this run has no epochs"):
        method_arguments(method_entry("gmp"), {"sparsity": 0.9, "end": "1ep"}, seed=0, total_steps=10,
                         steps_per_epoch=None, where="method_params")


def _string_comparisons(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                found += [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found


def test_no_runner_compares_against_a_method_name() -> None:
    names = set(method_names())
    runners = SRC / "sparseforge" / "runners"
    for path in sorted(runners.glob("*.py")):
        hits = names & set(_string_comparisons(ast.parse(path.read_text())))
        assert not hits, f"{path.name} branches on method name(s) {sorted(hits)}"


# --- the loop core --------------------------------------------------------------------------------


class _Counter:
    def __init__(self, raise_at: int | None = None, where: str = "loss") -> None:
        self.model = nn.Linear(3, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.saves: list[int] = []
        self.step = 0
        self.raise_at, self.where = raise_at, where

    def loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.where == "loss" and self.step + 1 == self.raise_at:
            raise KeyboardInterrupt
        out = self.model(batch).pow(2).mean()
        return out, out.item()

    def after(self, step: int, value: float) -> bool:
        self.step = step
        return step == 5  # asks for a checkpoint at "an epoch's end"

    def batches(self):
        for i in range(100):
            if self.where == "fetch" and i + 1 == self.raise_at:
                raise KeyboardInterrupt
            yield torch.ones(2, 3)


def test_loop_checkpoint_cadence_stop_and_asked_saves() -> None:
    c = _Counter()
    loop = TrainLoop(c.opt, None, loss=c.loss, after_step=c.after, save=lambda: c.saves.append(c.step), checkpoint_every=3)
    assert loop.run(c.batches(), step=0, stop_at=8) == 8
    assert c.saves == [3, 5, 6, 8]
    c2 = _Counter()
    loop = TrainLoop(c2.opt, None, loss=c2.loss, after_step=c2.after, save=lambda: c2.saves.append(c2.step))
    assert loop.run(iter([torch.ones(2, 3)] * 2), step=0, stop_at=8) == 2  # the batches ran out


@pytest.mark.parametrize("where, saved", [("fetch", [3]), ("loss", [])])
def test_loop_ctrl_c_saves_only_between_steps(where: str, saved: list[int]) -> None:
    c = _Counter(raise_at=4, where=where)
    interrupted = []
    loop = TrainLoop(c.opt, None, loss=c.loss, after_step=c.after, save=lambda: c.saves.append(c.step),
                     on_interrupt=lambda step, did: interrupted.append((step, did)))
    with pytest.raises(KeyboardInterrupt):
        loop.run(c.batches(), step=0, stop_at=8)
    assert c.saves == saved and interrupted == [(3, bool(saved))]


def test_loop_clips_gradients() -> None:
    c = _Counter()
    norms = []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        norms.append(float(orig(params, max_norm)))
        return norms[-1]

    loop = TrainLoop(c.opt, None, loss=lambda b: ((c.model(b) * 1e3).pow(2).mean(),) * 2, after_step=c.after,
                     grad_clip=1e-3, clip_params=c.model.parameters)
    try:
        torch.nn.utils.clip_grad_norm_ = spy
        loop.run(c.batches(), step=0, stop_at=1)
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
    assert len(norms) == 1
    assert math.sqrt(sum(float(p.grad.pow(2).sum()) for p in c.model.parameters())) <= 1e-3 * 1.0001


# --- step specs and learning-rate schedules (core) ------------------------------------------------


def test_step_specs_resolve_in_one_place() -> None:
    assert resolve_steps("end", "75%", total_steps=10, steps_per_epoch=None) == 8  # round(7.5) -> 8
    assert resolve_steps("end", "2ep", total_steps=10, steps_per_epoch=3) == 6
    with pytest.raises(ConfigError, match=r"lr_schedule.warmup_steps = '1ep' counts epochs"):
        resolve_steps("warmup_steps", "1ep", total_steps=10, steps_per_epoch=None, where="lr_schedule")
    with pytest.raises(ConfigError, match="method.end must be an integer step count.* got 0.5"):
        resolve_steps("end", 0.5, total_steps=10, steps_per_epoch=1)


def test_lr_schedule_formulas() -> None:
    cos = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    step = LRSchedule("step", milestones=(3, 6), gamma=0.5)
    assert [step(t) for t in (0, 3, 6)] == [1.0, 0.5, 0.25]
    assert LRSchedule("constant", warmup_steps=2)(0) == 0.5
    with pytest.raises(ConfigError, match=r"lr_schedule.name must be one of \['constant', 'cosine', 'step'\]; got 'linear'"):
        LRSchedule("linear")
    with pytest.raises(ConfigError, match="lr_schedule.warmup_steps must be >= 0; got -1"):
        LRSchedule("cosine", warmup_steps=-1)


def test_build_lr_scheduler_is_a_torch_scheduler_without_state_of_its_own() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_lr_scheduler(opt, LRSchedule("cosine", total_steps=4))
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [pytest.approx(0.5 * (1 + math.cos(math.pi * t / 4))) for t in range(4)]
    assert sched.state_dict()["lr_lambdas"] == [None]


def test_trainer_lr_schedule_from_a_recipe() -> None:
    data = load_dataset("mnist1d", n_train=400, n_test=100)
    t = Trainer(Recipe.from_dict(_recipe({"name": "dense"}, lr_schedule={"name": "step", "milestones": ["1ep"],
                                                                         "gamma": 0.5})),
                progress=False, dataset=data)
    t.fit()
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
