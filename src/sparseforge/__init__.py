"""sparseforge: make neural networks sparse and keep them accurate.

The most used names are re-exported here::

    import sparseforge as sf
    method = sf.RigL(model, optimizer, sparsity=0.9, total_steps=10_000)
    print(sf.sparsity_report(model, example_input).table())
"""

__version__ = "0.1.0"

from .core import ER, ERK, NM, Block, Channel, Global, Uniform, Unstructured
from .export import compressed_size_report, load_compressed, materialize, quantize_weights, save_compressed
from .errors import CheckpointError, ConfigError, LayerError, SparseforgeError
from .lora import add_lora, lora_parameters, merge_lora
from .masking import Masking, Targets, finalize, load_masked_state_dict
from .methods import BDWP, GMP, IMP, MDGF, SDGF, SET, SRSTE, STE, Dense, RigL, SparsityMethod, StaticSparse, build_method
from .oneshot import prune_nm, prune_oneshot
from .report import Report, sparsity_report
from .search import random_search
from .soups import greedy_soup, recalibrate_bn, sparse_model_soups, uniform_soup
from .transforms import ift_method, iso_flop_report, sparse_ift
from .structured import StructuredPruner, prune_structured

__all__ = [
    "__version__",
    "Unstructured", "NM", "Block", "Channel", "Uniform", "ER", "ERK", "Global",
    "SparseforgeError", "ConfigError", "LayerError", "CheckpointError",
    "Masking", "Targets", "finalize", "load_masked_state_dict",
    "SparsityMethod", "Dense", "StaticSparse", "GMP", "IMP", "SET", "RigL", "build_method",
    "STE", "SRSTE", "MDGF", "SDGF", "BDWP", "prune_nm", "prune_oneshot",
    "Report", "sparsity_report",
    "save_compressed", "load_compressed", "compressed_size_report", "materialize", "quantize_weights",
    "add_lora", "lora_parameters", "merge_lora",
    "StructuredPruner", "prune_structured",
    "sparse_ift", "ift_method", "iso_flop_report",
    "sparse_model_soups", "uniform_soup", "greedy_soup", "recalibrate_bn",
    "random_search",
]
