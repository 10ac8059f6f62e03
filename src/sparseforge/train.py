"""The recipe trainer (kept importable here; it lives in :mod:`sparseforge.runners.trainer`)."""

from .runners.trainer import (RUN_FILES, RunResult, Trainer, atomic_save, check_run_folder, clear_run_folder, evaluate,
                              iterate_batches, lr_schedule_from_spec, process_group, read_checkpoint)

__all__ = ["Trainer", "RunResult", "iterate_batches", "evaluate", "atomic_save", "read_checkpoint", "process_group",
           "RUN_FILES", "check_run_folder", "clear_run_folder", "lr_schedule_from_spec"]
