"""Weight layouts of the layer types sparseforge handles.

Patterns and scores work on the *canonical* layout ``[out, in, *kernel]`` that ``nn.Linear``
and ``nn.ConvNd`` store; Hugging Face ``transformers``' ``Conv1D`` (GPT-2 style) stores its
weight transposed, ``[in, out]``. Knowing which is which is needed by masking, structured
pruning, the reports and the one-shot methods alike, so it lives here, below all of them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["is_hf_conv1d"]


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face ``transformers`` ``Conv1D`` (GPT-2 style, weight stored ``[in, out]``).

    Matched by class name and module, so ``transformers`` is never imported here.
    """
    t = type(module)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers")
