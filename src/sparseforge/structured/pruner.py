"""One-shot structured pruning: trace, score, select, shrink, report.

::

    import sparseforge as sf
    pruner = sf.StructuredPruner(model, example_inputs, sparsity=0.5, ignore=["classifier"])
    result = pruner.prune()                 # result.model: the smaller model; result.report: the table
    print(result.report.table())
    sf.structured.save_structured(result.model, result.kept, "out/")  # reload: load_structured("out/", factory)

Channel sparsity is the fraction of a cluster's groups that are removed (a cluster is, e.g.,
all output channels of one conv with everything coupled to them; see :mod:`.graph`).

Selection:

* ``scope="layer"``: every cluster loses ``round(sparsity * n)`` of its ``n`` groups, the
  least important first. For attention-head clusters ``sparsity * num_heads`` must be a whole
  number (a head cannot be split); otherwise an error names the nearest valid sparsities.
* ``scope="global"``: importances are divided by their cluster's mean (so that layers of
  different scale compare) and the lowest ``round(sparsity * total)`` groups over the whole
  model are removed.
* Then, per cluster, the kept channels are rounded to a multiple of ``round_to`` (nearest
  multiple, at least one) and at least ``min_channels`` channels are kept. A cluster whose
  request would leave fewer is clamped and the report says so; ``strict=True`` raises instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..utils import probe
from ..errors import ConfigError, LayerError, check_int, check_sparsity
from ..tables import text_table
from ..core.layout import is_hf_conv1d
from ..results import Result
from .graph import DependencyGraph, trace_groups
from .importance import IMPORTANCES, group_importance
from .shrink import Kept, kept_indices, shrink, zero_groups

__all__ = ["StructuredPruner", "StructuredReport", "StructuredResult", "LayerRow", "prune_structured",
           "count_params_macs", "select_groups"]

SCOPES = ("layer", "global")


@dataclass
class LayerRow:
    """One output dimension of one layer in the report (``layer``, also readable as ``name``)."""

    layer: str
    cluster: int
    channels_before: int
    channels_after: int
    requested: float
    achieved: float
    note: str = ""

    @property
    def name(self) -> str:
        """The layer's module name (the name every per-layer record of the API has)."""
        return self.layer


@dataclass
class StructuredReport:
    """Requested vs achieved channel sparsity per layer, params and MACs before/after.

    ``macs_*`` are multiply-accumulates of the weight products of Linear, ConvNd,
    ConvTransposeNd, HF Conv1D and nn.MultiheadAttention projections for one forward pass on
    the example inputs, divided by the batch size (dim 0 of the first input tensor). The
    sparsity is *materialized*: the pruned model really has the smaller tensors.
    """

    rows: list[LayerRow]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mode: str = "materialized"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d

    def table(self) -> str:
        """A text table: one row per layer output, then totals, skipped layers and unknown ops."""
        lines = [text_table(["layer", "before", "after", "requested", "achieved", "note"],
                            [[r.layer, r.channels_before, r.channels_after, f"{r.requested:.3f}", f"{r.achieved:.3f}", r.note]
                             for r in self.rows], align="lrrrrl")]
        pr = 1 - self.params_after / self.params_before if self.params_before else 0.0
        mr = 1 - self.macs_after / self.macs_before if self.macs_before else 0.0
        lines.append(f"params {self.params_before} -> {self.params_after} ({pr:.1%} fewer); "
                     f"MACs/sample {self.macs_before} -> {self.macs_after} ({mr:.1%} fewer); {self.mode}")
        lines += [f"skipped {n}: {why}" for n, why in self.skipped]
        lines += [f"unknown {n}: {why}" for n, why in self.unknown.items()]
        lines += self.notes
        return "\n".join(lines)


def count_params_macs(model: nn.Module, example_inputs: Any) -> tuple[int, int]:
    """Parameters, and weight multiply-accumulates per sample of one forward pass (see :class:`StructuredReport`)."""
    params = sum(p.numel() for p in model.parameters())
    macs = 0

    def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        nonlocal macs
        o = out[0] if isinstance(out, tuple) else out
        if isinstance(m, nn.Linear):
            macs += o.numel() * m.in_features
        elif is_hf_conv1d(m):
            macs += o.numel() * m.weight.shape[0]
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            macs += o.numel() * m.weight[0].numel()
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            x = args[0] if args else kwargs["input"]
            macs += x.numel() * m.weight[0].numel()
        elif isinstance(m, nn.MultiheadAttention):
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            E, tq, tk = m.embed_dim, q.numel() // q.shape[-1], k.numel() // k.shape[-1]
            # projections only: attention scores are products of activations, not weights
            macs += tq * q.shape[-1] * E + tk * (m.kdim + m.vdim) * E + tq * E * E

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d, nn.MultiheadAttention)) or is_hf_conv1d(m):
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    probe(model, example_inputs, handles, param="example_inputs")
    if isinstance(example_inputs, dict):
        first = next(v for v in example_inputs.values() if torch.is_tensor(v))
    elif isinstance(example_inputs, (tuple, list)):
        first = next(v for v in example_inputs if torch.is_tensor(v))
    else:
        first = example_inputs
    b = int(first.shape[0]) if first.dim() else 1
    return params, macs // max(b, 1)


def _channels_per_group(graph: DependencyGraph, ci: int) -> int:
    c = graph.clusters[ci]
    primary = c.sources[0]
    return max(graph.groups[gi].channels(primary) for gi in c.groups)


def select_groups(graph: DependencyGraph, scores: torch.Tensor, sparsity: float, *, scope: str = "layer",
                  round_to: int = 1, min_channels: int = 1, strict: bool = False) -> tuple[list[int], list[LayerRow], list[str]]:
    """Choose the groups to remove. Returns (removed group indices, report rows, notes).

    See the module docstring for the rules. ``scores`` has one entry per group.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {list(SCOPES)}; got {scope!r}")
    round_to = check_int(round_to, "round_to", minimum=1)
    min_channels = check_int(min_channels, "min_channels", minimum=1)
    if len(scores) != len(graph.groups):
        raise ConfigError(f"scores has {len(scores)} entries; the graph has {len(graph.groups)} groups")
    notes: list[str] = []
    n_remove: dict[int, int] = {}
    order_in: dict[int, list[int]] = {}
    for c in graph.clusters:
        gs = sorted(c.groups, key=lambda gi: (float(scores[gi]), gi))  # ties: lower index first
        order_in[c.index] = gs
    if scope == "layer":
        for c in graph.clusters:
            n = len(c.groups)
            want = sparsity * n
            if c.heads and abs(want - round(want)) > 1e-9:
                lo, hi = math.floor(want), math.ceil(want)
                raise ConfigError(
                    f"sparsity {sparsity} removes {want:.3g} of the {n} attention heads of {c.name}; heads cannot be "
                    f"split: the nearest valid sparsities are {lo / n:.4g} ({lo} heads) and {hi / n:.4g} ({hi} heads)")
            n_remove[c.index] = int(round(want))
    else:
        normed = scores.clone().double()
        for c in graph.clusters:
            idx = torch.tensor(c.groups)
            mean = float(normed[idx].mean())
            if mean > 0:
                normed[idx] = normed[idx] / mean
        total = int(round(sparsity * len(graph.groups)))
        ranked = sorted(range(len(graph.groups)), key=lambda gi: (float(normed[gi]), gi))[:total]
        for c in graph.clusters:
            n_remove[c.index] = 0
        for gi in ranked:
            n_remove[graph.groups[gi].cluster] += 1
            # keep the within-cluster order consistent with the global ranking
        for c in graph.clusters:
            order_in[c.index] = sorted(c.groups, key=lambda gi: (float(normed[gi]), gi))

    removed: list[int] = []
    rows: list[LayerRow] = []
    for c in graph.clusters:
        n = len(c.groups)
        cpg = max(_channels_per_group(graph, c.index), 1)
        keep = n - n_remove[c.index]
        note = []
        step = round_to // math.gcd(round_to, cpg)
        if step > 1 and keep % step and keep < n:
            rounded = min(n, max(step, int(round(keep / step)) * step))
            note.append(f"kept {rounded} instead of {keep} groups (round_to={round_to})")
            keep = rounded
        min_groups = min(n, max(1, math.ceil(min_channels / cpg)))
        if keep < min_groups:
            msg = (f"{c.name}: sparsity {sparsity} would keep {keep} of {n} groups; clamped to {min_groups} "
                   f"(min_channels={min_channels})")
            if strict:
                raise LayerError(msg + "; strict=True forbids clamping")
            notes.append("clamped " + msg)
            note.append(f"clamped to {min_groups} groups (min_channels={min_channels})")
            keep = min_groups
        gone = order_in[c.index][: n - keep]
        removed.extend(gone)
        requested = sparsity if scope == "layer" else float("nan")
        for sp in c.sources:
            before = sp.size
            after = before - sum(graph.groups[gi].channels(sp) for gi in gone)
            rows.append(LayerRow(str(sp), c.index, before, after, requested if scope == "layer" else sparsity,
                                 1 - after / before if before else 0.0, "; ".join(note)))
    return sorted(removed), rows, notes


@dataclass(frozen=True, kw_only=True)
class StructuredResult(Result):
    """What :meth:`StructuredPruner.prune` and :func:`prune_structured` return.

    Attributes:
        model: the shrunk model (a new one; the pruned model is not modified).
        report: the :class:`StructuredReport` (requested vs achieved per layer, params, MACs).
        layers: the report's rows (:class:`LayerRow`, ``name`` = module name).
        skipped: ``(name, reason)`` of the layers the dependency graph left whole.
        kept: the kept indices (for :func:`~sparseforge.structured.save_structured`).

    Unpacking it as ``small, report`` still works for one release, with a ``DeprecationWarning``.
    """

    kept: Kept | None = None

    _legacy_tuple = ("model", "report")


class StructuredPruner:
    """Trace a model once, then score, select and physically remove coupled channel groups.

    Args:
        model: any ``nn.Module`` (not modified; :meth:`prune` returns a new model).
        example_inputs: a tensor, a tuple of positional arguments or a dict of keyword
            arguments that ``model(...)`` accepts.
        sparsity: fraction of channel groups to remove, in [0, 1).
        importance: ``"l2"`` (default), ``"l1"``, ``"taylor"`` or ``"random"`` (see :mod:`.importance`).
        scope: ``"layer"`` (default) or ``"global"`` ranking.
        round_to: keep channel counts at multiples of this (default 1).
        min_channels: keep at least this many channels per layer (default 1).
        ignore: modules or names that keep both dimensions (e.g. the classifier).
        strict: raise instead of clamping a layer to ``min_channels``, and instead of warning
            when nothing at all would be removed (a ``RuntimeWarning`` lists the skipped
            layers with their reasons otherwise).
        seed: seed of the random importance.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, sparsity: float, importance: str = "l2",
                 scope: str = "layer", round_to: int = 1, min_channels: int = 1, ignore: Sequence[Any] = (),
                 strict: bool = False, seed: int = 0) -> None:
        self.sparsity = check_sparsity(sparsity)
        if importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {list(IMPORTANCES)}; got {importance!r}")
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {list(SCOPES)}; got {scope!r}")
        self.round_to = check_int(round_to, "round_to", minimum=1)
        self.min_channels = check_int(min_channels, "min_channels", minimum=1)
        self.model, self.example_inputs = model, example_inputs
        self.importance, self.scope, self.strict, self.seed = importance, scope, strict, seed
        self.graph = trace_groups(model, example_inputs, ignore=ignore)
        self.scores: torch.Tensor | None = None
        self.removed: list[int] | None = None
        self.kept: Kept | None = None
        self.rows: list[LayerRow] = []
        self.notes: list[str] = []

    def select(self) -> list[int]:
        """Score the groups and choose those to remove (indices into ``graph.groups``)."""
        # computed first, stored last: a refusal (strict, heads) leaves the pruner as it was
        scores = group_importance(self.graph, self.importance, seed=self.seed)
        removed, rows, notes = select_groups(
            self.graph, scores, self.sparsity, scope=self.scope, round_to=self.round_to,
            min_channels=self.min_channels, strict=self.strict)
        if not removed and self.sparsity > 0:
            self._nothing_to_prune()
        kept = kept_indices(self.graph, removed)
        self.scores, self.removed, self.rows, self.notes, self.kept = scores, removed, rows, notes, kept
        return self.removed

    def _nothing_to_prune(self) -> None:
        # the library's rule: nothing is skipped silently; strict=True makes it an error
        g = self.graph
        if not g.clusters:
            why = "the model has no removable channel group"
        else:
            sizes = sorted({len(c.groups) for c in g.clusters})
            why = (f"sparsity {self.sparsity} removes no group from any of the {len(g.clusters)} cluster(s) "
                   f"(sizes {sizes[:5]}; each loses round(sparsity * size))")
        skipped = "; ".join(f"{name}: {reason}" for name, reason in g.skipped[:5])
        msg = f"structured pruning removes nothing: {why}" + (f"; skipped {skipped}" if skipped else "")
        if self.strict:
            raise LayerError(msg + " (strict=True)")
        warnings.warn(msg, RuntimeWarning, stacklevel=4)  # the caller of prune()

    def zeroed(self) -> nn.Module:
        """A copy of the model with the selected groups set to zero (see :func:`.zero_groups`)."""
        if self.kept is None:
            self.select()
        return zero_groups(self.model, self.kept)  # type: ignore[arg-type]

    def prune(self) -> StructuredResult:
        """Shrink a copy of the model; the :class:`StructuredResult` holds it (``.model``) and its ``.report``."""
        if self.kept is None:
            self.select()
        small = shrink(self.model, self.kept)  # type: ignore[arg-type]
        p0, m0 = count_params_macs(self.model, self.example_inputs)
        try:
            p1, m1 = count_params_macs(small, self.example_inputs)
        except Exception as e:  # a shape the tracer could not see changed: say where
            raise LayerError(f"the shrunk model no longer runs on the example inputs ({type(e).__name__}: {e}); "
                             "please report this model; use ignore=[...] on the layer named in the error") from e
        report = StructuredReport(self.rows, p0, p1, m0, m1, list(self.graph.skipped), dict(self.graph.unknown),
                                  list(self.notes))
        return StructuredResult(model=small, report=report, layers=list(report.rows), skipped=list(report.skipped),
                                kept=self.kept)


def prune_structured(model: nn.Module, example_inputs: Any, sparsity: float, **kwargs: Any) -> StructuredResult:
    """One call: ``StructuredPruner(model, example_inputs, sparsity=sparsity, **kwargs).prune()``."""
    return StructuredPruner(model, example_inputs, sparsity=sparsity, **kwargs).prune()
