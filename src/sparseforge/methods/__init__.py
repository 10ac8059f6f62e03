"""Training-time sparsity methods and their registry."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import SparsityMethod
from .dst import SET, DynamicSparse, RigL
from .gmp import GMP
from .imp import IMP
from .nm import BDWP, MDGF, SDGF, SRSTE, STE, NMTraining
from .static import Dense, StaticSparse

__all__ = ["SparsityMethod", "Dense", "StaticSparse", "GMP", "IMP", "DynamicSparse", "SET", "RigL", "NMTraining", "STE",
           "SRSTE", "MDGF", "SDGF", "BDWP", "METHODS", "NM_METHODS", "build_method"]

METHODS: dict[str, type[SparsityMethod]] = {
    "dense": Dense,
    "static": StaticSparse,
    "gmp": GMP,
    "imp": IMP,
    "set": SET,
    "rigl": RigL,
    "ste": STE,
    "srste": SRSTE,
    "mdgf": MDGF,
    "sdgf": SDGF,
    "bdwp": BDWP,
}

#: methods that train dense weights through an N:M mask recomputed every forward pass
NM_METHODS = frozenset({"ste", "srste", "mdgf", "sdgf", "bdwp"})


def build_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **params: Any) -> SparsityMethod:
    """Instantiate the method called ``name`` with keyword ``params``; unknown names or keywords are errors."""
    if name == "snip":
        name, params = "static", {"score": "snip", **params}
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted([*METHODS, 'snip'])}")
    cls = METHODS[name]
    try:
        return cls(model, optimizer, **params)
    except TypeError as e:
        raise ConfigError(f"method {name!r}: {e}") from None
