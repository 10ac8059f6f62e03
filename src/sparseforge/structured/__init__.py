"""Automatic structured pruning of any architecture (issue 4, first landing).

* :func:`trace_groups` runs the model once on example inputs and finds the groups of coupled
  channels (:mod:`.trace`, :mod:`.graph`), with one rule per layer type (:mod:`.rules`,
  extensible with :func:`register_rule`).
* :func:`group_importance` scores groups (:mod:`.importance`); :func:`select_groups` picks
  those to remove per layer or globally.
* :func:`shrink` builds the smaller plain ``nn.Module``; :func:`zero_groups` the group-zeroed
  reference; :func:`save_structured` / :func:`load_structured` store it without pickling.
* :class:`HESSO` wraps a torch optimizer and drives a target fraction of the groups to exact
  zeros during training (Chen et al. 2024).
* :class:`GroupProx` trains with the proximal operator of group lasso or of the group sparse
  envelope function (WGSEF, optionally with per-group weights).
* :func:`.onnx.export_onnx` exports the shrunk model and checks it in onnxruntime.
* :class:`StructuredPruner` / :func:`prune_structured` do all of it in one call with a
  :class:`StructuredReport`.

Training a classifier to a target group sparsity with any of these (dense, HESSO, one-shot +
fine-tuning, group lasso, WGSEF) is a runner: :func:`sparseforge.structured_train.train_structured`.
"""

from . import hf as _hf  # noqa: F401  (imported for its side effect: registers the Hugging Face attention rule)
from .graph import Cluster, DependencyGraph, Group, trace_groups
from .importance import IMPORTANCES, group_importance
from .pruner import (LayerRow, StructuredPruner, StructuredReport, StructuredResult, count_params_macs,
                     prune_structured, select_groups)
from .rules import Rule, find_rule, register_rule, unregister_rule
from .hesso import DEFAULT_CRITERIA, HESSO
from .hf import is_hf_attention, update_hf_config
from .prox import GroupProx, group_lasso_prox, sef, sef_prox
from .shrink import kept_indices, load_structured, read_structure, save_structured, shrink, zero_groups

__all__ = [
    "trace_groups", "DependencyGraph", "Group", "Cluster",
    "group_importance", "IMPORTANCES", "select_groups",
    "StructuredPruner", "StructuredReport", "StructuredResult", "LayerRow", "prune_structured", "count_params_macs",
    "Rule", "register_rule", "unregister_rule", "find_rule",
    "is_hf_attention", "update_hf_config", "HESSO", "DEFAULT_CRITERIA",
    "GroupProx", "sef", "sef_prox", "group_lasso_prox",
    "kept_indices", "shrink", "zero_groups", "save_structured", "load_structured", "read_structure",
]
