"""Real sparse kernels: where stored zeros become saved time (no model code here).

* :mod:`.semi_structured` -- 2:4 Linear layers on NVIDIA sparse tensor cores (CUDA only).
* :mod:`.cpu_sparse` -- the C++/OpenMP CSR and block-sparse kernels behind
  ``sparseforge.export.materialize``, built on first use into a cache folder keyed by the CPU's
  vector features, the compiler, torch and the source (:func:`~.cpu_sparse.kernel_info`;
  :func:`~.cpu_sparse.kernel_unavailable_reason` says why they are not available).
  ``sparseforge kernels build`` builds them ahead of time, ``sparseforge kernels info`` reports.
* :mod:`.ops` -- the same kernels registered as torch custom ops (``torch.ops.sparseforge.*``),
  so ``torch.compile`` can trace a materialized model.
"""

from .cpu_sparse import build_kernel, cache_key, kernel_info, kernel_unavailable_reason, load_kernel
from .semi_structured import SUPPORTED_DTYPES, LayerDecision, accelerate_2to4, format_decisions, semi_structured_support

__all__ = ["LayerDecision", "accelerate_2to4", "format_decisions", "semi_structured_support", "SUPPORTED_DTYPES",
           "load_kernel", "kernel_unavailable_reason", "build_kernel", "kernel_info", "cache_key"]
