"""Sparsity-aware rescaling of a dense initialisation.

Evci et al. 2022, "Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win"
(AAAI; official code ``google-research/rigl``, ``rigl_tf2/init_utils.py``): a dense
initialisation scaled for a unit's full fan-in gives a sparse unit, which sees only its kept
inputs, too small a pre-activation variance, and signal and gradients shrink layer by layer.
Their *sparse initialisation* draws each kept weight of output unit ``j`` with the variance of
the dense scheme evaluated at the unit's real fan-in ``k_j`` (the number of its kept inputs).

For every variance-scaling initialisation in fan-in mode (PyTorch's default
``kaiming_uniform_(a=sqrt(5))`` of ``Linear``/``Conv``, He, LeCun) the variance is ``c / fan_in``,
so the same distribution is reached by multiplying the model's own initial weights by

* ``"unit"``: ``sqrt(fan_in / max(1, k_j))`` per output unit ``j`` (``unit_scaled_init``
  with ``mode='fanin'``, the paper's sparse init; the official code draws new values instead
  of rescaling the existing ones);
* ``"layer"``: ``sqrt(n / max(1, kept))`` for the whole layer, ``1 / sqrt(density)``
  (``layer_scaled_init``; equals ``"unit"`` when every unit keeps the same count);
* ``"dense"``: 1, the model's initialisation unchanged (what the RigL, SET and random-pruning
  papers train with, and the default of every method here).

``fan_in`` is the canonical weight's size per output unit (``in_features``, or
``in_channels / groups * prod(kernel)``).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["INIT_SCALES", "check_init_scale", "init_scale_factors"]

#: accepted values of the ``init_scale`` argument of the sparse-from-scratch methods
INIT_SCALES = ("dense", "unit", "layer")


def check_init_scale(mode: object, name: str = "init_scale") -> str:
    """Return ``mode`` if it is one of :data:`INIT_SCALES`, else raise :class:`ConfigError` naming ``name``."""
    if not isinstance(mode, str) or mode not in INIT_SCALES:
        raise ConfigError(f"{name} must be one of {list(INIT_SCALES)}; got {mode!r}")
    return mode


def init_scale_factors(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Multipliers that turn a dense fan-in initialisation into the sparse one of ``mode``.

    Args:
        mask: bool mask in the canonical ``[out, in, *kernel]`` layout (at least 2-D).
        mode: ``"unit"``, ``"layer"`` or ``"dense"`` (see the module docstring).

    Returns:
        float32 factors broadcastable to ``mask``: shape ``[out, 1, ...]`` for ``"unit"``, a
        0-d tensor for ``"layer"`` and ``"dense"``. A unit (or layer) with nothing kept gets
        the factor for one kept input; its weights are all zero anyway.

    >>> m = torch.tensor([[True, False, False, False], [True, True, True, True]])
    >>> init_scale_factors(m, "unit").flatten().tolist()
    [2.0, 1.0]
    >>> round(float(init_scale_factors(m, "layer")), 4)  # sqrt(8 / 5)
    1.2649
    """
    check_init_scale(mode, "mode")
    if mask.dim() < 2:
        raise ConfigError(f"mask must be at least 2-D ([out, in, *kernel]); got shape {tuple(mask.shape)}")
    if mode == "dense":
        return torch.tensor(1.0)
    if mode == "layer":
        return torch.tensor(math.sqrt(mask.numel() / max(1, int(torch.count_nonzero(mask)))))
    fan_in = math.prod(mask.shape[1:])
    kept = mask.reshape(mask.shape[0], -1).sum(1, dtype=torch.float32).clamp_(min=1.0)
    return (fan_in / kept).sqrt_().reshape(-1, *[1] * (mask.dim() - 1))
