"""Attach masks to any ``nn.Module`` and keep them enforced through training.

* :mod:`~sparseforge.masking.core` -- :class:`Masking`, the runtime that owns one model's masks
  and enforces them on an optimizer (its docstring explains the design);
* :mod:`~sparseforge.masking.layers` -- the mask convention (a bool ``<param>_mask`` buffer,
  :data:`MASK_SUFFIX`), :class:`MaskedLayer`, :func:`find_masked_layers`, :func:`mask_to`;
* :mod:`~sparseforge.masking.targets` -- which parameters get masks (:class:`Targets`,
  :func:`is_default_target`, :func:`check_targets_match`);
* :mod:`~sparseforge.masking.state` -- :func:`apply_masks`, :func:`finalize`,
  :func:`load_masked_state_dict`;
* :mod:`~sparseforge.masking.distributed` -- FSDP2 ``DTensor`` helpers (:func:`is_sharded`,
  :func:`full_tensor`, :func:`shard_like`);
* :mod:`~sparseforge.masking.cache` -- :class:`~sparseforge.masking.cache.FloatMaskCache`, the float
  copies of the masks that every optimizer step multiplies by.

Every name imports from ``sparseforge.masking`` as it did when this package was one module.
"""

from ..core.layout import is_hf_conv1d  # a public name of sparseforge.masking since 0.1
from .core import Masking
from .distributed import full_tensor, is_sharded, shard_like
from .layers import MASK_SUFFIX, MaskedLayer, find_masked_layers, mask_to
from .state import apply_masks, finalize, load_masked_state_dict
from .targets import Targets, check_targets_match, is_default_target

# importable from here as from the old module, though not in __all__
from .core import _ENGINE, EXACT_OPTIMIZERS, _check_optimizer_holds  # noqa: F401
from .distributed import _reject_fsdp1  # noqa: F401
from .state import iter_parameters_with_masks  # noqa: F401
from .targets import DEFAULT_TYPES, _matches  # noqa: F401

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
