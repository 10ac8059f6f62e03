"""Attach masks to any ``nn.Module`` and keep them enforced through training.

:class:`Masking` (the runtime that owns one model's masks and enforces them on an optimizer) and
:class:`MaskedLayer` live in :mod:`sparseforge.masking.core`, whose docstring explains the design.
Every name below imports from ``sparseforge.masking`` as it did when this package was one module.
"""

from .core import (
    MASK_SUFFIX,
    MaskedLayer,
    Masking,
    Targets,
    apply_masks,
    check_targets_match,
    finalize,
    find_masked_layers,
    full_tensor,
    is_default_target,
    is_hf_conv1d,
    is_sharded,
    load_masked_state_dict,
    mask_to,
    shard_like,
)
# importable from here as from the old module, though not in __all__
from .core import DEFAULT_TYPES, EXACT_OPTIMIZERS, iter_parameters_with_masks  # noqa: F401
from .core import _ENGINE, _check_optimizer_holds, _matches, _reject_fsdp1  # noqa: F401

__all__ = [
    "MaskedLayer",
    "Targets",
    "Masking",
    "is_hf_conv1d",
    "is_default_target",
    "find_masked_layers",
    "mask_to",
    "apply_masks",
    "finalize",
    "load_masked_state_dict",
    "MASK_SUFFIX",
    "check_targets_match",
    "is_sharded",
    "full_tensor",
    "shard_like",
]
