"""One-shot N:M magnitude pruning without calibration data.

* :func:`prune_nm` -- N:M by magnitude for any model (Linear, Conv1d/2d/3d, HF Conv1D): in every
  group of M consecutive inputs keep the N largest ``|w|`` (Mishra et al. 2021, "Accelerating
  Sparse Deep Neural Networks", prune-once recipe). Layers whose input dimension M does not
  divide follow the ``indivisible`` policy: ``"error"`` (default), ``"skip"`` (left dense and
  listed) or ``"pad"`` (tail group zero-padded to M).

Masks are installed as ``<param>_mask`` buffers with the pruned weights zeroed, so the model can
be fine-tuned with the masks held (``result.masking.attach(optimizer)``), reported
(``sparsity_report(result)``) or folded with ``result.masking.finalize()``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..core.targets import INDIVISIBLE, parse_target, target_from_args
from ..errors import ConfigError, LayerError
from ..masking import MASK_SUFFIX, Masking, Targets
from ..results import Result
from ..transaction import transaction

__all__ = ["prune_nm", "NMPruneResult"]


@dataclass(frozen=True, kw_only=True)
class NMPruneResult(Result):
    """What :func:`prune_nm` returns.

    Attributes:
        model: the model, pruned in place (masks installed, pruned weights zero).
        layers: the pruned parameters (:class:`~sparseforge.masking.MaskedLayer`, ``name`` =
            module name), in module order.
        skipped: ``(name, reason)`` of the layers left dense (``indivisible="skip"``, tied weights).
        masking: the :class:`~sparseforge.masking.Masking` holding the masks (``attach`` it to an
            optimizer to fine-tune, ``finalize()`` to fold them).
        pattern: the N:M pattern (:class:`~sparseforge.core.patterns.NM`).
    """

    masking: Masking
    pattern: Any = None

    def __getattr__(self, name: str) -> Any:
        # prune_nm returned the Masking itself before: its methods keep working for one release
        masking = self.__dict__.get("masking")
        if name.startswith("_") or masking is None or not hasattr(masking, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(f"prune_nm returns an NMPruneResult now; result.{name} reaches the Masking through a "
                      f"deprecated shortcut: use result.masking.{name}", DeprecationWarning, stacklevel=2)
        return getattr(masking, name)


def prune_nm(model: nn.Module, sparsity: Any = "2:4", *, targets: Any = None, indivisible: str = "error",
             pattern: Any = None) -> NMPruneResult:
    """Prune ``model`` in place to N:M by magnitude.

    Args:
        model: any ``nn.Module`` (targets default to Linear, Conv1d/2d/3d and HF Conv1D weights).
        sparsity: the N:M target: ``"N:M"`` or :class:`~sparseforge.core.patterns.NM` with N < M
            (:func:`~sparseforge.core.targets.parse_target`).
        targets: :class:`~sparseforge.masking.Targets` or a dict of its fields.
        indivisible: ``"error"``, ``"skip"`` or ``"pad"`` (see the module docstring).
        pattern: deprecated alias of ``sparsity`` (warns).

    Returns:
        an :class:`NMPruneResult`: ``.model``, ``.layers`` (the pruned parameters), ``.skipped``
        and ``.masking`` (the :class:`~sparseforge.masking.Masking`: ``result.masking.finalize()``).
    """
    if pattern is not None:
        target = target_from_args(None, pattern, owner="prune_nm")
    else:
        target = parse_target(sparsity)
    if not target.is_nm:
        raise ConfigError(f"prune_nm needs an N:M target such as '2:4'; got {sparsity!r} (for a fraction of zeros "
                          f"use prune_oneshot(model, 'magnitude', {target.sparsity:g}))")
    p = target.pattern
    if indivisible not in INDIVISIBLE:
        raise ConfigError(f"indivisible must be one of {list(INDIVISIBLE)}; got {indivisible!r}")
    with transaction(model, tensors="journal") as txn:
        masking = Masking(model, Targets.from_spec(targets) if targets is not None else None)
        plan = []
        for layer in list(masking.layers):
            cin = layer.canonical_shape[1]
            if cin % p.m == 0 or indivisible == "pad":
                plan.append((layer, cin % p.m != 0))
            elif indivisible == "skip":
                delattr(layer.module, layer.param_name + MASK_SUFFIX)
                masking.layers.remove(layer)
                masking.skipped.append((layer.qualname, f"input dimension {cin} not divisible by M={p.m}; left dense"))
            else:
                raise LayerError(f"{layer.qualname}: input dimension {cin} (shape {layer.canonical_shape}) is not "
                                 f"divisible by M={p.m}; pass indivisible='skip' or 'pad', or exclude it")
        for layer, pad in plan:
            txn.save(layer.weight)
            masking.set_mask(layer, p.mask(layer.canonical(layer.weight).detach().abs(), pad=pad, layer=layer.qualname),
                             canonical=True)
    return NMPruneResult(model=model, layers=list(masking.layers), skipped=list(masking.skipped), masking=masking,
                         pattern=p)
