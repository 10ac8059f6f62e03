"""The one training-loop core under both trainers (the recipe trainer and the LM trainer).

:class:`TrainLoop` runs optimizer steps over an iterable of batches: zero the gradients,
compute the loss (the face's ``loss`` function), backward, clip (optional), optimizer step,
learning-rate scheduler step, then the face's ``after_step`` hook; it writes a checkpoint
(the face's ``save``) every ``checkpoint_every`` steps, when ``after_step`` asks for one,
and when it stops early at ``stop_at``. Ctrl-C between steps saves before re-raising; one
that lands inside a step (including the face's bookkeeping of it) keeps the last
checkpoint, since a half-applied step cannot be saved consistently. Progress is a tqdm
bar, updated once per step.

A face owns everything else: building the model, optimizer, scheduler and method, where its
batches come from, what it measures, what a checkpoint holds, and how a run is resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

__all__ = ["TrainLoop", "progress_bar"]

_END = object()


def progress_bar(enabled: bool, *, total: int, initial: int = 0, desc: str = "") -> Any:
    """A tqdm bar over optimizer steps, or None when ``enabled`` is false."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


@dataclass
class TrainLoop:
    """Optimizer steps over batches, with checkpoint cadence, interrupt handling and progress.

    Args:
        optimizer: the optimizer stepped once per batch.
        scheduler: the learning-rate scheduler stepped after it (None = none).
        loss: ``loss(batch) -> (tensor, value)``: the tensor to backpropagate and what the
            face records of the step (a float, or a tuple: the face's choice).
        after_step: ``after_step(step, value) -> bool`` runs after step ``step`` (1-based: the
            steps done) is applied; True asks for a checkpoint now (e.g. at an epoch's end).
        save: writes a checkpoint of the face's state (None = no checkpoints).
        checkpoint_every: also save every this many steps (0 = never on a cadence).
        grad_clip: clip the gradients of ``clip_params`` to this global L2 norm (None = no clipping).
        clip_params: the parameters to clip (a model's ``parameters()``).
        bar: a progress bar (:func:`progress_bar`) or None.
        on_interrupt: ``on_interrupt(step, saved)`` after Ctrl-C: the steps done and whether a
            checkpoint was written (e.g. to log it).
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss: Callable[[Any], tuple[torch.Tensor, Any]]
    after_step: Callable[[int, Any], bool]
    save: Callable[[], None] | None = None
    checkpoint_every: int = 0
    grad_clip: float | None = None
    clip_params: Callable[[], Iterable[nn.Parameter]] | None = None
    bar: Any = None
    on_interrupt: Callable[[int, bool], None] | None = None

    def run(self, batches: Iterable[Any], *, step: int, stop_at: int) -> int:
        """Train on ``batches`` from ``step`` (steps already done) until ``stop_at``; return the steps done.

        Stops when ``stop_at`` is reached or ``batches`` runs out, whichever comes first.
        """
        opt, sched = self.optimizer, self.scheduler
        in_step = False
        try:
            it = iter(batches)
            while step < stop_at:
                batch = next(it, _END)  # never draw a batch past stop_at
                if batch is _END:
                    break
                in_step = True
                opt.zero_grad(set_to_none=True)
                loss, value = self.loss(batch)
                loss.backward()
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.clip_params(), self.grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                wants_save = self.after_step(step, value)
                in_step = False
                if self.save is not None and (wants_save or step >= stop_at
                                              or (self.checkpoint_every and step % self.checkpoint_every == 0)):
                    self.save()
                if self.bar is not None:
                    self.bar.update(1)
        except KeyboardInterrupt:
            saved = self.save is not None and not in_step
            if saved:
                self.save()
            self.close()
            if self.on_interrupt is not None:
                self.on_interrupt(step, saved)
            raise
        return step

    def close(self) -> None:
        """Close the progress bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
