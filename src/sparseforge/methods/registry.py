"""The method registry: names (and aliases with preset arguments) -> method classes.

Built-in methods are registered by :mod:`sparseforge.methods`; a new method needs one file::

    from sparseforge.methods import SparsityMethod, register_method

    class Cubic(SparsityMethod):
        ...
    register_method("cubic", Cubic)

Third-party packages can also declare their methods under the ``sparseforge.methods``
entry-point group (``cubic = "my_pkg.methods:Cubic"`` in ``pyproject.toml``); they are loaded
when a name is not found among the registered ones, and by :func:`method_names`. A recipe can
name modules to import first (``imports: [my_pkg.methods]``), whose import registers them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .base import SparsityMethod

__all__ = ["ENTRY_POINT_GROUP", "METHODS", "MethodEntry", "build_method", "import_method_modules", "load_entry_points",
           "method_entry", "method_names", "register_method"]

#: the entry-point group third-party packages declare their methods under
ENTRY_POINT_GROUP = "sparseforge.methods"

#: registered name -> method class (aliases are not listed here; see :func:`method_names`)
METHODS: dict[str, type[SparsityMethod]] = {}
#: alias -> (registered name, preset keyword arguments)
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}
_entry_points_loaded = False
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class MethodEntry:
    """A resolved registry name: the ``name`` asked for, its class and the preset arguments of an alias."""

    name: str
    cls: type[SparsityMethod]
    presets: dict[str, Any] = field(default_factory=dict)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{what} must be a lower-case name (letters, digits, '-', '_', starting with a letter); "
                          f"got {name!r}")
    return name


def register_method(name: str, cls: type[SparsityMethod], *, aliases: Mapping[str, Mapping[str, Any]] | Iterable[str] = (),
                    replace: bool = False) -> type[SparsityMethod]:
    """Register method class ``cls`` under ``name`` (and ``aliases``); return ``cls``.

    Args:
        name: the name recipes and :func:`build_method` use (lower case).
        cls: a :class:`~sparseforge.methods.base.SparsityMethod` subclass.
        aliases: other names for it, either plain names or a mapping ``alias -> preset keyword
            arguments`` (``{"snip": {"score": "snip"}}``: ``snip`` is ``static`` with SNIP scores).
        replace: allow replacing a name already registered (otherwise an error).

    Raises:
        ConfigError: a bad name, a class that is not a ``SparsityMethod``, or a name taken.
    """
    _check_name(name, "method name")
    if not (isinstance(cls, type) and issubclass(cls, SparsityMethod)):
        raise ConfigError(f"register_method({name!r}, ...): cls must be a SparsityMethod subclass; got {cls!r}")
    alias_map = dict(aliases) if isinstance(aliases, Mapping) else {a: {} for a in aliases}
    for a, presets in alias_map.items():
        _check_name(a, "method alias")
        if not isinstance(presets, Mapping):
            raise ConfigError(f"register_method({name!r}, ...): presets of alias {a!r} must be a mapping; got {presets!r}")
        alias_map[a] = dict(presets)
    for n in (name, *alias_map):
        taken = METHODS.get(n) or (METHODS.get(_ALIASES[n][0]) if n in _ALIASES else None)
        if taken is not None and taken is not cls and not replace:
            raise ConfigError(f"method name {n!r} is already registered for {taken.__module__}.{taken.__qualname__}; "
                              "pick another name or pass replace=True")
    _ALIASES.pop(name, None)
    METHODS[name] = cls
    for a, presets in alias_map.items():
        METHODS.pop(a, None)
        _ALIASES[a] = (name, presets)
    return cls


def load_entry_points() -> None:
    """Register the methods third-party packages declare under :data:`ENTRY_POINT_GROUP` (once).

    An entry point names a ``SparsityMethod`` subclass (registered under the entry point's
    name) or a module (imported; it registers its methods itself).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not hide the others; say which one
            raise ConfigError(f"entry point {ep.name!r} = {ep.value!r} ({ENTRY_POINT_GROUP}) failed to load: "
                              f"{type(e).__name__}: {e}") from e
        if isinstance(obj, type) and issubclass(obj, SparsityMethod) and ep.name not in METHODS:
            register_method(ep.name, obj)


def import_method_modules(modules: Iterable[str]) -> None:
    """Import the modules named (dotted import paths, never file paths) so they register their methods.

    Raises:
        ConfigError: a name that is not a dotted module path, or a module that cannot be imported.
    """
    for mod in modules:
        if not isinstance(mod, str) or not _MODULE_RE.match(mod):
            raise ConfigError(f"imports: {mod!r} is not a module name (a dotted import path like 'my_pkg.methods')")
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"imports: cannot import {mod!r}: {e}") from e


def method_names() -> list[str]:
    """Every name :func:`build_method` accepts (registered names, aliases, entry points), sorted."""
    load_entry_points()
    return sorted([*METHODS, *_ALIASES])


def method_entry(name: Any) -> MethodEntry:
    """Resolve ``name`` (a registered name or an alias) to its class and preset arguments.

    Raises:
        ConfigError: the name is unknown (the message lists the known ones).
    """
    if isinstance(name, str) and name not in METHODS and name not in _ALIASES:
        load_entry_points()
    if isinstance(name, str) and name in _ALIASES:
        target, presets = _ALIASES[name]
        return MethodEntry(name, METHODS[target], dict(presets))
    if isinstance(name, str) and name in METHODS:
        return MethodEntry(name, METHODS[name])
    raise ConfigError(f"unknown method {name!r}; available: {method_names()}")


def build_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **params: Any) -> SparsityMethod:
    """Instantiate the method called ``name`` with keyword ``params``; unknown names or keywords are errors.

    An alias's presets come first, so explicit ``params`` override them.
    """
    entry = method_entry(name)
    try:
        return entry.cls(model, optimizer, **{**entry.presets, **params})
    except TypeError as e:
        raise ConfigError(f"method {name!r}: {e}") from None
