"""Errors raised by sparseforge.

Every error names the parameter or layer, the value it got and what is allowed, so a user
can fix the call without reading the source. All of them subclass :class:`ValueError`, so
code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

import math
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


def _integral(value: Any) -> int | None:
    """``value`` as an int if it is a whole-number type (Python, numpy or a 0-d integer tensor), else None."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "dim") and value.dim() == 0:
        dtype = value.dtype
        if not (dtype.is_floating_point or dtype.is_complex or str(dtype) == "torch.bool"):
            return int(value.item())
    return None


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 integer: bool = False, min_open: bool = False, max_open: bool = False, note: str = "") -> float | int:
    """Return ``value`` as a number if it is finite and within the bounds; the one numeric validator.

    Python, numpy and 0-d tensor numbers are accepted; booleans, strings, NaN and infinities
    are not. ``integer`` asks for a whole number (returned as ``int``; ``2.0`` is refused: a
    float where a count is meant is a mistake). ``minimum``/``maximum`` are inclusive unless
    ``min_open``/``max_open``. Raises :class:`ConfigError` naming ``name``, the value and what
    is allowed (``note`` is appended to that, e.g. ``" (fraction of zeros)"``): a wrong type
    gives the kind and the range (``lr must be a number > 0; got 'fast'``), a value out of range
    the range (``lr must be > 0; got 0``).
    """
    kind = "an integer" if integer else "a number"
    if integer:
        num: float | int | None = _integral(value)
    else:
        num = _real(value)
        if num is not None and not math.isfinite(num):
            num = None
    if num is None:
        rng = _range_text(minimum, maximum, min_open, max_open)
        shown = f"{kind} {rng}" if rng else ("an integer" if integer else "a finite number")
        raise ConfigError(f"{name} must be {shown}{note}; got {value!r}")
    low_bad = minimum is not None and (num <= minimum if min_open else num < minimum)
    high_bad = maximum is not None and (num >= maximum if max_open else num > maximum)
    if low_bad or high_bad:
        raise ConfigError(f"{name} must be {_range_text(minimum, maximum, min_open, max_open)}{note}; got {num}")
    return num


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def check_sparsity(value: Any, name: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a valid sparsity (fraction of zeros, 0 <= s < 1).

    Python, numpy and 0-d tensor numbers are accepted; booleans, strings and NaN are not.
    Raises :class:`ConfigError` naming ``name`` otherwise.
    """
    return float(check_number(value, name, minimum=0.0, maximum=1.0, max_open=True, note=" (fraction of zeros)"))


def check_fraction(value: Any, name: str, *, allow_one: bool = True) -> float:
    """Return ``value`` as a float in [0, 1] (or [0, 1) if ``allow_one`` is False); numbers as :func:`check_sparsity`."""
    return float(check_number(value, name, minimum=0.0, maximum=1.0, max_open=not allow_one))


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is a whole number (not bool, not a float) within the bounds."""
    return int(check_number(value, name, minimum=minimum, maximum=maximum, integer=True))
