"""sparseforge: make neural networks sparse and keep them accurate.

The most used names are re-exported here::

    import sparseforge as sf
    method = sf.RigL(model, optimizer, sparsity=0.9, total_steps=10_000)
    print(sf.sparsity_report(model, example_inputs).table())

    result = sf.prune_nm(model, "2:4")      # every verb returns a Result: .model, .layers, .skipped, .report

The re-exports are lazy (imported on first use), so ``import sparseforge`` and the command
line's ``--help`` start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

#: re-exported name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["ER", "ERK", "NM", "Block", "Channel", "Global", "Uniform", "Unstructured"], "core"),
    **dict.fromkeys(["compressed_size_report", "load_compressed", "load_materialized", "materialize",
                     "quantize_weights", "save_compressed", "save_materialized"], "export"),
    **dict.fromkeys(["CheckpointError", "ConfigError", "LayerError", "SparseforgeError"], "errors"),
    **dict.fromkeys(["add_lora", "lora_parameters", "merge_lora"], "lora"),
    **dict.fromkeys(["Masking", "Targets", "finalize", "load_masked_state_dict"], "masking"),
    **dict.fromkeys(["BDWP", "GMP", "IMP", "MDGF", "SDGF", "SET", "SRSTE", "STE", "Dense", "RigL", "SparsityMethod",
                     "StaticSparse", "build_method", "register_method"], "methods"),
    "Trainer": "train", **dict.fromkeys(["LMRecipe", "train_lm"], "lm"),
    **dict.fromkeys(["prune_nm", "prune_oneshot"], "oneshot"),
    **dict.fromkeys(["Report", "iso_flop_report", "sparsity_report"], "report"),
    **dict.fromkeys(["Recipe", "load_recipe"], "recipes"),
    "Result": "results",
    "random_search": "search",
    **dict.fromkeys(["greedy_soup", "recalibrate_bn", "sparse_model_soups", "uniform_soup"], "soups"),
    **dict.fromkeys(["ift_method", "sparse_ift"], "transforms"),
    **dict.fromkeys(["StructuredPruner", "prune_structured"], "structured"),
}
_SUBMODULES = frozenset({
    "bench", "cli", "core", "data", "demo", "errors", "experiments", "export", "kernels", "lm", "lora", "masking",
    "methods", "models", "oneshot", "recipes", "report", "runners", "search", "soups", "structured", "text", "train",
    "transforms", "utils", "parallel", "structured_train", "pretrained", "commands", "tables", "results",
})
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), _SUBMODULES)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .core import ER, ERK, NM, Block, Channel, Global, Uniform, Unstructured
    from .errors import CheckpointError, ConfigError, LayerError, SparseforgeError
    from .export import (compressed_size_report, load_compressed, load_materialized, materialize, quantize_weights,
                         save_compressed, save_materialized)
    from .lora import add_lora, lora_parameters, merge_lora
    from .masking import Masking, Targets, finalize, load_masked_state_dict
    from .lm import LMRecipe, train_lm
    from .methods import (BDWP, GMP, IMP, MDGF, SDGF, SET, SRSTE, STE, Dense, RigL, SparsityMethod, StaticSparse,
                          build_method, register_method)
    from .oneshot import prune_nm, prune_oneshot
    from .recipes import Recipe, load_recipe
    from .report import Report, iso_flop_report, sparsity_report
    from .results import Result
    from .search import random_search
    from .soups import greedy_soup, recalibrate_bn, sparse_model_soups, uniform_soup
    from .structured import StructuredPruner, prune_structured
    from .train import Trainer
    from .transforms import ift_method, sparse_ift

__all__ = [
    "__version__",
    "Unstructured", "NM", "Block", "Channel", "Uniform", "ER", "ERK", "Global",
    "SparseforgeError", "ConfigError", "LayerError", "CheckpointError",
    "Masking", "Targets", "finalize", "load_masked_state_dict",
    "SparsityMethod", "Dense", "StaticSparse", "GMP", "IMP", "SET", "RigL", "build_method", "register_method",
    "Trainer", "Recipe", "load_recipe", "LMRecipe", "train_lm",
    "STE", "SRSTE", "MDGF", "SDGF", "BDWP", "prune_nm", "prune_oneshot",
    "Report", "sparsity_report",
    "save_compressed", "load_compressed", "compressed_size_report", "materialize", "quantize_weights",
    "save_materialized", "load_materialized",
    "add_lora", "lora_parameters", "merge_lora",
    "StructuredPruner", "prune_structured",
    "sparse_ift", "ift_method", "iso_flop_report",
    "sparse_model_soups", "uniform_soup", "greedy_soup", "recalibrate_bn",
    "random_search",
    "Result",
]
