"""Layer-wise allocation: split one global sparsity budget into per-layer sparsities.

All allocations take the canonical weight shapes (``[out, in, *kernel]``) of the masked
layers, in model order, and the global sparsity ``S``; they return one sparsity per layer such
that the total number of kept weights matches the uniform budget ``sum_l (1 - S) n_l`` (up to
per-layer rounding).

* :class:`Uniform`: every layer at ``S``.
* :class:`ER` (Mocanu et al. 2018, SET): density proportional to
  ``(n_in + n_out) / (n_in * n_out)``, using the first two dims (kernel ignored).
* :class:`ERK` (Evci et al. 2020, RigL): density proportional to ``(sum(dims) / prod(dims))**p``
  over all dims, ``p = power_scale`` (default 1; 0 gives uniform). Layers whose density would
  exceed 1 are made dense and their excess is redistributed over the rest, iterating as in
  RigL's ``get_sparsities_erdos_renyi`` (which counts each layer's budget as
  ``n - floor(S n)`` where this uses ``(1 - S) n``: less than one weight per layer apart).
  No layer is special-cased: RigL's scripts keep the first layer dense only with the uniform
  split (ImageNet) or set custom per-layer sparsities (MNIST); use ``Targets(first_layer="dense")``
  for the former.
* ``ER(epsilon=...)`` / ``ERK(epsilon=...)``: the densities given directly by the
  Erdős–Rényi parameter, as Mocanu et al. write it, ``density_l = min(1, epsilon * raw_l)``
  (``raw_l = (n_in + n_out) / (n_in n_out)`` for ER, so ``epsilon * (n_in + n_out)`` expected
  connections); the overall sparsity follows from them (:attr:`Allocation.defines_sparsity`,
  :func:`implied_sparsity`) instead of being an input. SET's Fashion-MNIST MLP uses
  ``epsilon = 13`` (ECMLPKDD 2019 tutorial), its other MLPs ``epsilon = 20``.
* :class:`Global`: no fixed split; one threshold over the pooled scores of all layers (the
  per-layer sparsities follow from the scores; see :func:`global_sparsities`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ConfigError, check_number, check_sparsity
from .patterns import num_pruned, topk_mask

__all__ = ["Allocation", "Uniform", "ER", "ERK", "Global", "PerLayer", "global_sparsities", "allocation_from_spec",
           "implied_sparsity"]


class Allocation(ABC):
    """Turns a global sparsity into per-layer sparsities."""

    name: str = "allocation"
    #: True if the split depends on scores (computed by the caller via :func:`global_sparsities`).
    needs_scores: bool = False

    @property
    def defines_sparsity(self) -> bool:
        """True if the split fixes every layer's density by itself (ER/ERK by ``epsilon``):
        the global sparsity is then an output (:func:`implied_sparsity`), not an input."""
        return getattr(self, "epsilon", None) is not None

    @abstractmethod
    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
        """Per-layer sparsities for ``shapes`` at global ``sparsity``."""


@dataclass(frozen=True)
class Uniform(Allocation):
    """Every layer gets the global sparsity."""

    name: str = "uniform"

    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
        """``[S] * len(shapes)``."""
        return [check_sparsity(sparsity)] * len(shapes)


def _erdos_renyi(raw: list[float], sizes: list[int], sparsity: float) -> list[float]:
    """RigL's iterative solve for ``eps`` with dense-layer redistribution.

    ``density_l = eps * raw_l``; layers whose density would exceed 1 become dense and the
    budget they overspend is taken from the others, until no layer exceeds 1.
    """
    density = 1.0 - sparsity
    dense: set[int] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for i, (r, n) in enumerate(zip(raw, sizes)):
            if i in dense:
                rhs -= n * sparsity  # a dense layer keeps n*(1-d) more than its uniform share
            else:
                rhs += n * density
                divisor += r * n
        if divisor <= 0:
            raise ConfigError(f"sparsity {sparsity} cannot be met: every layer would have to be dense")
        eps = rhs / divisor
        free = [i for i in range(len(raw)) if i not in dense]
        max_raw = max(raw[i] for i in free)
        if eps * max_raw > 1.0:
            # every layer tied at the maximum becomes dense together (RigL does the same)
            dense.update(i for i in free if math.isclose(raw[i], max_raw, rel_tol=1e-12))
            if len(dense) == len(raw):
                raise ConfigError(f"sparsity {sparsity} too low for ERK: every layer would be dense")
            continue
        break
    return [0.0 if i in dense else 1.0 - eps * raw[i] for i in range(len(raw))]


def _check_epsilon(epsilon: object, name: str) -> None:
    if epsilon is not None:
        check_number(epsilon, f"{name} epsilon", minimum=0.0, min_open=True, note=" (e.g. 13 or 20 as in SET)")


def _by_epsilon(raw: list[float], epsilon: float) -> list[float]:
    """``1 - min(1, epsilon * raw_l)`` per layer: densities set by ``epsilon`` directly, capped at dense."""
    return [max(0.0, 1.0 - epsilon * r) for r in raw]


def _er_raw(shapes: Sequence[tuple[int, ...]]) -> list[float]:
    for s in shapes:
        if len(s) < 2:
            raise ConfigError(
                f"ER allocation is defined for weights with at least 2 dims (n_out, n_in, ...); got shape {tuple(s)} "
                "(a bias?): use uniform or global allocation, or score biases jointly with their weight")
    return [(s[0] + s[1]) / (s[0] * s[1]) for s in shapes]


@dataclass(frozen=True)
class ER(Allocation):
    """Erdős–Rényi: density ∝ ``(n_in + n_out) / (n_in n_out)`` (first two dims).

    Args:
        epsilon: if given, the densities are ``min(1, epsilon (n_in + n_out) / (n_in n_out))``
            (Mocanu et al. 2018) and the global sparsity passed to :meth:`sparsities` must be
            None; if None (default), ``epsilon`` is solved so the total matches that sparsity.
    """

    epsilon: float | None = None
    name: str = "er"

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon, "ER")

    def epsilon_densities(self, shapes: Sequence[tuple[int, ...]]) -> list[float]:
        """``epsilon (n_in + n_out) / (n_in n_out)`` per layer, not capped at 1 (SET's expected
        connections over positions; above 1 for a small output layer)."""
        return [self.epsilon * r for r in _er_raw(shapes)]

    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float | None) -> list[float]:
        """Per-layer sparsities with the ER rule and dense-layer redistribution (or by ``epsilon``)."""
        raw = _er_raw(shapes)
        if self.epsilon is not None:
            _no_sparsity_with_epsilon(sparsity, self.name, self.epsilon)
            return _by_epsilon(raw, self.epsilon)
        sparsity = check_sparsity(sparsity)
        return _erdos_renyi(raw, [math.prod(s) for s in shapes], sparsity)


def _no_sparsity_with_epsilon(sparsity: object, name: str, epsilon: float) -> None:
    if sparsity is not None:
        raise ConfigError(f"{name} allocation with epsilon={epsilon} sets every layer's density itself; "
                          f"give sparsity or epsilon, not both (got sparsity={sparsity!r})")


@dataclass(frozen=True)
class ERK(Allocation):
    """Erdős–Rényi-Kernel: density ∝ ``(sum(dims) / prod(dims)) ** power_scale``."""

    power_scale: float = 1.0
    epsilon: float | None = None
    name: str = "erk"

    def __post_init__(self) -> None:
        check_number(self.power_scale, "ERK power_scale", minimum=0.0)
        _check_epsilon(self.epsilon, "ERK")

    def epsilon_densities(self, shapes: Sequence[tuple[int, ...]]) -> list[float]:
        """``epsilon (sum(dims) / prod(dims)) ** power_scale`` per layer, not capped at 1."""
        return [self.epsilon * (sum(s) / math.prod(s)) ** self.power_scale for s in shapes]

    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float | None) -> list[float]:
        """Per-layer sparsities with the ERK rule and dense-layer redistribution (or, with
        ``epsilon``, ``1 - min(1, epsilon (sum(dims) / prod(dims)) ** power_scale)``)."""
        raw = [(sum(s) / math.prod(s)) ** self.power_scale for s in shapes]
        if self.epsilon is not None:
            _no_sparsity_with_epsilon(sparsity, self.name, self.epsilon)
            return _by_epsilon(raw, self.epsilon)
        sparsity = check_sparsity(sparsity)
        return _erdos_renyi(raw, [math.prod(s) for s in shapes], sparsity)


@dataclass(frozen=True)
class Global(Allocation):
    """One magnitude (or score) threshold over all layers pooled together."""

    name: str = "global"
    needs_scores: bool = True

    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
        """Global allocation depends on scores; use :func:`global_sparsities`."""
        raise ConfigError("Global allocation needs scores: use global_sparsities(scores, sparsity)")


@dataclass(frozen=True)
class PerLayer(Allocation):
    """Explicit per-layer sparsities (one per masked layer, in model order); the global value is ignored."""

    values: tuple[float, ...] = ()
    name: str = "per-layer"

    def sparsities(self, shapes: Sequence[tuple[int, ...]], sparsity: float) -> list[float]:
        """The stored values; their count must match the masked layers."""
        if len(shapes) != len(self.values):
            raise ConfigError(f"per-layer allocation has {len(self.values)} values for {len(shapes)} masked layers")
        return [check_sparsity(v, "per-layer sparsity") for v in self.values]


def global_sparsities(scores: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Per-layer sparsities that result from pruning the pooled ``scores`` at ``sparsity``.

    Exactly ``round(S * N_total)`` weights are pruned overall (ties: lower layer, then lower
    index, pruned first). Each returned value is ``zeros_l / n_l`` for that layer, so feeding
    it back through :class:`~sparseforge.core.patterns.Unstructured` reproduces the same count.
    """
    sparsity = check_sparsity(sparsity)
    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in scores])
    n = flat.numel()
    keep = topk_mask(flat, n - num_pruned(sparsity, n))
    out, start = [], 0
    for s in scores:
        k = s.numel()
        out.append(float((~keep[start : start + k]).sum()) / k)
        start += k
    return out


def implied_sparsity(shapes: Sequence[tuple[int, ...]], sparsities: Sequence[float]) -> float:
    """Overall sparsity of layers ``shapes`` at per-layer ``sparsities``, from the exact counts.

    Each layer prunes :func:`~sparseforge.core.patterns.num_pruned` ``(s_l, n_l)`` weights, so
    this is what the masks will hold, e.g. for an ``epsilon`` allocation.
    """
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    return sum(num_pruned(s, n) for s, n in zip(sparsities, sizes)) / total if total else 0.0


def allocation_from_spec(spec: str | Allocation | None) -> Allocation:
    """Build an allocation from a recipe value (``"uniform"``, ``"er"``, ``"erk"``, ``"global"``),
    or a dict with ``type`` and the class's fields (``{"type": "er", "epsilon": 13}``)."""
    if spec is None:
        return Uniform()
    if isinstance(spec, Allocation):
        return spec
    table = {"uniform": Uniform, "er": ER, "erk": ERK, "global": Global}
    if isinstance(spec, str) and spec.lower() in table:
        return table[spec.lower()]()
    if isinstance(spec, dict) and spec.get("type") in table:
        d = dict(spec)
        kind = d.pop("type")
        try:
            return table[kind](**d)
        except TypeError as e:
            raise ConfigError(f"allocation {kind}: {e}") from None
    raise ConfigError(f"allocation must be one of {sorted(table)}; got {spec!r}")
