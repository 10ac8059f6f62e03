"""Sparsity targets: what a user asks for, parsed once at the boundary into one frozen value.

A :class:`Target` is a pattern (:class:`~.patterns.Unstructured`, :class:`~.patterns.NM`,
:class:`~.patterns.Block` or :class:`~.patterns.Channel`) together with the fraction of zeros
it produces. Every entry point (CLI ``--sparsity``, a recipe's ``sparsity:``, the Python
``sparsity=`` argument of methods, ``prune_oneshot`` and ``prune_nm``) calls
:func:`parse_target` once; the layers below receive the :class:`Target` and pass it on
unchanged (:func:`parse_target` returns a :class:`Target` it is given as the same object).

Accepted spellings, one rule everywhere:

* a fraction of zeros in [0, 1): a Python, numpy or 0-d tensor number (``0.9``);
* an N:M pattern, N kept of every M consecutive inputs with ``1 <= N < M``: ``"2:4"`` or
  ``NM(2, 4)`` (a pattern that prunes nothing, such as ``"4:4"``, is refused);
* a :class:`Target` (for a block or channel pattern at some fraction: ``Target(Block(1, 4), 0.9)``,
  or a fraction with ``pattern="block:1x4"``).

Refused with one message: booleans, NaN and infinities, numbers outside [0, 1), numeric
strings (``"0.5"``: in Python and YAML a sparsity is a number; only command-line text goes
through :func:`parse_target_text`), and any other string.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, _real, check_sparsity
from .patterns import INDIVISIBLE_POLICIES, NM, Block, Pattern, Unstructured, pattern_from_spec

__all__ = ["Target", "parse_target", "parse_target_text", "target_from_args", "INDIVISIBLE"]

#: what to do with a layer whose input dimension is not divisible by M of an N:M target: refuse
#: (default), leave it dense and list it, or pad its last group (scored below every weight);
#: the same tuple as :data:`~sparseforge.core.patterns.INDIVISIBLE_POLICIES`, where ``NM.mask`` uses it
INDIVISIBLE = INDIVISIBLE_POLICIES

_ALLOWED = ("a fraction of zeros in [0, 1) such as 0.9, or an N:M pattern such as '2:4' (N kept of every M "
            "inputs, N < M)")


@dataclass(frozen=True)
class Target:
    """A sparsity target: a pattern and the fraction of zeros it gives.

    For an N:M pattern the fraction is fixed by the pattern (``1 - N/M``); ``Target(NM(2, 4))``
    fills it in. Build one with :func:`parse_target` rather than by hand: it also checks N < M.
    """

    pattern: Pattern = field(default_factory=Unstructured)
    sparsity: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, Pattern):
            raise ConfigError(f"Target.pattern must be a Pattern (Unstructured, NM, Block, Channel); got {self.pattern!r}")
        if isinstance(self.pattern, NM):
            s = self.pattern.sparsity
            if self.sparsity is not None and abs(check_sparsity(self.sparsity) - s) > 1e-9:
                raise ConfigError(f"sparsity={self.sparsity} conflicts with N:M {self.pattern.n}:{self.pattern.m} "
                                  f"(which fixes it at {s:g}); give one of them")
            object.__setattr__(self, "sparsity", s)
        else:
            if self.sparsity is None:
                raise ConfigError(f"a {self.pattern.name} target needs a fraction of zeros in [0, 1)")
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))

    @property
    def is_nm(self) -> bool:
        """True for an N:M target."""
        return isinstance(self.pattern, NM)

    def __str__(self) -> str:
        p = self.pattern
        if isinstance(p, NM):
            return f"{p.n}:{p.m}"
        if isinstance(p, Unstructured):
            return f"{self.sparsity:g}"
        if isinstance(p, Block):
            return f"{self.sparsity:g} in {p.rows}x{p.cols} blocks"
        return f"{self.sparsity:g} of {p.name}s"


def _nm(p: NM, name: str) -> NM:
    if p.n >= p.m:
        raise ConfigError(f"{name}: N:M pattern {p.n}:{p.m} prunes nothing; a target needs N < M "
                          f"(N kept of every M), e.g. '2:4'")
    return p


def _yaml_hint(v: float) -> str:
    # YAML 1.1 (PyYAML) reads an unquoted 2:4 as the base-60 integer 124
    if float(v).is_integer() and v >= 60:
        a, b = divmod(int(v), 60)
        return f" (an unquoted {a}:{b} in YAML is read as the base-60 number {int(v)}; quote N:M patterns: '{a}:{b}')"
    return ""


def parse_target(value: Any, name: str = "sparsity", *, pattern: Any = None) -> Target:
    """The :class:`Target` of ``value``: a fraction, an N:M spec (``"2:4"``, ``NM(2, 4)``) or a Target.

    ``pattern`` is the unit a *fraction* counts (``"unstructured"`` (default), ``"block:RxC"``,
    ``"channel"`` or a :class:`~.patterns.Pattern`); an N:M ``pattern`` fixes the target by itself
    and must agree with ``value`` if both are given. A :class:`Target` is returned as the same
    object (it was parsed already). Raises :class:`ConfigError` naming ``name`` and the value.
    """
    if isinstance(value, Target):
        if pattern is not None and pattern_from_spec(pattern) != value.pattern:
            raise ConfigError(f"{name}: got the target {value} and also pattern={pattern!r}; give the pattern once")
        return value
    p = None if pattern is None else pattern_from_spec(pattern)
    if p is not None and isinstance(p, NM):
        _nm(p, "pattern")
        if value is not None:
            other = parse_target(value, name)
            if abs(other.sparsity - p.sparsity) > 1e-9 or (other.is_nm and other.pattern != p):
                raise ConfigError(f"{name}={value!r} conflicts with N:M pattern {p.n}:{p.m} "
                                  f"(= sparsity {p.sparsity:g}); give the N:M pattern once, as {name}='{p.n}:{p.m}'")
        return Target(p)
    if isinstance(value, NM):
        value = _nm(value, name)
    elif isinstance(value, str):
        text = value.strip()
        parts = text.split(":")
        if len(parts) == 2 and all(x.strip().isdigit() for x in parts):
            try:
                nm = NM(int(parts[0]), int(parts[1]))
            except ConfigError as e:
                raise ConfigError(f"{name}={value!r}: {e}") from None
            value = _nm(nm, name)
        else:
            try:
                float(text)
                hint = f"; pass the number {text} (not a string)"
            except ValueError:
                hint = ""
            raise ConfigError(f"{name} must be {_ALLOWED}; got the string {value!r}{hint}")
    elif isinstance(value, Pattern):
        raise ConfigError(f"{name}: the {value.name} pattern needs a fraction; pass sparsity=<fraction> and "
                          f"pattern={value!r}, or a Target")
    if isinstance(value, NM):
        if p is not None and not isinstance(p, Unstructured):
            raise ConfigError(f"{name}: N:M {value.n}:{value.m} cannot be combined with pattern {p.name!r}")
        return Target(value)
    v = _real(value)
    if v is None or v != v or not 0.0 <= v < 1.0:
        shown = value if v is None else v
        raise ConfigError(f"{name} must be {_ALLOWED}; got {shown!r}{'' if v is None else _yaml_hint(v)}")
    return Target(p or Unstructured(), v)


def parse_target_text(text: Any, name: str = "--sparsity") -> Target:
    """A command-line target: ``"0.5"`` (a fraction) or ``"2:4"`` (N:M); anything else as :func:`parse_target`."""
    if isinstance(text, str) and ":" not in text:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be {_ALLOWED}; got {text!r}") from None
        return parse_target(number, name)
    return parse_target(text, name)


def target_from_args(sparsity: Any, pattern: Any, *, owner: str, default: Any = None) -> Target:
    """The target of a ``sparsity=`` argument and its deprecated ``pattern=`` alias for N:M.

    ``sparsity`` is the one name of a target; an N:M given as ``pattern="2:4"`` still works and
    warns (:class:`DeprecationWarning`). ``pattern`` naming a block or channel unit is not
    deprecated: it says what a fractional ``sparsity`` counts. ``default`` is used when neither
    gives a target (N:M training defaults to ``"2:4"``).
    """
    if pattern is not None and not isinstance(sparsity, Target):
        p = pattern_from_spec(pattern)
        if isinstance(p, NM):
            warnings.warn(f"{owner}: pattern={pattern!r} is deprecated for N:M patterns; pass "
                          f"sparsity='{p.n}:{p.m}' (the one name of a target)", DeprecationWarning, stacklevel=3)
    if sparsity is None and (pattern is None or not isinstance(pattern_from_spec(pattern), NM)):
        if default is None:
            raise ConfigError(f"{owner} needs sparsity ({_ALLOWED})")
        sparsity = default
    return parse_target(sparsity, "sparsity", pattern=pattern)
