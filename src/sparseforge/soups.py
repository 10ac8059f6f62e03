"""Sparse Model Soups: IMP phases whose retrained copies are averaged.

Zimmer, Spiegel & Pokutta, "Sparse Model Soups: A Recipe for Improved Pruning via Model
Averaging" (ICLR 2024; code: ``ZIB-IOL/SMS``)::

    theta <- dense model trained for `pretrain_epochs`
    for phase p = 1..P:
        prune theta globally by magnitude to sparsity 1 - (1 - S)**(p / P)
            (a fraction q = 1 - (1 - S)**(1/P) of the remaining weights)
        for i = 1..m: theta_i <- retrain a copy of theta with the same mask and variant i
            (seed, weight decay, learning rate or length)
        soup <- uniform average of theta_i, or the greedy soup: ingredients sorted by held-out
                accuracy, each added if the averaged model's held-out accuracy does not drop
        recompute BatchNorm statistics of the soup; theta <- soup

Every ingredient shares the phase's mask, so the average of weights that are zero in all of them
is zero: the soup has the mask's sparsity exactly (:func:`average_models` refuses ingredients
whose masks differ). With ``m = 1`` the procedure is plain IMP with retraining (no rewinding),
the baseline of the paper.

Defaults after the official code: SGD with momentum 0.9, weight decay 1e-4; the retraining
schedule is the official default ``LLR`` (a cosine warm-up from 0 to the learning rate over the
first 10 % of the steps, then linear decay to 0); BatchNorm recalibration forwards 20 % of the training batches in order in train
mode. Difference, on purpose: the recalibration uses a cumulative average (``momentum=None``)
instead of the default exponential one, so the recomputed statistics are exactly the average of
the batch statistics and do not depend on the old ones. The held-out set for greedy selection is
the last ``val_size`` training samples, which are never trained on.

The ``m`` retrains of a phase are independent: with ``jobs > 1`` they run in worker processes
(:func:`sparseforge.parallel.parallel_map`); ``jobs = 1`` runs them in this process.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .core.patterns import num_pruned, topk_mask
from .utils import preserved_modes
from .errors import ConfigError, LayerError, check_fraction, check_int, check_sparsity
from .masking import MASK_SUFFIX, Masking, Targets, find_masked_layers
from .results import Result
from .transaction import transaction

__all__ = ["Soup", "GreedySoup", "VARIANTS", "ZERO_POLICIES", "average_models", "average_state_dicts", "check_same_masks", "check_same_zeros", "recalibrate_bn", "uniform_soup",
           "greedy_soup", "train_classifier", "accuracy", "prune_global_magnitude", "phase_sparsity", "ingredient_configs",
           "PhaseResult", "SoupResult", "sparse_model_soups"]

#: what varies between the ingredients of a phase
VARIANTS: tuple[str, ...] = ("seed", "weight_decay", "lr", "length")


# --------------------------------------------------------------------------------- averaging
def _mask_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.endswith(MASK_SUFFIX)]


def check_same_masks(states: Sequence[dict[str, torch.Tensor]]) -> None:
    """Raise :class:`ConfigError` unless every state dict holds the same mask buffers with equal values."""
    if not states:
        raise ConfigError("a soup needs at least one ingredient (m >= 1); got none")
    ref = states[0]
    keys = _mask_keys(ref)
    for i, st in enumerate(states[1:], start=1):
        other = _mask_keys(st)
        if sorted(other) != sorted(keys):
            raise ConfigError(f"soup ingredient {i} has masks {sorted(other)[:4]}, ingredient 0 has {sorted(keys)[:4]}; "
                              "every ingredient must be retrained from the same pruned model")
        for k in keys:
            if not torch.equal(st[k], ref[k]):
                diff = int((st[k] != ref[k]).sum())
                raise ConfigError(f"soup ingredients 0 and {i} have different masks: {k} differs at {diff} position(s); "
                                  "averaging them would not keep the sparsity")


#: what a soup does with finalized ingredients (no masks) whose zero patterns differ
ZERO_POLICIES: tuple[str, ...] = ("error", "intersect", "union")


def _zero_keys(states: Sequence[dict[str, torch.Tensor]]) -> list[str]:
    # weights (2-D and more) without a mask whose exact zeros a soup must keep: the sparsity of
    # finalized ingredients lives only in their zeros
    ref = states[0]
    masked = {k[: -len(MASK_SUFFIX)] for k in _mask_keys(ref)}
    return [k for k, v in ref.items() if torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 2
            and k not in masked and any(bool((st[k] == 0).any()) for st in states if k in st)]


def check_same_zeros(states: Sequence[dict[str, torch.Tensor]], zeros: str = "error") -> list[str]:
    """The unmasked weights whose zero patterns differ between ingredients; raise for ``zeros="error"``.

    Ingredients that were finalized (masks folded into exact zeros) carry their sparsity only in
    their zeros: averaging weights that are zero in some ingredients and not in others gives a
    denser model. ``zeros`` says what to do then: ``"error"`` (default) refuses, naming the
    layer; ``"intersect"`` keeps a weight only where every ingredient keeps it (zeros where any
    ingredient is zero: at least as sparse as each); ``"union"`` averages as is (denser).
    """
    if zeros not in ZERO_POLICIES:
        raise ConfigError(f"zeros must be one of {list(ZERO_POLICIES)}; got {zeros!r}")
    differ = []
    for k in _zero_keys(states):
        ref = states[0][k] == 0
        for i, st in enumerate(states[1:], start=1):
            if k in st and tuple(st[k].shape) == tuple(ref.shape) and not torch.equal(st[k] == 0, ref):
                if zeros == "error":
                    diff = int(((st[k] == 0) != ref).sum())
                    raise LayerError(
                        f"soup ingredients 0 and {i} have different zero patterns in {k} ({diff} position(s)); "
                        f"averaging them would give a denser model. Retrain every ingredient from the same pruned "
                        f"model with its masks, or pass zeros='intersect' (keep only weights kept by all) or "
                        f"zeros='union' (plain average, denser)")
                differ.append(k)
                break
    return differ


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]],
                        weights: Sequence[float] | None = None, *, zeros: str = "error") -> dict[str, torch.Tensor]:
    """Weighted average of state dicts that share one mask (uniform weights ``1/m`` by default).

    Floating-point tensors (weights, biases, BatchNorm statistics) are averaged; masks must be
    equal and are kept; other integer tensors (``num_batches_tracked``) take the first value.
    Averaged masked weights are multiplied by the mask, so pruned positions are exactly zero.
    Finalized ingredients (no masks) must share their zero patterns; ``zeros`` (see
    :func:`check_same_zeros`) says what to do when they do not.
    """
    check_same_masks(states)
    differ = check_same_zeros(states, zeros)
    m = len(states)
    if weights is None:
        weights = [1.0 / m] * m
    if len(weights) != m:
        raise ConfigError(f"got {len(weights)} soup weights for {m} ingredients")
    out: dict[str, torch.Tensor] = {}
    for key, ref in states[0].items():
        if torch.is_tensor(ref) and ref.is_floating_point():
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for w, st in zip(weights, states):
                acc += float(w) * st[key].to(torch.float64)
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = ref.clone() if torch.is_tensor(ref) else copy.deepcopy(ref)
    for key in _mask_keys(out):
        pname = key[: -len(MASK_SUFFIX)]
        if pname in out:
            out[pname] = out[pname] * out[key].to(out[pname].dtype)
    if zeros == "intersect":
        for key in differ:
            kept = torch.stack([st[key] != 0 for st in states]).all(0)
            out[key] = out[key] * kept.to(out[key].dtype)
    return out


def average_models(models: Sequence[nn.Module], weights: Sequence[float] | None = None, *,
                   zeros: str = "error") -> nn.Module:
    """A new model holding the (weighted) average of ``models`` (see :func:`average_state_dicts`)."""
    if not models:
        raise ConfigError("a soup needs at least one ingredient (m >= 1); got none")
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(average_state_dicts([m.state_dict() for m in models], weights, zeros=zeros))
    return soup


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, *, batch_size: int = 128, fraction: float = 0.2) -> int:
    """Recompute every BatchNorm's running statistics from training data (after averaging).

    Resets the statistics, then forwards the first ``ceil(fraction * batches)`` batches of ``x``
    (in order, no shuffling) in train mode with a cumulative average, so each running mean is
    the mean of the batch means and each running variance the mean of the (unbiased) batch
    variances. Returns the number of batches used (0 if the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    if check_fraction(fraction, "fraction") == 0.0:
        raise ConfigError(f"fraction must be in (0, 1]; got {fraction}")
    check_int(batch_size, "batch_size", minimum=1)
    if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] == 0:
        raise ConfigError(f"x must be a tensor with at least one sample along dim 0; got "
                          f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    n_batches = max(1, math.ceil(fraction * math.ceil(x.shape[0] / batch_size)))
    momenta = [bn.momentum for bn in bns]
    modes = [(m, m.training) for m in model.modules()]
    # all or nothing: a forward pass that fails midway gives every BatchNorm its old statistics back
    with transaction(model, tensors="journal") as txn:
        txn.save(*(b for bn in bns for b in bn.buffers(recurse=False)))
        try:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            model.train()
            for i in range(n_batches):
                model(x[i * batch_size:(i + 1) * batch_size])
        finally:
            for bn, mom in zip(bns, momenta):
                bn.momentum = mom
            for m, t in modes:
                m.training = t
    return n_batches


@dataclass(frozen=True, kw_only=True)
class Soup(Result):
    """What :func:`uniform_soup` returns (and, with a score, :func:`greedy_soup`).

    Attributes:
        model: the soup, a new model (the ingredients are not modified).
        layers: its masked parameters (:class:`~sparseforge.masking.MaskedLayer`), if any.
        ingredients: indices (into ``models``) of the ingredients averaged, ascending.
    """

    ingredients: list[int]


@dataclass(frozen=True, kw_only=True)
class GreedySoup(Soup):
    """What :func:`greedy_soup` returns: a :class:`Soup` and its held-out ``score``.

    Unpacking it as ``soup, chosen`` still works for one release, with a ``DeprecationWarning``.
    """

    score: float

    _legacy_tuple = ("model", "ingredients")


def uniform_soup(models: Sequence[nn.Module], *, bn_data: torch.Tensor | None = None, batch_size: int = 128,
                 zeros: str = "error") -> Soup:
    """The uniform average of ``models``, with BatchNorm statistics recomputed on ``bn_data`` if given.

    ``zeros``: finalized ingredients with different zero patterns (see :func:`check_same_zeros`).
    Returns a :class:`Soup` (``.model`` the average).
    """
    soup = average_models(models, zeros=zeros)
    if bn_data is not None:
        recalibrate_bn(soup, bn_data, batch_size=batch_size)
    return Soup(model=soup, layers=find_masked_layers(soup), ingredients=list(range(len(models))))


def greedy_soup(models: Sequence[nn.Module], score: Callable[[nn.Module], float], *,
                bn_data: torch.Tensor | None = None, batch_size: int = 128,
                zeros: str = "error") -> GreedySoup:
    """Greedy soup (Wortsman et al. 2022, as used by SMS): add ingredients in order of held-out score.

    ``score(model)`` is the held-out accuracy (higher is better). Ingredients are sorted by their
    own score; each is added if the soup with it scores at least as well as the best soup so far
    (BatchNorm recomputed on ``bn_data`` before each score). Returns a :class:`GreedySoup`: the soup
    (``.model``), the indices used (``.ingredients``) and its ``.score``.
    ``zeros``: finalized ingredients with different zero patterns (see :func:`check_same_zeros`).
    """
    if not models:
        raise ConfigError("a soup needs at least one ingredient (m >= 1); got none")
    states = [m.state_dict() for m in models]
    check_same_masks(states)
    check_same_zeros(states, zeros)  # refused before any ingredient is scored
    own = [score(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: (-own[i], i))
    chosen = [order[0]]
    best_model, best = models[order[0]], own[order[0]]
    for i in order[1:]:
        cand = average_models([models[j] for j in chosen + [i]], zeros=zeros)
        if bn_data is not None:
            recalibrate_bn(cand, bn_data, batch_size=batch_size)
        s = score(cand)
        if s >= best:
            chosen.append(i)
            best_model, best = cand, s
    if len(chosen) == 1:
        best_model = copy.deepcopy(best_model)
    return GreedySoup(model=best_model, layers=find_masked_layers(best_model), ingredients=sorted(chosen), score=best)


# --------------------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (the model's mode is restored)."""
    correct = 0
    with preserved_modes(model):
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def _llr(step: int, total: int) -> float:
    warm = max(1, int(0.1 * total))
    if step < warm:  # cosine ramp from 0 to the full rate, as the official LLR warm-up
        return 0.5 * (1.0 - math.cos(math.pi * (step + 1) / warm))
    return max(0.0, (total - step) / max(1, total - warm))


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: float, lr: float,
                     weight_decay: float = 1e-4, momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
                     schedule: str = "llr", eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                     eval_every: int = 0,
                     on_optimizer: Callable[[torch.optim.Optimizer], Any] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place with SGD and cross-entropy; masks on the model stay enforced.

    Args:
        epochs: length (fractions allowed: ``0.5`` = half an epoch of steps).
        schedule: ``"llr"`` (10 % cosine warm-up, then linear decay to 0; the SMS default),
            ``"cosine"`` or ``"constant"``.
        seed: seeds the data order (and nothing else).
        eval_data: ``(x, y)`` scored after every epoch and every ``eval_every`` steps (if > 0).
        on_optimizer: called with the new optimizer before training, e.g. to attach a sparsity
            method (``lambda opt: ift_method(model, opt, total_steps=...)``); it then owns the
            masks. Without it, masks already on the model are kept fixed.
    Returns:
        one record per evaluation: ``step``, ``epoch``, ``train_loss`` (mean since the last
        record), ``accuracy`` (on ``eval_data``).
    """
    if schedule not in ("llr", "cosine", "constant"):
        raise ConfigError(f"schedule must be 'llr', 'cosine' or 'constant'; got {schedule!r}")
    if not epochs > 0:
        raise ConfigError(f"epochs must be > 0; got {epochs}")
    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = max(1, int(round(epochs * per_epoch)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    masking = None
    attached = on_optimizer(opt) if on_optimizer is not None else None
    if attached is None and find_masked_layers(model):
        masking = Masking(model)
        masking.attach(opt)
    if schedule == "llr":
        f = lambda t: _llr(t, total)  # noqa: E731
    elif schedule == "cosine":
        f = lambda t: 0.5 * (1 + math.cos(math.pi * t / total))  # noqa: E731
    else:
        f = lambda t: 1.0  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    step, loss_sum, seen = 0, 0.0, 0
    model.train()
    try:
        while step < total:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += loss.item() * idx.numel()
                seen += idx.numel()
                if eval_data is not None and ((eval_every and step % eval_every == 0) or step % per_epoch == 0
                                              or step == total):
                    if not history or history[-1]["step"] != step:
                        history.append({"step": step, "epoch": step / per_epoch, "train_loss": loss_sum / max(seen, 1),
                                        "accuracy": accuracy(model, *eval_data)})
                        loss_sum, seen = 0.0, 0
                if step >= total:
                    break
    finally:
        if masking is not None:
            masking.detach()
        if attached is not None and hasattr(attached, "masking"):
            attached.masking.detach()
    return history


# --------------------------------------------------------------------------------- IMP pieces
def phase_sparsity(sparsity: float, phase: int, phases: int) -> float:
    """Sparsity after phase ``phase`` of ``phases``: ``1 - (1 - S)**(phase / phases)``."""
    return 1.0 - (1.0 - sparsity) ** (phase / phases)


@torch.no_grad()
def prune_global_magnitude(masking: Masking, sparsity: float) -> None:
    """Global magnitude pruning of the masked layers to exactly ``round(sparsity * N)`` zeros.

    Only currently kept weights are eligible to stay, so masks only shrink (IMP).
    """
    sparsity = check_sparsity(sparsity)
    layers = masking.layers
    scores = torch.cat([l.weight.detach().abs().reshape(-1).float().cpu() for l in layers])
    current = torch.cat([l.mask.reshape(-1).cpu() for l in layers])
    n = scores.numel()
    keep_n = n - num_pruned(sparsity, n)
    keep_n = min(keep_n, int(current.sum()))
    keep = topk_mask(scores, keep_n, eligible=current)
    start = 0
    for l in layers:
        k = l.weight.numel()
        masking.set_mask(l, keep[start:start + k].reshape(l.weight.shape).to(l.mask.device))
        start += k
    for l in layers:
        if int(l.mask.sum()) == 0:
            raise LayerError(f"{l.qualname}: global pruning at sparsity {sparsity} removed every weight of this layer")


def ingredient_configs(m: int, *, vary: str = "seed", values: Sequence[Any] | None = None, base_seed: int = 0,
                       lr: float = 0.05, weight_decay: float = 1e-4, epochs: float = 1.0) -> list[dict[str, Any]]:
    """Retraining settings of the ``m`` ingredients of a phase.

    ``vary="seed"`` (default, as in SMS): seeds ``base_seed + i``. For ``"weight_decay"``,
    ``"lr"`` or ``"length"`` (epochs) give ``values`` (one per ingredient); the seed stays
    ``base_seed + i`` so the ingredients also see different data orders.
    """
    check_int(m, "m", minimum=1)
    if vary not in VARIANTS:
        raise ConfigError(f"vary must be one of {list(VARIANTS)}; got {vary!r}")
    base = {"lr": float(lr), "weight_decay": float(weight_decay), "epochs": float(epochs)}
    if vary != "seed":
        if values is None or len(values) != m:
            raise ConfigError(f"vary={vary!r} needs values with one entry per ingredient (m={m}); got {values!r}")
    out = []
    for i in range(m):
        cfg = {**base, "seed": base_seed + i}
        if vary == "weight_decay":
            cfg["weight_decay"] = float(values[i])
        elif vary == "lr":
            cfg["lr"] = float(values[i])
        elif vary == "length":
            cfg["epochs"] = float(values[i])
        out.append(cfg)
    return out


def _load_data(data: Any) -> Any:
    from .data import load_dataset

    if isinstance(data, str):
        return load_dataset(data)
    if isinstance(data, dict):
        return load_dataset(**data)
    return data


def _split_val(ds: Any, val_size: int) -> tuple[torch.Tensor, ...]:
    split = ds.split_validation(val_size, param="val_size")
    return split.x_train, split.y_train, split.x_val, split.y_val


def retrain_ingredient(model: nn.Module, data: Any, config: dict[str, Any], *, val_size: int, batch_size: int = 128,
                       threads: int | None = None) -> dict[str, Any]:
    """Retrain a copy of ``model`` (masks fixed) with ``config``; the unit of work of one ingredient.

    ``data`` is a :class:`~sparseforge.data.Dataset`, a dataset name or a ``load_dataset`` kwargs
    dict (worker processes load it themselves). Returns the ``state_dict``, the held-out and test
    accuracy and the wall time.
    """
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ds = _load_data(data)
    xt, yt, xv, yv = _split_val(ds, val_size)
    model = copy.deepcopy(model)
    train_classifier(model, xt, yt, epochs=config["epochs"], lr=config["lr"], weight_decay=config["weight_decay"],
                     batch_size=batch_size, seed=config["seed"])
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "config": dict(config),
            "val_accuracy": accuracy(model, xv, yv), "test_accuracy": accuracy(model, ds.x_test, ds.y_test),
            "seconds": time.perf_counter() - t0}


@dataclass
class PhaseResult:
    """One IMP phase: target sparsity, ingredients' accuracies, the soups' accuracies."""

    phase: int
    sparsity: float
    ingredients: list[dict[str, Any]]
    uniform: dict[str, float]
    greedy: dict[str, Any]
    chosen: str

    def best_ingredient(self) -> dict[str, Any]:
        """The ingredient with the highest held-out accuracy (ties: lower index)."""
        return max(self.ingredients, key=lambda r: (r["val_accuracy"], -r["index"]))


@dataclass(frozen=True, kw_only=True)
class SoupResult(Result):
    """What :func:`sparse_model_soups` produced: the final soup and every phase's numbers.

    Attributes:
        model: the model passed in, now the final soup (masks included).
        layers: its masked parameters (:class:`~sparseforge.masking.MaskedLayer`).
        phases: one :class:`PhaseResult` per IMP phase; ``dense`` the dense model's accuracies;
            ``config`` the settings.
    """

    phases: list[PhaseResult]
    dense: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> PhaseResult:
        """The last phase."""
        return self.phases[-1]


def sparse_model_soups(model: nn.Module, data: Any, *, sparsity: float, phases: int = 3, m: int = 3,
                       vary: str = "seed", values: Sequence[Any] | None = None, soup: str = "greedy",
                       pretrain_epochs: float = 2.0, retrain_epochs: float = 1.0, lr: float = 0.05,
                       weight_decay: float = 1e-4, batch_size: int = 128, val_size: int = 1000, seed: int = 0,
                       targets: Targets | dict | None = None, jobs: int = 1,
                       log: Callable[[str], None] | None = None) -> SoupResult:
    """Run Sparse Model Soups (see the module docstring) and return the final soup.

    Args:
        model: the dense model (modified: it ends as the final soup, masks included).
        data: a :class:`~sparseforge.data.Dataset`, a dataset name or ``load_dataset`` kwargs.
            With ``jobs > 1`` pass a name/dict so each worker loads the data itself.
        sparsity: final sparsity ``S`` in ``[0, 1)`` of the masked layers.
        phases: IMP phases ``P``; phase ``p`` prunes to ``1 - (1 - S)**(p / P)``.
        m: ingredients per phase (``m = 1`` is IMP).
        vary / values: what differs between ingredients (:func:`ingredient_configs`).
        soup: ``"greedy"`` (default) or ``"uniform"``: which soup starts the next phase; both
            are computed and reported every phase.
        pretrain_epochs: dense training before the first pruning (skipped if 0).
        retrain_epochs, lr, weight_decay, batch_size: retraining settings (LLR schedule).
        val_size: last training samples held out for greedy selection (never trained on).
        seed: base seed (pretraining data order; ingredient ``i`` uses ``seed + i``).
        targets: which layers are pruned (default: every Linear/Conv, :class:`~sparseforge.masking.Targets`).
        jobs: worker processes for the ``m`` retrains (1 = in this process).
    """
    from .parallel import parallel_map

    s = check_sparsity(sparsity)
    check_int(phases, "phases", minimum=1)
    check_int(m, "m", minimum=1)
    check_int(jobs, "jobs", minimum=1)
    if soup not in ("greedy", "uniform"):
        raise ConfigError(f"soup must be 'greedy' or 'uniform'; got {soup!r}")
    configs = ingredient_configs(m, vary=vary, values=values, base_seed=seed, lr=lr, weight_decay=weight_decay,
                                 epochs=retrain_epochs)
    log = log or (lambda _: None)
    ds = _load_data(data)
    xt, yt, xv, yv = _split_val(ds, val_size)
    masking = Masking(model, Targets.from_spec(targets) if targets is not None else None)
    torch.manual_seed(seed)
    if pretrain_epochs:
        train_classifier(model, xt, yt, epochs=pretrain_epochs, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, seed=seed, schedule="cosine")
    dense = {"val_accuracy": accuracy(model, xv, yv), "test_accuracy": accuracy(model, ds.x_test, ds.y_test)}
    log(f"dense: val {dense['val_accuracy']:.4f} test {dense['test_accuracy']:.4f}")
    results: list[PhaseResult] = []
    worker_data = data if jobs > 1 else ds
    for p in range(1, phases + 1):
        target = phase_sparsity(s, p, phases)
        prune_global_magnitude(masking, target)
        calls = [{"model": model, "data": worker_data, "config": c, "val_size": val_size, "batch_size": batch_size}
                 for c in configs]
        outs: list[dict[str, Any] | None] = [None] * m
        for i, r in parallel_map(retrain_ingredient, calls, jobs=min(jobs, m)):
            outs[i] = r
        ingredients = []
        models = []
        for i, r in enumerate(outs):
            assert r is not None
            mm = copy.deepcopy(model)
            mm.load_state_dict(r["state_dict"])
            models.append(mm)
            ingredients.append({"index": i, "config": r["config"], "val_accuracy": r["val_accuracy"],
                                "test_accuracy": r["test_accuracy"], "seconds": r["seconds"]})
        bn = xt if _has_bn(model) else None
        uni = uniform_soup(models, bn_data=bn, batch_size=batch_size).model
        greedy = greedy_soup(models, lambda mdl: accuracy(mdl, xv, yv), bn_data=bn, batch_size=batch_size)
        gre, chosen_idx = greedy.model, greedy.ingredients
        uni_res = {"val_accuracy": accuracy(uni, xv, yv), "test_accuracy": accuracy(uni, ds.x_test, ds.y_test)}
        gre_res = {"val_accuracy": accuracy(gre, xv, yv), "test_accuracy": accuracy(gre, ds.x_test, ds.y_test),
                   "ingredients": chosen_idx}
        nxt = gre if soup == "greedy" else uni
        model.load_state_dict(nxt.state_dict())
        results.append(PhaseResult(p, target, ingredients, uni_res, gre_res, soup))
        log(f"phase {p}: sparsity {target:.4f}; ingredients test "
            f"{[round(r['test_accuracy'], 4) for r in ingredients]}; uniform {uni_res['test_accuracy']:.4f}; "
            f"greedy {gre_res['test_accuracy']:.4f} ({chosen_idx})")
    cfg = {"sparsity": s, "phases": phases, "m": m, "vary": vary, "values": list(values) if values else None,
           "soup": soup, "pretrain_epochs": pretrain_epochs, "retrain_epochs": retrain_epochs, "lr": lr,
           "weight_decay": weight_decay, "batch_size": batch_size, "val_size": val_size, "seed": seed}
    return SoupResult(model=model, layers=find_masked_layers(model), phases=results, dense=dense, config=cfg)
