"""The per-layer kernel choice of :func:`~sparseforge.export.materialize`: capability check and micro-benchmark.

Per layer, a capability check (:func:`layer_candidates`: layer type, dtype, shape, groups,
pattern) lists the kernels of :mod:`~sparseforge.export.sparse_layers` that can run it (BSR when
the weight's zeros form blocks: block sizes from ``block_sizes``, at most ``max_block_fill``
stored elements per kept weight); each candidate's output is checked against the masked dense
layer (relative error at most ``rtol``), and a short micro-benchmark (interleaved rounds,
median) at every batch size in ``batch_sizes`` picks the kernel with the best *worst-case*
speedup over the dense layer. A layer is converted only if that worst case is at least
``min_speedup``, so no converted layer is slower than dense at any benchmarked batch size;
otherwise it stays dense and its :class:`MaterializeDecision` says why. A forced kernel
(``kernel="custom"`` etc.) is used on every layer that can run it, without a benchmark.

Timings depend on the machine and on ``torch.get_num_threads()``: decide on the machine and
with the thread count that will serve the model.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import LayerError
from ..kernels import cpu_sparse
from ..masking import MASK_SUFFIX
from ..tables import text_table
from .sparse_layers import DTYPES, SparseConv2d, SparseLinear, _conv_unsupported

__all__ = ["MaterializeDecision", "format_materialize_decisions", "layer_candidates", "decide_layer"]


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


def decide_layer(name: str, module: nn.Module, *, kernel: str, dtype: torch.dtype, batches: list[int],
            in_shape: tuple[int, ...] | None, min_speedup: float, rounds: int, budget_s: float,
            rtol: float | None, block_sizes: Sequence[tuple[int, int]], max_block_fill: float
            ) -> tuple[MaterializeDecision, nn.Module | None]:
    """Decide one layer: ``(decision, new_module)``, ``new_module`` None where the layer stays dense.

    ``kernel`` is ``"auto"`` (capability check + benchmark) or a forced kernel name; the keyword
    arguments are :func:`~sparseforge.export.materialize`'s. A layer no kernel can run gets the
    reason also under ``decision.rejected["_layer"]`` (the caller lists it as skipped, then drops it).
    """
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
