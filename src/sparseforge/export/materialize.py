"""Materialize a sparse model: swap masked layers for modules that execute their sparsity on CPU.

A masked (or zero-containing) ``nn.Linear`` or ``nn.Conv2d`` computes with its zeros: the
sparsity is *simulated*. :func:`materialize` replaces each eligible layer by a
:class:`SparseLinear` or :class:`SparseConv2d` that stores only the kept weights and runs one of
these kernels:

* ``"custom"`` -- sparseforge's C++/OpenMP kernel (:mod:`sparseforge.kernels.cpu_sparse`): CSR
  with uint16 column indices, ``Y^T = W X^T`` with ``X^T`` laid out ``[in, batch]`` so every
  nonzero does a broadcast-FMA over a contiguous batch row; a gather-based SpMV at batch 1.
  fp32 and bf16 inputs (bf16 accumulates in fp32).
* ``"custom-bsr"`` -- the same C++ extension for block-sparse Linear weights (block rows a
  multiple of 8): each ``X^T`` segment is loaded once for 8 output rows, so the product is
  FMA-bound instead of bound by loading ``X^T`` rows; dense dot products at batch 1.
* ``"torch-csr"`` -- ``torch.sparse.mm(W_csr, x.T)`` (this orientation measured 2-4x faster
  than ``F.linear(x, W_csr)``); fp32 only (torch has no bf16 CSR matmul on CPU).
* ``"torch-bsr"`` -- the same with a block-sparse (BSR) weight, offered when the weight's zeros
  form blocks (block sizes from ``block_sizes``, at most ``max_block_fill`` stored elements per
  kept weight); fp32 only.
* ``"dense"`` -- the layer is left as it is.

Per layer, a capability check (layer type, dtype, shape, groups, pattern) lists the kernels that
can run it; each candidate's output is checked against the masked dense layer (relative error
at most ``rtol``), and a short micro-benchmark (interleaved rounds, median) at every batch size
in ``batch_sizes`` picks the kernel with the best *worst-case* speedup over the dense layer.
A layer is converted only if that worst case is at least ``min_speedup``, so no converted layer
is slower than dense at any benchmarked batch size; otherwise it stays dense and its
:class:`MaterializeDecision` says why. ``kernel="custom"`` (etc.) forces one kernel on every
layer that can run it (for tests and experiments), skipping the benchmark.

Timings depend on the machine and on ``torch.get_num_threads()``: run :func:`materialize` on the
machine and with the thread count that will serve the model.

This module holds the layers, the capability check, the micro-benchmark and the orchestration;
the C++ kernels' torch custom-op registration lives in :mod:`sparseforge.kernels.ops`, and saving
and loading a materialized model (safetensors + JSON, no pickle) in
:mod:`sparseforge.export.materialized_io`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import probe
from ..errors import ConfigError, LayerError, check_int, check_number
from ..masking import Targets
from ..results import Result, renamed_keywords
from ..kernels import cpu_sparse
from ..kernels.ops import _bsr_linear_op, _csr_linear_op, _csr_spmm_t_op  # noqa: F401 (registered ops, old import path)
from ..kernels.ops import bsr_linear as _custom_bsr_linear
from ..kernels.ops import csr_linear as _custom_linear
from ..kernels.ops import csr_spmm_t as _custom_spmm_t
from ..masking import MASK_SUFFIX
from ..tables import text_table

__all__ = [
    "KERNELS",
    "DTYPES",
    "SparseLinear",
    "SparseConv2d",
    "MaterializeDecision",
    "materialize",
    "format_materialize_decisions",
    "layer_candidates",
    "MaterializeResult",
]

#: kernel names, in the order they are tried
KERNELS: tuple[str, ...] = ("dense", "torch-csr", "torch-bsr", "custom", "custom-bsr")
#: activation / weight dtypes materialized layers run in
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
_UINT16_LIMIT = 65536  # columns addressable by uint16 indices


# ------------------------------------------------------------------------------ storage
def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS[1:]:
        raise ConfigError(f"kernel must be one of {list(KERNELS[1:])} for a materialized layer; got {kernel!r}")
    return kernel


def _sparse_mm(layer: "_SparseWeight", xt: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(layer._torch_sparse(), xt)


_EAGER: dict[str, Callable[..., torch.Tensor]] = {}


def _eager_sparse_mm() -> Callable[..., torch.Tensor]:
    """``_sparse_mm`` behind ``torch.compiler.disable`` (torch's CSR/BSR tensors are not traceable).

    Wrapped on first use, not at import: ``torch.compiler.disable`` imports ``torch._dynamo``,
    which costs about half a second. Layers call this when they are built or unpickled, so the
    wrapper exists before any ``torch.compile`` trace reaches a forward.
    """
    fn = _EAGER.get("fn")
    if fn is None:
        fn = _EAGER["fn"] = torch.compiler.disable(
            _sparse_mm, reason="torch sparse CSR/BSR tensors are not traceable; this product runs eagerly")
    return fn


class _SparseWeight(nn.Module):
    """Shared storage and forward helpers of :class:`SparseLinear` and :class:`SparseConv2d`.

    The weight, viewed as a matrix ``[out, in * kernel elements]``, is held in plain buffers (so
    the module deep-copies, pickles and saves like any other): ``crow_indices`` and
    ``col_indices`` (CSR for ``custom``/``torch-csr``, block-CSR for ``torch-bsr``) and ``values``.
    """

    #: tells :mod:`sparseforge.report` that this layer executes its sparsity
    sparseforge_materialized = True

    def _init_storage(self, w2d: torch.Tensor, keep: torch.Tensor, kernel: str, dtype: torch.dtype,
                      block_size: tuple[int, int] | None) -> None:
        self.kernel = _check_kernel(kernel)
        if kernel.startswith("torch-"):
            _eager_sparse_mm()
        self.dtype = dtype
        self.weight_shape = tuple(int(s) for s in self.weight_shape)
        self.nnz = int(keep.sum())
        rows, cols = w2d.shape
        # kept positions that hold an exact zero stay stored: the structure is the mask. Values
        # are rounded to the layer's dtype first (a bf16 layer computes with bf16 weights, like
        # the dense bf16 model) and held in fp32, which the kernels read.
        w2d = torch.where(keep, w2d, torch.zeros((), dtype=w2d.dtype)).to(dtype)
        if kernel in ("torch-bsr", "custom-bsr"):
            if block_size is None or rows % block_size[0] or cols % block_size[1]:
                raise LayerError(f"{kernel} needs a block size dividing the weight {tuple(w2d.shape)}; got {block_size}")
            if kernel == "custom-bsr" and block_size[0] % 8:
                raise LayerError(f"custom-bsr needs block rows that are a multiple of 8; got {block_size}")
            bh, bw = block_size
            blocks = keep.reshape(rows // bh, bh, cols // bw, bw).any(dim=3).any(dim=1)
            dense_blocks = w2d.reshape(rows // bh, bh, cols // bw, bw).permute(0, 2, 1, 3)
            crow = torch.zeros(rows // bh + 1, dtype=torch.int64)
            torch.cumsum(blocks.sum(dim=1), 0, out=crow[1:])
            col = blocks.nonzero()[:, 1]
            vals = dense_blocks[blocks].to(torch.float32).contiguous()
            self.block_size = (bh, bw)
            # torch's BSR wants int32 (or int64) for both index tensors; the C++ kernel int64 rows
            self.register_buffer("crow_indices", crow if kernel == "custom-bsr" else crow.to(torch.int32))
            self.register_buffer("col_indices", col.to(torch.int32))
            self.register_buffer("values", vals)
            return
        counts = keep.sum(dim=1)
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=crow[1:])
        col = keep.nonzero()[:, 1]
        vals = w2d[keep].to(torch.float32).contiguous()
        self.block_size = None
        if kernel == "custom":
            # uint16 columns (stored in an int16 tensor): 2 bytes per nonzero instead of 8
            col = col.to(torch.int32)
            if cols <= _UINT16_LIMIT:
                col = col.to(torch.uint16).view(torch.int16)  # the kernel reads the bits as uint16
            self.register_buffer("crow_indices", crow)
            self.register_buffer("col_indices", col)
        else:
            self.register_buffer("crow_indices", crow.to(torch.int32))
            self.register_buffer("col_indices", col.to(torch.int32))
        self.register_buffer("values", vals)

    #: the layer's geometry attributes that :meth:`spec` records (besides the storage)
    _GEOMETRY: tuple[str, ...] = ()

    def spec(self) -> dict[str, Any]:
        """A JSON-able description of this layer: kind, kernel, dtype, block size, shapes, buffers.

        :func:`~sparseforge.export.save_materialized` writes it next to the tensors;
        :meth:`from_spec` rebuilds an empty layer of the same kind and storage from it.
        """
        geometry = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                    ((k, getattr(self, k)) for k in self._GEOMETRY)}
        buffers = {n: {"dtype": str(b.dtype).removeprefix("torch."), "shape": list(b.shape)}
                   for n, b in self.named_buffers(recurse=False) if b is not None}
        return {"kind": type(self).__name__, "kernel": self.kernel, "dtype": str(self.dtype).removeprefix("torch."),
                "block_size": list(self.block_size) if self.block_size else None,
                "weight_shape": list(self.weight_shape), "nnz": self.nnz, "bias": self.bias is not None,
                **geometry, "buffers": buffers}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "_SparseWeight":
        """An empty layer (buffers allocated, not filled) as described by ``spec`` (see :meth:`spec`).

        ``spec`` must already be validated (:func:`sparseforge.export.load_materialized` does);
        fill the buffers with ``load_state_dict`` and check them with :meth:`check_storage`.
        """
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.kernel = _check_kernel(spec["kernel"])
        layer.dtype = getattr(torch, spec["dtype"])
        layer.block_size = tuple(spec["block_size"]) if spec["block_size"] else None
        layer.weight_shape = tuple(spec["weight_shape"])
        layer.nnz = int(spec["nnz"])
        for k in cls._GEOMETRY:
            v = spec[k]
            setattr(layer, k, tuple(v) if isinstance(v, list) else v)
        for name in ("crow_indices", "col_indices", "values", "bias"):
            b = spec["buffers"].get(name)
            layer.register_buffer(name, None if b is None else torch.empty(b["shape"], dtype=getattr(torch, b["dtype"])))
        if layer.kernel.startswith("torch-"):
            _eager_sparse_mm()
        return layer

    def check_storage(self) -> None:
        """Raise :class:`~sparseforge.errors.LayerError` unless the index buffers describe a valid
        sparse matrix of this layer's shape (a file can hold anything; the C++ kernels trust the indices)."""
        rows = self.weight_shape[0]
        cols = math.prod(self.weight_shape[1:])
        bh, bw = self.block_size or (1, 1)
        blocked = self.kernel in ("torch-bsr", "custom-bsr")
        want = {"crow_indices": (torch.int64,) if self.kernel in ("custom", "custom-bsr") else (torch.int32,),
                "col_indices": (torch.int16, torch.int32) if self.kernel == "custom" else (torch.int32,),
                "values": (torch.float32,)}
        for name, dtypes in want.items():
            t = getattr(self, name)
            if t.dtype not in dtypes:
                raise LayerError(f"{name} of a {self.kernel} layer must be {' or '.join(map(str, dtypes))}; got {t.dtype}")
        if self.col_indices.dtype == torch.int16 and cols > _UINT16_LIMIT:
            raise LayerError(f"16-bit column indices cannot address {cols} columns")
        crow, col = self.crow_indices.long(), self.col_indices
        col = col.view(torch.uint16).to(torch.int64) if col.dtype == torch.int16 else col.long()
        n_rows, n_cols = (rows // bh, cols // bw) if blocked else (rows, cols)
        if blocked and (rows % bh or cols % bw or (self.kernel == "custom-bsr" and bh % 8)):
            raise LayerError(f"block size {self.block_size} does not fit the weight {self.weight_shape}")
        n = col.numel()
        vshape = (n, bh, bw) if blocked else (n,)
        if crow.shape != (n_rows + 1,) or tuple(self.values.shape) != vshape or col.dim() != 1:
            raise LayerError(f"sparse storage shapes do not fit the weight {self.weight_shape}: crow_indices "
                             f"{tuple(crow.shape)}, col_indices {tuple(col.shape)}, values {tuple(self.values.shape)}")
        if int(crow[0]) != 0 or int(crow[-1]) != n or bool((crow.diff() < 0).any()):
            raise LayerError("crow_indices must rise from 0 to the number of stored entries")
        if n and (int(col.min()) < 0 or int(col.max()) >= n_cols):
            raise LayerError(f"col_indices must lie in [0, {n_cols}); got [{int(col.min())}, {int(col.max())}]")
        if self.bias is not None and tuple(self.bias.shape) != (rows,):
            raise LayerError(f"bias has shape {tuple(self.bias.shape)}; the layer has {rows} outputs")

    def sparsity_stats(self) -> tuple[tuple[int, ...], int]:
        """``(dense weight shape, kept weights)``: what :mod:`sparseforge.report` reads."""
        return self.weight_shape, self.nnz

    def dense_weight(self) -> torch.Tensor:
        """The dense weight (zeros at pruned positions) in the layer's dtype and original shape."""
        rows = self.weight_shape[0]
        cols = math.prod(self.weight_shape[1:])
        if self.kernel in ("torch-bsr", "custom-bsr"):
            blocks = self.values
            bh, bw = self.block_size
            out = torch.zeros(rows // bh, cols // bw, bh, bw, dtype=blocks.dtype)
            brow = torch.repeat_interleave(torch.arange(rows // bh), self.crow_indices.long().diff())
            out[brow, self.col_indices.long()] = blocks
            dense = out.permute(0, 2, 1, 3).reshape(rows, cols)
        else:
            col = self.col_indices
            col = col.view(torch.uint16).to(torch.int64) if col.dtype == torch.int16 else col.to(torch.int64)
            row = torch.repeat_interleave(torch.arange(rows), self.crow_indices.long().diff())
            dense = torch.zeros(rows, cols, dtype=self.values.dtype)
            dense[row, col] = self.values
        return dense.to(self.dtype).reshape(self.weight_shape)

    def _torch_sparse(self) -> torch.Tensor:
        rows = self.weight_shape[0]
        cols = math.prod(self.weight_shape[1:])
        with warnings.catch_warnings():  # torch warns that sparse CSR/BSR support is "beta"
            warnings.simplefilter("ignore", UserWarning)
            if self.kernel == "torch-bsr":
                return torch.sparse_bsr_tensor(self.crow_indices, self.col_indices, self.values, (rows, cols),
                                               check_invariants=False)
            return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, (rows, cols),
                                           check_invariants=False)

    def _torch_sparse_mm_t(self, xt: torch.Tensor) -> torch.Tensor:
        """``W @ xt`` for ``xt [in, M]`` fp32 with torch's sparse kernels (always eager: see :func:`_eager_sparse_mm`)."""
        return _eager_sparse_mm()(self, xt)

    def __setstate__(self, state: dict[str, Any]) -> None:  # deepcopy / unpickle skip __init__
        super().__setstate__(state)
        _eager_sparse_mm()

    def _bias_f32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()

    def _check_values(self) -> None:
        # model.to(dtype) / .half() would convert the stored values; the kernels read fp32
        if self.values.dtype != torch.float32:
            raise LayerError(
                f"this materialized layer's values were converted to {self.values.dtype} (model.to(dtype)?); "
                "materialized layers keep fp32 values and accept fp32 or bf16 inputs: materialize the dense "
                "model again with dtype=... instead of converting the materialized one"
            )


class SparseLinear(_SparseWeight):
    """A ``Linear`` layer whose weight is stored sparse and multiplied with a sparse kernel.

    Build it with :meth:`from_dense` (or let :func:`materialize` do it). Accepts fp32 and bf16
    inputs of shape ``[..., in_features]`` and returns ``[..., out_features]`` in the input's
    dtype. Kernels: ``"custom"`` (fp32/bf16), ``"torch-csr"`` and ``"torch-bsr"`` (fp32; a bf16
    input is computed in fp32 and rounded back). Outputs equal ``F.linear(x, W * mask, b)`` up
    to the order of the floating-point sums.
    """

    _GEOMETRY = ("in_features", "out_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, kernel: str,
                 mask: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                 block_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise LayerError(f"SparseLinear needs a 2-D weight; got shape {tuple(weight.shape)}")
        w = weight.detach().cpu()
        keep = (w != 0) if mask is None else mask.detach().cpu().to(torch.bool)
        if keep.shape != w.shape:
            raise LayerError(f"mask shape {tuple(keep.shape)} != weight shape {tuple(w.shape)}")
        self.out_features, self.in_features = (int(s) for s in w.shape)
        self.weight_shape = tuple(w.shape)
        self._init_storage(w, keep, kernel, dtype or w.dtype, block_size)
        self.register_buffer("bias", None if bias is None else bias.detach().cpu().to(self.dtype).clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, kernel: str = "custom", block_size: tuple[int, int] | None = None,
                   dtype: torch.dtype | None = None) -> "SparseLinear":
        """Convert ``linear``; its ``weight_mask`` buffer (if any) gives the kept positions, else its nonzeros."""
        mask = getattr(linear, "weight" + MASK_SUFFIX, None)
        return cls(linear.weight, linear.bias, kernel=kernel, mask=mask, dtype=dtype, block_size=block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[-1] != self.in_features:
            raise LayerError(f"SparseLinear expects inputs [..., {self.in_features}]; got {tuple(x.shape)}")
        self._check_values()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.kernel == "custom":
            y = _custom_linear(self.crow_indices, self.col_indices, self.values, self.bias, self.in_features,
                               x2 if x2.dtype in DTYPES else x2.float())
        elif self.kernel == "custom-bsr":
            y = _custom_bsr_linear(self.crow_indices, self.col_indices, self.values, self.bias, self.in_features,
                                   x2 if x2.dtype in DTYPES else x2.float())
        else:
            yt = self._torch_sparse_mm_t(x2.float().t())
            b = self._bias_f32()
            y = yt.t() if b is None else yt.t() + b
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:  # noqa: D102
        dens = self.nnz / max(1, self.in_features * self.out_features)
        blk = f", block_size={self.block_size}" if self.block_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={self.kernel!r}{blk}, density={dens:.4f}, dtype={self.dtype}")


class SparseConv2d(_SparseWeight):
    """A ``Conv2d`` (``groups=1``, zero padding) executed as sparse ``W [out, in*kh*kw]`` x ``unfold(x)``.

    The unfolded input (``F.unfold``, im2col) of ``B`` images is ``[B, in*kh*kw, L]``; it is laid out
    ``[in*kh*kw, B*L]``, which is exactly the ``X^T`` the kernels consume, multiplied by the sparse
    weight and folded back to ``[B, out, H_out, W_out]``.
    """

    _GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")

    def __init__(self, conv: nn.Conv2d, *, kernel: str, dtype: torch.dtype | None = None,
                 block_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        reason = _conv_unsupported(conv) or ("custom-bsr runs Linear layers only" if kernel == "custom-bsr" else None)
        if reason:
            raise LayerError(f"cannot materialize this Conv2d: {reason}")
        w = conv.weight.detach().cpu()
        mask = getattr(conv, "weight" + MASK_SUFFIX, None)
        keep = (w != 0) if mask is None else mask.detach().cpu().to(torch.bool)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)
        self.weight_shape = tuple(w.shape)
        o = w.shape[0]
        self._init_storage(w.reshape(o, -1), keep.reshape(o, -1), kernel, dtype or w.dtype, block_size)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().cpu().to(self.dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise LayerError(f"SparseConv2d expects inputs [B, {self.in_channels}, H, W]; got {tuple(x.shape)}")
        self._check_values()
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x.float(), self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        k, length = cols.shape[1], cols.shape[2]
        xt = cols.permute(1, 0, 2).reshape(k, b * length)
        if self.kernel == "custom":
            yt = _custom_spmm_t(self.crow_indices, self.col_indices, self.values, xt)
        else:
            yt = self._torch_sparse_mm_t(xt)
        y = yt.reshape(self.out_channels, b, ho, wo).permute(1, 0, 2, 3)
        if self.bias is not None:
            y = y + self.bias.float().view(1, -1, 1, 1)
        return y.to(x.dtype).contiguous()

    def extra_repr(self) -> str:  # noqa: D102
        dens = self.nnz / max(1, math.prod(self.weight_shape))
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, kernel={self.kernel!r}, density={dens:.4f}, dtype={self.dtype}")


def _conv_unsupported(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is unfolded into one matrix product)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' matches F.unfold)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (give explicit padding sizes)"
    return None


# ------------------------------------------------------------------------------ decisions
@dataclass
class MaterializeDecision:
    """What :func:`materialize` did with one layer.

    Attributes:
        name: module name.
        module_type: class name of the original module.
        status: ``"materialized"`` (now a :class:`SparseLinear`/:class:`SparseConv2d`) or
            ``"dense"`` (left as it was).
        kernel: the kernel in use (``"dense"`` for dense layers).
        reason: why, in words (the speedups that decided, or what the layer lacks).
        sparsity: fraction of pruned weights (from the mask, else the exact zeros).
        shape: the weight shape.
        times_ms: candidate kernel -> batch size -> median milliseconds per call.
        speedup: batch size -> dense time / chosen time (``None`` without a benchmark).
        rejected: candidate -> why it was not used (cannot run it, wrong output, slower).
        max_rel_err: largest ``max|y - y_dense| / max|y_dense|`` of the chosen kernel on the
            benchmark inputs.
    """

    name: str
    module_type: str
    status: str
    kernel: str
    reason: str
    sparsity: float | None = None
    shape: tuple[int, ...] | None = None
    times_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    speedup: dict[int, float] | None = None
    rejected: dict[str, str] = field(default_factory=dict)
    max_rel_err: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (batch-size keys become strings)."""
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape else None
        d["times_ms"] = {k: {str(b): t for b, t in v.items()} for k, v in self.times_ms.items()}
        d["speedup"] = None if self.speedup is None else {str(b): s for b, s in self.speedup.items()}
        return d


def format_materialize_decisions(decisions: Sequence[MaterializeDecision]) -> str:
    """A terminal table of decisions: layer, status, kernel, sparsity, speedup per batch, reason."""
    head = ["layer", "type", "status", "kernel", "sparsity %", "speedup", "reason"]
    body = []
    for d in decisions:
        sp = "-" if not d.speedup else " ".join(f"b{b}:{s:.2f}x" for b, s in d.speedup.items())
        body.append([d.name, d.module_type, d.status, d.kernel,
                     "-" if d.sparsity is None else f"{100 * d.sparsity:.1f}", sp, d.reason])
    lines = [text_table(head, body)]
    n = sum(d.status == "materialized" for d in decisions)
    lines.append(f"\n{n} of {len(decisions)} layer(s) materialized; threads: {torch.get_num_threads()}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ capability
def _keep_mask(module: nn.Module) -> torch.Tensor:
    mask = getattr(module, "weight" + MASK_SUFFIX, None)
    w = module.weight.detach()
    return (w != 0) if mask is None else mask.detach().to(torch.bool)


def _block_size_for(keep2d: torch.Tensor, block_sizes: Sequence[tuple[int, int]], max_fill: float | None
                    ) -> tuple[tuple[int, int] | None, str]:
    """Largest block size dividing the matrix whose blocks hold at most ``max_fill`` x the kept weights.

    ``max_fill=None`` (forced BSR) accepts the divisible block size with the least fill.
    """
    rows, cols = keep2d.shape
    kept = int(keep2d.sum())
    best: tuple[float, int, tuple[int, int]] | None = None
    tried = []
    for bh, bw in block_sizes:
        if rows % bh or cols % bw:
            tried.append(f"{bh}x{bw}: does not divide {rows}x{cols}")
            continue
        nblocks = int(keep2d.reshape(rows // bh, bh, cols // bw, bw).any(dim=3).any(dim=1).sum())
        fill = nblocks * bh * bw / max(1, kept)
        if max_fill is not None and fill > max_fill:
            tried.append(f"{bh}x{bw}: blocks would store {fill:.1f}x the kept weights (> {max_fill})")
            continue
        score = (fill, -bh * bw) if max_fill is None else (-bh * bw, fill)
        if best is None or score < best[:2]:
            best = (*score, (bh, bw))
    if best is None:
        return None, "; ".join(tried) or "no block sizes given"
    return best[2], ""


def layer_candidates(module: nn.Module, dtype: torch.dtype, *, block_sizes: Sequence[tuple[int, int]] = ((32, 32), (16, 16), (8, 8), (4, 4)),
                     max_block_fill: float | None = 1.5) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    """Capability check of one layer.

    Returns ``(candidates, rejected, layer_reason)``: ``candidates`` maps each sparse kernel
    that can run ``module`` in ``dtype`` to its constructor arguments, ``rejected`` maps the
    others to why not, and ``layer_reason`` is set when the layer cannot be materialized at all.
    """
    if isinstance(module, nn.Linear):
        pass
    elif isinstance(module, nn.Conv2d):
        r = _conv_unsupported(module)
        if r:
            return {}, {}, r
    else:
        return {}, {}, f"{type(module).__name__} is not nn.Linear or nn.Conv2d"
    wdtype = module.weight.dtype
    if wdtype not in DTYPES:
        return {}, {}, f"weight dtype {wdtype} not supported (float32 or bfloat16)"
    if module.weight.device.type != "cpu":
        return {}, {}, f"weight is on {module.weight.device}; materialized kernels run on CPU"
    mask = getattr(module, "weight" + MASK_SUFFIX, None)
    if mask is not None and tuple(mask.shape) != tuple(module.weight.shape):
        raise LayerError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    keep = _keep_mask(module).cpu()
    keep2d = keep.reshape(keep.shape[0], -1)
    cands: dict[str, dict[str, Any]] = {}
    rejected: dict[str, str] = {}
    if dtype == torch.float32:
        cands["torch-csr"] = {}
    else:
        rejected["torch-csr"] = f"torch has no {dtype} CSR matmul on CPU"
    if dtype != torch.float32:
        rejected["torch-bsr"] = f"torch has no {dtype} BSR matmul on CPU"
    else:
        bs, why = _block_size_for(keep2d, block_sizes, max_block_fill)
        if bs is None:
            rejected["torch-bsr"] = f"not block-sparse ({why})"
        else:
            cands["torch-bsr"] = {"block_size": bs}
    why = cpu_sparse.kernel_unavailable_reason()
    if why is None:
        cands["custom"] = {}
    else:
        rejected["custom"] = why
    if why is not None:
        rejected["custom-bsr"] = why
    elif not isinstance(module, nn.Linear):
        rejected["custom-bsr"] = "runs Linear layers only"
    else:
        sizes = [b for b in block_sizes if b[0] % 8 == 0]
        bs, why_b = _block_size_for(keep2d, sizes, max_block_fill) if sizes else (None, "no block size with rows % 8 == 0")
        if bs is None:
            rejected["custom-bsr"] = f"not block-sparse with block rows a multiple of 8 ({why_b})"
        else:
            cands["custom-bsr"] = {"block_size": bs}
    return cands, rejected, None


# ------------------------------------------------------------------------------ benchmark
def _time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each function over ``rounds`` interleaved rounds."""
    per_call = {}
    for k, f in fns.items():  # warm-up (also builds caches) and a first estimate
        f()
        t0 = time.perf_counter()
        f()
        per_call[k] = time.perf_counter() - t0
    # enough calls per round for ~budget_s / rounds in total, at least 1
    total = sum(per_call.values()) or 1e-6
    calls = max(1, min(50, int(budget_s / rounds / total)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            samples[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    err = float((y.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    return err / scale if scale > 0 else err


def _build(name: str, module: nn.Module, kernel: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return SparseConv2d(module, kernel=kernel, dtype=dtype, **kwargs)
    return SparseLinear.from_dense(module, kernel=kernel, dtype=dtype, **kwargs)


# ------------------------------------------------------------------------------ public API
def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ConfigError(f"dtype must be one of {sorted(names)} or a torch dtype in {list(DTYPES)}; got {dtype!r}")
        return names[dtype]
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be torch.float32 or torch.bfloat16 (or None: each layer's own); got {dtype!r}")
    return dtype


def _record_inputs(model: nn.Module, layers: list[tuple[str, nn.Module]], example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of every layer in one forward pass of ``example_inputs`` (batch = dim 0)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in layers:
        def hook(mod, args, name=name):  # noqa: ANN001
            if args and torch.is_tensor(args[0]) and name not in shapes:
                shapes[name] = tuple(args[0].shape[1:])
        handles.append(m.register_forward_pre_hook(hook))
    probe(model, example_inputs, handles, param="example_inputs")
    return shapes


@dataclass(frozen=True, kw_only=True)
class MaterializeResult(Result):
    """What :func:`materialize` returns.

    Attributes:
        model: the materialized model (a copy unless ``inplace=True``), in eval mode.
        layers: one :class:`MaterializeDecision` per considered layer, in module order (its
            ``status`` says whether the layer was materialized, its ``reason`` why or why not).
        skipped: ``(name, reason)`` of every sparse layer left dense because no kernel can run it.
    """

    _legacy_tuple = ("model", "layers")

    @property
    def materialized(self) -> list[str]:
        """Names of the layers now executed by a sparse kernel."""
        return [d.name for d in self.layers if d.status == "materialized"]

    def table(self) -> str:
        """The decisions as a plain-text table (:func:`format_materialize_decisions`)."""
        return format_materialize_decisions(self.layers)


def _select_layers(model: nn.Module, targets: Any, layers: Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv2d modules ``targets`` (or the deprecated exact-name list ``layers``) selects."""
    # a bare Linear/Conv2d is its own (only) layer, named ""
    all_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if layers is not None:
        if targets is not None:
            raise ConfigError("materialize: pass targets= only (layers= is its deprecated old form); got both")
        warnings.warn("materialize(layers=[...]) is deprecated; use targets={'include': [...]} "
                      "(names or regular expressions, as everywhere else)", DeprecationWarning, stacklevel=3)
        wanted = set(layers)
        unknown = wanted - {n for n, _ in all_layers}
        if unknown:
            raise ConfigError(f"layers {sorted(unknown)} are not Linear/Conv2d modules of the model")
        return [(n, m) for n, m in all_layers if n in wanted]
    if targets is None:
        return all_layers
    chosen = {id(layer.module) for layer in Targets.from_spec(targets).select(model)}
    return [(n, m) for n, m in all_layers if id(m) in chosen]


@torch.no_grad()
@renamed_keywords(example_input="example_inputs")
def materialize(
    model: nn.Module,
    *,
    kernel: str = "auto",
    dtype: torch.dtype | str | None = None,
    batch_sizes: Iterable[int] = (1, 64),
    example_inputs: Any = None,
    min_speedup: float = 1.0,
    strict: bool = False,
    inplace: bool = False,
    rounds: int = 5,
    budget_s: float = 0.3,
    rtol: float | None = None,
    block_sizes: Sequence[tuple[int, int]] = ((32, 32), (16, 16), (8, 8), (4, 4)),
    max_block_fill: float = 1.5,
    targets: Targets | dict | None = None,
    layers: Iterable[str] | None = None,
) -> MaterializeResult:
    """Swap every eligible masked or zero-containing layer of ``model`` for one that executes its sparsity.

    Args:
        model: an ``nn.Module`` on CPU whose ``nn.Linear`` / ``nn.Conv2d`` layers carry masks
            (``weight_mask`` buffers) or exact zeros (e.g. after ``masking.finalize``).
        kernel: ``"auto"`` (capability check + micro-benchmark per layer, default) or one of
            ``"custom"``, ``"custom-bsr"``, ``"torch-csr"``, ``"torch-bsr"``, ``"dense"`` to force that kernel on every
            layer that can run it (no benchmark; layers that cannot stay dense with the reason).
        dtype: the activation dtype the model will run in: ``torch.float32``/``"fp32"`` or
            ``torch.bfloat16``/``"bf16"``; ``None`` uses each layer's weight dtype. Weights are
            converted to it; the benchmark compares against the dense layer in the same dtype.
        batch_sizes: batch sizes the benchmark measures; a layer is converted only if its chosen
            kernel is at least ``min_speedup`` faster than dense at *every* one of them.
        example_inputs: one input for ``model`` (tensor, tuple or dict; dim 0 = batch); its forward
            pass records each layer's per-sample input shape (tokens of a sequence model,
            spatial size of a conv). Needed for convolutions in ``"auto"`` mode; Linear layers
            default to one feature vector per sample.
        min_speedup: required worst-case speedup over dense (default 1.0: never slower).
        strict: raise :class:`~sparseforge.errors.LayerError` instead of leaving a sparse layer
            dense because it cannot be converted (speed decisions never raise).
        inplace: modify ``model`` itself instead of a deep copy (default False).
        rounds, budget_s: interleaved rounds and approximate seconds of timing per layer and batch size.
        rtol: largest allowed ``max|y - y_dense| / max|y_dense|`` of a candidate on the benchmark
            input (default 1e-5 for fp32, 2e-2 for bf16, whose output rounding alone is ~4e-3).
        block_sizes: BSR block sizes tried, largest first.
        max_block_fill: BSR is a candidate only if its blocks store at most this many elements per
            kept weight (1.0 = perfectly block-sparse).
        targets: which layers to consider (:class:`~sparseforge.masking.Targets` or a dict of
            its fields, e.g. ``{"exclude": ["head"]}``); only its Linear and Conv2d layers are
            materialized. Default: every Linear and Conv2d.
        layers: deprecated (warns): exact module names; use ``targets={"include": [...]}``.

    Returns:
        a :class:`MaterializeResult`: ``.model`` the materialized model (a copy unless
        ``inplace``) in eval mode, ``.layers`` one :class:`MaterializeDecision` per considered
        layer in module order. (Unpacking it as ``model, decisions`` still works for one release,
        with a ``DeprecationWarning``.)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if kernel != "auto" and kernel not in KERNELS:
        raise ConfigError(f"kernel must be 'auto' or one of {list(KERNELS)}; got {kernel!r}")
    want_dtype = _check_dtype(dtype)
    batches = list(batch_sizes) if not isinstance(batch_sizes, int) else [batch_sizes]
    if not batches:
        raise ConfigError("batch_sizes must hold at least one batch size")
    for b in batches:
        check_int(b, "batch_sizes entry", minimum=1)
    check_int(rounds, "rounds", minimum=1)
    check_number(min_speedup, "min_speedup", minimum=0.0, min_open=True)
    check_number(budget_s, "budget_s", minimum=0.0, min_open=True, note=" (seconds)")
    for bs in block_sizes:
        if not (isinstance(bs, (tuple, list)) and len(bs) == 2 and all(isinstance(v, int) and v >= 1 for v in bs)):
            raise ConfigError(f"block_sizes entries must be (rows, cols) pairs of positive ints; got {bs!r}")

    # selected before the copy so a bad selection fails before any work
    names = [n for n, _ in _select_layers(model, targets, layers)]
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    all_layers = [(n, model.get_submodule(n) if n else model) for n in names]
    in_shapes = _record_inputs(model, all_layers, example_inputs) if example_inputs is not None else {}

    decisions: list[MaterializeDecision] = []
    skipped: list[tuple[str, str]] = []
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in all_layers:
        d, new = _decide(name, module, kernel=kernel, dtype=want_dtype or module.weight.dtype, batches=batches,
                         in_shape=in_shapes.get(name), min_speedup=float(min_speedup), rounds=rounds,
                         budget_s=float(budget_s), rtol=rtol, block_sizes=block_sizes,
                         max_block_fill=max_block_fill)
        if new is None and d.sparsity and d.rejected.get("_layer"):
            if strict:
                raise LayerError(f"layer {name!r} cannot be materialized: {d.reason} (strict=True)")
            skipped.append((name, d.reason))
        d.rejected.pop("_layer", None)
        decisions.append(d)
        if new is not None:
            replacements.append((name, new))
    for name, new in replacements:
        if not name:
            model = new
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    if want_dtype is not None:
        # the remaining dense layers run in the same dtype as the materialized ones
        for m in model.modules():
            if not getattr(m, "sparseforge_materialized", False):
                for p_name, p in list(m.named_parameters(recurse=False)):
                    if p.is_floating_point() and p.dtype != want_dtype:
                        p.data = p.data.to(want_dtype)
                for b_name, b in list(m.named_buffers(recurse=False)):
                    if b is not None and b.is_floating_point() and b.dtype != want_dtype:
                        setattr(m, b_name, b.to(want_dtype))
    return MaterializeResult(model=model, layers=decisions, skipped=skipped)


def _decide(name: str, module: nn.Module, *, kernel: str, dtype: torch.dtype, batches: list[int],
            in_shape: tuple[int, ...] | None, min_speedup: float, rounds: int, budget_s: float,
            rtol: float | None, block_sizes: Sequence[tuple[int, int]], max_block_fill: float
            ) -> tuple[MaterializeDecision, nn.Module | None]:
    mtype = type(module).__name__
    shape = tuple(module.weight.shape)
    keep = _keep_mask(module) if module.weight.dtype in DTYPES + (torch.float64, torch.float16) else None
    sparsity = None if keep is None else 1.0 - float(keep.sum()) / max(1, keep.numel())
    dec = MaterializeDecision(name, mtype, "dense", "dense", "", sparsity=sparsity, shape=shape)
    forced = kernel != "auto"
    if kernel == "dense":
        dec.reason = "kernel='dense' requested"
        return dec, None
    if kernel == "torch-bsr":
        # forced BSR runs any shape: 1x1 blocks always divide it
        block_sizes = tuple(block_sizes) + ((1, 1),)
    cands, rejected, layer_reason = layer_candidates(
        module, dtype, block_sizes=block_sizes,
        max_block_fill=None if kernel in ("torch-bsr", "custom-bsr") else max_block_fill)
    dec.rejected = dict(rejected)
    if layer_reason:
        dec.reason = layer_reason
        dec.rejected["_layer"] = layer_reason
        return dec, None
    if forced:
        if kernel not in cands:
            dec.reason = f"{kernel} cannot run this layer: {rejected.get(kernel)}"
            dec.rejected["_layer"] = dec.reason
            return dec, None
        new = _build(name, module, kernel, dtype, cands[kernel])
        dec.status, dec.kernel, dec.reason = "materialized", kernel, f"kernel={kernel!r} requested"
        return dec, new
    if not cands:
        dec.reason = "no sparse kernel can run it: " + "; ".join(f"{k}: {v}" for k, v in rejected.items())
        dec.rejected["_layer"] = dec.reason
        return dec, None
    if sparsity == 0.0:
        dec.reason = "no zeros to exploit (sparsity 0)"
        return dec, None
    if isinstance(module, nn.Conv2d) and in_shape is None:
        dec.reason = "needs example_inputs to know the convolution's input size for the benchmark"
        dec.rejected["_layer"] = dec.reason
        return dec, None
    per_sample = in_shape if in_shape is not None else (module.in_features,)
    tol = rtol if rtol is not None else (1e-5 if dtype == torch.float32 else 2e-2)

    # the masked dense layer in the target dtype is the reference and the baseline
    dense = copy.deepcopy(module).to(dtype)
    dense.weight.mul_(_keep_mask(module).to(dtype))
    if hasattr(dense, "weight" + MASK_SUFFIX):
        delattr(dense, "weight" + MASK_SUFFIX)
    built = {k: _build(name, module, k, dtype, kw) for k, kw in cands.items()}
    gen = torch.Generator().manual_seed(0)
    times: dict[str, dict[int, float]] = {k: {} for k in ["dense", *built]}
    errs: dict[str, float] = {k: 0.0 for k in built}
    for b in batches:
        x = torch.randn((b, *per_sample), generator=gen).to(dtype)
        ref = dense(x)
        # fp32 reference of the same (dtype-rounded) weights and inputs
        ref32 = copy.deepcopy(dense).float()(x.float())
        for k, m in built.items():
            errs[k] = max(errs[k], _rel_err(m(x), ref32 if dtype != torch.float32 else ref))
        fns = {"dense": lambda x=x: dense(x), **{k: (lambda m=m, x=x: m(x)) for k, m in built.items()}}
        for k, t in _time_interleaved(fns, rounds, budget_s).items():
            times[k][b] = 1e3 * t
    dec.times_ms = times
    best, best_min = None, 0.0
    for k in built:
        if errs[k] > tol:
            dec.rejected[k] = f"output differs from the dense layer by {errs[k]:.2e} relative (> {tol:g})"
            continue
        worst = min(times["dense"][b] / times[k][b] for b in batches)
        if best is None or worst > best_min:
            best, best_min = k, worst
    for k in built:
        if k != best and k not in dec.rejected:
            worst = min(times["dense"][b] / times[k][b] for b in batches)
            dec.rejected[k] = f"worst-case speedup {worst:.2f}x"
    if best is None:
        dec.reason = "no sparse kernel reproduced the dense output"
        return dec, None
    speed = {b: times["dense"][b] / times[best][b] for b in batches}
    dec.max_rel_err = errs[best]
    at = ", ".join(f"{s:.2f}x at batch {b}" for b, s in speed.items())
    if best_min < min_speedup:
        dec.speedup = speed
        dec.reason = f"not faster: best kernel {best} gives {at} (needs >= {min_speedup:g}x at every batch size)"
        return dec, None
    dec.status, dec.kernel, dec.speedup = "materialized", best, speed
    dec.reason = f"{best}: {at}"
    return dec, built[best]
