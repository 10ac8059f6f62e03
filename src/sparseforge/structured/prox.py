"""Proximal group-sparse training: group lasso and the group sparse envelope function.

Both act on a model's groups (:mod:`.graph`) through their norms ``u_g = ||x_g||`` (over all
slices of the group), and their proximal operators are radial per group:
``prox(x)_g = (v_g / u_g) * x_g``. Training is proximal SGD: after each step of the wrapped
optimizer with learning rate ``eta``, ``x <- prox_{eta * lam * R}(x)``.

* Group lasso (Yuan & Lin 2006), ``R(x) = sum_g w_g ||x_g||`` with ``w_g = sqrt(n_g)``
  (``n_g`` elements in the group): block soft-thresholding ``v_g = max(0, u_g - t w_g)``.
* Group sparse envelope function (the unweighted case of WGSEF, Refael, Arbel & Huleihel,
  "Learning k-Level Structured Sparse Neural Networks Using Group Envelope Regularization",
  arXiv 2212.12921; the sparse envelope function of Beck & Refael 2022 applied to the
  vector of group norms): ``R(x) = SEF_k(u)``, the convex envelope of
  ``1/2 ||u||^2 + indicator(||u||_0 <= k)``, i.e. half the squared k-support norm. With
  ``|u|`` sorted decreasingly and ``r`` in ``0..k-1`` the integer with
  ``u_(k-r-1) > 1/(r+1) sum_{i>=k-r} u_(i) >= u_(k-r)`` (``u_(0) = inf``):
  ``SEF_k(u) = 1/2 sum_{i<k-r} u_(i)^2 + 1/(2(r+1)) (sum_{i>=k-r} u_(i))^2``.

  Its prox with parameter ``t`` comes from the variational form
  ``SEF_k(v) = 1/2 min {sum v_i^2 / theta_i : 0 < theta_i <= 1, sum theta_i <= k}``: for fixed
  ``theta`` the minimiser is ``v_i = u_i theta_i / (theta_i + t)``, and the optimal ``theta`` is
  ``theta_i = clip(c u_i - t, 0, 1)`` with ``c`` solving ``sum_i theta_i(c) = k`` (a
  piecewise-linear equation solved exactly). Every group with ``c u_g <= t`` becomes exactly
  zero; at least ``k`` groups stay. This agrees with the k-support-norm prox of Argyriou,
  Foygel & Srebro 2012 (Algorithm 1) and is checked against a generic solver in the tests.

* Weighted GSEF: per-group weights ``d_g > 0`` enter as the convex envelope of
  ``1/2 sum_g d_g ||x_g||^2 + indicator(at most k nonzero groups)``, i.e.
  ``R(x) = SEF_k(sqrt(d) * u)``. The same variational argument gives
  ``theta_g = clip(c sqrt(d_g) u_g - t d_g, 0, 1)`` and ``v_g = u_g theta_g / (theta_g + t d_g)``,
  again piecewise linear in ``c`` and solved exactly; a heavier group needs a larger norm to
  stay. This weighting convention is ours (the paper's text was not available to check
  against); ``d = 1`` is the unweighted function above, and the generic-solver test covers
  random weights. ``weights="size"`` uses ``d_g = n_g / mean(n)`` (elements per group, so
  ``lam`` keeps its scale).

The prox alone does not stop at exactly ``k`` groups; :meth:`GroupProx.finalize` zeroes all
groups but the ``k`` largest once training ends (each layer keeps at least one).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError, check_number, check_sparsity
from .graph import DependencyGraph, trace_groups
from .shrink import Kept, kept_indices, shrink
from .trace import ELEMENTS

__all__ = ["sef", "sef_prox", "group_lasso_prox", "GroupProx"]


def _weights(weights: torch.Tensor | None, n: int) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    d = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if d.numel() != n:
        raise ConfigError(f"weights must have one entry per group ({n}); got {d.numel()}")
    if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
        raise ConfigError(f"weights must be finite and > 0; got min {float(d.min()):.3g}")
    return d


def sef(u: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> float:
    """``SEF_k(sqrt(d) * |u|)`` (see the module docstring) of a 1-D tensor; ``d = weights`` (default 1)."""
    z = (u.double().abs() * _weights(weights, len(u)).sqrt()).sort(descending=True).values
    n = len(z)
    if k >= n:
        return 0.5 * float(z.pow(2).sum())
    for r in range(k):
        tail = float(z[k - r - 1:].sum()) / (r + 1)
        prev = math.inf if k - r - 2 < 0 else float(z[k - r - 2])
        if prev > tail >= float(z[k - r - 1]):
            return 0.5 * float(z[: k - r - 1].pow(2).sum()) + 0.5 * (r + 1) * tail ** 2
    raise ConfigError("internal: no r satisfies the SEF condition")  # cannot happen for finite input


def sef_prox(u: torch.Tensor, k: int, t: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``argmin_v t * SEF_k(sqrt(d) v) + 1/2 ||v - u||^2`` for ``u >= 0`` (1-D), exactly; ``d = weights`` (default 1)."""
    if t < 0:
        raise ConfigError(f"prox parameter t must be >= 0; got {t}")
    u = u.double()
    d = _weights(weights, len(u))
    pos = u > 0
    if int(pos.sum()) <= k or t == 0:
        return u / (1 + t * d)
    # theta_i(c) = clip(a_i c - b_i, 0, 1) is piecewise linear in c: find c with sum = k exactly
    a = u[pos] * d[pos].sqrt()
    b = t * d[pos]
    brk = torch.cat([b / a, (b + 1) / a]).sort().values

    def total(c: float) -> float:
        return float((c * a - b).clamp(0, 1).sum())
    lo = 0.0
    for x in brk.tolist():
        if total(x) >= k:
            hi = x
            break
        lo = x
    else:  # pragma: no cover - total(max breakpoint) = number of positive entries > k
        hi = float(brk[-1])
    mid = (lo + hi) / 2
    middle = (mid * a > b) & (mid * a < b + 1)  # entries on the linear part in (lo, hi)
    sat = mid * a >= b + 1
    slope = float(a[middle].sum())
    c = hi if slope == 0 else (k - float(sat.sum()) + float(b[middle].sum())) / slope
    theta = torch.zeros_like(u)
    theta[pos] = (c * a - b).clamp(0, 1)
    return u * theta / (theta + t * d)


def group_lasso_prox(u: torch.Tensor, t: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Block soft-thresholding of group norms: ``max(0, u - t * w)``."""
    w = torch.ones_like(u) if weights is None else weights.to(u)
    return (u - t * w).clamp_min(0)


class GroupProx:
    """Proximal group-sparse training around any torch optimizer.

    Args:
        model, example_inputs, optimizer, ignore, graph: as for :class:`.HESSO`.
        penalty: ``"sef"`` (group sparse envelope, default) or ``"group_lasso"``.
        lam: regularisation strength ``lambda`` (> 0).
        target_group_sparsity: for ``"sef"``, ``k = n - round(s * n)`` groups are free; also
            the sparsity :meth:`finalize` enforces. In [0, 1).
        weights: per-group weights ``d_g`` of the weighted SEF (``"sef"`` only): ``None``
            (default, all 1), ``"size"`` (``n_g / mean(n)``, elements per group) or one
            positive number per group of ``graph.groups``.

    ``step()`` = optimizer step, then ``x <- prox_{lr * lam * R}(x)`` with the learning rate
    of the optimizer's first parameter group.
    """

    def __init__(self, model: nn.Module, example_inputs: Any = None, optimizer: torch.optim.Optimizer | None = None, *,
                 lam: float, target_group_sparsity: float, penalty: str = "sef", ignore: Sequence[Any] = (),
                 graph: DependencyGraph | None = None, weights: str | Sequence[float] | torch.Tensor | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if penalty not in ("sef", "group_lasso"):
            raise ConfigError(f"penalty must be 'sef' or 'group_lasso'; got {penalty!r}")
        check_number(lam, "lam", minimum=0.0, min_open=True)
        check_sparsity(target_group_sparsity, "target_group_sparsity")
        if graph is None:
            if example_inputs is None:
                raise ConfigError("GroupProx needs example_inputs (to trace the groups) or graph")
            graph = trace_groups(model, example_inputs, ignore=ignore)
        self.model, self.optimizer, self.graph = model, optimizer, graph
        self.penalty, self.lam = penalty, float(lam)
        n = len(graph.groups)
        self.num_zero_target = int(round(target_group_sparsity * n))
        self.k = n - self.num_zero_target
        if self.k < len(graph.clusters):
            raise ConfigError(f"target_group_sparsity={target_group_sparsity} keeps {self.k} of {n} groups, but each of the "
                              f"{len(graph.clusters)} layers needs one; use at most {(n - len(graph.clusters)) / n:.4g}")
        params = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            params.setdefault(name, p)
        self._slices = [[(params[sp.key], sp.dim, torch.tensor(ix, dtype=torch.long, device=params[sp.key].device)) for sp, ix in g.slots
                         if sp.key in params and not sp.virtual] for g in graph.groups]
        # elements per group (for the group-lasso weights sqrt(n_g))
        self.sizes = torch.tensor([sum(idx.numel() * (1 if d == ELEMENTS else p.numel() // p.size(d)) for p, d, idx in sl)
                                   for sl in self._slices], dtype=torch.float64)
        self.finalized: list[int] | None = None
        if weights is not None and penalty != "sef":
            raise ConfigError(f"weights apply to penalty='sef' only; got penalty={penalty!r}")
        if isinstance(weights, str):
            if weights != "size":
                raise ConfigError(f"weights must be None, 'size' or one positive number per group; got {weights!r}")
            weights = self.sizes / self.sizes.mean()
        self.weights = None if weights is None else _weights(weights, n)

    def _get(self, p: torch.Tensor, d: int, idx: torch.Tensor) -> torch.Tensor:
        return p.detach().reshape(-1)[idx] if d == ELEMENTS else p.detach().index_select(d, idx)

    def group_norms(self) -> torch.Tensor:
        """``||x_g||`` of every group."""
        return torch.tensor([math.sqrt(sum(float(self._get(p, d, i).double().pow(2).sum()) for p, d, i in sl))
                             for sl in self._slices], dtype=torch.float64)

    @torch.no_grad()
    def _scale(self, factors: torch.Tensor) -> None:
        for sl, f in zip(self._slices, factors.tolist()):
            if f == 1.0:
                continue
            for p, d, idx in sl:
                if d == ELEMENTS:
                    p.view(-1)[idx] *= f
                else:
                    p.index_copy_(d, idx, p.index_select(d, idx) * f)

    def prox(self, t: float) -> None:
        """Apply ``prox_{t R}`` to the model's groups."""
        u = self.group_norms()
        v = sef_prox(u, self.k, t, self.weights) if self.penalty == "sef" else group_lasso_prox(u, t, self.sizes.sqrt())
        factors = torch.where(u > 0, v / u.clamp_min(1e-300), torch.zeros_like(u))
        self._scale(factors)

    def step(self, closure: Any = None) -> Any:
        """Optimizer step, then the proximal step."""
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.prox(lr * self.lam)
        if self.finalized:
            self._scale(torch.tensor([0.0 if i in set(self.finalized) else 1.0 for i in range(len(self._slices))]))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``optimizer.zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def zero_groups_count(self) -> int:
        """Groups whose every slice is exactly zero now."""
        return int((self.group_norms() == 0).sum())

    def finalize(self) -> list[int]:
        """Zero every group but the ``k`` with the largest norms (each layer keeps one); return the zeroed groups."""
        u = self.group_norms()
        left = {c.index: len(c.groups) for c in self.graph.clusters}
        zeroed: list[int] = []
        for gi in sorted(range(len(u)), key=lambda i: (float(u[i]), i)):
            if len(zeroed) == self.num_zero_target:
                break
            c = self.graph.groups[gi].cluster
            if left[c] > 1:
                zeroed.append(gi)
                left[c] -= 1
        self._scale(torch.tensor([0.0 if i in set(zeroed) else 1.0 for i in range(len(u))]))
        self.finalized = sorted(zeroed)
        return self.finalized

    def kept(self) -> Kept:
        """Kept indices after :meth:`finalize` (for :func:`.shrink` / :func:`.save_structured`)."""
        if self.finalized is None:
            raise ConfigError("call finalize() before kept()/shrink()")
        return kept_indices(self.graph, self.finalized)

    def shrink(self) -> nn.Module:
        """The compact model after :meth:`finalize`."""
        return shrink(self.model, self.kept())
