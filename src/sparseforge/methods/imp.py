"""Iterative magnitude pruning with weight rewinding (the lottery-ticket procedure).

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks"; rewinding to an early step ``k`` from Frankle et al. 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis". As in ``open_lth``::

    train k steps -> theta_k (k = 0: theta_0, the initialisation)
    for round r = 0..R-1:
        train from theta_k (mask m) for the remaining steps of the round
        [event round_end: the trained network of round r]
        prune to the schedule's level r + 1 by magnitude -> m
        rewind the surviving weights to theta_k, reset the optimizer state
    train the final mask once more  [event round_end, last=True]

Schedules (:mod:`sparseforge.core.schedules`): ``"geometric"`` (default; ``fraction`` of the
*remaining* weights per round, sparsity ``1 - (1 - p)**r``, the last pruning capped at the
target), ``"linear"`` (``fraction`` of the *original* count per round, ``r * p``), or an explicit
list of levels. Defaults follow ``open_lth`` LeNet: ``p = 0.2``, global ranking
(``allocation="global"``); layers to keep dense (open_lth ignores the output layer) are given
through ``targets``. If an ``lr_scheduler`` is passed, its state at step ``k`` is restored at
every rewind, so each round replays the same learning-rate schedule.

Per-layer rates: ``layer_rates={"fc3": 0.5}`` prunes the named modules at that multiple of
the per-round fraction, each on its own (layer-wise): Frankle & Carbin 2019 prune LeNet's
output layer at half the rate of the others (10 % per round against 20 %). The remaining
layers follow the schedule (ranked globally or layer-wise, by ``allocation``) over their own
count. Needs a geometric or linear schedule.

Controls (Frankle & Carbin 2019, Sec. 2): ``score="random"`` prunes at random (seeded, exact
counts, among the kept weights) to the same levels; ``reinit="random"`` trains each round's
mask from a fresh random initialisation (each module's ``reset_parameters``, seeded) instead
of rewinding. With ``reinit`` the masks are those this run prunes from its own (freshly
initialised) trained networks; the paper's control retrains the masks of the rewinding run.

The prune-and-rewind happens inside the ``optimizer.step()`` of a round's last step, so a
loop that evaluates after that step sees the rewound, untrained network. Listen to the
``round_end`` event instead (the recipe ``Trainer`` does, logging one row per round)::

    method = IMP(model, optimizer, sparsity=0.36, steps_per_round=len(loader))  # 2 prunings, 3 rounds
    trained = []                      # (round, sparsity, loss) of each round's trained network
    method.on("round_end", lambda e: trained.append((e.info["round"], e.info["sparsity"], loss_fn(model(x), y).item())))
    for epoch in range(method.rounds + 1):   # one epoch per round
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
    assert [r for r, _, _ in trained] == [0, 1, 2]
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.allocation import global_sparsities
from ..core.patterns import num_pruned
from ..core.schedules import GeometricLevels, LevelSchedule, levels_from_spec
from ..core.targets import parse_target
from ..errors import CheckpointError, ConfigError, check_number
from ..masking import full_tensor
from .base import SparsityMethod, step_param

__all__ = ["IMP"]

_SCORES = ("magnitude", "random")


class IMP(SparsityMethod):
    """Lottery-ticket IMP with rewinding.

    Args:
        sparsity: final target sparsity (optional with an explicit level list, whose last
            level it must then equal).
        steps_per_round: optimizer steps of one training round (the same in every round).
        schedule: ``"geometric"`` (default), ``"linear"``, a list of sparsities (one per
            pruning, strictly increasing in [0, 1)) or a
            :class:`~sparseforge.core.schedules.LevelSchedule`.
        fraction: pruned per round: of the remaining weights (geometric) or of the original
            count (linear); default 0.2. Not with an explicit list.
        rewind_step: step ``k`` whose weights are restored after each pruning (0 = the
            initialisation, the original lottery ticket).
        score: ``"magnitude"`` (default) or ``"random"`` (the random-pruning control).
        reinit: None (default: rewind), ``"random"`` (a fresh initialisation each round via
            every module's ``reset_parameters``) or a callable ``fn(model)`` that
            re-initialises the model in place; both run under the method's seed. Needs
            ``rewind_step=0``.
        lr_scheduler: optional scheduler whose state at ``rewind_step`` is restored at every rewind.
        allocation: ``"global"`` (default) or ``"uniform"`` (layer-wise, as in the 2019 LeNet runs).
        layer_rates: optional ``{module name: multiplier}``; a named layer is pruned on its own
            at ``multiplier * fraction`` per round (geometric: of its remaining weights,
            linear: of its original count), e.g. ``{"fc3": 0.5}`` for Frankle & Carbin's
            output layer at half rate.
    Round 0 runs ``steps_per_round`` steps; each later round restarts at step ``k`` and runs
    ``steps_per_round - k`` steps, so the run takes :attr:`total_steps`
    ``= steps_per_round + rounds * (steps_per_round - k)`` optimizer steps, with
    ``rounds`` the schedule's number of prunings. Emits ``round_end`` at the end of every
    round (``rounds + 1`` times), before pruning and rewinding.
    """

    name = "imp"
    runner_args = frozenset({"lr_scheduler"})
    trains_in_rounds = True

    @classmethod
    def run_defaults(cls, total_steps: int, steps_per_epoch: int | None) -> dict[str, Any]:
        """A round is the runner's whole training length unless ``steps_per_round`` says otherwise."""
        return {"steps_per_round": total_steps}

    @classmethod
    def lr_horizon(cls, params: dict[str, Any], total_steps: int) -> int:
        """The learning-rate schedule spans one round (it is rewound with the weights)."""
        return params.get("steps_per_round", total_steps)

    def run_steps(self, total_steps: int) -> int:
        """All rounds: :attr:`total_steps`."""
        return self.total_steps
    default_allocation = "global"
    emits = ("round_end",)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 sparsity: float | None = None, steps_per_round: int,
                 schedule: str | Sequence[float] | LevelSchedule = "geometric", fraction: float | None = None,
                 rewind_step: int = 0, score: str = "magnitude", reinit: str | Callable[[nn.Module], Any] | None = None,
                 lr_scheduler: Any = None, layer_rates: dict[str, float] | None = None, **kwargs: Any) -> None:
        v = IMP._check_params({"sparsity": sparsity, "steps_per_round": steps_per_round, "schedule": schedule,
                               "fraction": fraction, "rewind_step": rewind_step, "score": score, "reinit": reinit,
                               "layer_rates": layer_rates})
        self.levels = v["levels"]
        self.fraction = getattr(self.levels, "fraction", None)
        if reinit == "random":
            for mname, module in model.named_modules():
                if any(True for _ in module.parameters(recurse=False)) and not hasattr(module, "reset_parameters"):
                    raise ConfigError(
                        f"reinit='random': module {mname or '(model)'!r} ({type(module).__name__}) has parameters of "
                        "its own but no reset_parameters(); pass reinit=fn(model) that re-initialises the model")
        self.layer_rates: dict[str, float] = v["layer_rates"]
        modules = {n for n, _ in model.named_modules()}
        typos = sorted(set(self.layer_rates) - modules)
        if typos:  # refused before any mask is registered
            raise ConfigError(f"layer_rates names {typos}, which are not modules of {type(model).__name__}; "
                              f"module names look like {sorted(modules - {''})[:6]}")
        self.steps_per_round = steps_per_round
        self.rewind_step = rewind_step
        self.score = score
        self.reinit = reinit
        self.lr_scheduler = lr_scheduler
        self.round = 0
        self._rewind_state: dict[str, torch.Tensor] | None = None
        self._sched_state: dict[str, Any] | None = None
        self._pending_sched_restore = False
        super().__init__(model, optimizer, sparsity=self.levels.final, **kwargs)
        self.rounds = self.levels.rounds
        if self.layer_rates:
            names = {l.name for l in self.layers}
            unknown = sorted(set(self.layer_rates) - names)
            if unknown:
                self.masking.unregister()
                raise ConfigError(f"layer_rates names {unknown}, which are not masked layers; masked layers: {sorted(names)}")

    @staticmethod
    def _check_layer_rates(rates: Any, levels: LevelSchedule) -> dict[str, float]:
        """``layer_rates`` as ``{name: multiplier}``: numbers > 0 that keep each layer's rate below 1."""
        if rates is None:
            return {}
        if not isinstance(rates, dict):
            raise ConfigError(f"layer_rates must be a mapping {{module name: multiplier}}; got {rates!r}")
        kind = type(levels).__name__
        if kind not in ("GeometricLevels", "LinearLevels"):
            raise ConfigError("layer_rates scales the per-round fraction: it needs schedule='geometric' or 'linear', "
                              f"not an explicit level list ({list(levels.values)})")
        out = {}
        for name, r in rates.items():
            r = check_number(r, f"layer_rates[{name!r}]", minimum=0.0, min_open=True)
            if levels.fraction * r >= 1.0:
                raise ConfigError(f"layer_rates[{name!r}] = {r} times fraction {levels.fraction} prunes "
                                  f"{levels.fraction * r:.3g} per round; it must stay below 1")
            if kind == "LinearLevels" and levels.rounds * levels.fraction * r >= 1.0:
                raise ConfigError(f"layer_rates[{name!r}] = {r}: {levels.rounds} linear rounds of "
                                  f"{levels.fraction * r:.3g} would prune the whole layer")
            out[str(name)] = float(r)
        return out

    def layer_level(self, name: str, r: int) -> float:
        """Sparsity of layer ``name`` after the ``r``-th pruning (its own rate, or the schedule's level)."""
        rate = self.layer_rates.get(name)
        if rate is None or r == 0:
            return self.round_sparsity(r)
        f = self.levels.fraction * rate
        return 1.0 - (1.0 - f) ** r if type(self.levels).__name__ == "GeometricLevels" else r * f

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """Rounds, levels, rewinding and scores; returns the level schedule."""
        steps_per_round = step_param(p, "steps_per_round", minimum=1)
        sparsity = p.get("sparsity")
        if sparsity is not None:
            target = parse_target(sparsity)
            if target.is_nm:
                raise ConfigError(f"IMP prunes to a fraction of zeros; N:M {target} is trained with the N:M methods")
            sparsity = target.sparsity
        fraction = p.get("fraction")
        if fraction is not None:
            fraction = check_number(fraction, "fraction", minimum=0.0, maximum=1.0, min_open=True, max_open=True,
                                    note=" (pruned per round)")
        schedule = p.get("schedule", "geometric")
        if isinstance(schedule, (list, tuple)) or isinstance(schedule, LevelSchedule):
            try:
                levels = levels_from_spec(schedule, sparsity, fraction)
            except ConfigError as e:
                raise ConfigError(f"schedule={list(schedule) if isinstance(schedule, tuple) else schedule!r}: {e}") from None
        else:
            levels = levels_from_spec(schedule, sparsity, fraction)
        rewind_step = step_param(p, "rewind_step")
        if rewind_step is not None and steps_per_round is not None and rewind_step >= steps_per_round:
            raise ConfigError(f"rewind_step must be < steps_per_round ({steps_per_round}); got {rewind_step}")
        score = p.get("score", "magnitude")
        if score not in _SCORES:
            raise ConfigError(f"IMP score must be one of {list(_SCORES)}; got {score!r}")
        reinit = p.get("reinit")
        if reinit is not None and reinit != "random" and not callable(reinit):
            raise ConfigError(f"reinit must be None (rewind), 'random' or a callable fn(model); got {reinit!r}")
        if reinit is not None and p.get("rewind_step", 0) not in (0, None):
            raise ConfigError(f"reinit={reinit!r} trains each round from a fresh initialisation, "
                              f"rewind_step={p.get('rewind_step')} rewinds to that step's weights: use one of them "
                              "(reinit with rewind_step=0)")
        layer_rates = cls._check_layer_rates(p.get("layer_rates"), levels)
        # the base class checks the final level as the method's target
        return {"levels": levels, "layer_rates": layer_rates, "base_params": {"sparsity": levels.final}}

    @staticmethod
    def num_rounds(sparsity: float, fraction: float) -> int:
        """Smallest R with ``1 - (1 - fraction)**R >= sparsity`` (the geometric schedule's rounds)."""
        return GeometricLevels(sparsity, fraction).rounds

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole procedure: one round per pruning plus the final round."""
        return self.round_end(self.rounds)

    def round_end(self, r: int) -> int:
        """Optimizer steps completed when round ``r`` (0-based) ends."""
        return self.steps_per_round + r * (self.steps_per_round - self.rewind_step)

    def round_sparsity(self, r: int) -> float:
        """Scheduled sparsity after the ``r``-th pruning (1-based; 0 before any)."""
        return self.levels(r)

    def current_sparsity(self) -> float:
        """Sparsity of the masked weights now, from the masks."""
        masks = [full_tensor(l.mask) for l in self.layers]  # a sharded mask is counted whole
        kept = sum(int(torch.count_nonzero(m)) for m in masks)
        total = sum(m.numel() for m in masks)
        return 1.0 - kept / total if total else 0.0

    def _snapshot(self) -> None:
        if self.reinit is None:  # a fresh initialisation needs no copy of theta_k
            self._rewind_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.lr_scheduler is not None:
            self._sched_state = copy.deepcopy(self.lr_scheduler.state_dict())

    def before(self, t: int) -> None:
        """Snapshot ``theta_k`` just before step ``k``; re-apply the LR schedule after a rewind.

        Both happen before the step reads the learning rate, so the scheduler state is the
        one that step ``k`` used, whether or not the caller steps a scheduler after each step.
        """
        if t == self.rewind_step and self.round == 0 and self._rewind_state is None and self._sched_state is None:
            self._snapshot()
        if self._pending_sched_restore:
            self._pending_sched_restore = False
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._sched_state))
            for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                group["lr"] = lr

    @torch.no_grad()
    def _prune_round(self) -> None:
        self.round += 1
        target = self.round_sparsity(self.round)
        if self.score == "random":
            scores = [torch.rand(l.canonical_shape, generator=self.generator) for l in self.layers]
        else:
            scores = [l.canonical(l.weight.detach().abs()) for l in self.layers]
        if self.layer_rates:
            masks = self._masks_with_rates(scores, target)
        elif self.allocation.needs_scores:
            total = sum(l.weight.numel() for l in self.layers)
            saved, self.sparsity = self.sparsity, num_pruned(target, total) / total
            try:
                masks = self.masks_from_scores(scores, eligible_only=True)
            finally:
                self.sparsity = saved
        else:
            per_layer = [target] * len(self.layers)
            if self.overrides:  # each layer's level scales to its own final sparsity
                per_layer = [min(sl * target / self.sparsity, sl) if self.sparsity else 0.0 for sl in self.layer_sparsity]
            masks = self.masks_from_scores(scores, per_layer, eligible_only=True)
        self.set_masks(masks)
        self._restart()

    def _masks_with_rates(self, scores: list[torch.Tensor], target: float) -> list[torch.Tensor]:
        """Masks when some layers have their own rate: those on their own, the rest by the schedule."""
        masks: list[torch.Tensor | None] = [None] * len(self.layers)
        rest = []
        for i, layer in enumerate(self.layers):
            if layer.name in self.layer_rates:
                masks[i] = self._shrink(layer, scores[i].float(), self.layer_level(layer.name, self.round))
            else:
                rest.append(i)
        if rest and self.allocation.needs_scores:
            kept = [torch.where(self.layers[i].canonical(self.layers[i].mask), scores[i].float(),
                                torch.full_like(scores[i].float(), -math.inf)) for i in rest]
            total = sum(k.numel() for k in kept)
            sps = global_sparsities(kept, num_pruned(target, total) / total)
            for i, k, sp in zip(rest, kept, sps):
                masks[i] = self.pattern.mask(k, sp, self.layers[i].qualname)
        else:
            for i in rest:
                masks[i] = self._shrink(self.layers[i], scores[i].float(), target)
        self.layer_sparsity = [1.0 - float(m.sum()) / m.numel() for m in masks]
        return masks

    @torch.no_grad()
    def _restart(self) -> None:
        """Weights for the next round: theta_k (rewind) or a fresh initialisation; fresh optimizer state."""
        if self.reinit is None:
            self._rewind()
        else:
            self._fresh_init()
        self.masking.apply()
        if self.optimizer is not None:
            self.optimizer.state.clear()  # a fresh optimizer per round, as open_lth builds one per level
        # the caller may still step its scheduler after this step: restore just before the next one
        self._pending_sched_restore = self.lr_scheduler is not None and self._sched_state is not None

    def _rewind(self) -> None:
        assert self._rewind_state is not None
        mask_keys = {l.qualname + "_mask" for l in self.layers}
        for k, v in self.model.state_dict().items():
            if k not in mask_keys and k in self._rewind_state:
                v.copy_(self._rewind_state[k])

    def _fresh_init(self) -> None:
        # the seed comes from the method's generator (checkpointed), so a resumed run and every
        # rank of a distributed one draw the same initialisation; the caller's RNG is untouched
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        cuda = sorted({p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
            if callable(self.reinit):
                self.reinit(self.model)
            else:
                for module in self.model.modules():
                    if any(True for _ in module.parameters(recurse=False)):
                        module.reset_parameters()

    def update(self, t: int) -> None:
        """At the end of each round: emit ``round_end``, then prune and rewind (all but the last round)."""
        done = t + 1  # steps completed
        if self.round <= self.rounds and done == self.round_end(self.round):
            last = self.round == self.rounds
            if self.listening("round_end"):  # counting the masks costs a pass over them (a gather if sharded)
                self.emit("round_end", round=self.round, sparsity=self.current_sparsity(), last=last)
            if not last:
                self._prune_round()

    def extra_state(self) -> dict[str, Any]:
        """Round counter, rewind snapshot and the schedule's levels (needed to resume)."""
        return {"round": self.round, "rewind_state": self._rewind_state, "sched_state": self._sched_state,
                "pending_sched_restore": self._pending_sched_restore, "levels": list(self.levels.values)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore round counter and rewind snapshot; refuse a checkpoint of another schedule."""
        levels = state.get("levels")  # absent in checkpoints written before schedules existed
        if levels is not None and [float(v) for v in levels] != list(self.levels.values):
            raise CheckpointError(f"the checkpoint's IMP levels {list(levels)} differ from this method's "
                                  f"{list(self.levels.values)}")
        self.round = int(state["round"])
        self._rewind_state = state["rewind_state"]
        self._sched_state = state["sched_state"]
        self._pending_sched_restore = bool(state["pending_sched_restore"])
