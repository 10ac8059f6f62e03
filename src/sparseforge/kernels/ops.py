"""The C++ sparse kernels registered as torch custom ops, and the calls materialized layers make.

Three ops are registered under the ``sparseforge`` namespace when this module is imported:

* ``torch.ops.sparseforge.csr_linear(rowptr, cols, vals, bias, in_features, x)`` -- ``y = x W^T + b``
  for a CSR weight;
* ``torch.ops.sparseforge.csr_spmm_t(rowptr, cols, vals, xt)`` -- ``Y^T = W X^T`` (convolutions);
* ``torch.ops.sparseforge.bsr_linear(browptr, bcols, vals, bias, in_features, x)`` -- block-sparse.

Each has a fake (meta) implementation giving the output shape, so ``torch.compile`` can trace a
materialized model with the op left opaque. In eager mode :func:`csr_linear`, :func:`csr_spmm_t`
and :func:`bsr_linear` call the extension directly: the op dispatcher costs ~10 us per call,
which matters at batch 1. The argument conventions are those of
:mod:`sparseforge.kernels.cpu_sparse`.
"""

from __future__ import annotations

import torch

from . import cpu_sparse

__all__ = ["csr_linear", "csr_spmm_t", "bsr_linear"]


def _ext():  # noqa: ANN202
    ext = cpu_sparse.load_kernel()
    if ext is None:  # materialize never picks a custom kernel without the extension; a reloaded model may
        raise RuntimeError(f"the sparseforge C++ kernel is not available: {cpu_sparse.kernel_unavailable_reason()}")
    return ext


@torch.library.custom_op("sparseforge::csr_linear", mutates_args=())
def _csr_linear_op(rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor | None,
                   in_features: int, x: torch.Tensor) -> torch.Tensor:
    return _ext().csr_linear(rowptr, cols, vals, bias, in_features, x)


@_csr_linear_op.register_fake
def _(rowptr, cols, vals, bias, in_features, x):  # noqa: ANN001
    return x.new_empty((x.shape[0], rowptr.shape[0] - 1))


@torch.library.custom_op("sparseforge::csr_spmm_t", mutates_args=())
def _csr_spmm_t_op(rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    return _ext().csr_spmm_t(rowptr, cols, vals, xt)


@_csr_spmm_t_op.register_fake
def _(rowptr, cols, vals, xt):  # noqa: ANN001
    return xt.new_empty((rowptr.shape[0] - 1, xt.shape[1]))


@torch.library.custom_op("sparseforge::bsr_linear", mutates_args=())
def _bsr_linear_op(browptr: torch.Tensor, bcols: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor | None,
                   in_features: int, x: torch.Tensor) -> torch.Tensor:
    return _ext().bsr_linear(browptr, bcols, vals, bias, in_features, x)


@_bsr_linear_op.register_fake
def _(browptr, bcols, vals, bias, in_features, x):  # noqa: ANN001
    return x.new_empty((x.shape[0], (browptr.shape[0] - 1) * vals.shape[1]))


def csr_linear(rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor | None,
               in_features: int, x: torch.Tensor) -> torch.Tensor:
    """``x W^T + b`` for a CSR weight: the custom op under ``torch.compile``, the extension directly otherwise."""
    if torch.compiler.is_compiling():
        return _csr_linear_op(rowptr, cols, vals, bias, in_features, x)
    return _ext().csr_linear(rowptr, cols, vals, bias, in_features, x)


def csr_spmm_t(rowptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """``W X^T`` for a CSR weight and ``X^T [in, M]`` fp32 (op under ``torch.compile``, direct otherwise)."""
    if torch.compiler.is_compiling():
        return _csr_spmm_t_op(rowptr, cols, vals, xt)
    return _ext().csr_spmm_t(rowptr, cols, vals, xt)


def bsr_linear(browptr: torch.Tensor, bcols: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor | None,
               in_features: int, x: torch.Tensor) -> torch.Tensor:
    """``x W^T + b`` for a block-sparse weight (op under ``torch.compile``, direct otherwise)."""
    if torch.compiler.is_compiling():
        return _bsr_linear_op(browptr, bcols, vals, bias, in_features, x)
    return _ext().bsr_linear(browptr, bcols, vals, bias, in_features, x)
