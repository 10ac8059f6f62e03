"""Recipe validation: every shipped recipe loads; bad recipes fail before training with clear messages."""

from pathlib import Path

import pytest
import yaml

from sparseforge.errors import ConfigError
from sparseforge.recipes import Recipe, load_recipe, method_parameters, resolve_steps

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_every_method_has_a_recipe() -> None:
    names = {load_recipe(p).method["name"] for p in RECIPES}
    assert {"dense", "static", "snip", "gmp", "imp", "set", "rigl"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_validate(path: Path) -> None:
    r = load_recipe(path)
    assert Recipe.from_dict(r.to_dict()) == r


def _write(tmp_path: Path, d: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize(
    "recipe, words",
    [
        ({"method": {"name": "rigl", "sparsity": 0.9}, "epoch": 3}, ["epoch", "allowed"]),
        ({"method": {"name": "rigle", "sparsity": 0.9}}, ["rigle", "available"]),
        ({"method": {"name": "rigl", "sparsity": 0.9, "drop_fractoin": 0.3}}, ["drop_fractoin", "rigl"]),
        ({"method": {"name": "rigl"}}, ["sparsity"]),
        ({"method": {"name": "gmp", "sparsity": 0.9, "end": "75 percent"}}, ["end", "75 percent"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "optimizer": {"name": "lion", "lr": 1}}, ["optimizer", "lion"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "optimizer": {"name": "sgd"}}, ["lr"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.9]}}, ["betas"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "data": {"name": "auto", "batchsize": 3}}, ["batchsize"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "epochs": 0}, ["epochs", "0"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "targets": {"exclud": ["fc1"]}}, ["exclud"]),
        ({"method": {"name": "rigl", "sparsity": 0.9}, "lr_schedule": {"name": "cosine", "gamma": 0.1}}, ["gamma"]),
        ({"seed": 0}, ["method"]),
    ],
)
def test_bad_recipes_are_rejected_with_the_key_named(tmp_path: Path, recipe: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, recipe))
    for w in words:
        assert w in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


def test_resolve_steps_units() -> None:
    assert resolve_steps("end", 7, total_steps=1000, steps_per_epoch=50) == 7
    assert resolve_steps("end", "75%", total_steps=1000, steps_per_epoch=50) == 750
    assert resolve_steps("end", "2ep", total_steps=1000, steps_per_epoch=50) == 100
    assert resolve_steps("end", "0.5ep", total_steps=1000, steps_per_epoch=50) == 25
    with pytest.raises(ConfigError, match="end"):
        resolve_steps("end", True, total_steps=1000, steps_per_epoch=50)


def test_method_parameters_cover_the_class_hierarchy() -> None:
    p = method_parameters("rigl")
    assert {"sparsity", "drop_fraction", "update_interval", "allocation", "pattern", "seed", "end"} <= p
    assert "data" not in method_parameters("snip")
    assert "score" in method_parameters("snip")
