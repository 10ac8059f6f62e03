"""Importance of a group of coupled channels: larger = more important = kept first.

A group's slices are, for each tensor dimension it touches, the sub-tensors at its indices
(a conv filter, a BatchNorm scale entry, a column of the next layer). Only parameters count
(BatchNorm running statistics and virtual slots do not).

* ``"l1"``: ``sum |w|`` over all slices (group magnitude; Li et al. 2017 "Pruning Filters for
  Efficient ConvNets" for one filter, summed over the group as in Torch-Pruning).
* ``"l2"`` (default): ``sqrt(sum w**2)`` over all slices, the group-lasso norm.
* ``"taylor"``: ``(sum w * dL/dw)**2`` over all slices, the first-order Taylor estimate of the
  loss change when the whole group is removed (Molchanov et al. 2019, "Importance Estimation
  for Neural Network Pruning", eq. for a group of parameters). Needs ``.grad`` on the
  parameters: run ``loss.backward()`` on a batch first. (``core.scores.taylor`` is the
  per-weight ``(w g)**2``, which does not let contributions of one group cancel.)
* ``"random"``: uniform noise from a seeded generator (the random baseline).
"""

from __future__ import annotations

import torch

from ..core import scores as core_scores
from ..errors import ConfigError
from .graph import DependencyGraph
from .trace import ELEMENTS

__all__ = ["IMPORTANCES", "group_importance"]

IMPORTANCES = ("l1", "l2", "taylor", "random")


def group_importance(graph: DependencyGraph, kind: str = "l2", *, seed: int = 0) -> torch.Tensor:
    """Importance of every group of ``graph`` (a float64 tensor, one entry per group)."""
    if kind not in IMPORTANCES:
        raise ConfigError(f"importance must be one of {list(IMPORTANCES)}; got {kind!r}")
    n = len(graph.groups)
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return core_scores.random(torch.empty(n), generator=g).double()
    params = {}
    for name, p in graph.model.named_parameters(remove_duplicate=False):
        params.setdefault(name, p)
    if kind == "taylor":
        missing = [k for k, p in params.items() if p.grad is None and any(sp.key == k for g in graph.groups for sp, _ in g.slots)]
        if missing:
            raise ConfigError(
                f"importance='taylor' needs gradients, but {missing[:3]} have no .grad; "
                "run loss.backward() on a batch before pruning")
    # one reduction per tensor dimension, then a sum per group over its indices
    per_index: dict = {}
    for gr in graph.groups:
        for sp, _ in gr.slots:
            if sp in per_index or sp.virtual or sp.key not in params:
                continue
            p = params[sp.key]
            w = p.detach().double()
            if kind == "l1":
                v = core_scores.magnitude(w)
            elif kind == "l2":
                v = w.pow(2)
            else:
                v = w * p.grad.detach().double()
            if sp.dim == ELEMENTS:  # a directly used parameter: one slot per element
                per_index[sp] = v.reshape(-1).cpu()
            else:
                others = [d for d in range(v.dim()) if d != sp.dim]
                per_index[sp] = (v.sum(dim=others) if others else v).cpu()
    out = torch.zeros(n, dtype=torch.float64)
    for gr in graph.groups:
        acc = 0.0
        for sp, ix in gr.slots:
            vec = per_index.get(sp)
            if vec is not None:
                acc += float(vec[list(ix)].sum())
        out[gr.index] = acc ** 0.5 if kind == "l2" else acc ** 2 if kind == "taylor" else acc
    return out
