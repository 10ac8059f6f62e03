"""HESSO: train once, prune groups progressively to exact zeros (a drop-in optimizer wrapper).

Chen et al. 2024, "HESSO: Towards Automatic Efficient and User Friendly Any Neural Network
Training and Pruning" (the optimizer of Only-Train-Once v3). Schedule, as in the official
``only_train_once/optimizer/hesso.py``:

* warm-up: ``start_pruning_step`` plain steps of the wrapped optimizer;
* ``pruning_periods`` periods of ``D = pruning_steps // pruning_periods`` steps each. At the
  first step of period ``k`` every group gets a saliency score, and the lowest-scoring
  not-yet-pruned groups join the *redundant* set: ``K // periods`` of them (the last period
  takes the remainder), ``K = int(num_groups * min(target_group_sparsity, 0.999))``;
* during the period the wrapped optimizer steps every parameter, then each redundant group is
  multiplied by ``(D - j) / (D - j + 1)`` at its ``j``-th step, so it decays linearly and is
  exactly zero at the end of the period; from then on it is held at zero after every step;
* after the last period the model has exactly ``K`` zero groups and trains on normally.

Saliency (default weights 0.2 each, official defaults), computed per group over all its
slices from the weights ``w`` and the current gradients ``g``, each criterion divided by its
L2 norm over all groups before the weighted sum:
``magnitude = ||w||``, ``avg_magnitude = ||w|| / n`` (``n`` = elements in the group),
``cosine_similarity = <w, g> / (||w|| ||g||) + 1``, ``taylor_first_order = |<w, g>|``,
``taylor_second_order = <w, g>**2 / 2``.

Deviations from the official code, on purpose: (1) the gradient terms use the raw gradient
``p.grad`` rather than the optimizer's update direction, so any ``torch.optim`` optimizer can
be wrapped; (2) a cluster (a layer's output channels) never loses its last group, the next
lowest-scoring group is taken instead, so the target count is still reached exactly when
possible; (3) the decay factor is indexed so that the groups reach zero on the period's last
step.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, check_int, check_sparsity
from .graph import DependencyGraph, trace_groups
from .shrink import Kept, kept_indices, shrink
from .trace import ELEMENTS

__all__ = ["HESSO", "DEFAULT_CRITERIA"]

DEFAULT_CRITERIA: dict[str, float] = {
    "magnitude": 0.2, "avg_magnitude": 0.2, "cosine_similarity": 0.2,
    "taylor_first_order": 0.2, "taylor_second_order": 0.2,
}


class HESSO:
    """Wrap ``optimizer`` so that training drives ``target_group_sparsity`` of the groups to zero.

    Args:
        model: the model being trained (its parameters must be the optimizer's).
        example_inputs: inputs for tracing the groups (see :func:`.trace_groups`), or pass
            ``graph`` instead.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        target_group_sparsity: fraction of groups that end exactly at zero, in [0, 1).
        pruning_steps: steps over which pruning happens (after the warm-up); at least
            ``pruning_periods``.
        start_pruning_step: warm-up steps (default 0).
        pruning_periods: number of periods (default 1).
        criteria: saliency weights, a subset of :data:`DEFAULT_CRITERIA` (default all, 0.2 each).
        ignore: modules or names that keep both dimensions.
        graph: a precomputed :class:`.DependencyGraph` of ``model``.

    Call ``loss.backward()`` then ``hesso.step()`` (instead of ``optimizer.step()``) and
    ``optimizer.zero_grad()`` as usual. After training, :meth:`kept` and :meth:`shrink` give
    the compact model.
    """

    def __init__(self, model: nn.Module, example_inputs: Any = None, optimizer: torch.optim.Optimizer | None = None, *,
                 target_group_sparsity: float, pruning_steps: int, start_pruning_step: int = 0, pruning_periods: int = 1,
                 criteria: Mapping[str, float] | None = None, ignore: Sequence[Any] = (),
                 graph: DependencyGraph | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        check_sparsity(target_group_sparsity, "target_group_sparsity")
        self.pruning_periods = check_int(pruning_periods, "pruning_periods", minimum=1)
        self.pruning_steps = check_int(pruning_steps, "pruning_steps", minimum=self.pruning_periods)
        self.start_pruning_step = check_int(start_pruning_step, "start_pruning_step", minimum=0)
        crit = dict(DEFAULT_CRITERIA if criteria is None else criteria)
        unknown = sorted(set(crit) - set(DEFAULT_CRITERIA))
        if unknown or not crit:
            raise ConfigError(f"criteria must be a non-empty subset of {sorted(DEFAULT_CRITERIA)}; got {sorted(crit)}")
        self.criteria = crit
        if graph is None:
            if example_inputs is None:
                raise ConfigError("HESSO needs example_inputs (to trace the groups) or graph")
            graph = trace_groups(model, example_inputs, ignore=ignore)
        self.graph, self.model, self.optimizer = graph, model, optimizer
        self.period_len = self.pruning_steps // self.pruning_periods
        n = len(graph.groups)
        self.target_num = int(n * min(float(target_group_sparsity), 0.999))
        cap = n - len(graph.clusters)  # every cluster keeps one group
        if self.target_num > cap:
            raise ConfigError(f"target_group_sparsity={target_group_sparsity} asks for {self.target_num} of {n} groups, "
                              f"but at most {cap} can go (each of the {len(graph.clusters)} layers keeps one); "
                              f"use at most {cap / n:.4g}")
        per = self.target_num // self.pruning_periods
        self.per_period = [per] * (self.pruning_periods - 1) + [self.target_num - per * (self.pruning_periods - 1)]
        self.num_steps = 0
        self.pruned: list[int] = []
        self.active: list[int] = []
        self._params = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self._params.setdefault(name, p)
        # the slices of every group, as (parameter, dim, index tensor); element slots use dim ELEMENTS
        self._slices: list[list[tuple[torch.Tensor, int, torch.Tensor]]] = []
        for g in graph.groups:
            sl = []
            for sp, ix in g.slots:
                p = self._params.get(sp.key)
                if p is not None and not sp.virtual:
                    sl.append((p, sp.dim, torch.tensor(ix, dtype=torch.long, device=p.device)))
            self._slices.append(sl)

    # ---------------------------------------------------------------- saliency
    def _group_stats(self) -> dict[str, torch.Tensor]:
        n = len(self.graph.groups)
        ww, gg, wg, cnt = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
        for gi, sl in enumerate(self._slices):
            for p, dim, idx in sl:
                w = p.detach().reshape(-1)[idx] if dim == ELEMENTS else p.detach().index_select(dim, idx)
                g = p.grad
                gs = None if g is None else (g.reshape(-1)[idx] if dim == ELEMENTS else g.index_select(dim, idx))
                ww[gi] += float(w.double().pow(2).sum())
                cnt[gi] += w.numel()
                if gs is not None:
                    gg[gi] += float(gs.double().pow(2).sum())
                    wg[gi] += float((w.double() * gs.double()).sum())
        return {"ww": ww, "gg": gg, "wg": wg, "cnt": cnt}

    def saliency(self) -> torch.Tensor:
        """Weighted, normalised saliency of every group (larger = more important)."""
        s = self._group_stats()
        wn, gn = s["ww"].sqrt(), s["gg"].sqrt()
        raw = {
            "magnitude": wn,
            "avg_magnitude": wn / (s["cnt"] + 1e-6),
            "cosine_similarity": s["wg"] / (wn + 1e-8) / (gn + 1e-8) + 1,
            "taylor_first_order": s["wg"].abs(),
            "taylor_second_order": 0.5 * s["wg"] ** 2,
        }
        total = torch.zeros(len(self.graph.groups), dtype=torch.float64)
        for name, weight in self.criteria.items():
            v = raw[name]
            total += weight * v / (float(v.norm()) + 1e-8)
        return total

    def _choose(self, k: int) -> list[int]:
        scores = self.saliency()
        taken = set(self.pruned)
        left = {c.index: len(c.groups) - sum(1 for gi in c.groups if gi in taken) for c in self.graph.clusters}
        chosen: list[int] = []
        for gi in sorted(range(len(scores)), key=lambda i: (float(scores[i]), i)):
            if len(chosen) == k:
                break
            c = self.graph.groups[gi].cluster
            if gi in taken or left[c] <= 1:
                continue
            chosen.append(gi)
            left[c] -= 1
        return chosen

    # ---------------------------------------------------------------- stepping
    @torch.no_grad()
    def _scale(self, groups: Sequence[int], factor: float) -> None:
        for gi in groups:
            for p, dim, idx in self._slices[gi]:
                if dim == ELEMENTS:
                    p.view(-1)[idx] *= factor
                else:
                    p.index_copy_(dim, idx, p.index_select(dim, idx) * factor)

    def step(self, closure: Any = None) -> Any:
        """One optimizer step followed by HESSO's projection (see the module docstring)."""
        self.num_steps += 1
        rel = self.num_steps - self.start_pruning_step  # 1 at the first pruning step
        period, j = (rel - 1) // self.period_len, (rel - 1) % self.period_len + 1
        in_pruning = rel >= 1 and period < self.pruning_periods
        if in_pruning and j == 1:
            # saliency needs the gradients of this step, before the optimizer consumes them
            self.active = self._choose(self.per_period[period])
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        if in_pruning and self.active:
            self._scale(self.active, (self.period_len - j) / (self.period_len - j + 1))
            if j == self.period_len:
                self.pruned.extend(self.active)
                self.active = []
        self._scale(self.pruned, 0.0)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``optimizer.zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def finished(self) -> bool:
        """Whether every period is over (exactly the target number of groups is zero)."""
        return self.num_steps >= self.start_pruning_step + self.period_len * self.pruning_periods

    def zero_groups_count(self) -> int:
        """Groups whose every slice is exactly zero now (measured from the weights)."""
        s = self._group_stats()
        return int((s["ww"] == 0).sum())

    def kept(self) -> Kept:
        """The kept indices of the pruned groups, for :func:`.shrink` / :func:`.save_structured`."""
        return kept_indices(self.graph, sorted(self.pruned))

    def shrink(self) -> nn.Module:
        """The compact model (a shrunk copy; the trained model is not changed)."""
        return shrink(self.model, self.kept())

    def state_dict(self) -> dict[str, Any]:
        """HESSO's own state (not the wrapped optimizer's), for checkpoints."""
        return {"num_steps": self.num_steps, "pruned": list(self.pruned), "active": list(self.active)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.num_steps = int(state["num_steps"])
        self.pruned, self.active = list(state["pruned"]), list(state["active"])
