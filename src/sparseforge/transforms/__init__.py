"""Layer rewrites for sparsity: Sparse Iso-FLOP Transformations (:mod:`.sparse_ift`).

The iso-FLOP check of a transformed model is a report: :func:`sparseforge.report.iso_flop_report`.
"""

from .sparse_ift import (
    KINDS,
    PerLayer,
    SparseDoped,
    SparseFactorized,
    IFTLayer,
    SparseIFTLayer,
    SparseIFTResult,
    SparseParallel,
    SparseWide,
    ift_budgets,
    ift_layers,
    ift_method,
    ift_targets,
    sparse_ift,
    transform_layer,
)

__all__ = ["KINDS", "SparseIFTLayer", "SparseWide", "SparseParallel", "SparseFactorized", "SparseDoped",
           "transform_layer", "sparse_ift", "SparseIFTResult", "IFTLayer", "ift_layers", "ift_targets", "ift_budgets", "ift_method", "PerLayer"]
