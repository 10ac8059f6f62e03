"""Names that moved to smaller modules still import from where they were (issue 26, item 5).

Each entry lists the names an old module path exported before a split; they must still import
from it and be the very objects the new home defines (so ``isinstance`` checks, pickles and
monkeypatches that name the old path keep working).
"""

from __future__ import annotations

import importlib

import pytest

#: old module -> {name: new module that defines it}
MOVED: dict[str, dict[str, str]] = {
    "sparseforge.oneshot.methods": {
        **dict.fromkeys(["OneShotMethod", "oneshot_target", "resolve_target", "_few_threads"], "sparseforge.oneshot.base"),
        **dict.fromkeys(["Magnitude", "magnitude_prune"], "sparseforge.oneshot.magnitude"),
        **dict.fromkeys(["Wanda", "wanda_prune", "wanda_scores"], "sparseforge.oneshot.wanda"),
        **dict.fromkeys(["SparseGPT", "sparsegpt_prune", "sparsegpt_scores"], "sparseforge.oneshot.sparsegpt"),
        **dict.fromkeys(["DSnoT", "dsnot_prune", "MLP_LAYERS"], "sparseforge.oneshot.dsnot"),
        **dict.fromkeys(["METHOD_NAMES", "method_from_spec"], "sparseforge.oneshot.registry"),
    },
    "sparseforge.export.materialize": {
        **dict.fromkeys(["KERNELS", "DTYPES", "SparseLinear", "SparseConv2d", "_SparseWeight"],
                        "sparseforge.export.sparse_layers"),
        **dict.fromkeys(["MaterializeDecision", "format_materialize_decisions", "layer_candidates"],
                        "sparseforge.export.autotune"),
        **dict.fromkeys(["materialize", "MaterializeResult"], "sparseforge.export.materialize"),
    },
    "sparseforge.masking": {
        **dict.fromkeys(["Masking", "EXACT_OPTIMIZERS", "_ENGINE", "_check_optimizer_holds"], "sparseforge.masking.core"),
        **dict.fromkeys(["MASK_SUFFIX", "MaskedLayer", "mask_to", "find_masked_layers"], "sparseforge.masking.layers"),
        **dict.fromkeys(["Targets", "DEFAULT_TYPES", "is_default_target", "check_targets_match", "_matches"],
                        "sparseforge.masking.targets"),
        **dict.fromkeys(["apply_masks", "finalize", "load_masked_state_dict", "iter_parameters_with_masks"],
                        "sparseforge.masking.state"),
        **dict.fromkeys(["is_sharded", "full_tensor", "shard_like", "_reject_fsdp1"], "sparseforge.masking.distributed"),
        "is_hf_conv1d": "sparseforge.core.layout",
    },
}


#: public names an old module exported without listing them in ``__all__``
_NOT_IN_ALL = {"sparseforge.masking": ("EXACT_OPTIMIZERS", "DEFAULT_TYPES", "iter_parameters_with_masks")}


def _cases() -> list:
    return [pytest.param(old, name, new, id=f"{old}.{name}") for old, names in MOVED.items() for name, new in names.items()]


@pytest.mark.parametrize("old,name,new", _cases())
def test_old_path_still_imports_the_same_object(old: str, name: str, new: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_all_is_unchanged(old: str) -> None:
    """The old module's ``__all__`` still lists every public name it listed before the split."""
    public = {n for n in MOVED[old] if not n.startswith("_") and n not in _NOT_IN_ALL.get(old, ())}
    assert public <= set(importlib.import_module(old).__all__)


def test_package_exports_resolve_to_the_defining_modules() -> None:
    """``sparseforge.oneshot.X`` is the object of X's own module (the lazy table points at the split modules)."""
    import sparseforge.oneshot as pkg

    for name, new in MOVED["sparseforge.oneshot.methods"].items():
        if not name.startswith("_"):
            assert getattr(pkg, name) is getattr(importlib.import_module(new), name), name


def test_export_package_names_are_the_defining_modules_objects() -> None:
    import sparseforge.export as pkg

    for name, new in MOVED["sparseforge.export.materialize"].items():
        if hasattr(pkg, name) and not name.startswith("_") and name != "materialize":
            assert getattr(pkg, name) is getattr(importlib.import_module(new), name), name
    assert pkg.materialize is importlib.import_module("sparseforge.export.materialize").materialize
