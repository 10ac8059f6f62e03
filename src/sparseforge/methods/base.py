"""Base class of training-time sparsity methods.

A method owns a :class:`~sparseforge.masking.Masking` (the masks and their enforcement) and
decides *which* weights are kept and *when* that changes, by overriding a few hooks, in the
spirit of JaxPruner's ``BaseUpdater``:

* :meth:`SparsityMethod.init_masks` — masks at construction (default: all kept);
* :meth:`SparsityMethod.needs_grads` — whether the step about to run must keep a copy of the
  dense gradients (RigL's grow criterion) before they are masked;
* :meth:`SparsityMethod.update` — called after optimizer step ``t`` (0-based) has been
  applied and the masks re-enforced; may change masks.

The user's loop stays a plain PyTorch loop::

    method = RigL(model, optimizer, sparsity=0.9, total_steps=T)
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
    method.finalize()     # plain model with exact zeros, no masks

Everything runs inside the optimizer's step hooks: nothing to call per step.

Events: a method announces the moments when its network is about to change (or has changed)
inside ``optimizer.step()``, so that a loop can evaluate the right network without depending
on the order of its own hooks. ``method.on(name, fn)`` registers ``fn(event)`` for one of the
names in :data:`EVENTS` and returns a handle whose ``remove()`` unregisters it; ``fn`` runs
synchronously inside the step, under ``torch.no_grad()``, and receives a :class:`MethodEvent`
(``name``, ``method``, ``step`` = optimizer steps completed, ``info``). :attr:`SparsityMethod.emits`
lists the events a method can emit; registering for another known event is allowed (it never
fires), for an unknown name an error. Listeners are process-local: pickling or deep-copying a
method drops them, as it drops the optimizer. Measuring the network as trained, just before
each topology update::

    method = RigL(model, optimizer, sparsity=0.9, update_interval=2, total_steps=len(loader))
    before = []                       # (step, loss) just before the masks change
    method.on("before_topology_update", lambda e: before.append((e.step, loss_fn(model(x), y).item())))
    for xb, yb in loader:
        optimizer.zero_grad()
        loss_fn(model(xb), yb).backward()
        optimizer.step()
    assert [step for step, _ in before] == [1, 3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import inspect
import re
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from ..core.allocation import Allocation, allocation_from_spec, global_sparsities, implied_sparsity
from ..core.init import init_scale_factors
from ..core.patterns import NM, Pattern, Unstructured, num_pruned, pattern_from_spec, topk_mask
from ..core.rng import stream_generator
from ..core.steps import STEP_KEYS
from ..core.targets import Target, parse_target, target_from_args
from ..errors import CheckpointError, ConfigError, LayerError, check_int, check_sparsity
from ..masking import MaskedLayer, Masking, Targets, is_default_target, is_sharded, shard_like
from ..transaction import transaction

__all__ = ["SparsityMethod", "MethodEvent", "EVENTS", "BEFORE_CHANGE", "parse_overrides", "match_overrides", "step_param"]

#: every event a method may emit, with what the model holds when it fires
EVENTS: dict[str, str] = {
    "round_end": (
        "a training round has ended (IMP): the model holds the round's trained weights and masks, before the "
        "method prunes and rewinds; info: round (0-based), sparsity (of the masked weights), last (True after "
        "the final round, which no pruning follows)"),
    "before_topology_update": (
        "masks are about to change (SET/RigL drop and regrow): the model holds the weights as trained up to "
        "here; info: drop_fraction"),
    "after_topology_update": (
        "masks have changed (SET/RigL): regrown weights are zero; info: the update's per-layer counts (layers), "
        "drop_fraction"),
}


#: events after which the method changes the network within the same optimizer step: a loop
#: that evaluates "the network as trained" at the end of that step evaluates here instead
BEFORE_CHANGE: frozenset[str] = frozenset({"round_end", "before_topology_update"})


@dataclass(frozen=True)
class MethodEvent:
    """What a listener registered with :meth:`SparsityMethod.on` receives.

    Attributes:
        name: the event (a key of :data:`EVENTS`).
        method: the method that emitted it.
        step: optimizer steps completed when it fired (the method's step counter).
        info: event-specific values, as documented in :data:`EVENTS`.
    """

    name: str
    method: "SparsityMethod"
    step: int
    info: dict[str, Any] = field(default_factory=dict)


class _Listener:
    """Handle returned by :meth:`SparsityMethod.on`; ``remove()`` unregisters the callback."""

    def __init__(self, method: "SparsityMethod", name: str, fn: Callable[[MethodEvent], Any]) -> None:
        self._method, self.name, self.fn = method, name, fn

    def remove(self) -> None:
        """Unregister the callback (a second call does nothing)."""
        fns = self._method._listeners.get(self.name, [])
        if self.fn in fns:
            fns.remove(self.fn)


def step_param(p: Mapping[str, Any], key: str, *, minimum: int = 0) -> int | None:
    """``p[key]`` as a step count, or None if unset or still a recipe spec (``"75%"``, ``"2ep"``).

    Recipes check a spec's syntax (and resolve it before the method is built), so a method's
    relations between steps are checked once every value is a number.
    """
    v = p.get(key)
    if v is None or isinstance(v, str):
        return None
    return check_int(v, key, minimum=minimum)


def parse_overrides(spec: Mapping[str, Any] | None, target: Target, allocation: Allocation,
                    owner: str = "method") -> tuple[tuple[str, Target], ...]:
    """Per-layer sparsity overrides ``{layer name or regex: fraction}`` as parsed ``(pattern, Target)`` pairs.

    Names are module names (``"fc3"``, ``"features.0"``) or regular expressions (full match), as in
    :class:`~sparseforge.masking.Targets`. Values are fractions of zeros in [0, 1) counted in
    the method's pattern (weights, blocks or channels): a layer keeps exactly ``round(s n)`` zeros.
    Refused for N:M targets (the pattern fixes every layer) and for the global allocation
    (its split follows from the scores).
    """
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return ()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{owner}: overrides must be a mapping of layer names (or regular expressions) to "
                          f"sparsities, e.g. {{'fc3': 0.5}}; got {spec!r}")
    if target.is_nm:
        raise ConfigError(f"{owner}: overrides take no effect with N:M {target}: the pattern fixes every layer's "
                          "sparsity; leave layers dense with targets: {exclude: [...]} instead")
    if allocation.needs_scores:
        raise ConfigError(f"{owner}: overrides need a fixed split (allocation uniform, er or erk); the "
                          "global allocation derives every layer's sparsity from the scores")
    out = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{owner}: overrides keys must be layer names or regular expressions; got {key!r}")
        try:
            re.compile(key)
        except re.error as e:
            raise ConfigError(f"{owner}: overrides key {key!r} is not a valid regular expression ({e})") from None
        t = parse_target(value, f"overrides[{key!r}]")
        if t.is_nm:
            raise ConfigError(f"{owner}: overrides[{key!r}] = {value!r}: an override is a fraction of zeros in [0, 1); "
                              "N:M is one pattern for the whole model")
        out.append((key, Target(target.pattern, t.sparsity)))
    return tuple(out)


def match_overrides(overrides: Sequence[tuple[str, Target]], names: Sequence[str]) -> dict[int, Target]:
    """Index of each layer (module ``names``, in order) that an override names -> its target.

    Every override must match a layer, and no layer two overrides (a typo or an overlap fails
    loudly instead of leaving a layer at the global value).
    """
    out: dict[int, Target] = {}
    by: dict[int, str] = {}
    for key, t in overrides:
        hits = [i for i, n in enumerate(names) if n == key or re.fullmatch(key, n) is not None]
        if not hits:
            raise ConfigError(f"overrides entry {key!r} matches no masked layer; masked layers: {list(names)[:8]}")
        for i in hits:
            if i in out:
                raise ConfigError(f"layer {names[i]!r} matches overrides {by[i]!r} and {key!r}; make them disjoint")
            out[i], by[i] = t, key
    return out


class SparsityMethod:
    """Common machinery: targets, per-layer sparsity, masks, step counting, checkpoints.

    Args:
        model: the model to sparsify (masks are registered on its modules).
        optimizer: optimizer over ``model.parameters()``; may be attached later with :meth:`attach`.
        sparsity: the target (:func:`~sparseforge.core.targets.parse_target`): a global
            fraction of zeros in [0, 1), an N:M pattern (``"2:4"``, ``NM(2, 4)``) or a
            :class:`~sparseforge.core.targets.Target`; None when the allocation sets every
            layer's density itself (ER/ERK by ``epsilon``): the global sparsity is then derived
            from the masked layers.
        pattern: what a fractional ``sparsity`` counts: ``"unstructured"`` (default),
            ``"block:1x4"``, ``"channel"`` or a Pattern. An N:M pattern here is a deprecated
            alias of ``sparsity="N:M"`` (warns).
        allocation: ``"uniform"``, ``"er"``, ``"erk"``, ``"global"`` or an Allocation.
        targets: :class:`~sparseforge.masking.Targets` or a dict of its fields.
        overrides: per-layer sparsities ``{module name or regex: fraction}`` (:func:`parse_overrides`);
            the allocation splits the global sparsity over the other layers.
        seed: seed of the method's own random generator (random masks, random regrowth).
    """

    name = "base"
    #: rescaling of the initial weights after the first masks (:meth:`rescale_init`); the
    #: sparse-from-scratch methods take it as the ``init_scale`` argument
    init_scale = "dense"
    #: patterns the method supports (checked at construction)
    supported_patterns: tuple[type, ...] = (Pattern,)
    default_allocation = "uniform"
    #: target used when neither ``sparsity`` nor an N:M ``pattern`` is given (None: required)
    default_target: Any = None
    #: the events (keys of :data:`EVENTS`) this method emits
    emits: tuple[str, ...] = ()

    # ---- run knowledge: what a runner (recipe trainer, LM trainer) asks a method class before
    # ---- building it. A runner never branches on a method's name; it asks these instead.
    #: constructor arguments counted in optimizer steps: a recipe may write them as ``"25%"``
    #: of the run or ``"2ep"``, and the runner resolves them before construction
    step_params: ClassVar[frozenset[str]] = STEP_KEYS
    #: runtime objects the runner passes to the constructor (never set in a recipe): ``"data"``
    #: (one calibration batch, see :meth:`needs_calibration_batch`), ``"loss_fn"``,
    #: ``"lr_scheduler"`` (the run's scheduler, e.g. to rewind it)
    runner_args: ClassVar[frozenset[str]] = frozenset()
    #: True for methods that train several rounds over the run's length (IMP): the runner then
    #: takes the run's length from :meth:`run_steps` and the learning-rate horizon from
    #: :meth:`lr_horizon`; a runner with a single fixed budget (the LM trainer) refuses them
    trains_in_rounds: ClassVar[bool] = False
    #: True for methods that keep a per-step log of mask flips (``sad_history``, N:M methods)
    logs_mask_flips: ClassVar[bool] = False

    @classmethod
    def run_defaults(cls, total_steps: int, steps_per_epoch: int | None) -> dict[str, Any]:
        """Constructor arguments that depend on the run's length; explicit values always win.

        ``total_steps`` is the number of optimizer steps the runner trains for (one round for
        a method that :attr:`trains_in_rounds`), ``steps_per_epoch`` the steps of one pass over
        the data, or None for a run without epochs (the LM trainer). Values may be step specs
        (``"75%"``), resolved like the recipe's own.
        """
        return {}

    @classmethod
    def needs_calibration_batch(cls, params: dict[str, Any]) -> bool:
        """True if the method built with ``params`` needs one batch of training data (``data=``)."""
        return False

    @classmethod
    def lr_horizon(cls, params: dict[str, Any], total_steps: int) -> int:
        """The steps a decaying learning-rate schedule spans (one round for round-based methods)."""
        return total_steps

    def run_steps(self, total_steps: int) -> int:
        """Optimizer steps of the whole run, given the runner's ``total_steps`` (IMP: all rounds)."""
        return total_steps

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: Any = None,
        pattern: Pattern | str | dict | None = None,
        allocation: Allocation | str | dict | None = None,
        targets: Targets | dict | None = None,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        v = SparsityMethod._check_params.__func__(type(self), {  # type: ignore[attr-defined]
            "sparsity": sparsity, "pattern": pattern, "allocation": allocation, "overrides": overrides, "seed": seed})
        # None until the masked layers are known when an epsilon allocation defines the sparsity
        self.target: Target | None = v["target"]
        self.pattern = v["pattern"]
        self.sparsity = None if self.target is None else self.target.sparsity
        self.allocation = v["allocation"]
        #: per-layer targets from ``overrides``: (layer-name pattern, target), first match wins
        self.overrides: tuple[tuple[str, Target], ...] = v["overrides"]
        self.model = model
        self.seed = seed
        self.generator = stream_generator(seed, "masks")
        self.step = 0
        self._dense_grads: dict[str, torch.Tensor] | None = None
        self._listeners: dict[str, list[Callable[[MethodEvent], Any]]] = {}
        # all or nothing: a refused layer, optimizer or allocation leaves the model (masks,
        # weights, hooks) and the optimizer exactly as they were, so a retry starts afresh
        with transaction(model, optimizer):
            self.masking = Masking(model, Targets.from_spec(targets) if targets is not None else None)
            if optimizer is not None:
                self.masking.check_optimizer(optimizer)  # before init_masks touches the weights
            self._check_layers()
            self.layer_sparsity: list[float] = self._allocate()
            self.init_masks()
            if optimizer is not None:
                self.attach(optimizer)

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """Check the parameters this class's constructor takes; return their parsed values.

        ``p`` holds every parameter of the method (defaults filled in). The constructor calls
        this with its arguments and :meth:`validate_params` with a recipe's values, so each
        rule lives here once. Step-valued entries may still be specs (``"75%"``, ``"2ep"``)
        when a recipe is validated; relations between steps are then checked at construction.
        """
        owner = cls.__name__
        spec = p.get("allocation")
        allocation = allocation_from_spec(spec if spec is not None else cls.default_allocation)
        target: Target | None
        if allocation.defines_sparsity:
            # ER/ERK by epsilon fixes every layer's density: the global sparsity is an output
            # (derived once the masked layers are known, in _allocate), so no target is given
            eps = getattr(allocation, "epsilon", None)
            if p.get("sparsity") is not None:
                raise ConfigError(f"{owner}: allocation {allocation.name!r} with epsilon={eps} sets every layer's "
                                  f"density itself; give sparsity or epsilon, not both (got sparsity={p['sparsity']!r})")
            pattern = pattern_from_spec(p.get("pattern"))
            if isinstance(pattern, NM):
                raise ConfigError(f"{owner}: N:M {pattern.n}:{pattern.m} fixes the sparsity, and so does allocation "
                                  f"{allocation.name!r} with epsilon={eps}; give sparsity or epsilon, not both")
            if p.get("overrides"):
                raise ConfigError(f"{owner}: overrides set layers' sparsities, but allocation {allocation.name!r} with "
                                  f"epsilon={eps} sets every layer's density itself; use a global sparsity with "
                                  "overrides, or epsilon without them")
            target = None
        else:
            target = target_from_args(p.get("sparsity"), p.get("pattern"), owner=owner, default=cls.default_target)
            pattern = target.pattern
        if not isinstance(pattern, cls.supported_patterns):
            allowed = ", ".join(t.__name__ for t in cls.supported_patterns)
            raise ConfigError(f"{owner} does not support pattern {pattern.name!r}; allowed: {allowed}")
        if allocation.needs_scores and not isinstance(pattern, Unstructured):
            raise ConfigError(f"global allocation supports only the unstructured pattern; got {pattern.name!r}")
        check_int(p.get("seed", 0), "seed")
        overrides = () if target is None else parse_overrides(p.get("overrides"), target, allocation, owner)
        return {"target": target, "pattern": pattern, "allocation": allocation, "overrides": overrides}

    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """Keyword parameters of the constructor (across the class hierarchy) and their defaults.

        A required parameter maps to :data:`inspect.Parameter.empty`. ``model`` and ``optimizer``
        are not parameters.
        """
        out: dict[str, Any] = {}
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for q in inspect.signature(init).parameters.values():
                if q.kind in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD) and q.name not in ("self", "model", "optimizer"):
                    out.setdefault(q.name, q.default)
        return out

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        """Check a method's parameters without a model: names, types, ranges, target and allocation.

        The same checks the constructor runs (each class's ``_check_params``), so a recipe fails
        when it loads, before any data or model is built. Raises :class:`ConfigError`.
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"{cls.__name__} parameters must be a mapping; got {type(params).__name__}")
        defaults = cls.parameter_defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown parameter(s) {unknown}; allowed: {sorted(defaults)}")
        merged = {k: (None if v is inspect.Parameter.empty else v) for k, v in defaults.items()}
        merged.update(params)
        for klass in cls.__mro__:  # the most specific rules first
            if "_check_params" in klass.__dict__:
                out = klass.__dict__["_check_params"].__func__(cls, merged)
                merged.update(out.get("base_params", {}))

    # ------------------------------------------------------------------ allocation & masks
    @property
    def layers(self) -> list[MaskedLayer]:
        """The masked layers, in model order."""
        return self.masking.layers

    def _joint_groups(self) -> list[list[int]]:
        """Indices of the masked layers, grouped by module when parameters are scored jointly
        (``Targets(joint=True)``); one layer per group otherwise. In model order."""
        if not getattr(self.masking, "joint", False):
            return [[i] for i in range(len(self.layers))]
        groups: dict[int, list[int]] = {}
        for i, l in enumerate(self.layers):
            groups.setdefault(id(l.module), []).append(i)
        return list(groups.values())

    def _set_implied_sparsity(self, sparsity: float) -> None:
        """Record the global sparsity an ``epsilon`` allocation gives (an output, not an input)."""
        self.sparsity = sparsity
        self.target = Target(self.pattern, sparsity)

    def _allocate(self) -> list[float]:
        groups = self._joint_groups()
        if any(len(g) > 1 for g in groups):
            if not isinstance(self.pattern, Unstructured):
                raise ConfigError(f"targets.joint=True scores a layer's parameters together: unstructured pattern only; "
                                  f"got {self.pattern.name!r}")
            # the split is computed over each module's first parameter (its weight); the others
            # share its sparsity, applied to the count over all of them (_joint_masks)
            primary = [self.layers[g[0]] for g in groups]
            shapes = [l.canonical_shape for l in primary]
            if self.allocation.needs_scores or isinstance(self.pattern, NM):
                return [self.sparsity] * len(self.layers)
            # an override names a module: it sets the sparsity of all its parameters together
            fixed = match_overrides(self.overrides, [l.name for l in primary])
            free = [k for k in range(len(groups)) if k not in fixed]
            split = self.allocation.sparsities([shapes[k] for k in free], self.sparsity) if free else []
            per = [0.0] * len(groups)
            for k, sp in zip(free, split):
                per[k] = sp
            for k, t in fixed.items():
                per[k] = t.sparsity
            sizes = [sum(self.layers[i].weight.numel() for i in g) for g in groups]
            if self.allocation.defines_sparsity:  # counted over every parameter of each group
                self._set_implied_sparsity(sum(num_pruned(sp, n) for sp, n in zip(per, sizes)) / sum(sizes))
            out = [0.0] * len(self.layers)
            for k, (g, sp, n) in enumerate(zip(groups, per, sizes)):
                if num_pruned(sp, n) >= n:
                    how = "its override" if k in fixed else f"{self.allocation.name} allocation at sparsity {self.sparsity}"
                    raise LayerError(f"{self.layers[g[0]].qualname}: {how} gives this layer sparsity {sp:.6g}, "
                                     f"which would remove all {n} weights and biases")
                for i in g:
                    out[i] = sp
            return out
        shapes = [l.canonical_shape for l in self.layers]
        if isinstance(self.pattern, NM):
            return [self.pattern.sparsity] * len(shapes)
        if self.allocation.needs_scores:
            # placeholder until scores exist; each mask computation re-derives the split
            return [self.sparsity] * len(shapes)
        fixed = match_overrides(self.overrides, [l.name for l in self.layers])
        free = [i for i in range(len(shapes)) if i not in fixed]
        # overridden layers are taken out of the split; the global sparsity applies to the others
        # (RigL's custom_sparsity_map does the same)
        split = self.allocation.sparsities([shapes[i] for i in free], self.sparsity) if free else []
        out = [0.0] * len(shapes)
        for i, s in zip(free, split):
            out[i] = s
        for i, t in fixed.items():
            out[i] = t.sparsity
        if self.allocation.defines_sparsity:
            self._set_implied_sparsity(implied_sparsity(shapes, out))
        for i, (layer, s) in enumerate(zip(self.layers, out)):
            n = self.pattern.units(layer.canonical_shape)
            if num_pruned(s, n) >= n:
                how = "its override" if i in fixed else f"{self.allocation.name} allocation at sparsity {self.sparsity}"
                raise LayerError(f"{layer.qualname}: {how} gives this layer sparsity {s:.6g}, which would remove all {n} units")
        return out

    def masks_from_scores(self, scores: Sequence[torch.Tensor], sparsities: Sequence[float] | None = None,
                          eligible_only: bool = False) -> list[torch.Tensor]:
        """Masks (canonical layout) for ``scores`` at this method's per-layer sparsities.

        With a global allocation the split is recomputed from the pooled scores. If
        ``eligible_only``, positions pruned now get score ``-inf`` so they stay pruned.
        """
        scores = [s.float() for s in scores]
        groups = self._joint_groups()
        if (any(len(g) > 1 for g in groups) and not self.allocation.needs_scores
                and isinstance(self.pattern, Unstructured)):
            return self._joint_masks(groups, scores, self.layer_sparsity if sparsities is None else sparsities,
                                     eligible_only)
        if eligible_only and sparsities is not None and isinstance(self.pattern, Unstructured):
            return [self._shrink(layer, s, sp) for layer, s, sp in zip(self.layers, scores, sparsities)]
        if eligible_only:
            scores = [torch.where(l.canonical(l.mask), s, torch.full_like(s, -math.inf)) for l, s in zip(self.layers, scores)]
        if sparsities is None:
            if self.allocation.needs_scores:
                sparsities = global_sparsities(scores, self.sparsity)
                for layer, s, sp in zip(self.layers, scores, sparsities):
                    if sp >= 1.0:
                        raise LayerError(
                            f"{layer.qualname}: global allocation at sparsity {self.sparsity} would prune all "
                            f"{s.numel()} weights of this layer (its largest score, {float(s.max()):.3g}, is at or "
                            "below the global threshold; all-zero scores mean no gradient reached the weights)"
                        )
                self.layer_sparsity = list(sparsities)
            else:
                sparsities = self.layer_sparsity
        masks = []
        for layer, s, sp in zip(self.layers, scores, sparsities):
            if isinstance(self.pattern, NM):
                masks.append(self.pattern.mask(s, None, layer.qualname))
            else:
                masks.append(self.pattern.mask(s, sp, layer.qualname))
        return masks

    def _joint_masks(self, groups: list[list[int]], scores: list[torch.Tensor], sparsities: Sequence[float],
                     eligible_only: bool) -> list[torch.Tensor]:
        """Unstructured masks with one ranking and one exact count per group of parameters.

        A group (a module's weight and bias under ``Targets(joint=True)``) keeps
        ``n - round(s n)`` of its ``n`` pooled entries at its first member's sparsity ``s``
        (ties: as :func:`~sparseforge.core.patterns.topk_mask` over the weight's entries,
        then the bias's). With ``eligible_only`` only kept positions can be kept.
        """
        out: list[torch.Tensor | None] = [None] * len(self.layers)
        for g in groups:
            flat = torch.cat([scores[i].reshape(-1).cpu() for i in g])
            n = flat.numel()
            keep = n - num_pruned(sparsities[g[0]], n)
            if eligible_only:
                current = torch.cat([self.layers[i].canonical(self.layers[i].mask).reshape(-1).cpu() for i in g])
                mask = current.clone() if keep >= int(current.sum()) else topk_mask(flat, keep, eligible=current)
            else:
                mask = topk_mask(flat, keep)
            start = 0
            for i in g:
                k = scores[i].numel()
                out[i] = mask[start:start + k].reshape(scores[i].shape).to(scores[i].device)
                start += k
        return out  # type: ignore[return-value]

    def _shrink(self, layer: MaskedLayer, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Unstructured mask at ``sparsity`` that only drops currently kept positions.

        Selecting among the kept positions only (rather than ranking pruned ones at -inf)
        makes a small increment cheap, which is what gradual schedules do most steps.
        """
        current = layer.canonical(layer.mask)
        n = current.numel()
        k_prune = num_pruned(sparsity, n)
        if k_prune >= n:
            self.pattern.mask(scores, sparsity, layer.qualname)  # raises the standard "empty layer" error
        keep = n - k_prune
        if keep >= int(torch.count_nonzero(current)):
            return current.clone()
        return topk_mask(scores, keep, eligible=current)

    def set_masks(self, masks: Sequence[torch.Tensor]) -> None:
        """Install canonical-layout ``masks`` on every layer (zeroing pruned weights and state)."""
        for layer, m in zip(self.layers, masks):
            self.masking.set_mask(layer, m, canonical=True)
        self.masking.broadcast()

    def _check_layers(self) -> None:
        """Hook: validate (or drop) the target layers before allocation; default: the pattern's check.

        With an ``init_scale`` other than ``"dense"`` every layer must have a fan-in
        initialisation, checked here so that a refused layer leaves every weight untouched.
        """
        for layer in self.masking:
            self.pattern.check(layer.canonical_shape, layer.qualname)
            if self.init_scale != "dense" and not is_default_target(layer.module):
                raise LayerError(
                    f"{layer.qualname}: init_scale={self.init_scale!r} rescales a fan-in initialisation (Linear, "
                    f"Conv1d/2d/3d, Hugging Face Conv1D); this layer is a {type(layer.module).__name__}: use "
                    "init_scale='dense' or leave it out of the targets")

    def init_masks(self) -> None:
        """Hook: initial masks (default: dense, all kept)."""

    @torch.no_grad()
    def rescale_init(self) -> None:
        """Rescale every masked weight's initial values to its layer's sparse fan-in.

        By :attr:`init_scale`, as :func:`~sparseforge.core.init.init_scale_factors`
        (``"unit"``: Evci et al. 2022's sparse initialisation, ``"layer"``, ``"dense"``:
        unchanged). Called by the sparse-from-scratch methods right after their initial masks.
        """
        if self.init_scale == "dense":
            return
        for layer in self.layers:
            w = layer.weight
            factor = init_scale_factors(layer.canonical(layer.mask), self.init_scale)
            if not factor.dim():
                w.mul_(factor.item())
                continue
            factor = layer.from_canonical(factor).to(device=w.device, dtype=w.dtype)
            if is_sharded(w):  # each rank scales its own shard by its part of the full factors
                factor = shard_like(factor.expand(w.shape).contiguous(), w)
            w.mul_(factor)

    def needs_grads(self, t: int) -> bool:
        """Hook: True if optimizer step ``t`` must stash dense gradients for :meth:`update`."""
        return False

    def update(self, t: int) -> None:
        """Hook: called after optimizer step ``t`` (0-based) has been applied."""

    def before(self, t: int) -> None:
        """Hook: called before optimizer step ``t`` reads the gradients (after any LR scheduler step)."""

    def report_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~sparseforge.report.sparsity_report` (skipped layers)."""
        return {"skipped": list(self.masking.skipped)}

    def metrics(self) -> dict[str, Any]:
        """Hook: method-specific numbers the trainer logs with each epoch (default none)."""
        return {}

    # ------------------------------------------------------------------ events
    def on(self, name: str, fn: Callable[[MethodEvent], Any]) -> _Listener:
        """Call ``fn(event)`` whenever this method emits event ``name`` (a key of :data:`EVENTS`).

        Listeners run in registration order, inside ``optimizer.step()``, under
        ``torch.no_grad()``. Returns a handle; ``handle.remove()`` unregisters ``fn``.
        """
        if name not in EVENTS:
            raise ConfigError(f"unknown event {name!r}; events: {sorted(EVENTS)}")
        if not callable(fn):
            raise ConfigError(f"event {name!r}: the listener must be callable; got {fn!r}")
        self._listeners.setdefault(name, []).append(fn)
        return _Listener(self, name, fn)

    def listening(self, name: str) -> bool:
        """True if a listener is registered for event ``name`` (lets a method skip preparing its info)."""
        return bool(self._listeners.get(name))

    def emit(self, name: str, **info: Any) -> None:
        """Call the listeners of event ``name`` with a :class:`MethodEvent` (for subclasses)."""
        fns = self._listeners.get(name)
        if not fns:
            return
        event = MethodEvent(name, self, self.step, info)
        with torch.no_grad():
            for fn in list(fns):
                fn(event)

    def __getstate__(self) -> dict:
        # listeners are process-local callbacks (a trainer's bound method, a lambda): a copy
        # of the method starts without them, as it starts without the optimizer
        state = self.__dict__.copy()
        state["_listeners"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_listeners", {})  # pickled before events existed
        self.__dict__.update(state)

    # ------------------------------------------------------------------ optimizer plumbing
    def attach(self, optimizer: torch.optim.Optimizer) -> "SparsityMethod":
        """Enforce masks and run this method's updates on every ``optimizer.step()``.

        All or nothing: a refused optimizer leaves the hooks, the optimizer and the method as they were.
        """
        with transaction(self.model, optimizer, self, tensors="journal"):
            self._attach(optimizer)
        return self

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook: attach to ``optimizer`` (called by :meth:`attach` inside its transaction)."""
        self.masking.attach(optimizer)
        self.masking.add_callbacks(before=self._before_step, after=self._after_step)
        self.masking.want_dense_grads = self._wants_dense_grads

    def _wants_dense_grads(self) -> bool:
        # asked from backward: on steps that stash the dense gradient, masking waits for the step
        return self.needs_grads(self.step)

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The attached optimizer, if any."""
        return self.masking.optimizer

    def _before_step(self) -> None:
        self.before(self.step)
        if self.needs_grads(self.step):
            self._dense_grads = {
                l.qualname: (l.weight.grad.detach().clone() if l.weight.grad is not None else torch.zeros_like(l.weight))
                for l in self.layers
            }

    def _after_step(self) -> None:
        t = self.step
        self.step += 1
        try:
            self.update(t)
        finally:
            self._dense_grads = None

    def dense_grad(self, layer: MaskedLayer) -> torch.Tensor:
        """Dense gradient of ``layer`` (canonical layout) stashed before the current step."""
        if self._dense_grads is None:
            raise ConfigError(f"{type(self).__name__}: no dense gradient stashed for step {self.step - 1}")
        return layer.canonical(self._dense_grads[layer.qualname])

    def finalize(self) -> nn.Module:
        """Fold the masks into the weights, drop them and detach from the optimizer (all or nothing)."""
        with transaction(self.model, None, self, tensors="journal") as txn:
            txn.save(*(t for l in self.layers for t in (l.weight, l.mask)))
            return self._finalize()

    def _finalize(self) -> nn.Module:
        """Hook: the work of :meth:`finalize` (inside its transaction)."""
        return self.masking.finalize()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Method state for resuming (masks themselves are in the model's ``state_dict``)."""
        return {"name": self.name, "step": self.step, "generator": self.generator.get_state(),
                "layer_sparsity": list(self.layer_sparsity), **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        All or nothing: the common fields are checked before anything changes, and a state the
        subclass refuses (:meth:`load_extra_state`) leaves the step, the per-layer sparsities,
        the generator and the masks as they were.
        """
        if not isinstance(state, dict):
            raise CheckpointError(f"method state must be a dict; got {type(state).__name__}")
        if state.get("name") != self.name:
            raise ConfigError(f"method state is for {state.get('name')!r}, not {self.name!r}")
        missing = [k for k in ("step", "generator", "layer_sparsity") if k not in state]
        if missing:
            raise CheckpointError(f"method state for {self.name!r} lacks {missing}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"method state: step must be an integer >= 0; got {step!r}")
        gen = state["generator"]
        if not (torch.is_tensor(gen) and gen.dtype == torch.uint8):
            raise CheckpointError(f"method state: generator must be a uint8 tensor (torch.Generator.get_state()); "
                                  f"got {type(gen).__name__}")
        sparsities = state["layer_sparsity"]
        if not isinstance(sparsities, (list, tuple)) or len(sparsities) != len(self.layers):
            n = len(sparsities) if isinstance(sparsities, (list, tuple)) else sparsities
            raise CheckpointError(f"method state has layer_sparsity for {n} layer(s); this {type(self).__name__} "
                                  f"masks {len(self.layers)} ({[l.qualname for l in self.layers][:5]})")
        for i, sp in enumerate(sparsities):
            check_sparsity(sp, f"method state layer_sparsity[{i}]")
        with transaction(self.model, None, self, tensors="journal") as txn:
            txn.save(*(l.mask for l in self.layers))  # a subclass may recompute the masks (N:M)
            self.step = step
            self.generator.set_state(gen)
            self.layer_sparsity = [float(sp) for sp in sparsities]
            self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Hook: subclass state to checkpoint."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Hook: restore subclass state."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sparsity={self.sparsity}, pattern={self.pattern.name}, "
                f"allocation={self.allocation.name}, layers={len(self.layers)}, step={self.step})")
