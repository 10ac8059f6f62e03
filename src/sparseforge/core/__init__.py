"""Pure tensor functions and small frozen values: targets, patterns, scores, allocation, schedules."""

from .allocation import ER, ERK, Allocation, Global, Uniform, allocation_from_spec, global_sparsities
from .patterns import NM, Block, Channel, Pattern, Unstructured, is_valid_nm, num_pruned, pattern_from_spec, random_mask, topk_mask
from .targets import INDIVISIBLE, Target, parse_target, parse_target_text
from .schedules import Constant, CosineDecay, Cubic, ExponentialDecay, LinearDecay, Schedule, Steps
from .scores import SCORES, get_score

__all__ = [
    "Allocation", "Uniform", "ER", "ERK", "Global", "allocation_from_spec", "global_sparsities",
    "Pattern", "Unstructured", "NM", "Block", "Channel", "is_valid_nm", "num_pruned", "pattern_from_spec", "random_mask", "topk_mask",
    "Schedule", "Constant", "Cubic", "CosineDecay", "LinearDecay", "ExponentialDecay", "Steps",
    "SCORES", "get_score",
    "Target", "parse_target", "parse_target_text", "INDIVISIBLE",
]
