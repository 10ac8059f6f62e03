"""The recipe trainer: build data, model, optimizer and method, train with checkpoints, write results.

This is one face of the training-loop core (:mod:`sparseforge.runners.loop`); the other is the
language-model trainer (:mod:`sparseforge.runners.lm`). It asks the method's class for its run
knowledge (:meth:`~sparseforge.methods.base.SparsityMethod.run_defaults`, the runtime objects
it takes, whether it trains in rounds) and never branches on a method's name.

A run folder holds::

    checkpoint.pt    model (with masks), optimizer, LR schedule, method state, position, history
    metrics.jsonl    one JSON line per epoch (loss, test accuracy, sparsity, time) and one per
                     training round of round-based methods (IMP), in the order they happened
    report.json      per-layer sparsity / FLOPs report of the final model (and report.txt)
    recipe.yaml      the validated recipe
    result.json      final summary

Checkpoints are written atomically (temp file + rename) at the end of every epoch, every
``checkpoint_every_steps`` steps if set, and when the run is interrupted (Ctrl-C between steps;
one inside a step keeps the last checkpoint, as a half-applied step cannot be saved). Running the
same recipe into the same folder resumes from the last checkpoint: the data order of every
epoch depends only on ``(seed, epoch)``, so a resumed run follows the same trajectory.

Every row says what it describes: ``"event": "epoch_end"`` (with ``epoch`` and the epoch's
``train_loss``) or ``"event": "round_end"`` (with ``round``: the trained network of an IMP
round, evaluated before the method prunes and rewinds it). Rows are measured on the network
as trained: where a method changes the network inside the step that ends an epoch (a round's
pruning and rewinding, a SET/RigL topology update), the trainer evaluates it from the method's
event just before the change (:data:`~sparseforge.methods.base.BEFORE_CHANGE`), never after.

Several processes (``torchrun --nproc_per_node P -m sparseforge train RECIPE``): the model is
wrapped in ``DistributedDataParallel`` (gloo; the trainer keeps data and model on the CPU) and
each process takes its ``1/P`` share of every batch. Each share's loss is a sum over its samples,
scaled by ``P / batch``, so DDP's averaged gradient is the gradient of the whole batch's mean
loss: a run on P processes follows the single-process trajectory up to float rounding (for
models without BatchNorm; with BatchNorm every process normalizes its own share, as DDP always
does). Masks are the same on every process (same seed, and methods broadcast rank 0's masks).
Process 0 alone shows progress and writes the run folder; every process reads it to resume.
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.lr import LRSchedule, build_lr_scheduler
from ..core.rng import stream_generator
from ..core.steps import resolve_steps
from ..data import load_dataset
from ..errors import CheckpointError, ConfigError, check_int
from ..fileio import atomic_save, atomic_write_text, read_checkpoint
from ..masking import load_masked_state_dict
from ..methods import build_method, method_entry
from ..methods.base import BEFORE_CHANGE, MethodEvent, SparsityMethod
from ..models import build_model, example_input
from .loop import TrainLoop, progress_bar
from .setup import method_arguments, runtime_arguments

if TYPE_CHECKING:  # recipes sit above the runners (DESIGN.md's layers): a Recipe is only passed in
    from ..recipes import Recipe

__all__ = ["Trainer", "RunResult", "iterate_batches", "evaluate", "atomic_save", "read_checkpoint", "process_group",
           "lr_schedule_from_spec",
           "RUN_FILES", "check_run_folder", "clear_run_folder"]

#: The files a recipe run writes into its run folder; ``recipe.yaml`` or ``checkpoint.pt`` mark one.
RUN_FILES = ("recipe.yaml", "checkpoint.pt", "metrics.jsonl", "report.json", "report.txt", "result.json")
_RUN_MARKERS = ("recipe.yaml", "checkpoint.pt")


def _run_folder_contents(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(run files, other entries)`` of ``run_dir``; the hidden temporaries of interrupted
    atomic writes (``.NAME.*.tmp``) count as run files."""
    ours, other = [], []
    for p in sorted(run_dir.iterdir()):
        is_tmp = p.name.startswith(".") and p.name.endswith(".tmp") and any(p.name.startswith(f".{f}.") for f in RUN_FILES)
        (ours if (p.name in RUN_FILES and p.is_file()) or is_tmp else other).append(p)
    return ours, other


def check_run_folder(run_dir: str | Path, recipe: Recipe) -> None:
    """Refuse ``run_dir`` if training ``recipe`` there would overwrite what is not its own; write nothing.

    A folder without a run (no ``recipe.yaml`` or ``checkpoint.pt``) that already holds a file
    named like a run's (``report.json`` of a ``prune`` output, say) belongs to something else,
    (:class:`ConfigError`), and a run folder whose ``recipe.yaml`` differs holds another run
    (:class:`CheckpointError`, as when its checkpoint differs). Unrelated files are allowed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} is a file; pass a folder (new, empty, or a run of this recipe)")
    if not any((run_dir / m).is_file() for m in _RUN_MARKERS):
        clash = [f for f in RUN_FILES if (run_dir / f).exists()]
        if clash:
            raise ConfigError(f"run folder {str(run_dir)!r} holds no sparseforge run (no recipe.yaml or checkpoint.pt) "
                              f"but has {clash}, which training would overwrite; pass a new or empty --run-dir")
        return
    saved = run_dir / "recipe.yaml"
    if saved.is_file():
        try:
            same = yaml.safe_load(saved.read_text()) == recipe.to_dict()
        except (yaml.YAMLError, UnicodeDecodeError):
            same = False
        if not same:
            raise CheckpointError(f"run folder {str(run_dir)!r} holds a run of a different recipe (its recipe.yaml differs); "
                              "use another --run-dir or pass --restart to start over")


def clear_run_folder(run_dir: str | Path) -> list[str]:
    """Delete the files of the sparseforge run in ``run_dir`` (for ``--restart``); return their names.

    Only :data:`RUN_FILES` (and leftovers of interrupted writes) are deleted, and only if the
    folder holds a run (``recipe.yaml`` or ``checkpoint.pt``); other files stay, and the
    folder is removed only if it ends up empty. A folder that holds no run is refused with a
    :class:`ConfigError`: ``--restart`` never deletes what sparseforge did not write.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    if not run_dir.is_dir() or not any((run_dir / m).is_file() for m in _RUN_MARKERS):
        raise ConfigError(f"--restart: {str(run_dir)!r} holds no sparseforge run (no recipe.yaml or checkpoint.pt); "
                          "nothing was deleted")
    ours, other = _run_folder_contents(run_dir)
    for p in ours:
        p.unlink()
    if not other:
        run_dir.rmdir()
    return [p.name for p in ours]


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; joins the ``torchrun`` process group if launched by one.

    ``(0, 1)`` for a plain single-process run. Under ``torchrun`` (``WORLD_SIZE > 1`` in the
    environment) the default process group is initialized with the gloo backend unless it
    already exists; a group this function created is destroyed when the interpreter exits.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 (a torchrun launch) but this torch build has no torch.distributed")
    dist.init_process_group("gloo")
    # gloo's worker threads must be joined before interpreter teardown: left to static
    # destructors they abort the process ("terminate called without an active exception")
    # after the run has finished, and torchrun reports the whole job as failed
    atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


#: trainers that wrapped their model in DistributedDataParallel (whose reducer holds the process group)
_DDP_TRAINERS: "weakref.WeakSet[Trainer]" = weakref.WeakSet()


def _destroy_process_group() -> None:
    # a DDP wrapper still alive keeps the gloo process group alive past destroy_process_group,
    # and static destructors then tear its threads down (the abort above, seen in about one run
    # in ten on a loaded machine): unwrap and collect every trainer's DDP wrapper first
    for trainer in list(_DDP_TRAINERS):
        trainer.train_model = trainer.model
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int | None = None,
                    start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches; shuffled by a permutation drawn from ``seed`` (None = in order).

    Slicing whole tensors avoids DataLoader's per-sample collation, which dominates the step
    time of small models. ``start`` skips the first batches (mid-epoch resume).
    """
    n = x.shape[0]
    order = torch.randperm(n, generator=stream_generator(seed, "batches")) if seed is not None else None
    for i in range(start * batch_size, n, batch_size):
        idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)`` in eval mode."""
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size):
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        n += yb.numel()
    model.train(was)
    return {"accuracy": correct / n, "loss": loss / n}


def _build_optimizer(model: nn.Module, spec: dict[str, Any]) -> torch.optim.Optimizer:
    kw = {k: v for k, v in spec.items() if k != "name"}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec["name"]]
    return cls(model.parameters(), **kw)


def lr_schedule_from_spec(spec: dict[str, Any], horizon: int, steps_per_epoch: int) -> LRSchedule:
    """The :class:`~sparseforge.core.lr.LRSchedule` of a recipe's ``lr_schedule`` section over ``horizon`` steps."""
    def steps(key: str, value: Any) -> int:
        return resolve_steps(key, value, total_steps=horizon, steps_per_epoch=steps_per_epoch, where="lr_schedule")

    return LRSchedule(spec["name"], total_steps=horizon, warmup_steps=steps("warmup_steps", spec.get("warmup_steps", 0)),
                      milestones=tuple(steps("milestones", m) for m in spec.get("milestones", [])),
                      gamma=float(spec.get("gamma", 0.1)))


@dataclass
class RunResult:
    """What a finished run produced."""

    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    method: SparsityMethod
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Train one recipe, optionally with a run folder for checkpoints and results.

    Args:
        recipe: a validated :class:`~sparseforge.recipes.Recipe`.
        run_dir: folder for checkpoints and results (None = in memory only, no resume).
        progress: show a progress bar.
        max_steps: stop (with a checkpoint) after this many optimizer steps in this call;
            running again resumes. None = run to the end.
        dataset: a preloaded dataset (benchmarks reuse one across runs).
    """

    def __init__(self, recipe: Recipe, run_dir: str | Path | None = None, *, progress: bool = True,
                 max_steps: int | None = None, dataset: Any = None, log: Callable[[str], None] | None = None) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        if max_steps is not None:
            check_int(max_steps, "max_steps (--max-steps)", minimum=1)
        self.max_steps = max_steps
        self.rank, self.world = process_group()
        self.log = (log or (lambda s: None)) if self.rank == 0 else (lambda s: None)
        r = recipe
        torch.manual_seed(r.seed)
        data_kw = {k: v for k, v in r.data.items() if k not in ("name", "batch_size")}
        self.dataset = dataset if dataset is not None else load_dataset(r.data["name"], **data_kw)
        n_val = r.data.get("n_val")
        if dataset is not None and n_val is not None:
            # a preloaded dataset stands for the data section, but never train on what the recipe holds out
            if self.dataset.x_val is None:
                self.dataset = self.dataset.split_validation(n_val)
            elif self.dataset.x_val.shape[0] != n_val:
                raise ConfigError(f"data.n_val={n_val}, but the dataset given holds out {self.dataset.x_val.shape[0]} "
                                  "samples for validation")
        self.batch_size = int(r.data["batch_size"])
        model_kw = {k: v for k, v in r.model.items() if k != "name"}
        self.model = build_model(r.model["name"], self.dataset, **model_kw)
        self.x_train, self.y_train = self.dataset.x_train, self.dataset.y_train
        self.steps_per_epoch = math.ceil(self.x_train.shape[0] / self.batch_size)
        train_steps = r.epochs * self.steps_per_epoch
        self.optimizer = _build_optimizer(self.model, r.optimizer)
        entry = method_entry(r.method["name"])
        mparams = method_arguments(entry, {k: v for k, v in r.method.items() if k != "name"}, seed=r.seed,
                                   total_steps=train_steps, steps_per_epoch=self.steps_per_epoch)
        horizon = entry.cls.lr_horizon(mparams, train_steps)
        self.scheduler = build_lr_scheduler(self.optimizer, lr_schedule_from_spec(r.lr_schedule, horizon,
                                                                                  self.steps_per_epoch))
        # the runtime objects the method asks for; the calibration batch is the first of a
        # shuffle of its own (seed r.seed), so the training batches do not shift
        runtime_arguments(entry, mparams, {
            "data": lambda: next(iterate_batches(self.x_train, self.y_train, self.batch_size, seed=r.seed)),
            "loss_fn": lambda: F.cross_entropy,
            "lr_scheduler": lambda: self.scheduler,
        })
        self.method = build_method(entry.name, self.model, self.optimizer, targets=r.targets or None, **mparams)
        # the masks need no syncing at every forward (they are kept identical across processes),
        # and DDP rewriting them in place would make the masking redo its work every step; the
        # one broadcast from process 0 at construction is harmless (torch 2.13 deprecates
        # broadcast_buffers, which skipped that one too)
        self.train_model = (self.model if self.world == 1 else
                            DistributedDataParallel(self.model, forward_sync_buffers=False))
        if self.world > 1:
            _DDP_TRAINERS.add(self)
        self.total_steps = self.method.run_steps(train_steps)
        self.step = 0
        # the running loss sums of the epoch in progress (restored on resume)
        self._loss_sum, self._seen, self._resumed_epoch_loss = 0.0, 0, (0.0, 0)
        self.history: list[dict[str, Any]] = []
        #: (step, evaluation) of the network just before the method changed it in an epoch's last step
        self._before_change: tuple[int, dict[str, Any]] | None = None
        for event in sorted(BEFORE_CHANGE):
            self.method.on(event, self._on_before_change)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt``."""
        return self.run_dir / "checkpoint.pt" if self.run_dir else None

    def save_checkpoint(self) -> None:
        """Write everything needed to resume, atomically (process 0 only)."""
        if self.checkpoint_path is None or self.rank != 0:
            return
        atomic_save({
            "format": "sparseforge-checkpoint-v1",
            "recipe": self.recipe.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            # the running sums of the epoch in progress, so a resumed epoch's train_loss still
            # averages all of its steps
            "epoch_loss": [self._loss_sum, self._seen],
            "torch_rng": torch.get_rng_state(),
        }, self.checkpoint_path)

    def try_resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if the run resumed."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        ck = read_checkpoint(path, "sparseforge-checkpoint-v1", "sparseforge training checkpoint")
        if ck["recipe"] != self.recipe.to_dict():
            raise CheckpointError(
                f"run folder {str(self.run_dir)!r} holds a run of a different recipe; "
                "use another --run-dir or pass --restart to start over"
            )
        load_masked_state_dict(self.model, ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.method.load_state_dict(ck["method"])
        self.step = int(ck["step"])
        self.history = list(ck["history"])
        loss_sum, seen = ck.get("epoch_loss", (0.0, 0))  # older checkpoints lack it
        self._resumed_epoch_loss = (float(loss_sum), int(seen))
        torch.set_rng_state(ck["torch_rng"])
        self.log(f"resuming {self.run_dir} from step {self.step}/{self.total_steps}")
        return True

    # ------------------------------------------------------------------ training
    def fit(self) -> RunResult:
        """Train to the end (or ``max_steps``), evaluating after every epoch."""
        if self.run_dir is not None:
            check_run_folder(self.run_dir, self.recipe)  # every rank: each refuses alike, none waits
            if self.rank == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            # resume (which refuses a checkpoint of another recipe) before writing anything
            self.try_resume()
            if self.rank == 0:
                atomic_write_text(self.run_dir / "recipe.yaml", yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
        stop_at = self.total_steps if self.max_steps is None else min(self.total_steps, self.step + self.max_steps)
        model = self.train_model
        model.train()
        loop = TrainLoop(self.optimizer, self.scheduler, loss=self._loss, after_step=self._after_step,
                         save=self.save_checkpoint if self.checkpoint_path is not None else None,
                         checkpoint_every=self.recipe.checkpoint_every_steps,
                         bar=progress_bar(self.progress and self.rank == 0, total=self.total_steps, initial=self.step,
                                          desc=self.recipe.name),
                         on_interrupt=self._log_interrupt)
        self._bar = loop.bar
        self.step = loop.run(self._batches(), step=self.step, stop_at=stop_at)
        loop.close()
        final = self.history[-1] if self.history else {}
        if self.step >= self.total_steps:
            self._write_results(final)
        return RunResult(self.history, final, model, self.method, self.run_dir)

    def _log_interrupt(self, step: int, saved: bool) -> None:
        where = "checkpoint saved" if saved else "inside a step, so the last checkpoint stands"
        self.log(f"interrupted at step {step}; {where}, run again to resume")

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches from the current step on, epoch after epoch.

        Every epoch's order depends only on ``(seed, epoch)``, so a resumed run sees the batches
        an uninterrupted one would have.
        """
        while True:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            # mid-epoch (a resume): carry on the epoch's sums from the checkpoint
            carried, self._resumed_epoch_loss = (self._resumed_epoch_loss if start else (0.0, 0)), (0.0, 0)
            self._epoch, self._epoch_t0 = epoch, time.perf_counter()
            self._loss_sum, self._seen = carried
            yield from iterate_batches(self.x_train, self.y_train, self.batch_size,
                                       seed=self.recipe.seed * 100_003 + epoch, start=start)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[float, int]]:
        """Mean cross-entropy of the batch (this process's share of it), and ``(loss sum, samples)``."""
        xb, yb = batch
        n = yb.shape[0]
        world = self.world
        if world == 1:
            loss = F.cross_entropy(self.train_model(xb), yb)
            return loss, (loss.item() * n, n)
        # this process's share; DDP divides the summed gradients by `world`
        xb, yb = xb.tensor_split(world)[self.rank], yb.tensor_split(world)[self.rank]
        loss = F.cross_entropy(self.train_model(xb), yb, reduction="sum") * (world / n)
        return loss, (loss.item() * n / world, n)

    def _after_step(self, step: int, value: tuple[float, int]) -> bool:
        """Count the step; at an epoch's end (or the run's) measure and log it and ask for a checkpoint."""
        self.step = step
        self._loss_sum += value[0]
        self._seen += value[1]
        if step % self.steps_per_epoch == 0 or step == self.total_steps:
            self._end_epoch(self._epoch, self._loss_sum / max(self._seen, 1), time.perf_counter() - self._epoch_t0,
                            self._bar)
            return True
        return False

    def _measure(self) -> dict[str, Any]:
        """Test (and validation) accuracy and loss of the model now, and the sparsity of its masks."""
        ev = evaluate(self.model, self.dataset.x_test, self.dataset.y_test)
        rec: dict[str, Any] = {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"]}
        if self.dataset.x_val is not None:
            val = evaluate(self.model, self.dataset.x_val, self.dataset.y_val)
            rec.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
        masks = [l.mask for l in self.method.layers]
        kept = sum(int(m.sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        rec["sparsity"] = 1.0 - kept / total if total else 0.0
        return rec

    def _on_before_change(self, event: MethodEvent) -> None:
        """The method is about to change the network inside an optimizer step: measure it first if needed.

        Runs inside ``optimizer.step()``, before the trainer counts that step. A ``round_end``
        is always measured and logged as its own row; any such event in an epoch's last step
        also supplies that epoch's measurements, so the epoch row shows the trained network.
        """
        done = self.step + 1
        ends_epoch = done % self.steps_per_epoch == 0 or done == self.total_steps
        is_round = event.name == "round_end"
        if not (ends_epoch or is_round):
            return
        rec = self._measure()
        if ends_epoch:
            self._before_change = (done, rec)
        if is_round:
            r = event.info["round"]
            self.history.append({"event": "round_end", "round": r, "epoch": math.ceil(done / self.steps_per_epoch),
                                 "step": done, **rec})
            self.log(f"round {r}: sparsity {rec['sparsity']:.4f}, test accuracy {rec['test_accuracy']:.4f} "
                     "(trained, before pruning)")

    def _end_epoch(self, epoch: int, train_loss: float, seconds: float, bar: Any) -> None:
        if self.world > 1:  # every process summed its own share of the epoch's loss
            total = torch.tensor([train_loss], dtype=torch.float64)
            dist.all_reduce(total)
            train_loss = float(total[0])
        before, self._before_change = self._before_change, None
        measured = before[1] if before is not None and before[0] == self.step else self._measure()
        rec = {"event": "epoch_end", "epoch": epoch + 1, "step": self.step, "train_loss": train_loss, **measured,
               "seconds": seconds, **self.method.metrics()}
        self.history.append(rec)
        if bar is not None:
            bar.set_postfix(acc=f"{rec['test_accuracy']:.4f}", loss=f"{train_loss:.3f}")
        if self.run_dir is not None and self.rank == 0:
            # rewritten whole from the history so a crash between writes never duplicates an epoch
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def report(self) -> Any:
        """Sparsity report of the current model with FLOPs per sample."""
        from ..report import sparsity_report

        return sparsity_report(self.model, example_input(self.recipe.model["name"], self.dataset, batch=1),
                               **self.method.report_kwargs())

    def _write_results(self, final: dict[str, Any]) -> None:
        if self.run_dir is None or self.rank != 0:
            return
        rep = self.report()
        rep.to_json(self.run_dir / "report.json")
        atomic_write_text(self.run_dir / "report.txt", rep.table() + "\n")
        summary = {"recipe": self.recipe.name, "method": self.recipe.method["name"], "steps": self.step,
                   "final": final, "totals": rep.to_dict()["totals"], "dataset": self.dataset.name}
        atomic_write_text(self.run_dir / "result.json", json.dumps(summary, indent=2) + "\n")
