"""Training-time sparsity methods and their registry (:mod:`sparseforge.methods.registry`)."""

from __future__ import annotations

from .base import SparsityMethod
from .dst import SET, DynamicSparse, RigL
from .gmp import GMP
from .imp import IMP
from .nm import BDWP, MDGF, SDGF, SRSTE, STE, NMTraining
from .registry import (ENTRY_POINT_GROUP, METHODS, MethodEntry, build_method, import_method_modules, method_entry,
                       method_names, register_method)
from .static import Dense, StaticSparse

__all__ = ["SparsityMethod", "Dense", "StaticSparse", "GMP", "IMP", "DynamicSparse", "SET", "RigL", "NMTraining", "STE",
           "SRSTE", "MDGF", "SDGF", "BDWP", "METHODS", "NM_METHODS", "build_method", "register_method", "method_entry",
           "method_names", "MethodEntry", "import_method_modules", "ENTRY_POINT_GROUP"]

register_method("dense", Dense)
register_method("static", StaticSparse, aliases={"snip": {"score": "snip"}})
register_method("gmp", GMP)
register_method("imp", IMP)
register_method("set", SET)
register_method("rigl", RigL)
register_method("ste", STE)
register_method("srste", SRSTE)
register_method("mdgf", MDGF)
register_method("sdgf", SDGF)
register_method("bdwp", BDWP)

#: the built-in methods that train dense weights through an N:M mask recomputed every forward
#: pass (kept for callers; runners ask :attr:`SparsityMethod.logs_mask_flips` instead)
NM_METHODS = frozenset(n for n, c in METHODS.items() if issubclass(c, NMTraining))
