"""Sparsity-preserving weight quantization (symmetric int8 / int4, per channel or per group).

Quantizing a pruned model must not change its sparsity: users report the nonzero count going
to zero on quantization (IntelLabs/distiller#115) and 2:4 + int4 checkpoints with broken
masks (vllm-project/llm-compressor#67, #942). Symmetric round-to-nearest quantization, the
weight-only scheme of LLM.int8 / GPTQ-style int4 baselines::

    scale = max |w| / q_max  over each row (or each group of ``group_size`` inputs of a row)
    q     = clamp(round(w / scale), -q_max, q_max)        q_max = 2**(bits - 1) - 1 (127, 7)
    w_hat = q * scale

has no zero point, so a pruned weight (``0``) maps to exactly ``0``. With ``keep_nonzeros=True``
(the default) a kept weight too small for one step (``|w| < scale / 2``, which rounding would
send to ``0``) gets the code ``sign(w)``: the nonzero pattern, and so every mask and N:M group,
is then exactly the same before and after. Each such weight's error is at most
``scale - |w| < scale`` instead of ``|w|``; :attr:`QuantizedWeight.bumped` counts them.

:func:`quantize_weights` writes ``w_hat`` into the model (simulated quantization: the model
runs as before, on the dequantized values) and returns the integer codes and scales of every
layer, from which :meth:`QuantizedWeight.dequantize` rebuilds ``w_hat`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import ConfigError, LayerError
from ..utils import check_module
from ..masking import Targets
from ..results import LegacyMapping, Result

__all__ = ["QuantizedWeight", "QuantizeResult", "quantize_tensor", "quantize_weights"]

_BITS = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes and scales of one weight (canonical ``[out, in, ...]`` layout flattened to 2-D).

    Attributes:
        codes: int8 tensor ``[out, in_flat]`` with values in ``[-q_max, q_max]``.
        scales: float32 ``[out, groups]`` (one column per group; 1 for per-channel).
        bits: code width.
        group_size: inputs per scale (``in_flat`` for per-channel).
        shape: the weight's canonical shape (to restore it).
        bumped: kept weights that rounding would have zeroed and that got ``±1`` instead.
        name: the module name (set by :func:`quantize_weights`; ``""`` from :func:`quantize_tensor`).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    group_size: int
    shape: tuple[int, ...]
    bumped: int
    name: str = ""

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``codes * scales`` in the canonical shape."""
        out, n = self.codes.shape
        g = self.codes.reshape(out, n // self.group_size, self.group_size).to(torch.float32)
        w = g * self.scales.unsqueeze(-1)
        return w.reshape(self.shape).to(dtype)

    @property
    def packed_bytes(self) -> int:
        """Bytes of the codes packed at ``bits`` per weight plus fp32 scales (a storage estimate)."""
        return (self.codes.numel() * self.bits + 7) // 8 + 4 * self.scales.numel()


def _check(bits: int, group_size: int | None) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _BITS:
        raise ConfigError(f"bits must be one of {list(_BITS)}; got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size must be a positive integer or None (per channel); got {group_size!r}")


@torch.no_grad()
def quantize_tensor(weight: torch.Tensor, bits: int = 8, group_size: int | None = None, *,
                    keep_nonzeros: bool = True, name: str = "weight") -> QuantizedWeight:
    """Quantize one weight in the canonical ``[out, in, ...]`` layout (see the module docstring).

    Args:
        weight: the weight (at least 1-D; 1-D is one row).
        bits: code width, 2-8 (default 8).
        group_size: inputs per scale along the flattened input dimension; ``None`` (default)
            is one scale per output row. Must divide the flattened input size.
        keep_nonzeros: give kept weights that would round to 0 the code ``sign(w)`` (default True).
        name: layer name for error messages.
    """
    _check(bits, group_size)
    shape = tuple(weight.shape)
    w = weight.detach().to(torch.float32).reshape(shape[0] if len(shape) > 1 else 1, -1)
    out, n = w.shape
    g = n if group_size is None else group_size
    if n % g:
        raise LayerError(f"{name}: group_size {g} does not divide its input size {n} (shape {shape})")
    if not bool(torch.isfinite(w).all()):
        raise LayerError(f"{name}: weight has NaN or infinite values; cannot quantize")
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(out, n // g, g)
    absmax = groups.abs().amax(dim=-1)
    scales = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    q = torch.round(groups / scales.unsqueeze(-1)).clamp_(-qmax, qmax)
    bumped = 0
    if keep_nonzeros:
        lost = (q == 0) & (groups != 0)
        bumped = int(lost.sum())
        if bumped:
            q = torch.where(lost, torch.sign(groups), q)
    return QuantizedWeight(q.reshape(out, n).to(torch.int8), scales, bits, g, shape, bumped)


@dataclass(frozen=True, kw_only=True)
class QuantizeResult(LegacyMapping, Result):
    """What :func:`quantize_weights` returns.

    Attributes:
        model: the model, its weights quantized in place.
        layers: one :class:`QuantizedWeight` (codes and scales, ``name`` = module name) per
            quantized layer, in module order; :attr:`weights` the same by module name.
        bits, group_size: the settings used.

    Reading it as the dict of old (``result["fc1"]``, ``result.items()``) still works for one
    release, with a ``DeprecationWarning``.
    """

    bits: int
    group_size: int | None = None

    _legacy_mapping = "weights"

    @property
    def weights(self) -> dict[str, QuantizedWeight]:
        """Codes and scales by module name."""
        return {q.name: q for q in self.layers}

    @property
    def packed_bytes(self) -> int:
        """Sum of :attr:`QuantizedWeight.packed_bytes` over the quantized layers."""
        return sum(q.packed_bytes for q in self.layers)


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int = 8, group_size: int | None = None, *,
                     targets: Targets | dict | None = None, keep_nonzeros: bool = True) -> QuantizeResult:
    """Quantize the weights of the target layers of ``model`` in place; return codes and scales per layer.

    Args:
        model: the model (masked, finalized or one-shot pruned; LoRA adapters merged first).
        bits: 2-8 (default 8; 4 for int4).
        group_size: inputs per scale (``None`` = per output channel, default; 128 is common for int4).
        targets: which layers (:class:`~sparseforge.masking.Targets` or dict; default every
            Linear, Conv1d/2d/3d and HF ``Conv1D`` weight).
        keep_nonzeros: keep the nonzero pattern exactly (default True; see the module docstring).

    Returns:
        a :class:`QuantizeResult`: ``.model``, ``.layers`` (one :class:`QuantizedWeight` per
        layer) and ``.weights`` (the same by module name).
    """
    check_module(model)
    _check(bits, group_size)
    selection = Targets.from_spec(targets)
    layers = selection.select(model)
    # all or nothing: every layer is quantized (and so checked) before the first weight is
    # written, so a layer refused at the end (a group size that does not divide it) changes nothing
    out = [replace(quantize_tensor(layer.canonical(layer.weight.detach()), bits, group_size,
                                   keep_nonzeros=keep_nonzeros, name=layer.qualname), name=layer.name)
           for layer in layers]
    for layer, q in zip(layers, out):
        w = layer.weight
        w.copy_(layer.from_canonical(q.dequantize(w.dtype)))
    return QuantizeResult(model=model, layers=out, skipped=list(selection.skipped), bits=bits,
                          group_size=group_size)
