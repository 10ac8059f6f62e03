"""2:4 semi-structured sparse Linear layers on NVIDIA GPUs (``torch.sparse.to_sparse_semi_structured``).

Sparse tensor cores (Ampere, compute capability 8.0, and newer) multiply a weight that keeps 2
of every 4 consecutive inputs at up to twice the dense rate (Mishra et al. 2021, "Accelerating
Sparse Deep Neural Networks"). PyTorch exposes them through
``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt or CUTLASS backend), for 2-D fp16 / bf16
weights whose dimensions are multiples of the backend's tile (CUTLASS: rows of 32 and columns
of 64; cuSPARSELt: 16 and 16). Small layers and small batches are often *not* faster, so
:func:`accelerate_2to4` converts a layer only after checking it can and measuring that it pays:

1. :func:`semi_structured_support` checks type, dimensions, dtype, shape and that the weight
   really is 2:4 (at most 2 nonzeros in every group of 4 inputs), then CUDA, the device and
   its compute capability, and returns the reason when one fails;
2. a micro-benchmark times ``F.linear`` dense and sparse at the caller's batch (median of CUDA-event
   timings over repeats) and checks the sparse output matches the dense one;
3. only layers at least ``min_speedup`` faster are converted; every layer gets a
   :class:`LayerDecision` (converted / dense / simulated, with the reason and the numbers).

On a machine without CUDA nothing is converted and every decision says ``"simulated"``
(the model still computes with zeros stored in dense tensors); ``require=True`` turns that
into an error.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.patterns import is_valid_nm
from ..errors import ConfigError, check_int, check_number
from ..tables import text_table

__all__ = ["LayerDecision", "semi_structured_support", "accelerate_2to4", "format_decisions", "SUPPORTED_DTYPES"]

#: weight dtypes converted here (int8/fp8 need quantized activations as well)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class LayerDecision:
    """What :func:`accelerate_2to4` did with one Linear layer.

    Attributes:
        name: module name.
        status: ``"converted"`` (sparse kernel in use), ``"dense"`` (kept dense on a GPU) or
            ``"simulated"`` (no usable GPU: zeros stored in the dense weight).
        reason: why, in words.
        dense_ms, sparse_ms: median time of one ``F.linear`` call at the benchmark batch.
        speedup: ``dense_ms / sparse_ms``.
        max_abs_err: largest difference between sparse and dense outputs on the benchmark input.
    """

    name: str
    status: str
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    speedup: float | None = None
    max_abs_err: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def _backend_tile() -> tuple[int, int, str]:
    from torch.sparse import SparseSemiStructuredTensor

    cutlass = SparseSemiStructuredTensor._FORCE_CUTLASS or not getattr(torch.backends, "cusparselt", None) \
        or not torch.backends.cusparselt.is_available()
    return (32, 64, "CUTLASS") if cutlass else (16, 16, "cuSPARSELt")


def semi_structured_support(module: nn.Module, *, check_device: bool = True) -> str | None:
    """``None`` if ``module``'s weight can use the 2:4 kernels, else the reason it cannot.

    Checks, in order: ``nn.Linear``; a 2-D weight; dtype fp16/bf16; both dims multiples of the
    backend tile; the weight is 2:4 (<= 2 nonzeros per 4 consecutive inputs); then, if
    ``check_device``: CUDA available, the weight on a CUDA device, compute capability >= 8.0.
    """
    if not isinstance(module, nn.Linear):
        return f"{type(module).__name__} is not nn.Linear (only Linear layers are converted)"
    w = module.weight
    if w.dtype not in SUPPORTED_DTYPES:
        return f"dtype {w.dtype} not supported (use float16 or bfloat16: model.half() / model.bfloat16())"
    rows, cols, backend = _backend_tile()
    if w.shape[0] % rows or w.shape[1] % cols:
        return f"shape {tuple(w.shape)} is not a multiple of the {backend} tile ({rows}, {cols})"
    if not is_valid_nm(w.detach() != 0, 2, 4):
        return "weight is not 2:4 sparse (prune it to 2:4 first)"
    if check_device:
        if not torch.cuda.is_available():
            return "CUDA not available"
        if not w.is_cuda:
            return f"weight is on {w.device}, not a CUDA device"
        cap = torch.cuda.get_device_capability(w.device)
        if cap < (8, 0):
            return f"GPU compute capability {cap[0]}.{cap[1]} < 8.0 (no sparse tensor cores)"
    return None


def _median_ms(fn: Any, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def accelerate_2to4(model: nn.Module, *, batch: int = 256, min_speedup: float = 1.05, require: bool = False,
                    repeats: int = 50, warmup: int = 10, rtol: float = 1e-2) -> list[LayerDecision]:
    """Convert the 2:4 Linear layers of ``model`` that are faster with sparse kernels.

    Args:
        model: a model whose Linear weights are already 2:4 sparse (e.g. after
            ``method.finalize()`` of an N:M training method), in fp16/bf16, on a CUDA device.
        batch: rows of the benchmark input (tokens per call in your workload).
        min_speedup: convert only layers at least this much faster (default 1.05).
        require: raise :class:`~sparseforge.errors.ConfigError` when CUDA is not available.
        repeats, warmup: timed and untimed calls per variant in the micro-benchmark.
        rtol: largest allowed ``max|sparse - dense| / max|dense|`` on the benchmark input.

    Returns:
        one :class:`LayerDecision` per Linear layer, in module order.
    """
    check_int(batch, "batch", minimum=1)
    check_int(repeats, "repeats", minimum=1)
    check_number(min_speedup, "min_speedup", minimum=0.0, min_open=True)
    if require and not torch.cuda.is_available():
        raise ConfigError("2:4 semi-structured kernels requested (require=True) but CUDA is not available; "
                          "on CPU the N:M model can only be simulated")
    from torch.sparse import to_sparse_semi_structured

    decisions = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        static_reason = semi_structured_support(mod, check_device=False)
        device_reason = semi_structured_support(mod) if static_reason is None else None
        if static_reason or device_reason:
            reason = static_reason or device_reason
            simulated = not torch.cuda.is_available() or not mod.weight.is_cuda
            decisions.append(LayerDecision(name, "simulated" if simulated else "dense", reason))
            continue
        w, b = mod.weight, mod.bias
        x = torch.randn(batch, w.shape[1], device=w.device, dtype=w.dtype)
        ws = to_sparse_semi_structured(w.detach().contiguous())
        ref = F.linear(x, w, b)
        out = F.linear(x, ws, b)
        err = float((out - ref).abs().max())
        scale = float(ref.abs().max()) or 1.0
        dense_ms = _median_ms(lambda: F.linear(x, w, b), repeats, warmup)
        sparse_ms = _median_ms(lambda: F.linear(x, ws, b), repeats, warmup)
        speedup = dense_ms / sparse_ms
        nums = {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": speedup, "max_abs_err": err}
        if err > rtol * scale:
            decisions.append(LayerDecision(name, "dense", f"sparse output differs by {err:.3g} (> {rtol} x {scale:.3g})", **nums))
        elif speedup < min_speedup:
            decisions.append(LayerDecision(name, "dense", f"not faster: {speedup:.2f}x at batch {batch} "
                                                          f"(needs >= {min_speedup:.2f}x)", **nums))
        else:
            mod.weight = nn.Parameter(ws, requires_grad=False)
            decisions.append(LayerDecision(name, "converted", f"{speedup:.2f}x at batch {batch}", **nums))
    return decisions


def format_decisions(decisions: list[LayerDecision]) -> str:
    """A terminal table of :func:`accelerate_2to4` decisions."""
    head = ["layer", "status", "speedup", "dense ms", "sparse ms", "reason"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    body = [[d.name, d.status, "-" if d.speedup is None else f"{d.speedup:.2f}x", fmt(d.dense_ms), fmt(d.sparse_ms),
             d.reason] for d in decisions]
    return text_table(head, body)
