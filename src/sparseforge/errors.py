"""Errors raised by sparseforge.

Every error names the parameter or layer, the value it got and what is allowed, so a user
can fix the call without reading the source. All of them subclass :class:`ValueError`, so
code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

import numbers
from typing import Any


class SparseforgeError(ValueError):
    """Base class of every validation error sparseforge raises."""


class ConfigError(SparseforgeError):
    """A parameter, recipe key or method name is invalid."""


class LayerError(SparseforgeError):
    """A layer cannot take the requested sparsity or pattern."""


class CheckpointError(SparseforgeError):
    """A saved file cannot be read (missing, truncated, foreign, would run code) or does not match its model."""


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, numpy or a 0-d real tensor), else None.

    Booleans and strings are not numbers here: ``True`` or ``"0.5"`` as a sparsity is a mistake.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Real):  # int, float and numpy's scalar types
        return float(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "dim") and value.dim() == 0:
        dtype = value.dtype  # a 0-d tensor (torch itself need not be imported here)
        if not dtype.is_complex and str(dtype) != "torch.bool":
            return float(value.item())
    return None


def check_sparsity(value: Any, name: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a valid sparsity (fraction of zeros, 0 <= s < 1).

    Python, numpy and 0-d tensor numbers are accepted; booleans, strings and NaN are not.
    Raises :class:`ConfigError` naming ``name`` otherwise.
    """
    v = _real(value)
    if v is None:
        raise ConfigError(f"{name} must be a number in [0, 1) (fraction of zeros); got {value!r}")
    if not (0.0 <= v < 1.0):
        raise ConfigError(f"{name} must be in [0, 1) (fraction of zeros); got {v}")
    return v


def check_fraction(value: Any, name: str, *, allow_one: bool = True) -> float:
    """Return ``value`` as a float in [0, 1] (or [0, 1) if ``allow_one`` is False); numbers as :func:`check_sparsity`."""
    v = _real(value)
    if v is None:
        raise ConfigError(f"{name} must be a number in [0, 1]; got {value!r}")
    ok = 0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0
    if not ok:
        rng = "[0, 1]" if allow_one else "[0, 1)"
        raise ConfigError(f"{name} must be in {rng}; got {v}")
    return v


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}; got {value}")
    return value
