"""Materialization: artefacts whose size or cost really shrinks with sparsity.

* :mod:`sparseforge.export.compressed` — compressed sparse checkpoints (one ``.safetensors``
  file whose size scales with density; bitmask or CSR encoding, masks restored on load).
* :mod:`sparseforge.export.materialize` — swap masked Linear/Conv2d layers for modules that
  execute their sparsity on CPU (:mod:`sparseforge.export.sparse_layers`: custom C++ kernel,
  torch CSR/BSR), chosen per layer by a capability check and a micro-benchmark
  (:mod:`sparseforge.export.autotune`).
* :mod:`sparseforge.export.materialized_io` — :func:`save_materialized` / :func:`load_materialized`:
  a materialized model as ``model.safetensors`` plus ``materialized.json`` (no pickle), reloaded
  with the same kernels and storage formats.
* :mod:`sparseforge.export.quantize` — symmetric int8/int4 weight quantization that keeps
  every zero a zero and every kept weight nonzero (masks and N:M groups survive).
"""

from .compressed import (
    FORMAT_VERSION,
    FORMATS,
    CompressedInfo,
    LoadCompressedResult,
    compressed_size_report,
    load_compressed,
    load_compressed_state_dict,
    save_compressed,
)
from .autotune import MaterializeDecision, format_materialize_decisions
from .materialize import MaterializeResult, materialize
from .sparse_layers import SparseConv2d, SparseLinear
from .materialized_io import MATERIALIZED_FORMAT, load_materialized, read_materialized_description, save_materialized
from .quantize import QuantizedWeight, QuantizeResult, quantize_tensor, quantize_weights

__all__ = [
    "FORMAT_VERSION",
    "FORMATS",
    "CompressedInfo",
    "LoadCompressedResult",
    "save_compressed",
    "load_compressed",
    "load_compressed_state_dict",
    "compressed_size_report",
    "materialize",
    "MaterializeDecision",
    "MaterializeResult",
    "SparseLinear",
    "SparseConv2d",
    "format_materialize_decisions",
    "MATERIALIZED_FORMAT",
    "save_materialized",
    "load_materialized",
    "read_materialized_description",
    "QuantizedWeight",
    "QuantizeResult",
    "quantize_tensor",
    "quantize_weights",
]
