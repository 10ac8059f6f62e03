"""Train a classifier to a target group (channel) sparsity, then export the compact model.

:func:`train_structured` is one training run with one of four ways of reaching group
sparsity, all on the groups of :func:`.trace_groups` (a group = one channel of a layer and
every slice coupled to it):

* ``"dense"``: plain training (nothing removed);
* ``"hesso"``: :class:`.HESSO` (Chen et al. 2024) around SGD for the whole run (warm-up,
  pruning periods, then training on with the pruned groups held at zero), no fine-tuning;
* ``"oneshot"``: :class:`.StructuredPruner` (magnitude ranking of coupled channel groups, as
  in Li et al. 2017, "Pruning Filters for Efficient ConvNets") on the *given* (already
  trained) model, then fine-tuning with the removed groups held at exactly zero after every
  step;
* ``"group_lasso"`` / ``"wgsef"``: :class:`.GroupProx` (proximal SGD with the group lasso
  penalty of Yuan & Lin 2006, or the group sparse envelope of Refael, Arbel & Huleihel,
  arXiv 2212.12921, without per-group weights) for the whole run, then
  :meth:`.GroupProx.finalize` keeps exactly the target number of groups (hard selection by
  group norm, no fine-tuning). Group lasso alone may zero more groups than the target; those
  stay in the export as all-zero channels (``zero_groups`` then exceeds ``target_groups``).

Every method trains the full-size model (removed groups are exact zeros), so the returned
``model`` is the group-zeroed reference and ``small`` the shrunk export (:func:`.shrink`):
the two must give the same outputs. Optimizer: SGD with momentum and weight decay, cosine
learning rate per step over the run, batches shuffled per epoch from ``seed`` like
:class:`sparseforge.train.Trainer`.

:func:`run_structured` wraps it for benchmarks: load a dataset by name, build a registered
model, train, measure test accuracy of both models, params and MACs, and save the export with
:func:`.save_structured` (the worker function of ``sparseforge bench structured_train``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_int, check_number
from .structured.graph import DependencyGraph, trace_groups
from .structured.hesso import HESSO
from .structured.prox import GroupProx
from .structured.pruner import StructuredPruner, count_params_macs
from .structured.shrink import Kept, kept_indices, shrink
from .structured.trace import ELEMENTS

__all__ = ["STRUCTURED_METHODS", "StructuredTrainResult", "train_structured", "zero_group_count", "run_structured"]

STRUCTURED_METHODS = ("dense", "hesso", "oneshot", "group_lasso", "wgsef")


@dataclass
class StructuredTrainResult:
    """What :func:`train_structured` returns.

    Attributes:
        model: the trained full-size model; removed groups are exactly zero.
        small: the shrunk export of ``model`` (``model`` itself for ``"dense"``).
        kept: kept indices (for :func:`.save_structured`); empty for ``"dense"``.
        removed: indices (into ``graph.groups``) of the removed groups.
        graph: the dependency graph the groups come from.
        target_groups: how many groups the method promises to remove (its own rounding:
            HESSO floors ``s * n``, the others round it).
        zero_groups: groups of ``model`` measured to be exactly zero at the end.
        prox_zero_groups: for the proximal methods, groups the prox alone had zeroed before
            the hard selection; otherwise None.
        history: per epoch ``{"epoch", "train_loss", "lr", "zero_groups"}`` (plus whatever
            ``evaluate`` returned).
        seconds: wall time of the training.
    """

    model: nn.Module
    small: nn.Module
    kept: Kept
    removed: list[int]
    graph: DependencyGraph
    target_groups: int
    zero_groups: int
    prox_zero_groups: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_groups(self) -> int:
        """Number of removable groups of the model."""
        return len(self.graph.groups)


def _param_table(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(name, p)
    return out


@torch.no_grad()
def zero_group_count(model: nn.Module, graph: DependencyGraph) -> int:
    """Number of groups of ``graph`` whose every parameter slice in ``model`` is exactly zero."""
    params = _param_table(model)
    count = 0
    for g in graph.groups:
        nonzero, seen = False, False
        for sp, ix in g.slots:
            p = params.get(sp.key)
            if p is None or sp.virtual:
                continue
            seen = True
            idx = torch.tensor(ix, dtype=torch.long, device=p.device)
            s = p.reshape(-1)[idx] if sp.dim == ELEMENTS else p.index_select(sp.dim, idx)
            if bool(s.ne(0).any()):
                nonzero = True
                break
        count += int(seen and not nonzero)
    return count


def _hold_zero_fn(model: nn.Module, kept: Kept) -> Callable[[], None]:
    """A function that sets the removed slices of every parameter in ``kept`` back to zero."""
    params = _param_table(model)
    masks: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (key, dim), (n, idx) in kept.items():
        p = params.get(key)
        if p is None:  # buffers (running stats) and virtual sizes: not trained
            continue
        drop = torch.ones(n, dtype=torch.bool)
        drop[idx] = False
        shape = [1] * p.dim()
        shape[dim] = n
        masks.append((p, drop.reshape(shape).to(p.device)))

    @torch.no_grad()
    def hold() -> None:
        for p, m in masks:
            p.masked_fill_(m, 0)

    return hold


def _check_fraction(value: Any, name: str, *, low_open: bool = False) -> float:
    return float(check_number(value, name, minimum=0.0, maximum=1.0, min_open=low_open, max_open=True))


def train_structured(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, method: str, epochs: int,
                     target_group_sparsity: float = 0.0, example_inputs: Any = None, ignore: Sequence[Any] = (),
                     batch_size: int = 128, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 1e-4,
                     seed: int = 0, hesso_warmup: float = 0.2, hesso_pruning: float = 0.5, hesso_periods: int = 5,
                     lam: float | None = None, importance: str = "l2", scope: str = "global",
                     evaluate: Callable[[nn.Module], dict[str, Any]] | None = None) -> StructuredTrainResult:
    """Train ``model`` (in place) with ``method`` to ``target_group_sparsity``; return the export.

    Args:
        model: the model; for ``"oneshot"`` it must already be trained (it is pruned, then
            fine-tuned for ``epochs``).
        x_train, y_train: training inputs and integer labels (cross-entropy loss).
        method: one of :data:`STRUCTURED_METHODS` (see the module docstring).
        epochs: epochs of this run (>= 1).
        target_group_sparsity: fraction of the groups to remove, in [0, 1) (> 0 unless dense).
        example_inputs: inputs for tracing (default: the first two training samples).
        ignore: modules or names that keep both dimensions (e.g. the classifier).
        batch_size, lr, momentum, weight_decay, seed: SGD, cosine schedule per step, batch order.
        hesso_warmup, hesso_pruning: fractions of the run's steps spent in warm-up and in the
            pruning periods (defaults 0.2 and 0.5: the last 30 % train with the final groups
            at zero); ``hesso_periods`` pruning periods (default 5; fewer when the pruning
            phase has fewer steps than that).
        lam: penalty strength of ``"group_lasso"`` / ``"wgsef"`` (required for them).
        importance, scope: of the one-shot pruner (defaults ``"l2"``, ``"global"``).
        evaluate: called on the model after every epoch; its dict goes into the history.

    Raises:
        ConfigError: unknown method, bad numbers, or a proximal method without ``lam``.
    """
    from .train import iterate_batches

    if method not in STRUCTURED_METHODS:
        raise ConfigError(f"method must be one of {list(STRUCTURED_METHODS)}; got {method!r}")
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    s = _check_fraction(target_group_sparsity, "target_group_sparsity")
    if method != "dense" and s == 0:
        raise ConfigError(f"method {method!r} needs target_group_sparsity > 0; got 0 (use method='dense')")
    if method in ("group_lasso", "wgsef"):
        try:
            check_number(lam, "lam", minimum=0.0, min_open=True)
        except ConfigError:
            raise ConfigError(f"method {method!r} needs lam > 0 (the penalty strength); got {lam!r}") from None
    if method == "hesso":
        _check_fraction(hesso_warmup, "hesso_warmup")
        _check_fraction(hesso_pruning, "hesso_pruning", low_open=True)
        hesso_periods = check_int(hesso_periods, "hesso_periods", minimum=1)
        if hesso_warmup + hesso_pruning > 1:
            raise ConfigError(f"hesso_warmup + hesso_pruning must be <= 1; got {hesso_warmup} + {hesso_pruning}")
    if x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
        raise ConfigError(f"x_train has {x_train.shape[0]} samples and y_train {y_train.shape[0]}; need the same, > 0")
    if example_inputs is None:
        example_inputs = x_train[:2]

    t0 = time.perf_counter()
    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    total = steps_per_epoch * epochs
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / total, 1.0))))

    graph = trace_groups(model, example_inputs, ignore=ignore)
    stepper: Any = opt
    hold: Callable[[], None] | None = None
    removed: list[int] = []
    target = 0
    prox: GroupProx | None = None
    hesso: HESSO | None = None
    if method == "hesso":
        start = int(hesso_warmup * total)
        pruning_steps = max(int(hesso_pruning * total), 1)
        # a very short run gets fewer periods (at least one step each), so pruning ends inside the run
        hesso = HESSO(model, optimizer=opt, graph=graph, target_group_sparsity=s, pruning_steps=pruning_steps,
                      start_pruning_step=start, pruning_periods=min(hesso_periods, pruning_steps))
        stepper, target = hesso, hesso.target_num
    elif method in ("group_lasso", "wgsef"):
        prox = GroupProx(model, optimizer=opt, graph=graph, lam=float(lam), target_group_sparsity=s,  # type: ignore[arg-type]
                         penalty="sef" if method == "wgsef" else "group_lasso")
        stepper, target = prox, prox.num_zero_target
    elif method == "oneshot":
        pruner = StructuredPruner(model, example_inputs, sparsity=s, importance=importance, scope=scope, ignore=ignore)
        pruner.graph = graph  # same trace; keeps group indices comparable with the other methods
        removed = pruner.select()
        target = len(removed)
        hold = _hold_zero_fn(model, kept_indices(graph, removed))
        hold()

    history: list[dict[str, Any]] = []
    model.train()
    for epoch in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in iterate_batches(x_train, y_train, batch_size, seed=seed * 100_003 + epoch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            stepper.step()
            if hold is not None:
                hold()
            sched.step()
            loss_sum += loss.item() * yb.shape[0]
            seen += yb.shape[0]
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "lr": opt.param_groups[0]["lr"],
                               "zero_groups": zero_group_count(model, graph)}
        if evaluate is not None:
            row.update(evaluate(model))
            model.train()
        history.append(row)

    prox_zero = None
    if prox is not None:
        prox_zero = zero_group_count(model, graph)
        removed = prox.finalize()
    elif hesso is not None:
        removed = sorted(hesso.pruned)
    model.eval()
    kept = kept_indices(graph, removed) if removed else {}
    small = shrink(model, kept) if removed else model
    return StructuredTrainResult(model=model, small=small, kept=kept, removed=sorted(removed), graph=graph,
                                 target_groups=target, zero_groups=zero_group_count(model, graph),
                                 prox_zero_groups=prox_zero, history=history, seconds=time.perf_counter() - t0)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def run_structured(*, model: str, dataset: str, method: str, epochs: int, seed: int, out_dir: str,
                   target_group_sparsity: float = 0.0, init_from: str | None = None, n_train: int | None = None,
                   n_test: int | None = None, ignore: Sequence[str] = (), **train_kwargs: Any) -> dict[str, Any]:
    """One benchmark run: load data, build (or reload) the model, :func:`train_structured`, measure, save.

    Args:
        model: a registered model name (:func:`sparseforge.models.build_model`).
        dataset: a dataset name (:func:`sparseforge.data.load_dataset`), cut to ``n_train`` /
            ``n_test`` samples when given.
        method, epochs, seed, target_group_sparsity, ignore, **train_kwargs: see :func:`train_structured`.
        out_dir: folder for the export (``model.safetensors`` + ``structure.json`` from
            :func:`.save_structured`; for dense runs no structure is removed).
        init_from: a folder written by an earlier dense run to start from (needed by ``"oneshot"``).

    Returns a JSON-ready dict: test accuracy of the group-zeroed model and of the exported one,
    the largest absolute logit difference between them on the test set, params and MACs per
    sample of both, group counts (total, target, zeroed, left by the prox alone), the extra
    training arguments, history, time.
    """
    from .data import load_dataset
    from .models import build_model
    from .structured.shrink import load_structured, save_structured

    if method == "oneshot" and init_from is None:
        raise ConfigError("method 'oneshot' prunes a trained model: pass init_from (a dense run's folder)")
    data = load_dataset(dataset, n_train=n_train, n_test=n_test)
    if model == "cnn1d":
        data = data.as_channels()
    torch.manual_seed(seed)
    net = build_model(model, data)
    if init_from is not None:
        net = load_structured(init_from, lambda: build_model(model, data))
    example = data.x_train[:2]

    def ev(m: nn.Module) -> dict[str, float]:
        return {"test_accuracy": float((_logits(m, data.x_test).argmax(1) == data.y_test).float().mean())}

    res = train_structured(net, data.x_train, data.y_train, method=method, epochs=epochs, seed=seed,
                           target_group_sparsity=target_group_sparsity, example_inputs=example, ignore=list(ignore),
                           evaluate=ev, **train_kwargs)
    zl, sl = _logits(res.model, data.x_test), _logits(res.small, data.x_test)
    p0, m0 = count_params_macs(res.model, example)
    p1, m1 = count_params_macs(res.small, example)
    save_structured(res.small, res.kept, out_dir, extra={"method": method, "model": model, "seed": seed})
    return {"model": model, "dataset": data.name, "method": method, "seed": seed, "epochs": epochs,
            "target_group_sparsity": target_group_sparsity, "init_from": init_from,
            "zeroed_accuracy": float((zl.argmax(1) == data.y_test).float().mean()),
            "exported_accuracy": float((sl.argmax(1) == data.y_test).float().mean()),
            "max_logit_diff": float((zl - sl).abs().max()),
            "params_before": p0, "params_after": p1, "macs_before": m0, "macs_after": m1,
            "num_groups": res.num_groups, "target_groups": res.target_groups, "zero_groups": res.zero_groups,
            "removed_groups": len(res.removed), "prox_zero_groups": res.prox_zero_groups,
            "train_kwargs": dict(train_kwargs), "history": res.history, "train_seconds": res.seconds,
            "out_dir": str(Path(out_dir))}
