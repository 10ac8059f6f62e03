"""The one result shape of the public verbs, and the one way to rename a keyword.

Every top-level verb of :mod:`sparseforge` (a function that prunes, rewrites, quantizes, loads
into or builds a model and decides something per layer) returns a :class:`Result` subclass::

    result = sf.prune_nm(model, "2:4")
    result.model      # the model (changed in place, or the new one the verb built)
    result.layers     # per-layer records in module order, each with a ``.name``
    result.skipped    # (name, reason) of every layer left as it was
    result.report     # the verb's own report where it makes one (structured pruning), else None

Each verb's subclass adds its own fields (``OneShotResult.masking``, ``StructuredResult.kept``,
...). Verbs that used to return a tuple keep unpacking working for one release
(``model, decisions = materialize(...)`` warns with a :class:`DeprecationWarning`).

This module is infrastructure (no torch import): ``sparseforge.Result`` is importable without
loading torch.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, TypeVar

from .errors import ConfigError

__all__ = ["Result", "LegacyMapping", "renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True)
class Result:
    """What a verb did: the model, its per-layer records, the layers it left alone, its report.

    Attributes:
        model: the model the verb changed in place or the new model it built.
        layers: one record per layer the verb acted on, in module order; every record has a
            ``name`` (the module name as in ``named_modules()``). :meth:`layer` looks one up.
        skipped: ``(name, reason)`` for every layer the verb considered and left as it was.
        report: the verb's own report where it produces one (``StructuredReport`` for
            structured pruning), else None. ``sparseforge.sparsity_report(result)`` measures
            the sparsity of any result's model.
    """

    model: Any
    layers: list[Any] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report: Any = None

    #: attributes the verb returned as a tuple before it returned a Result (empty: it never did)
    _legacy_tuple: ClassVar[tuple[str, ...]] = ()

    def layer(self, name: str) -> Any:
        """The record of layer ``name`` (a ``KeyError`` lists the names there are)."""
        for record in self.layers:
            if getattr(record, "name", None) == name:
                return record
        names = [getattr(r, "name", None) for r in self.layers]
        raise KeyError(f"no layer {name!r} in this {type(self).__name__}; layers: {names[:8]}"
                       + (" ..." if len(names) > 8 else ""))

    def __iter__(self) -> Iterator[Any]:
        # unpacking ``a, b = verb(...)`` is how results were read before; warn, do not break
        if not self._legacy_tuple:
            raise TypeError(f"{type(self).__name__} cannot be unpacked; read its attributes "
                            "(.model, .layers, .skipped, .report)")
        names = ", ".join(self._legacy_tuple)
        warnings.warn(f"unpacking a {type(self).__name__} into ({names}) is deprecated and will stop working in "
                      f"the next release; read result.{self._legacy_tuple[0]} and the other attributes instead",
                      DeprecationWarning, stacklevel=2)
        return iter(tuple(getattr(self, n) for n in self._legacy_tuple))


class LegacyMapping:
    """Mixin for a result that replaced a returned ``dict``: dict reads still work, with a warning.

    The subclass names, in ``_legacy_mapping``, the property that returns the old dict
    (``QuantizeResult.weights``, ``LoRAResult.adapters``); ``result["fc1"]``, ``len(result)``,
    ``"fc1" in result``, ``keys()``, ``values()``, ``items()`` and iteration read it and warn.
    """

    _legacy_mapping: ClassVar[str] = ""

    def _old_dict(self) -> dict[str, Any]:
        warnings.warn(f"reading a {type(self).__name__} as a dict is deprecated and will stop working in the next "
                      f"release; use result.{self._legacy_mapping}", DeprecationWarning, stacklevel=3)
        return getattr(self, self._legacy_mapping)

    def __getitem__(self, key: str) -> Any:
        return self._old_dict()[key]

    def __len__(self) -> int:
        return len(self._old_dict())

    def __bool__(self) -> bool:
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._old_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._old_dict())

    def keys(self) -> Any:
        """Deprecated: ``result.<mapping>.keys()``."""
        return self._old_dict().keys()

    def values(self) -> Any:
        """Deprecated: ``result.<mapping>.values()``."""
        return self._old_dict().values()

    def items(self) -> Any:
        """Deprecated: ``result.<mapping>.items()``."""
        return self._old_dict().items()


def renamed_keywords(**old_to_new: str) -> Callable[[F], F]:
    """Accept ``old=`` keyword arguments of a function as deprecated aliases of ``new=``.

    ``@renamed_keywords(example_input="example_inputs")`` lets callers still pass
    ``example_input=`` for one release (a :class:`DeprecationWarning` names the new keyword);
    passing both is a :class:`~sparseforge.errors.ConfigError`. The wrapped function's
    signature (``inspect.signature``) shows only the new names.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigError(f"{fn.__name__}: pass {new}= only ({old}= is its deprecated old name); "
                                          "got both")
                    warnings.warn(f"{fn.__name__}({old}=...) is deprecated; use {new}=", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
