"""Groups of coupled channels, found by tracing a model once (see :mod:`.trace`).

A :class:`Group` is one removable unit: the slots (indices of tensor dimensions) that must go
together, e.g. output channel 3 of a conv, entry 3 of its BatchNorm's four tensors and input
channel 3 of the next conv. A :class:`Cluster` is the set of groups that share tensor
output dimension (all output channels of that conv, or of two convs joined by a residual
add): per-layer ranking happens inside a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from torch import nn

from ..errors import ConfigError
from .rules import find_rule
from .trace import ELEMENTS, Space, TraceContext, run_trace

__all__ = ["Group", "Cluster", "DependencyGraph", "trace_groups"]


@dataclass(frozen=True)
class Group:
    """One removable unit: ``slots`` maps each tensor dimension (:class:`Space`) to its indices."""

    index: int
    cluster: int
    slots: tuple[tuple[Space, tuple[int, ...]], ...]

    def channels(self, space: Space) -> int:
        """Number of indices this group holds in ``space``."""
        return sum(len(ix) for sp, ix in self.slots if sp == space)


@dataclass
class Cluster:
    """Groups that share a layer output dimension; ``sources`` are those output dimensions."""

    index: int
    groups: list[int]
    spaces: list[Space]
    sources: list[Space]
    heads: bool = False

    @property
    def name(self) -> str:
        """A readable name: the first output dimension."""
        return str(self.sources[0]) if self.sources else str(self.spaces[0])


@dataclass
class DependencyGraph:
    """The result of tracing: prunable groups, their clusters, and what was left alone and why.

    Attributes:
        model: the traced model (not modified).
        ctx: the raw trace (slots, union-find, rules that ran).
        groups / clusters: the prunable units.
        skipped: ``(output dimension, reason)`` for layer outputs none of whose channels can
            be pruned.
        unknown: operations and layers without a rule, with what was done about them.
    """

    model: nn.Module
    ctx: TraceContext
    groups: list[Group]
    clusters: list[Cluster]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Multi-line text: clusters with their sizes, skipped layer outputs and unknown ops."""
        lines = [f"{len(self.groups)} prunable groups in {len(self.clusters)} clusters"]
        for c in self.clusters:
            unit = "heads" if c.heads else "groups"
            lines.append(f"  [{c.index}] {len(c.groups)} {unit}: " + ", ".join(str(s) for s in c.spaces))
        for name, why in self.skipped:
            lines.append(f"  skipped {name}: {why}")
        for name, why in self.unknown.items():
            lines.append(f"  unknown {name}: {why}")
        return "\n".join(lines)


def slab_dims(shape: Sequence[int], flat: Iterable[int]) -> dict[int, list[int]] | None:
    """Write the elements ``flat`` (flat indices into ``shape``) as whole slices per dimension.

    Returns ``{dim: indices}`` such that the elements are exactly the union of the slices
    ``index_select(dim, indices)``, or ``None`` if they are not a union of whole slices.
    """
    import torch

    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    mask[list(flat)] = True
    mask = mask.reshape(tuple(shape))
    cover = torch.zeros_like(mask)
    out: dict[int, list[int]] = {}
    for d in range(mask.dim()):
        if mask.size(d) == 1 and mask.dim() > 1:
            continue  # a size-1 dimension cannot lose its only slice
        others = [i for i in range(mask.dim()) if i != d]
        full = mask.all(dim=others) if others else mask
        idx = full.nonzero().flatten().tolist()
        if idx:
            out[d] = idx
            shape_d = [1] * mask.dim()
            shape_d[d] = mask.size(d)
            cover |= full.reshape(shape_d)
    return out if bool((cover == mask).all()) and out else None


def _resolve_ignore(model: nn.Module, ignore: Iterable[Any]) -> list[tuple[str, nn.Module]]:
    by_name = dict(model.named_modules())
    by_id = {id(m): n for n, m in by_name.items()}
    out = []
    for item in ignore:
        if isinstance(item, str):
            if item not in by_name:
                close = [n for n in by_name if n and (item in n or n in item)][:5]
                raise ConfigError(f"ignore: no module named {item!r} in the model" + (f"; similar: {close}" if close else ""))
            out.append((item, by_name[item]))
        elif isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ConfigError(f"ignore: module {type(item).__name__} is not part of the model")
            out.append((by_id[id(item)], item))
        else:
            raise ConfigError(f"ignore: entries must be module names or modules; got {item!r}")
    return out


def trace_groups(model: nn.Module, example_inputs: Any, *, ignore: Sequence[Any] = ()) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and return its :class:`DependencyGraph`.

    Args:
        model: any ``nn.Module``; it is run once in eval mode under ``no_grad`` and not modified.
        example_inputs: a tensor, a tuple of positional arguments or a dict of keyword arguments.
        ignore: modules (or their qualified names) that keep every dimension, e.g. the classifier.

    Raises:
        ConfigError: the example inputs do not run the model, or an ignored name is unknown.
    """
    ignored = _resolve_ignore(model, ignore)
    ctx, _ = run_trace(model, example_inputs, find_rule)
    uf = ctx.uf
    # ignored layers keep all their dimensions: pin every slot of their tensors
    for name, m in ignored:
        for t in list(m.parameters()) + list(m.buffers()):
            key = ctx.tensor_names.get(id(t))
            for (k, d), sp in ctx.spaces.items():
                if k == key:
                    for i in range(sp.size):
                        uf.pin(sp.start + i, f"{name} is ignored by the user")
        for (k, d), sp in ctx.spaces.items():
            if sp.virtual and k.startswith(f"{name}::"):
                for i in range(sp.size):
                    uf.pin(sp.start + i, f"{name} is ignored by the user")

    members: dict[int, list[tuple[Space, int]]] = {}
    has_source: set[int] = set()
    spaces = sorted(ctx.spaces.values(), key=lambda s: s.start)
    for sp in spaces:
        for i in range(sp.size):
            sid = sp.start + i
            root = uf.find(sid)
            if root in uf.reasons:
                continue
            members.setdefault(root, []).append((sp, i))
            if sid in ctx.sources:
                has_source.add(root)
    roots = [r for r in members if r in has_source]
    # a parameter used directly in the forward can only lose whole slices
    params = dict(model.named_parameters(remove_duplicate=False))
    bad_slab: dict[str, str] = {}
    keep_roots = []
    for r in roots:
        ok = True
        for sp in {sp for sp, _ in members[r] if sp.dim == ELEMENTS}:
            flat = [i for s2, i in members[r] if s2 == sp]
            if slab_dims(params[sp.key].shape, flat) is None:
                ok = False
                bad_slab[sp.key] = "its elements coupled to one channel are not whole slices"
        if ok:
            keep_roots.append(r)
    roots = keep_roots

    # clusters: groups that share a tensor dimension
    parent = {r: r for r in roots}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    # two branches concatenated into one consumer share only the consumer's input dimension:
    # they stay separate clusters, ranked separately
    source_spaces = {sp for sp in spaces if any(sp.start + i in ctx.sources for i in range(sp.size))}
    first_root_of_space: dict[Space, int] = {}
    for r in roots:
        for sp, _ in members[r]:
            if sp not in source_spaces:
                continue
            other = first_root_of_space.setdefault(sp, r)
            ra, rb = find(other), find(r)
            if ra != rb:
                parent[rb] = ra
    by_cluster: dict[int, list[int]] = {}
    for r in roots:
        by_cluster.setdefault(find(r), []).append(r)

    groups: list[Group] = []
    clusters: list[Cluster] = []
    for croots in sorted(by_cluster.values(), key=lambda rs: min(members[r][0][0].start + members[r][0][1] for r in rs)):
        croots.sort(key=lambda r: (members[r][0][0].start, members[r][0][1]))
        cidx = len(clusters)
        gidx = []
        cspaces: dict[Space, None] = {}
        for r in croots:
            by_space: dict[Space, list[int]] = {}
            for sp, i in members[r]:
                by_space.setdefault(sp, []).append(i)
                cspaces.setdefault(sp, None)
            g = Group(len(groups), cidx, tuple((sp, tuple(ix)) for sp, ix in by_space.items()))
            groups.append(g)
            gidx.append(g.index)
        sp_list = sorted(cspaces, key=lambda s: s.start)
        srcs = [sp for sp in sp_list if any(sp.start + i in ctx.sources for i in range(sp.size))]
        clusters.append(Cluster(cidx, gidx, sp_list, srcs, heads=any((sp.key, sp.dim) in ctx.head_keys for sp in sp_list)))

    # outputs of layers none of whose channels are prunable, with the reasons
    skipped = []
    prunable_spaces = {sp for c in clusters for sp in c.spaces}
    for sp in spaces:
        if sp in prunable_spaces or not any(sp.start + i in ctx.sources for i in range(sp.size)):
            continue
        reasons: list[str] = []
        for i in range(sp.size):
            for why in uf.reasons.get(uf.find(sp.start + i), []):
                if why not in reasons:
                    reasons.append(why)
        skipped.append((str(sp), "; ".join(reasons[:3]) or "no removable channel"))
    unknown = dict(ctx.unknown)
    unknown.update({f"parameter {k}": why for k, why in bad_slab.items()})
    return DependencyGraph(model, ctx, groups, clusters, skipped, unknown)
