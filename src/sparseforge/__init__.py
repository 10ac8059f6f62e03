"""sparseforge: make neural networks sparse and keep them accurate.

The most used names are re-exported here::

    import sparseforge as sf
    method = sf.RigL(model, optimizer, sparsity=0.9, total_steps=10_000)
    print(sf.sparsity_report(model, example_input).table())
"""

__version__ = "0.1.0"

from .core import ER, ERK, NM, Block, Channel, Global, Uniform, Unstructured
from .export import compressed_size_report, load_compressed, save_compressed
from .errors import CheckpointError, ConfigError, LayerError, SparseforgeError
from .masking import Masking, Targets, finalize, load_masked_state_dict
from .methods import BDWP, GMP, IMP, MDGF, SDGF, SET, SRSTE, STE, Dense, RigL, SparsityMethod, StaticSparse, build_method
from .oneshot import prune_nm, prune_oneshot
from .report import Report, sparsity_report
from .structured import StructuredPruner, prune_structured

__all__ = [
    "__version__",
    "Unstructured", "NM", "Block", "Channel", "Uniform", "ER", "ERK", "Global",
    "SparseforgeError", "ConfigError", "LayerError", "CheckpointError",
    "Masking", "Targets", "finalize", "load_masked_state_dict",
    "SparsityMethod", "Dense", "StaticSparse", "GMP", "IMP", "SET", "RigL", "build_method",
    "STE", "SRSTE", "MDGF", "SDGF", "BDWP", "prune_nm", "prune_oneshot",
    "Report", "sparsity_report",
    "save_compressed", "load_compressed", "compressed_size_report",
    "StructuredPruner", "prune_structured",
]
