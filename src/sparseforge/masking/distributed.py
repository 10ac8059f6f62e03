"""Masks on FSDP2-sharded weights: ``DTensor`` helpers, and the refusal of FSDP1.

A weight sharded by ``torch.distributed.fsdp.fully_shard`` is a ``DTensor``; its mask is a
``DTensor`` with the same mesh and placements (:func:`shard_like`), so each rank stores and
applies only its shard's mask. Methods rank whole layers (:func:`full_tensor` gathers them).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["is_sharded", "full_tensor", "shard_like"]


def is_sharded(t: torch.Tensor) -> bool:
    """True if ``t`` is a ``DTensor`` (e.g. a weight sharded by FSDP2's ``fully_shard``)."""
    # no DTensor can exist before torch.distributed.tensor is imported, and importing it here
    # would cost every `import sparseforge.masking` half a second (it pulls in torch's compiler)
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and isinstance(t, dtensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or, for a ``DTensor``, the whole tensor gathered from its shards (a collective)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The full tensor ``t`` laid out like ``ref``: ``t`` itself unless ``ref`` is a ``DTensor``.

    For a ``DTensor`` ``ref`` this is a collective: every rank receives its shard of rank 0's
    ``t`` (``distribute_tensor`` scatters from rank 0), so masks cannot diverge across ranks.
    """
    if not is_sharded(ref):
        return t
    if is_sharded(t):
        return t.redistribute(ref.device_mesh, ref.placements)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(ref.device), ref.device_mesh, ref.placements)


def _reject_fsdp1(model: nn.Module) -> None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return
    for name, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            raise ConfigError(
                f"module {name or '<root>'!r} is wrapped in FullyShardedDataParallel (FSDP1), whose flat "
                "parameters hide the weight shapes masks need; shard with "
                "torch.distributed.fsdp.fully_shard (FSDP2) instead, and build the optimizer and the sparsity "
                "method after sharding"
            )
