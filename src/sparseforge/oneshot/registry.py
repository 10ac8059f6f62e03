"""One-shot methods by name: :func:`method_from_spec` and the names it accepts (:data:`METHOD_NAMES`)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import OneShotMethod
from .dsnot import DSnoT
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .wanda import Wanda

__all__ = ["method_from_spec", "METHOD_NAMES"]


#: Names accepted by :func:`method_from_spec`.
METHOD_NAMES = ("magnitude", "magnitude-row", "wanda", "sparsegpt", "dsnot", "dsnot+magnitude", "dsnot+wanda", "dsnot+sparsegpt")


def method_from_spec(spec: Any) -> OneShotMethod:
    """Build a method from a name in :data:`METHOD_NAMES`, a dict or an :class:`OneShotMethod`.

    ``"dsnot"`` is DSnoT on Wanda, ``"dsnot+magnitude"`` on magnitude. Dict form, written as
    YAML (``prune_oneshot(model, method=...)`` takes the parsed mapping)::

        method: {type: sparsegpt, blocksize: 128, percdamp: 0.01}
        method: {type: dsnot, initial: magnitude, max_cycles: 50, update_threshold: 0.1, skip: mlp}
    """
    if isinstance(spec, OneShotMethod):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        simple = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT}
        if key in simple:
            return simple[key]()
        if key == "magnitude-row":
            return Magnitude(scope="row")
        if key.startswith("dsnot"):
            init = key[len("dsnot"):]
            if init == "":
                return DSnoT()
            if init.startswith("+") and init[1:] in ("magnitude", "magnitude-row", "wanda", "sparsegpt"):
                return DSnoT(initial=method_from_spec(init[1:]))
        raise ConfigError(f"unknown one-shot method {spec!r}; allowed: {list(METHOD_NAMES)}")
    if isinstance(spec, dict):
        d = dict(spec)
        kind = d.pop("type", None)
        table = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT, "dsnot": DSnoT}
        if kind not in table:
            raise ConfigError(f"method.type must be one of {sorted(table)}; got {kind!r}")
        if kind == "dsnot" and "initial" in d:
            d["initial"] = method_from_spec(d["initial"])
        try:
            return table[kind](**d)
        except TypeError as e:
            raise ConfigError(f"method {kind}: {e}") from None
    raise ConfigError(f"method must be a name {list(METHOD_NAMES)}, a dict or a OneShotMethod; got {spec!r}")
