"""Layer rewrites for sparsity: Sparse Iso-FLOP Transformations (:mod:`.sparse_ift`)."""

from .sparse_ift import (
    KINDS,
    IsoFlopReport,
    PerLayer,
    SparseDoped,
    SparseFactorized,
    SparseIFTLayer,
    SparseParallel,
    SparseWide,
    ift_budgets,
    ift_layers,
    ift_method,
    ift_targets,
    iso_flop_report,
    sparse_ift,
    transform_layer,
)

__all__ = ["KINDS", "SparseIFTLayer", "SparseWide", "SparseParallel", "SparseFactorized", "SparseDoped",
           "transform_layer", "sparse_ift", "ift_layers", "ift_targets", "ift_budgets", "ift_method", "PerLayer",
           "IsoFlopReport", "iso_flop_report"]
