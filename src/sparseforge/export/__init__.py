"""Materialization: artefacts whose size or cost really shrinks with sparsity.

* :mod:`sparseforge.export.compressed` — compressed sparse checkpoints (one ``.safetensors``
  file whose size scales with density; bitmask or CSR encoding, masks restored on load).
"""

from .compressed import (
    FORMAT_VERSION,
    FORMATS,
    CompressedInfo,
    compressed_size_report,
    load_compressed,
    load_compressed_state_dict,
    save_compressed,
)

__all__ = [
    "FORMAT_VERSION",
    "FORMATS",
    "CompressedInfo",
    "save_compressed",
    "load_compressed",
    "load_compressed_state_dict",
    "compressed_size_report",
]
