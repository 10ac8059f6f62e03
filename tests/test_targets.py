"""One sparsity target parsed once; one numeric validator; recipes validated whole at load; per-layer overrides."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import sparseforge.data
import sparseforge.runners.trainer
from sparseforge.core import NM, Block, Target, Unstructured, num_pruned, parse_target, parse_target_text
from sparseforge.errors import ConfigError, LayerError, check_fraction, check_int, check_number, check_sparsity
from sparseforge.methods import GMP, IMP, SET, STE, RigL, StaticSparse
from sparseforge.recipes import Recipe, load_recipe

BAD_TARGETS = [float("nan"), float("inf"), -0.1, 1.0, True, False, "0.5", "abc", "4:4", "0:4", "2:2", NM(4, 4),
               None, [0.5], torch.tensor([0.5]), 124]


# ---------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("value, expected", [
    (0.5, Target(Unstructured(), 0.5)), (0, Target(Unstructured(), 0.0)), (np.float32(0.25), Target(Unstructured(), 0.25)),
    (np.float64(0.75), Target(Unstructured(), 0.75)), (torch.tensor(0.5), Target(Unstructured(), 0.5)),
    ("2:4", Target(NM(2, 4))), (" 1:8 ", Target(NM(1, 8))), (NM(2, 4), Target(NM(2, 4)))])
def test_parse_target_accepts_the_documented_spellings(value, expected) -> None:
    t = parse_target(value)
    assert t == expected
    assert t.sparsity == (1 - t.pattern.n / t.pattern.m if t.is_nm else float(value))


def test_a_target_is_passed_on_as_the_same_object() -> None:
    t = parse_target("2:4")
    assert parse_target(t) is t
    assert str(t) == "2:4" and str(parse_target(0.9)) == "0.9"
    assert parse_target(0.5, pattern="block:1x4") == Target(Block(1, 4), 0.5)
    with pytest.raises(AttributeError):
        t.sparsity = 0.1  # frozen


@pytest.mark.parametrize("value", BAD_TARGETS, ids=repr)
def test_bad_targets_are_refused_with_one_message(value) -> None:
    with pytest.raises(ConfigError, match=r"^sparsity") as e:
        parse_target(value)
    assert any(w in str(e.value) for w in ("N < M", "fraction of zeros in [0, 1)", "N:M pattern: n must be"))


def test_string_numbers_and_yaml_base60_get_a_hint() -> None:
    with pytest.raises(ConfigError, match="pass the number 0.5"):
        parse_target("0.5")
    with pytest.raises(ConfigError, match=r"unquoted 2:4 in YAML .* base-60 number 124"):
        parse_target(yaml.safe_load("s: 2:4")["s"])
    assert parse_target_text("0.5") == Target(Unstructured(), 0.5)
    assert parse_target_text("2:4") == Target(NM(2, 4))
    with pytest.raises(ConfigError, match="--sparsity"):
        parse_target_text("half")
    with pytest.raises(ConfigError, match="--sparsity"):
        parse_target_text("nan")


def test_conflicting_pattern_and_sparsity() -> None:
    with pytest.raises(ConfigError, match="conflicts"):
        parse_target(0.3, pattern="2:4")
    assert parse_target(0.5, pattern="2:4") == Target(NM(2, 4))
    with pytest.raises(ConfigError, match="cannot be combined"):
        parse_target("2:4", pattern="block:1x4")


# ---------------------------------------------------------------------------------------------- check_number
def test_check_number_bounds_types_and_messages() -> None:
    assert check_number(np.float32(0.5), "x") == 0.5
    assert check_number(torch.tensor(3), "n", integer=True) == 3
    assert check_number(np.int64(3), "n", integer=True, minimum=1) == 3
    for bad in (float("nan"), float("inf"), "1", True, None, [1]):
        with pytest.raises(ConfigError, match=r"^x must be a finite number; got"):
            check_number(bad, "x")
    with pytest.raises(ConfigError, match=r"n must be an integer >= 1; got 2.0"):
        check_number(2.0, "n", integer=True, minimum=1)
    with pytest.raises(ConfigError, match=r"lr must be a number > 0; got 'fast'"):
        check_number("fast", "lr", minimum=0, min_open=True)
    with pytest.raises(ConfigError, match=r"lr must be > 0; got 0"):
        check_number(0, "lr", minimum=0, min_open=True)
    with pytest.raises(ConfigError, match=r"m must be in \[0, 1\) \(a note\); got 1.0"):
        check_number(1.0, "m", minimum=0, maximum=1, max_open=True, note=" (a note)")
    with pytest.raises(ConfigError, match=r"k must be <= 3; got 4"):
        check_number(4, "k", integer=True, maximum=3)
    # the older validators are thin uses of it
    with pytest.raises(ConfigError, match="sparsity must be a number in"):
        check_sparsity(float("nan"))
    with pytest.raises(ConfigError, match=r"f must be a number in \[0, 1\]; got inf"):
        check_fraction(math.inf, "f")
    with pytest.raises(ConfigError, match="seed must be an integer"):
        check_int(1.5, "seed")


# ---------------------------------------------------------------------------------------------- one name for N:M
def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_nm_is_a_sparsity_everywhere_and_pattern_is_a_deprecated_alias() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = StaticSparse(mlp(), sparsity="2:4", score="magnitude", allocation="uniform")
        b = STE(mlp(), sparsity=NM(2, 4))
    with pytest.warns(DeprecationWarning, match="sparsity='2:4'"):
        c = STE(mlp(), pattern="2:4")
    assert a.target == b.target == c.target == Target(NM(2, 4))
    assert STE(mlp()).target == Target(NM(2, 4))  # N:M training defaults to 2:4
    with pytest.raises(ConfigError, match="N < M"):
        StaticSparse(mlp(), sparsity="4:4")
    with pytest.raises(ConfigError, match="STE trains an N:M pattern"):
        STE(mlp(), sparsity=0.5)
    for value in (float("nan"), "0.5", True):
        with pytest.raises(ConfigError, match="sparsity must be"):
            RigL(mlp(), sparsity=value, end=10)


# ---------------------------------------------------------------------------------------------- validate_params
@pytest.mark.parametrize("cls, params, words", [
    (RigL, {"sparsity": 0.9, "drop_fraction": 1.5}, ["drop_fraction", "1.5"]),
    (RigL, {"sparsity": 0.9, "drop_noise": float("nan")}, ["drop_noise", "nan"]),
    (RigL, {"sparsity": 0.9, "decay": "linear", "end": 10}, ["decay", "linear"]),
    (RigL, {"sparsity": 0.9, "end": 5, "begin": 5}, ["end must be > begin"]),
    (RigL, {"sparsity": 0.9, "end": 10, "allocation": "erx"}, ["allocation", "erx"]),
    (SET, {"sparsity": 0.9, "zeta": -1}, ["zeta", "-1"]),
    (GMP, {"sparsity": 0.9, "exponent": 0}, ["exponent", "0"]),
    (GMP, {"sparsity": 0.9, "frequency": 2.5}, ["frequency", "2.5"]),
    (GMP, {"sparsity": "2:4"}, ["N:M"]),
    (IMP, {"sparsity": 0.9, "fraction": 1.0}, ["fraction", "1.0"]),
    (IMP, {"sparsity": 0.9, "steps_per_round": 10, "rewind_step": 10}, ["rewind_step", "10"]),
    (STE, {"sparsity": "3:2"}, ["3"]),
    (STE, {"indivisible": "trim"}, ["indivisible", "trim"]),
    (STE, {"lambda_w": 1}, ["unknown parameter", "lambda_w"]),
    (StaticSparse, {"sparsity": 0.5, "score": "snap"}, ["score", "snap"]),
    (StaticSparse, {"sparsity": 0.5, "seed": 1.5}, ["seed", "1.5"]),
    (StaticSparse, {"sparsity": 0.5, "overrides": {"fc": "2:4"}}, ["overrides", "2:4"]),
    (StaticSparse, {"sparsity": 0.5, "allocation": "global", "overrides": {"0": 0.1}}, ["overrides", "global"]),
])
def test_validate_params_without_a_model(cls, params, words) -> None:
    with pytest.raises(ConfigError) as e:
        cls.validate_params(params)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_validate_params_accepts_good_values_and_step_specs() -> None:
    RigL.validate_params({"sparsity": 0.9, "end": "75%", "update_interval": "1ep"})
    GMP.validate_params({"sparsity": 0.9, "begin": 0, "end": "75%"})
    IMP.validate_params({"schedule": [0.5, 0.8], "steps_per_round": 10})
    STE.validate_params({})


# ---------------------------------------------------------------------------------------------- recipes
def _write(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a dataset was loaded before the recipe was validated")

    monkeypatch.setattr(sparseforge.data, "load_dataset", refuse)
    monkeypatch.setattr(sparseforge.runners.trainer, "load_dataset", refuse)


M = {"name": "rigl", "sparsity": 0.9}


@pytest.mark.parametrize("recipe, words", [
    ({"method": {"name": "rigl", "sparsity": float("nan")}}, ["method (rigl)", "sparsity", "nan"]),
    ({"method": {"name": "rigl", "sparsity": "0.5"}}, ["sparsity", "'0.5'"]),
    ({"method": {"name": "rigl", "sparsity": 1.2}}, ["sparsity", "1.2"]),
    ({"method": {"name": "ste", "sparsity": "4:4"}}, ["sparsity", "4:4", "N < M"]),
    ({"method": {"name": "ste", "sparsity": "2:x"}}, ["sparsity", "2:x"]),
    ({"method": {"name": "rigl", "sparsity": 0.9, "drop_fraction": 2}}, ["drop_fraction", "2"]),
    ({"method": {"name": "rigl", "sparsity": 0.9, "allocation": "erdos"}}, ["allocation", "erdos"]),
    ({"method": {"name": "rigl", "sparsity": 0.9, "update_interval": 0}}, ["update_interval", "0"]),
    ({"method": {"name": "gmp", "sparsity": 0.9, "end": -3}}, ["end", "-3"]),
    ({"method": {"name": "imp", "sparsity": 0.9, "score": "grad"}}, ["score", "grad"]),
    ({"method": {"name": "mdgf", "decay_coef": 0}}, ["decay_coef", "0"]),
    ({"method": {"name": "sdgf", "kind": "coarse"}}, ["kind", "coarse"]),
    ({"method": {**M, "overrides": {"fc1": 1.0}}}, ["overrides['fc1']", "1.0"]),
    ({"method": M, "optimizer": {"name": "sgd", "lr": float("nan")}}, ["optimizer.lr", "nan"]),
    ({"method": M, "optimizer": {"name": "sgd", "lr": 0.1, "nesterov": "yes"}}, ["optimizer.nesterov", "yes"]),
    ({"method": M, "lr_schedule": {"name": "step", "gamma": 2}}, ["lr_schedule.gamma", "2"]),
    ({"method": M, "lr_schedule": {"name": "step", "milestones": ["half"]}}, ["lr_schedule.milestones", "half"]),
    ({"method": M, "lr_schedule": {"name": "cosine", "warmup_steps": -1}}, ["lr_schedule.warmup_steps", "-1"]),
    ({"method": M, "data": {"name": "cifar"}}, ["data.name", "cifar"]),
    ({"method": M, "data": {"name": "auto", "n_train": 0}}, ["data.n_train", "0"]),
    ({"method": M, "model": {"name": "resnet"}}, ["resnet"]),
    ({"method": M, "model": {"name": "lenet300100", "width": 3}}, ["width", "model"]),
    ({"method": M, "targets": {"first_layer": "off"}}, ["first_layer", "off"]),
])
def test_bad_recipes_fail_at_load_before_any_data(tmp_path: Path, no_data, recipe, words) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, recipe))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_nm_recipe_spelled_as_sparsity_and_unquoted_yaml_hint(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("method: {name: ste, sparsity: '1:4'}\n")
    assert load_recipe(p).method["sparsity"] == "1:4"
    p.write_text("method: {name: ste, sparsity: 2:4}\n")
    with pytest.raises(ConfigError, match="quote N:M"):
        load_recipe(p)


# ---------------------------------------------------------------------------------------------- overrides
def _zeros(method) -> dict[str, int]:
    return {l.name: int((~l.mask).sum()) for l in method.layers}


def test_overrides_fix_layers_and_the_allocation_splits_the_rest() -> None:
    m = StaticSparse(mlp(), sparsity=0.75, allocation="uniform", overrides={"4": 0.5, "0": 0.0})
    assert m.layer_sparsity == [0.0, 0.75, 0.5]
    assert _zeros(m) == {"0": 0, "2": num_pruned(0.75, 256), "4": num_pruned(0.5, 64)}
    # ERK over the free layers at the global sparsity; the fixed layer exact
    m = StaticSparse(mlp(), sparsity=0.8, allocation="erk", overrides={"2": 0.5})
    assert m.layer_sparsity[1] == 0.5
    free = [0, 2]
    sizes = [128, 64]
    kept = sum((1 - m.layer_sparsity[i]) * n for i, n in zip(free, sizes))
    assert abs(kept - 0.2 * sum(sizes)) < 1e-6
    assert _zeros(m)["2"] == 128
    # regular expressions, full match
    m = RigL(mlp(), sparsity=0.5, allocation="uniform", end=10, overrides={"[02]": 0.25})
    assert m.layer_sparsity == [0.25, 0.25, 0.5]


def test_overrides_with_gmp_imp_and_set_reach_exact_per_layer_counts() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gmp = GMP(model, opt, sparsity=0.5, begin=0, end=4, frequency=1, allocation="uniform", overrides={"4": 0.25})
    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert _zeros(gmp) == {"0": 64, "2": 128, "4": 16}
    imp = IMP(mlp(), sparsity=0.5, steps_per_round=2, fraction=0.5, allocation="uniform", overrides={"0": 0.25})
    assert imp.layer_sparsity == [0.25, 0.5, 0.5]
    s = SET(mlp(), sparsity=0.5, update_interval=2, allocation="uniform", overrides={"2": 0.75})
    assert _zeros(s) == {"0": 64, "2": 192, "4": 32}


def test_overrides_refused_where_they_make_no_sense() -> None:
    with pytest.raises(ConfigError, match="matches no masked layer"):
        StaticSparse(mlp(), sparsity=0.5, overrides={"fc9": 0.1})
    with pytest.raises(ConfigError, match="matches overrides"):
        StaticSparse(mlp(), sparsity=0.5, overrides={"0": 0.1, "[0-2]": 0.2})
    with pytest.raises(ConfigError, match="N:M fixes every layer"):
        STE(mlp(), overrides={"0": 0.1})
    with pytest.raises(ConfigError, match="global allocation"):
        StaticSparse(mlp(), sparsity=0.5, allocation="global", overrides={"0": 0.1})
    with pytest.raises(LayerError, match="4.weight: its override"):
        StaticSparse(mlp(), sparsity=0.5, allocation="uniform", overrides={"4": 0.999})


def test_overrides_in_a_recipe_reach_the_method(tmp_path: Path) -> None:
    r = Recipe.from_dict({"method": {"name": "static", "sparsity": 0.9, "overrides": {"fc3": 0.5}}})
    assert r.method["overrides"] == {"fc3": 0.5}


def test_recipe_overrides_train_to_exact_counts() -> None:
    from sparseforge.data import load_dataset
    from sparseforge.models import build_model
    from sparseforge.train import Trainer

    data = load_dataset("mnist1d", num_samples=200, n_train=64, n_test=32)
    names = [n for n, m in build_model("mlp1d", data).named_modules() if isinstance(m, nn.Linear)]
    r = Recipe.from_dict({"name": "ov", "epochs": 1, "model": {"name": "mlp1d"},
                          "data": {"name": "mnist1d", "batch_size": 32, "n_train": 64, "n_test": 32},
                          "method": {"name": "rigl", "sparsity": 0.9, "allocation": "uniform", "overrides": {names[-1]: 0.5}}})
    t = Trainer(r, progress=False, dataset=data)
    t.fit()
    for layer in t.method.layers:
        want = 0.5 if layer.name == names[-1] else 0.9
        assert int((~layer.mask).sum()) == num_pruned(want, layer.mask.numel())
