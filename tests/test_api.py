"""The public API's conventions, checked mechanically (docs/ARCHITECTURE.md, "API conventions").

* every verb of ``sparseforge.__all__`` returns a :class:`sparseforge.Result` with ``.model``,
  per-layer records that have a ``name``, and ``(name, reason)`` skipped pairs; every other
  public callable is classified, so a new export has to be placed before this file passes;
* one name for example inputs (``example_inputs``) and for layer selection (``targets``);
* the old keyword names and the old tuple/dict/Masking returns still work, with a warning.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pytest
import torch
from torch import nn

import sparseforge as sf
from sparseforge.errors import ConfigError
from sparseforge.results import Result


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


X = torch.randn(6, 8)


def _soup_models() -> list[nn.Module]:
    import copy

    a = _mlp()
    sf.prune_nm(a, "2:4")
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.01)  # a second ingredient with the same masks
    return [a, b]


def _saved(tmp_path):
    model = _mlp()
    sf.prune_nm(model, "2:4")
    path = tmp_path / "m.safetensors"
    sf.save_compressed(model, path)
    return path


#: verb -> a call on a tiny model (``tmp_path`` for the ones that read a file)
VERBS = {
    "prune_nm": lambda tmp: sf.prune_nm(_mlp(), "2:4"),
    "prune_oneshot": lambda tmp: sf.prune_oneshot(_mlp(), "magnitude", 0.5, calibration=None, progress=False),
    "prune_structured": lambda tmp: sf.prune_structured(_mlp(), X, 0.5),
    "StructuredPruner.prune": lambda tmp: sf.StructuredPruner(_mlp(), X, sparsity=0.5).prune(),
    "sparse_ift": lambda tmp: sf.sparse_ift(_mlp(), "parallel", 0.5),
    "add_lora": lambda tmp: sf.add_lora(_mlp(), rank=2),
    "quantize_weights": lambda tmp: sf.quantize_weights(_mlp(), bits=8),
    "materialize": lambda tmp: sf.materialize(_mlp(), kernel="dense"),
    "load_compressed": lambda tmp: sf.load_compressed(_mlp(), _saved(tmp)),
    "uniform_soup": lambda tmp: sf.uniform_soup(_soup_models()),
    "greedy_soup": lambda tmp: sf.greedy_soup(_soup_models(), lambda m: 0.0),
    "random_search": lambda tmp: sf.random_search(_mlp(), X, torch.randint(0, 4, (6,)), sparsity=0.5, samples=2),
}
#: verbs too slow to call here (they train): their return annotation is checked instead
SLOW_VERBS = {"sparse_model_soups"}
#: public callables that are not verbs, by kind (see the API conventions)
NOT_VERBS = {
    "measurement": {"sparsity_report", "iso_flop_report", "compressed_size_report"},
    "saver": {"save_compressed", "save_materialized"},
    "constructor": {"load_materialized", "build_method", "ift_method", "load_recipe"},
    "fold": {"finalize", "merge_lora"},
    "plain value": {"load_masked_state_dict", "lora_parameters", "recalibrate_bn"},
    "registration": {"register_method"},
    "runner": {"train_lm"},  # returns its run's metrics (a dict), as Trainer.fit returns a RunResult
}


def _public_callables() -> dict[str, object]:
    out = {}
    for name in sf.__all__:
        obj = getattr(sf, name)
        if inspect.isfunction(obj) or (callable(obj) and not inspect.isclass(obj)):
            out[name] = obj
    return out


def test_every_public_function_is_classified() -> None:
    classified = {v.split(".")[0] for v in VERBS} | SLOW_VERBS | set().union(*NOT_VERBS.values())
    functions = set(_public_callables())
    assert functions - classified == set(), "classify the new export in tests/test_api.py (a verb returns a Result)"
    assert classified - functions - {"StructuredPruner"} == set()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_returns_a_result(verb: str, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new spelling never warns
        result = VERBS[verb](tmp_path)
    assert isinstance(result, Result), f"{verb} returned {type(result).__name__}"
    assert isinstance(result.model, nn.Module)
    assert result.layers, f"{verb} reported no per-layer records"
    for record in result.layers:
        assert isinstance(record.name, str)
    assert result.layer(result.layers[0].name) is result.layers[0]
    assert all(isinstance(s, tuple) and len(s) == 2 for s in result.skipped)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.model = None  # type: ignore[misc]


def test_slow_verbs_are_annotated_with_a_result() -> None:
    import importlib

    for name in SLOW_VERBS:
        fn = getattr(sf, name)
        module = importlib.import_module(fn.__module__)
        returned = getattr(module, inspect.signature(fn).return_annotation)
        assert issubclass(returned, Result), name


def _signatures() -> dict[str, inspect.Signature]:
    out = {}
    for name in sf.__all__:
        obj = getattr(sf, name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr == "__init__" and dataclasses.is_dataclass(obj):
                    continue  # a record's fields (Report.layers) hold data, they select nothing
                if (attr == "__init__" or not attr.startswith("_")) and inspect.isfunction(member):
                    out[f"{name}.{attr}"] = inspect.signature(member)
        elif callable(obj):
            out[name] = inspect.signature(obj)
    return out


#: deprecated aliases still in a signature (removed in the next release)
DEPRECATED_PARAMETERS = {("materialize", "layers")}


def test_one_name_for_example_inputs_and_for_layer_selection() -> None:
    sigs = _signatures()
    assert len(sigs) > 40
    for where, sig in sigs.items():
        for p in sig.parameters:
            assert not p.startswith("example_input") or p == "example_inputs", f"{where}({p}=)"
            if where.startswith("Targets.") or (where, p) in DEPRECATED_PARAMETERS:
                continue  # Targets is the selection spec itself
            assert p not in ("include", "exclude", "layers"), f"{where}({p}=): select layers with targets="


def test_old_example_input_keyword_warns_and_gives_the_same_result() -> None:
    model = _mlp()
    new = sf.sparsity_report(model, example_inputs=X)
    with pytest.warns(DeprecationWarning, match=r"example_input=.*use example_inputs="):
        old = sf.sparsity_report(model, example_input=X)
    assert old.to_dict() == new.to_dict()
    with pytest.raises(ConfigError, match="pass example_inputs= only"):
        sf.sparsity_report(model, example_input=X, example_inputs=X)


def test_sparsity_report_measures_a_result_and_lists_its_skipped_layers() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(6, 8))
    result = sf.prune_nm(model, "2:4", indivisible="skip")
    assert [s[0] for s in result.skipped] == ["1.weight"]
    report = sf.sparsity_report(result)
    assert report.to_dict() == sf.sparsity_report(model, skipped=result.skipped).to_dict()


def test_old_tuple_returns_still_unpack_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"unpacking a MaterializeResult into \(model, layers\)"):
        model, decisions = sf.materialize(_mlp(), kernel="dense")
    assert isinstance(model, nn.Module) and len(decisions) == 3
    with pytest.warns(DeprecationWarning, match="StructuredResult"):
        small, report = sf.prune_structured(_mlp(), X, 0.5)
    assert report.params_after < report.params_before
    with pytest.warns(DeprecationWarning, match="GreedySoup"):
        soup, chosen = sf.greedy_soup(_soup_models(), lambda m: 0.0)
    assert chosen == [0, 1]
    with pytest.raises(TypeError, match="cannot be unpacked"):
        a, b = sf.prune_nm(_mlp(), "2:4")


def test_old_dict_and_masking_returns_still_read_with_a_warning() -> None:
    result = sf.quantize_weights(_mlp(), bits=8)
    with pytest.warns(DeprecationWarning, match="use result.weights"):
        assert result["0"] is result.weights["0"] and len(result) == 3
    lora = sf.add_lora(_mlp(), rank=2)
    with pytest.warns(DeprecationWarning, match="use result.adapters"):
        assert sorted(lora) == ["0", "2", "4"]
    pruned = sf.prune_nm(_mlp(), "2:4")
    with pytest.warns(DeprecationWarning, match="use result.masking.finalize"):
        model = pruned.finalize()
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    with pytest.raises(AttributeError):
        pruned.no_such_attribute  # noqa: B018


def test_materialize_selects_layers_with_targets() -> None:
    result = sf.materialize(_mlp(), kernel="dense", targets={"exclude": ["4"]})
    assert [d.name for d in result.layers] == ["0", "2"]
    with pytest.warns(DeprecationWarning, match="use targets="):
        old = sf.materialize(_mlp(), kernel="dense", layers=["0", "2"])
    assert [d.name for d in old.layers] == ["0", "2"]


def test_trainer_and_recipes_are_exported() -> None:
    from sparseforge.recipes import Recipe, load_recipe
    from sparseforge.train import Trainer

    assert sf.Trainer is Trainer and sf.load_recipe is load_recipe and sf.Recipe is Recipe
    assert {"Trainer", "load_recipe", "Recipe", "Result"} <= set(sf.__all__) <= set(dir(sf))
