"""Dynamic sparse training: SET and RigL share one prune-and-regrow loop.

On each update step every layer drops ``int(f(t) n_active)`` of its active weights and regrows
the same number among the positions not kept after the drop (a just-dropped position may be
regrown), so every layer's nonzero count stays constant. Regrown weights start with zeroed
optimizer state (RigL's ``initial_acc_scale=0``; the SciPy SET code zeroes their momentum too)
and at a value chosen by ``grow_init`` (:data:`GROW_INITS`):

* ``"zeros"`` (default, RigL's default ``grow_init='zeros'``; the Keras SET code also
  regrows at 0, the value stored under the mask);
* ``"normal"``: ``N(0, grow_std)``, ``grow_std = 0.1`` by default: the authors' SciPy SET code
  (``np.random.randn() / 10``);
* ``"random_normal"``: ``N(0, std(w)) / grow_divisor``, RigL's ``random_normal[_d]`` (the std
  is taken over the layer's active weights at the update; RigL's code takes it over the whole
  weight variable);
* ``"random_uniform"``: ``U(-mean|w|, mean|w|) / grow_divisor``, RigL's ``random_uniform[_d]``
  (mean over the active weights);
* ``"glorot_uniform"``: ``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))`` of the layer, as
  the ECMLPKDD 2019 SET tutorial code (``set_mlp_sequential.py``; that code takes the fans of
  the *next* layer, an off-by-one not reproduced here).

A weight dropped and regrown in the same update keeps its value and its state. All values
come from the method's seeded generator, so every rank draws the same ones.

* :class:`RigL` (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners";
  ``google-research/rigl``, ``SparseRigLOptimizerBase``): drop the smallest ``|w|`` (plus
  ``N(0, drop_noise^2)`` noise, which only breaks near-ties); grow where the dense gradient
  ``|dL/d(m*w)|`` of the update step's batch is largest, including at inactive positions;
  ``f(t) = alpha/2 (1 + cos(pi min(t - begin, T) / T))``, ``T = end - begin``.
  Update steps are ``t = begin, begin + dT, ...`` up to ``end`` (the official
  ``last_update_step`` starts at ``-dT``, so step ``begin`` already updates), and on an update
  step the optimizer step is skipped: that batch only chooses the regrown positions.
  Defaults: ``alpha = 0.3``, ``dT = 100``, ``end = 0.75 * total_steps``, ERK allocation,
  ``drop_noise = 1e-5``, ``skip_step = True``.
* :class:`SET` (Mocanu et al. 2018, "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science"): the official rule drops the
  fraction ``zeta`` of the *negative* weights closest to zero and ``zeta`` of the *positive*
  weights closest to zero (active weights that are exactly zero are dropped too, as the
  official Keras code does), then regrows uniformly at random. The topology changes after the
  optimizer step, once every ``update_interval`` steps (pass the steps per epoch for the
  official once-per-epoch rule), never after the last step of training (the official SciPy
  code skips the last epoch's update, and the Keras code reports the accuracy measured before
  it). Defaults: ``zeta = 0.3`` constant, ER allocation.

Each update emits ``before_topology_update`` (the network as trained) and
``after_topology_update`` (:data:`~sparseforge.methods.base.EVENTS`), so a loop can measure
the network on either side of the change whatever the order of its own hooks.

Sparsity by ``epsilon`` (Mocanu et al.): ``SET(model, opt, epsilon=13, update_interval=...)``
gives every layer density ``min(1, epsilon (n_in + n_out) / (n_in n_out))`` (ER; ERK likewise
with ``allocation="erk"``) and derives the overall sparsity from them. ``sampling="exact"``
(default) draws each layer's initial mask with exactly that count;
``sampling="with_replacement"`` draws ``round(density n)`` positions uniformly *with
replacement* (the uncapped ``epsilon`` density with ``epsilon``, so ``epsilon (n_in + n_out)``
draws, as the authors' SciPy code), so a layer keeps the distinct positions drawn: fewer than
drawn, and a small output layer that ER would make dense stays sparse and evolves (784-1000-
1000-1000-10 at ``epsilon = 13``: 13130 draws over 10000 positions keep about 73 %). The
per-layer sparsities then record what was drawn.

Both track the *in-time over-parameterization* rate of Liu et al. 2021 ("Do We Actually
Need Dense Over-Parameterization? In-Time Over-Parameterization in Sparse Training", ICML):
``R_s = |union over training of the active positions| / |all positions|`` of the masked
layers, which starts at ``1 - S`` and can only grow. The paper finds that accuracy rises
with ``R_s`` at a fixed sparsity and that gradient-based regrowth (RigL) explores less than
random regrowth (SET). :meth:`DynamicSparse.exploration_rate` returns it, the trainer logs it
with every epoch (``exploration_rate``), and checkpoints carry the explored positions.
Next to it the trainer logs ``regrown_dropped_next``
(:meth:`DynamicSparse.regrown_dropped_next`): of the positions grown at one update, the
fraction that the next update removes again, a measure of regrowth that never gets the
chance to grow.

Conventions kept on purpose, where they differ from ``google-research/rigl``:

* drop candidates are the active weights only; the official code ranks all positions with
  inactive ones at score ``|noise|``, which can keep an inactive position only when an active
  weight is smaller than about ``1e-5``;
* the noise comes from the method's seeded generator (``seed``), so every rank of a
  distributed run draws the same values (masks are also broadcast from rank 0); remaining
  exact ties (``drop_noise=0``) go by position;
* the drop fraction uses ``t - begin`` (TF ``cosine_decay`` uses the global step ``t``, the
  paper ``t / T_end``); all three agree for the default ``begin = 0``;
* our step counter ``t`` counts the skipped steps too (the official global step does not, so
  its run does ``#updates`` more SGD steps); the difference is one step in ``dT``;
* per-layer counts of the initial random masks round ``S n`` half up
  (:func:`~sparseforge.core.patterns.num_pruned`); the official code floors it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.allocation import ER, ERK, implied_sparsity
from ..core.init import check_init_scale
from ..core.patterns import Unstructured, random_mask, topk_mask
from ..core.schedules import Constant, CosineDecay, Schedule
from ..errors import CheckpointError, ConfigError, check_fraction, check_number
from ..masking import MaskedLayer, is_sharded
from .base import SparsityMethod, step_param

__all__ = ["DynamicSparse", "SET", "RigL", "GROW_INITS", "SAMPLINGS"]

#: values of regrown weights (``grow_init``), with whose convention each follows
GROW_INITS: dict[str, str] = {
    "zeros": "0 (RigL default; SET Keras code)",
    "normal": "N(0, grow_std) (SET SciPy code: N(0, 1) / 10)",
    "random_normal": "N(0, std of the layer's active weights) / grow_divisor (RigL)",
    "random_uniform": "U(-mean|w|, mean|w|) / grow_divisor over the active weights (RigL)",
    "glorot_uniform": "U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (SET ECMLPKDD 2019 tutorial code)",
}
#: how the initial masks are drawn (``sampling``)
SAMPLINGS = ("exact", "with_replacement")

_FOREVER = 2**62  # "update until training stops" for constant drop fractions


def _count_common(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many entries of ``a`` occur in ``b``; both ascending int64 index lists (``nonzero`` order).

    A binary search of ``b`` per entry of ``a``: ``torch.isin`` sorts both lists first, about a
    tenth of a LeNet-300-100 SET update.
    """
    if a.numel() == 0 or b.numel() == 0:
        return 0
    pos = torch.searchsorted(b, a).clamp_(max=b.numel() - 1)
    return int(torch.count_nonzero(b[pos] == a))


def _cpu_copy(mask: torch.Tensor) -> torch.Tensor:
    # always a new contiguous tensor: a transposed canonical view must not alias the mask
    return mask.detach().to("cpu", torch.bool).clone(memory_format=torch.contiguous_format)


class DynamicSparse(SparsityMethod):
    """Prune-and-regrow loop shared by SET and RigL; subclasses choose drop, grow and timing.

    Args:
        sparsity: target sparsity, reached at initialisation with random masks.
        drop_fraction: initial fraction ``alpha`` of active weights dropped per update.
        decay: ``"cosine"`` or ``"constant"`` schedule of the drop fraction.
        update_interval: optimizer steps between updates.
        end: last step with an update (required unless ``total_steps`` is given or the
            decay is constant, in which case updates never stop).
        total_steps: length of training; ``end`` defaults to ``end_fraction * total_steps``,
            and no update happens on or after the last step (its regrown weights would stay
            zero in the final model).
        begin: first step with an update (default 0).
        init_scale: ``"dense"`` (default, as both papers: the model's initial weights as they
            are), ``"unit"`` (sparse initialisation of Evci et al. 2022: each output unit's
            kept weights times ``sqrt(fan_in / kept fan_in)``) or ``"layer"`` (times
            ``1 / sqrt(density)``); see :mod:`sparseforge.core.init`. Applied once to the
            initial weights; regrown weights follow ``grow_init``.
        epsilon: Erdős–Rényi parameter instead of ``sparsity``: each layer's density is
            ``min(1, epsilon * raw)`` under the ``"er"`` or ``"erk"`` allocation (the
            method's default allocation unless another is given), and the overall sparsity
            follows (:attr:`sparsity`).
        sampling: ``"exact"`` (default) or ``"with_replacement"`` (the SET SciPy code's
            initial masks; see the module docstring).
        grow_init: value of regrown weights, one of :data:`GROW_INITS` (default ``"zeros"``).
        grow_std: standard deviation for ``grow_init="normal"`` (default 0.1).
        grow_divisor: divisor for ``"random_normal"`` / ``"random_uniform"`` (default 1).
    """

    supported_patterns = (Unstructured,)
    default_allocation = "erk"
    default_decay = "cosine"
    default_end_fraction = 0.75
    #: skip the optimizer step on update steps (RigL); SET applies it and updates afterwards
    skip_step = False
    #: standard deviation of the noise added to the drop scores ``|w|`` (RigL: 1e-5)
    drop_noise = 0.0
    emits = ("before_topology_update", "after_topology_update")

    @classmethod
    def run_defaults(cls, total_steps: int, steps_per_epoch: int | None) -> dict[str, Any]:
        """Topology updates stop at ``end_fraction`` of the run's ``total_steps``."""
        return {"total_steps": total_steps}

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float | None = None,
                 drop_fraction: float = 0.3, decay: str | None = None, update_interval: int = 100,
                 end: int | None = None, total_steps: int | None = None, begin: int = 0,
                 end_fraction: float | None = None, init_scale: str = "dense", epsilon: float | None = None,
                 sampling: str = "exact", grow_init: str = "zeros", grow_std: float = 0.1, grow_divisor: float = 1.0,
                 **kwargs: Any) -> None:
        v = DynamicSparse._check_params.__func__(type(self), {  # type: ignore[attr-defined]
            "init_scale": init_scale, "drop_fraction": drop_fraction, "decay": decay, "update_interval": update_interval,
            "end": end, "total_steps": total_steps, "begin": begin, "end_fraction": end_fraction, "epsilon": epsilon,
            "allocation": kwargs.get("allocation"), "sampling": sampling, "grow_init": grow_init, "grow_std": grow_std,
            "grow_divisor": grow_divisor})
        kwargs.update(v["base_params"])
        self.init_scale = init_scale
        self.grow_init, self.grow_std, self.grow_divisor = grow_init, float(grow_std), float(grow_divisor)
        self.sampling = sampling
        self.drop_fraction = float(drop_fraction)
        self.update_interval = update_interval
        self.total_steps = total_steps
        decay, end = v["decay"], v["end"]
        self.begin, self.end = begin, end
        if decay == "cosine":
            self.schedule: Schedule = CosineDecay(initial=self.drop_fraction, end=end, begin=begin)
        else:
            self.schedule = Constant(self.drop_fraction)
        self.last_update: dict[str, Any] = {}
        #: per layer (canonical layout, CPU): positions active at any time so far
        self.explored: list[torch.Tensor] = []
        #: per layer (CPU): flat canonical indices grown at the latest update (None before it)
        self.last_grown: list[torch.Tensor | None] = []
        #: positions grown at an update that was followed by another, and how many of those it removed
        self.regrowth = {"grown": 0, "dropped_next": 0}
        self._held_grads: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """Drop fraction, its decay and the update steps, regrowth values, initial sampling and
        ``epsilon``; returns the decay, the last update step and (by ``epsilon``) the allocation."""
        check_init_scale(p.get("init_scale", "dense"))
        check_fraction(p.get("drop_fraction", 0.3), "drop_fraction")
        grow_init = p.get("grow_init", "zeros")
        if grow_init not in GROW_INITS:
            raise ConfigError(f"grow_init must be one of {list(GROW_INITS)}; got {grow_init!r}")
        check_number(p.get("grow_std", 0.1), "grow_std", minimum=0.0, min_open=True)
        check_number(p.get("grow_divisor", 1.0), "grow_divisor", minimum=0.0, min_open=True)
        sampling = p.get("sampling", "exact")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {list(SAMPLINGS)}; got {sampling!r}")
        base_params = {}
        if p.get("epsilon") is not None:
            base_params["allocation"] = cls._epsilon_allocation(p["epsilon"], p.get("allocation"))
        step_param(p, "update_interval", minimum=1)
        begin = step_param(p, "begin")
        total_steps = step_param(p, "total_steps", minimum=1)
        end, end_given = p.get("end"), p.get("end") is not None
        decay = p.get("decay") or cls.default_decay
        if decay not in ("cosine", "constant"):
            raise ConfigError(f"decay must be 'cosine' or 'constant'; got {decay!r}")
        end_fraction = p.get("end_fraction")
        check_fraction(end_fraction if end_fraction is not None else cls.default_end_fraction, "end_fraction")
        if not end_given and p.get("total_steps") is None:
            if decay != "constant":
                raise ConfigError(f"{cls.__name__} with decay={decay!r} needs end= (last update step) or total_steps=")
            return {"decay": decay, "end": _FOREVER, "base_params": base_params}
        if not end_given:
            if total_steps is None:  # a recipe spec: resolved before construction
                return {"decay": decay, "end": None, "base_params": base_params}
            end = int(check_fraction(end_fraction if end_fraction is not None else cls.default_end_fraction,
                                     "end_fraction") * total_steps)
        end = step_param({"end": end}, "end", minimum=1)
        if end is not None and begin is not None and end <= begin:
            raise ConfigError(f"end must be > begin; got begin={begin}, end={end}")
        return {"decay": decay, "end": end, "base_params": base_params}

    @classmethod
    def _epsilon_allocation(cls, epsilon: Any, allocation: Any) -> ER | ERK:
        """``allocation`` (a name, None for the default) by ``epsilon``: ER or ERK only."""
        kind = cls.default_allocation if allocation is None else allocation
        if isinstance(kind, str) and kind.lower() in ("er", "erk"):
            return ER(epsilon=epsilon) if kind.lower() == "er" else ERK(epsilon=epsilon)
        raise ConfigError(f"epsilon={epsilon!r} sets densities by the Erdős–Rényi rule: it needs allocation "
                          f"'er' or 'erk'; got allocation={allocation!r}")

    @torch.no_grad()
    def init_masks(self) -> None:
        """Random masks: exact per-layer counts (the allocation's sparsities), or drawn with replacement."""
        if self.sampling == "with_replacement":
            self._init_with_replacement()
        else:
            scores = [torch.rand(l.canonical_shape, generator=self.generator) for l in self.layers]
            self.set_masks(self.masks_from_scores(scores))
        self.rescale_init()
        self._reset_tracking()

    def _init_with_replacement(self) -> None:
        """Masks of ``round(density n)`` positions drawn uniformly with replacement per layer.

        With an ``epsilon`` allocation the uncapped density ``epsilon * raw`` is drawn (SET's
        ``epsilon (n_in + n_out)`` draws). The per-layer and overall sparsities are set to
        what the drawn masks hold.
        """
        shapes = [l.canonical_shape for l in self.layers]
        groups = self._joint_groups()  # a weight and its bias share one draw under Targets(joint=True)
        if self.allocation.defines_sparsity:
            densities = self.allocation.epsilon_densities([shapes[g[0]] for g in groups])
        else:
            densities = [1.0 - self.layer_sparsity[g[0]] for g in groups]
        masks: list[torch.Tensor] = [torch.empty(0)] * len(self.layers)
        for g, d in zip(groups, densities):
            n = sum(math.prod(shapes[i]) for i in g)
            draws = int(math.floor(d * n + 0.5))
            if draws < 1:
                raise ConfigError(f"{self.layers[g[0]].qualname}: sampling='with_replacement' draws round({d:.4g} * {n}) "
                                  "= 0 positions: the layer would be empty; raise epsilon or lower the sparsity")
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randint(0, n, (draws,), generator=self.generator)] = True
            start = 0
            for i in g:
                k = math.prod(shapes[i])
                masks[i] = flat[start:start + k].view(shapes[i])
                start += k
        self.set_masks(masks)
        self.layer_sparsity = [1.0 - float(m.sum()) / m.numel() for m in masks]
        self._set_implied_sparsity(implied_sparsity(shapes, self.layer_sparsity))

    def _reset_tracking(self) -> None:
        """Start the explored positions at the current masks, with no regrowth counted yet."""
        self.explored = [_cpu_copy(l.canonical(l.mask)) for l in self.layers]
        self.last_grown = [None] * len(self.layers)
        self.regrowth = {"grown": 0, "dropped_next": 0}

    def exploration_rate(self, per_layer: bool = False) -> float | dict[str, float]:
        """In-time over-parameterization rate ``R_s`` (Liu et al. 2021): ever-active / all positions.

        Over all masked layers, or per layer (``per_layer=True``: ``{qualname: rate}``).
        It equals ``1 - S`` before the first update and never decreases.
        """
        if per_layer:
            return {l.qualname: float(e.sum()) / e.numel() for l, e in zip(self.layers, self.explored)}
        total = sum(e.numel() for e in self.explored)
        return sum(int(e.sum()) for e in self.explored) / total if total else 0.0

    def regrown_dropped_next(self) -> float | None:
        """Of the positions grown at one update, the fraction that the next update removed.

        Pooled over layers and over every update followed by another; a position removed and
        grown back within the same update is not removed. None before the second update.
        """
        grown = self.regrowth["grown"]
        return self.regrowth["dropped_next"] / grown if grown else None

    def metrics(self) -> dict[str, Any]:
        """:meth:`exploration_rate` and :meth:`regrown_dropped_next`, logged by the trainer with each epoch."""
        return {"exploration_rate": self.exploration_rate(), "regrown_dropped_next": self.regrown_dropped_next()}

    def _before_last_step(self, t: int) -> bool:
        return self.total_steps is None or t + 1 < self.total_steps

    def is_update_step(self, t: int) -> bool:
        """True if the masks change in optimizer call ``t`` (0-based): ``t = begin + k dT <= end``.

        This is RigL's timing (``last_update_step`` starts at ``-dT``, so ``t = begin``
        updates); :class:`SET` overrides it.
        """
        return (self.begin <= t <= self.end and (t - self.begin) % self.update_interval == 0
                and self._before_last_step(t))

    def drop_fraction_at(self, t: int) -> float:
        """Drop fraction used by an update in optimizer call ``t``: ``f(t)``."""
        return self.schedule(t)

    def needs_grads(self, t: int) -> bool:
        """Grow criteria that read gradients stash them on update steps only."""
        return self.grow_needs_grads and self.is_update_step(t)

    grow_needs_grads = False

    def _before_step(self) -> None:
        super()._before_step()  # stashes the dense gradients first
        if self.skip_step and self.optimizer is not None and self.is_update_step(self.step):
            # an optimizer skips every parameter whose .grad is None (no update, no weight
            # decay, no change to its state): the whole step becomes a no-op, as the official
            # cond(update, mask_update, apply_gradients); the gradients are put back afterwards
            held = []
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        held.append((p, p.grad))
                        p.grad = None
            self._held_grads = held

    def _after_step(self) -> None:
        held, self._held_grads = self._held_grads, None
        try:
            super()._after_step()
        finally:
            for p, g in held or ():
                p.grad = g

    def drop(self, layer: MaskedLayer, mask: torch.Tensor, n_drop: int) -> torch.Tensor:
        """Canonical mask of the active weights (``mask``, canonical) that survive :meth:`drop_active`."""
        flat = mask.reshape(-1)
        active = flat.nonzero().squeeze(1)
        kept = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        kept[torch.masked_select(active, self.drop_active(layer, active, n_drop))] = True
        return kept.reshape(mask.shape)

    def drop_active(self, layer: MaskedLayer, active: torch.Tensor, n_drop: int) -> torch.Tensor:
        """Which ``active`` positions survive (bool per entry): drop the ``n_drop`` smallest ``|w| + noise``.

        ``active`` holds the active positions as sorted canonical flat indices. Only their
        weights are scored (and only they get noise), so an update costs in proportion to a
        layer's nonzeros; the scores are in flat-index order, so ties go by position as in
        :func:`~sparseforge.core.patterns.topk_mask`.
        """
        w = self.active_weights(layer, active).abs().float()
        if self.drop_noise > 0:
            noise = torch.randn(w.shape, generator=self.generator, dtype=torch.float32)
            w = w + self.drop_noise * noise.to(w.device)
        return topk_mask(w, active.numel() - n_drop)

    @staticmethod
    def active_weights(layer: MaskedLayer, active: torch.Tensor) -> torch.Tensor:
        """The weights at ``active`` (canonical flat indices), gathered from the canonical layout."""
        # index_select rather than tensor[index]: several times faster on CPU
        return layer.canonical(layer.weight.detach()).reshape(-1).index_select(0, active)

    def grow(self, layer: MaskedLayer, kept: torch.Tensor, n_regrow: int) -> torch.Tensor:
        """Canonical mask of ``n_regrow`` positions to grow among those not in ``kept``."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Drop and regrow on update steps; record counts in :attr:`last_update`.

        Only the positions that change are written, in one
        :meth:`~sparseforge.masking.Masking.change_positions` call per layer (the dropped
        pruned, the newly grown activated at zero weight and zero optimizer state); a position
        dropped and regrown in the same update is left as it was. Emits
        ``before_topology_update`` and ``after_topology_update`` around the change.
        """
        if not self.is_update_step(t):
            return
        frac = self.drop_fraction_at(t)
        self.emit("before_topology_update", drop_fraction=frac)
        stats = {}
        for i, layer in enumerate(self.layers):
            flat = layer.canonical(layer.mask).reshape(-1)
            # also records masks installed behind the method's back (Masking.set_mask)
            self.explored[i].view(-1).logical_or_(flat.cpu())
            active = flat.nonzero().squeeze(1)
            n_active = active.numel()
            stay = self.drop_active(layer, active, int(n_active * frac))
            dropped = torch.masked_select(active, ~stay)
            kept = flat.clone()
            kept[dropped] = False
            grown = self.grow(layer, kept.view(layer.canonical_shape), dropped.numel()).reshape(-1)
            fresh = grown.nonzero().squeeze(1)
            fresh = torch.masked_select(fresh, ~flat.index_select(0, fresh))  # not active before
            pruned = torch.masked_select(dropped, ~grown.index_select(0, dropped))  # not regrown at once
            if self.grow_init != "zeros":
                values = self.grow_values(layer, active, fresh.numel())
            self.masking.change_positions(layer, prune=pruned, grow=fresh)
            if self.grow_init != "zeros" and fresh.numel():
                self._write_grown(layer, fresh, values)
            fresh_cpu = fresh.cpu()
            self.explored[i].view(-1)[fresh_cpu] = True
            if self.last_grown[i] is not None:
                self.regrowth["grown"] += self.last_grown[i].numel()
                self.regrowth["dropped_next"] += _count_common(self.last_grown[i], pruned.cpu())
            self.last_grown[i] = fresh_cpu
            stats[layer.qualname] = {"active": n_active, "dropped": pruned.numel(), "grown": fresh.numel()}
        self.masking.broadcast()
        self.last_update = {"step": t + 1, "drop_fraction": frac, "skipped_step": self.skip_step, "layers": stats}
        self.emit("after_topology_update", drop_fraction=frac, layers=stats)

    def grow_values(self, layer: MaskedLayer, active: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` values for newly grown weights of ``layer`` by :attr:`grow_init` (float32, CPU).

        ``active`` holds the layer's active positions before the update (canonical flat
        indices): RigL's scale statistics are taken over their weights.
        """
        g = self.generator
        if self.grow_init == "normal":
            return torch.randn(n, generator=g) * self.grow_std
        if self.grow_init == "glorot_uniform":
            shape = layer.canonical_shape
            field = math.prod(shape[2:]) if len(shape) > 2 else 1
            fan_in = (shape[1] if len(shape) > 1 else 1) * field
            limit = math.sqrt(6.0 / (fan_in + shape[0] * field))
            return (torch.rand(n, generator=g) * 2 - 1) * limit
        w = self.active_weights(layer, active).float().cpu()
        if self.grow_init == "random_normal":
            std = float(w.std()) if w.numel() > 1 else 0.0
            return torch.randn(n, generator=g) * std / self.grow_divisor
        mean = float(w.abs().mean()) if w.numel() else 0.0  # random_uniform
        return (torch.rand(n, generator=g) * 2 - 1) * mean / self.grow_divisor

    def _write_grown(self, layer: MaskedLayer, fresh: torch.Tensor, values: torch.Tensor) -> None:
        """Set the weights at the canonical flat positions ``fresh`` to ``values`` (their optimizer
        state was zeroed when they were grown)."""
        w = layer.weight
        if is_sharded(w):
            raise ConfigError(f"{layer.qualname}: grow_init={self.grow_init!r} needs an unsharded weight to write regrown values; "
                              "use grow_init='zeros' with FSDP2")
        values = values.to(device=w.device, dtype=w.dtype)
        if w.is_contiguous():
            w.data.view(-1)[layer.stored_index(fresh).to(w.device)] = values
        else:
            cw = layer.canonical(w.data)
            cw[torch.unravel_index(fresh.to(w.device), cw.shape)] = values

    def extra_state(self) -> dict[str, Any]:
        """Schedule window (for reports), explored positions (bool per weight) and regrowth counts, by layer."""
        return {"begin": self.begin, "end": self.end,
                "explored": {l.qualname: e.clone() for l, e in zip(self.layers, self.explored)},
                "regrowth": dict(self.regrowth),
                "last_grown": {l.qualname: g.clone() for l, g in zip(self.layers, self.last_grown) if g is not None}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the explored positions and regrowth counts; a checkpoint without them restarts them at the masks."""
        saved = state.get("explored")
        if saved is None:
            self._reset_tracking()
            return
        explored = []
        for l in self.layers:
            e = saved.get(l.qualname)
            if e is None:
                raise CheckpointError(f"layer {l.qualname!r}: the checkpoint has no explored positions for it; "
                                      f"it has them for {sorted(saved)}")
            if tuple(e.shape) != tuple(l.canonical_shape):
                raise CheckpointError(f"layer {l.qualname!r}: the checkpoint's explored positions have shape "
                                      f"{tuple(e.shape)}; the model's layer needs {tuple(l.canonical_shape)}")
            explored.append(_cpu_copy(e))
        self.explored = explored
        counts = state.get("regrowth", {})  # absent in checkpoints that predate the counts
        self.regrowth = {k: int(counts.get(k, 0)) for k in ("grown", "dropped_next")}
        grown = state.get("last_grown", {})
        self.last_grown = [grown[l.qualname].to("cpu", torch.int64).clone() if l.qualname in grown else None
                           for l in self.layers]


class RigL(DynamicSparse):
    """RigL: drop by magnitude, grow by dense gradient magnitude, cosine-decayed drop fraction.

    Args:
        skip_step: skip the optimizer step on update steps (official, default True); False
            applies it and updates the masks right after (the gradient still comes from before
            the step).
        drop_noise: standard deviation of the Gaussian noise added to ``|w|`` before
            dropping (official ``noise_std = 1e-5``); 0 breaks ties by position.
    Other arguments as :class:`DynamicSparse`; ``total_steps`` (or ``end``) is required.
    """

    name = "rigl"
    grow_needs_grads = True

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float | None = None,
                 skip_step: bool = True, drop_noise: float = 1e-5, **kwargs: Any) -> None:
        RigL._check_params({"skip_step": skip_step, "drop_noise": drop_noise})
        self.skip_step = skip_step
        self.drop_noise = float(drop_noise)
        super().__init__(model, optimizer, sparsity=sparsity, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """``skip_step`` (a bool) and ``drop_noise`` (a finite number >= 0)."""
        if not isinstance(p.get("skip_step", True), bool):
            raise ConfigError(f"skip_step must be True or False; got {p.get('skip_step')!r}")
        check_number(p.get("drop_noise", 1e-5), "drop_noise", minimum=0.0)
        return {}

    def grow(self, layer: MaskedLayer, kept: torch.Tensor, n_regrow: int) -> torch.Tensor:
        """The ``n_regrow`` positions outside ``kept`` with the largest ``|dL/dw|`` of the update step's batch."""
        return topk_mask(self.dense_grad(layer).abs(), n_regrow, eligible=~kept)


class SET(DynamicSparse):
    """SET: drop the ``zeta`` fraction of negative and of positive weights closest to zero, regrow at random."""

    name = "set"

    @classmethod
    def run_defaults(cls, total_steps: int, steps_per_epoch: int | None) -> dict[str, Any]:
        """Official SET updates once per epoch and never after the last one."""
        out = super().run_defaults(total_steps, steps_per_epoch)
        if steps_per_epoch is not None:
            out["update_interval"] = steps_per_epoch
        return out
    default_allocation = "er"
    default_decay = "constant"
    default_end_fraction = 1.0

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float | None = None,
                 update_interval: int, zeta: float | None = None, **kwargs: Any) -> None:
        SET._check_params({"zeta": zeta})
        if zeta is not None:
            kwargs["drop_fraction"] = zeta
        super().__init__(model, optimizer, sparsity=sparsity, update_interval=update_interval, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """``zeta``: SET's name of the drop fraction."""
        if p.get("zeta") is not None:
            check_fraction(p["zeta"], "zeta")
        return {}

    def is_update_step(self, t: int) -> bool:
        """True after optimizer step ``t`` when ``t + 1 - begin`` is a multiple of ``update_interval``.

        With ``update_interval`` = steps per epoch this is the end of every epoch; no update
        after ``end`` or on the last step of training (``total_steps``).
        """
        done = t + 1
        return (self.begin < done <= self.end and (done - self.begin) % self.update_interval == 0
                and self._before_last_step(t))

    def drop_fraction_at(self, t: int) -> float:
        """``zeta`` at the end of step ``t``: ``f(t + 1)``."""
        return self.schedule(t + 1)

    def drop_active(self, layer: MaskedLayer, active: torch.Tensor, n_drop: int) -> torch.Tensor:
        """Official SET rule; ``n_drop`` is ignored, the fraction applies to each sign separately.

        Each sign keeps ``floor((1 - zeta) n_sign)`` weights, the count the official Keras
        ``rewireMask`` keeps for negatives (``values[int((1 - zeta) firstZeroPos)]`` as a strict
        threshold). For positives that code keeps one fewer (an index off-by-one in its
        ``smallestPositive``); the symmetric count is used here. Active weights that are
        exactly zero are dropped.
        """
        frac = self.schedule(self.step)
        w = self.active_weights(layer, active)
        pos, neg = w > 0, w < 0
        n_pos, n_neg = int(torch.count_nonzero(pos)), int(torch.count_nonzero(neg))
        # the epsilon absorbs binary noise such as (1 - 0.3) * 10 = 7.000000000000001
        keep_pos = topk_mask(w, int(math.floor((1.0 - frac) * n_pos + 1e-9)), eligible=pos)  # largest positives
        keep_neg = topk_mask(-w, int(math.floor((1.0 - frac) * n_neg + 1e-9)), eligible=neg)  # most negative
        return keep_pos | keep_neg

    def grow(self, layer: MaskedLayer, kept: torch.Tensor, n_regrow: int) -> torch.Tensor:
        """``n_regrow`` positions outside ``kept``, uniformly at random (the method's generator).

        Sampled in time proportional to ``n_regrow`` (:func:`~sparseforge.core.patterns.random_mask`),
        not by ranking a random score at every position of the layer.
        """
        return random_mask(~kept, n_regrow, self.generator)
