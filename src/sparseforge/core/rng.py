"""Seed streams that are independent of ``torch.manual_seed(seed)``.

A user (and our Trainer) seeds the global generator with ``seed`` before building the model, so
the weight initialisation consumes that stream. If the random mask were drawn from a generator
seeded with the same integer, the noise for each layer would be the very numbers the
initialisation turned into weights (``kaiming_uniform`` is a monotone map of ``torch.rand``),
and a "random" mask would keep the largest positive weights. Every consumer therefore draws
from its own named stream derived from the user's seed.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "stream_generator"]


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` derived from ``seed`` (SHA-256 of ``"stream:seed"``)."""
    digest = hashlib.sha256(f"sparseforge/{stream}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))
