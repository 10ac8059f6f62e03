"""Materialize a sparse model: swap masked layers for modules that execute their sparsity on CPU.

A masked (or zero-containing) ``nn.Linear`` or ``nn.Conv2d`` computes with its zeros: the
sparsity is *simulated*. :func:`materialize` replaces each eligible layer by a
:class:`~sparseforge.export.sparse_layers.SparseLinear` or
:class:`~sparseforge.export.sparse_layers.SparseConv2d` that stores only the kept weights and runs
a sparse kernel (``"custom"``, ``"custom-bsr"``, ``"torch-csr"``, ``"torch-bsr"``; see
:mod:`~sparseforge.export.sparse_layers`). Which kernel, if any, each layer gets is decided by
:mod:`~sparseforge.export.autotune`: a capability check, an output check against the masked dense
layer and a micro-benchmark at every batch size in ``batch_sizes``; a layer is converted only if
its worst-case speedup over dense is at least ``min_speedup``, otherwise it stays dense and its
:class:`~sparseforge.export.autotune.MaterializeDecision` says why. ``kernel="custom"`` (etc.)
forces one kernel on every layer that can run it (for tests and experiments), skipping the benchmark.

Timings depend on the machine and on ``torch.get_num_threads()``: run :func:`materialize` on the
machine and with the thread count that will serve the model.

This module holds the orchestration (validate, select, copy, decide, swap) and the result; the
layers live in :mod:`~sparseforge.export.sparse_layers`, the decisions in
:mod:`~sparseforge.export.autotune`, the C++ kernels' torch custom-op registration in
:mod:`sparseforge.kernels.ops`, and saving and loading a materialized model (safetensors + JSON,
no pickle) in :mod:`sparseforge.export.materialized_io`. The names of those modules that this one
exported before the split are still importable from here.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, LayerError, check_int, check_number
from ..kernels.ops import _bsr_linear_op, _csr_linear_op, _csr_spmm_t_op  # noqa: F401 (registered ops, old import path)
from ..masking import Targets
from ..results import Result, renamed_keywords
from ..utils import check_module, probe
from .autotune import MaterializeDecision, decide_layer, format_materialize_decisions, layer_candidates
from .sparse_layers import DTYPES, KERNELS, SparseConv2d, SparseLinear
from .sparse_layers import _SparseWeight as _SparseWeight  # imported from here before the split

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
    check_module(model)
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
        d, new = decide_layer(name, module, kernel=kernel, dtype=want_dtype or module.weight.dtype, batches=batches,
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
