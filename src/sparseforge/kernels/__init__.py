"""Real sparse kernels: where stored zeros become saved time.

* :mod:`.semi_structured` -- 2:4 Linear layers on NVIDIA sparse tensor cores (CUDA only).
* :mod:`.cpu_sparse` -- the C++/OpenMP CSR kernel behind ``sparseforge.export.materialize``
  (built on first use; :func:`~.cpu_sparse.kernel_unavailable_reason` says why not).
"""

from .cpu_sparse import kernel_unavailable_reason, load_kernel
from .semi_structured import SUPPORTED_DTYPES, LayerDecision, accelerate_2to4, format_decisions, semi_structured_support

__all__ = ["LayerDecision", "accelerate_2to4", "format_decisions", "semi_structured_support", "SUPPORTED_DTYPES",
           "load_kernel", "kernel_unavailable_reason"]
