"""Modules that execute a weight's sparsity on CPU: :class:`SparseLinear` and :class:`SparseConv2d`.

Each stores only the kept weights of a masked (or zero-containing) layer and runs one of these
kernels:

* ``"custom"`` -- sparseforge's C++/OpenMP kernel (:mod:`sparseforge.kernels.cpu_sparse`): CSR
  with uint16 column indices, ``Y^T = W X^T`` with ``X^T`` laid out ``[in, batch]`` so every
  nonzero does a broadcast-FMA over a contiguous batch row; a gather-based SpMV at batch 1.
  fp32 and bf16 inputs (bf16 accumulates in fp32).
* ``"custom-bsr"`` -- the same C++ extension for block-sparse Linear weights (block rows a
  multiple of 8): each ``X^T`` segment is loaded once for 8 output rows, so the product is
  FMA-bound instead of bound by loading ``X^T`` rows; dense dot products at batch 1.
* ``"torch-csr"`` -- ``torch.sparse.mm(W_csr, x.T)`` (this orientation measured 2-4x faster
  than ``F.linear(x, W_csr)``); fp32 only (torch has no bf16 CSR matmul on CPU).
* ``"torch-bsr"`` -- the same with a block-sparse (BSR) weight; fp32 only.
* ``"dense"`` -- the layer is left as it is (no module here).

Which kernel a layer gets is decided by :mod:`sparseforge.export.autotune`;
:func:`~sparseforge.export.materialize` swaps the modules in. The C++ kernels' torch custom-op
registration lives in :mod:`sparseforge.kernels.ops`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LayerError
from ..kernels.ops import bsr_linear as _custom_bsr_linear
from ..kernels.ops import csr_linear as _custom_linear
from ..kernels.ops import csr_spmm_t as _custom_spmm_t
from ..masking import MASK_SUFFIX

__all__ = ["KERNELS", "DTYPES", "SparseLinear", "SparseConv2d"]

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
