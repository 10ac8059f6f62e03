"""The one-shot rules and their method objects under one name (kept for imports of this module).

Each rule lives in its own module: :mod:`~sparseforge.oneshot.magnitude`,
:mod:`~sparseforge.oneshot.wanda`, :mod:`~sparseforge.oneshot.sparsegpt`,
:mod:`~sparseforge.oneshot.dsnot`; what they share (targets, checks, :class:`OneShotMethod`) is in
:mod:`~sparseforge.oneshot.base`, and :func:`method_from_spec` in
:mod:`~sparseforge.oneshot.registry`. The names below are the same objects.
"""

from .base import OneShotMethod, oneshot_target, resolve_target
from .base import _few_threads as _few_threads  # used by callers before the split
from .dsnot import MLP_LAYERS, DSnoT, dsnot_prune
from .magnitude import Magnitude, magnitude_prune
from .registry import METHOD_NAMES, method_from_spec
from .sparsegpt import SparseGPT, sparsegpt_prune, sparsegpt_scores
from .wanda import Wanda, wanda_prune, wanda_scores

__all__ = [
    "oneshot_target",
    "resolve_target",
    "magnitude_prune",
    "wanda_scores",
    "wanda_prune",
    "sparsegpt_prune",
    "sparsegpt_scores",
    "dsnot_prune",
    "OneShotMethod",
    "Magnitude",
    "Wanda",
    "SparseGPT",
    "DSnoT",
    "method_from_spec",
    "METHOD_NAMES",
    "MLP_LAYERS",
]
