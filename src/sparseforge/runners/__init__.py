"""Runners: the one training-loop core and its two faces.

* :mod:`~sparseforge.runners.loop` -- :class:`TrainLoop`: optimizer steps, checkpoint cadence,
  interrupt handling and progress, shared by both faces;
* :mod:`~sparseforge.runners.trainer` -- :class:`Trainer`: a YAML recipe (classification data,
  epochs, a run folder); also importable as :mod:`sparseforge.train`;
* :mod:`~sparseforge.runners.lm` -- :func:`train_lm` / :class:`LMRecipe`: a causal language
  model for a token budget; also importable as :mod:`sparseforge.lm`;
* :mod:`~sparseforge.runners.setup` -- a method's arguments for a run, from its class's run
  knowledge (runners never branch on a method's name).

Names are imported lazily, so importing this package costs nothing until one is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrainLoop": "loop", "progress_bar": "loop",
    "method_arguments": "setup", "runtime_arguments": "setup",
    **dict.fromkeys(["Trainer", "RunResult", "iterate_batches", "evaluate", "process_group", "check_run_folder",
                     "clear_run_folder", "RUN_FILES", "lr_schedule_from_spec"], "trainer"),
    **dict.fromkeys(["LMRecipe", "LMTrainer", "train_lm", "evaluate_lm", "lm_loss", "lm_lr_factor", "nm_violations",
                     "DEFAULT_LM_TARGETS", "LM_CHECKPOINT_FORMAT"], "lm"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), frozenset({"loop", "setup", "trainer", "lm"}))

if TYPE_CHECKING:
    from .lm import (DEFAULT_LM_TARGETS, LM_CHECKPOINT_FORMAT, LMRecipe, LMTrainer, evaluate_lm, lm_loss, lm_lr_factor,
                     nm_violations, train_lm)
    from .loop import TrainLoop, progress_bar
    from .setup import method_arguments, runtime_arguments
    from .trainer import (RUN_FILES, RunResult, Trainer, check_run_folder, clear_run_folder, evaluate, iterate_batches,
                          lr_schedule_from_spec, process_group)

__all__ = ["DEFAULT_LM_TARGETS", "LM_CHECKPOINT_FORMAT", "LMRecipe", "LMTrainer", "RUN_FILES", "RunResult", "TrainLoop", "Trainer",
           "check_run_folder", "clear_run_folder", "evaluate", "evaluate_lm", "iterate_batches", "lm_loss",
           "lm_lr_factor", "lr_schedule_from_spec", "method_arguments", "nm_violations", "process_group",
           "progress_bar", "runtime_arguments", "train_lm"]
