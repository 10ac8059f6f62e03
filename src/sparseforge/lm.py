"""The language-model trainer (kept importable here; it lives in :mod:`sparseforge.runners.lm`)."""

from .runners.lm import (DEFAULT_LM_TARGETS, LM_CHECKPOINT_FORMAT, LMRecipe, LMTrainer, evaluate_lm, lm_loss, lm_lr_factor,
                         nm_violations, train_lm)

__all__ = ["DEFAULT_LM_TARGETS", "LM_CHECKPOINT_FORMAT", "LMRecipe", "LMTrainer", "evaluate_lm", "lm_loss", "lm_lr_factor",
           "nm_violations", "train_lm"]
