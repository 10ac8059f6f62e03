"""Real sparse kernels: where stored zeros become saved time.

* :mod:`.semi_structured` -- 2:4 Linear layers on NVIDIA sparse tensor cores (CUDA only).
"""

from .semi_structured import SUPPORTED_DTYPES, LayerDecision, accelerate_2to4, format_decisions, semi_structured_support

__all__ = ["LayerDecision", "accelerate_2to4", "format_decisions", "semi_structured_support", "SUPPORTED_DTYPES"]
