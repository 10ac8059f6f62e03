"""Lazy re-exports for package ``__init__`` modules (PEP 562 module ``__getattr__``).

A package lists, for each name it re-exports, the submodule that defines it; the submodule is
imported on first access of the name, so ``import sparseforge`` and the command line's
``--help`` do not pay for torch, its compiler stack or optional dependencies they never use.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any],
                 submodules: frozenset[str] = frozenset()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose name ``n`` lives in submodule ``exports[n]``.

    ``exports`` maps each re-exported name to its submodule, relative to ``package`` (``"core"``,
    ``"export.materialize"``). ``submodules`` are names that resolve to a submodule itself
    (``sparseforge.export`` after a bare ``import sparseforge``). A resolved value is stored in
    ``namespace`` (the package's globals) so later lookups are plain attribute reads.
    """

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is not None:
            value = getattr(importlib.import_module(f"{package}.{where}"), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports) | set(submodules))

    return __getattr__, __dir__
