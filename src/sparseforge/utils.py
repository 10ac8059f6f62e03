"""Small helpers shared across layers: run a model on example inputs without changing its state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, SparseforgeError

__all__ = ["preserved_modes", "call_model", "probe"]


@contextmanager
def preserved_modes(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval (or, with ``training=True``, train) mode for the block.

    Afterwards every submodule gets back its own mode, not one mode for all: models can mix
    train and eval parts (a frozen BatchNorm inside a training model), and a probe must not
    change them.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """``model(**x)`` for a mapping, ``model(*x)`` for a tuple or list, ``model(x)`` otherwise.

    This is what ``example_inputs`` means everywhere in the API: a tensor (one positional
    argument), a tuple or list (positional arguments) or a dict (keyword arguments).
    """
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def probe(model: nn.Module, example_inputs: Any, handles: Iterable[Any] = (), *, param: str = "example_inputs") -> Any:
    """One forward pass of ``example_inputs`` in eval mode without gradients; return the output.

    Every submodule gets its mode back afterwards (:func:`preserved_modes`), and ``handles``
    (the hooks a caller registered to observe this pass) are removed even if the pass fails.
    An input the model cannot run (a wrong shape or dtype) is a :class:`ConfigError` naming
    ``param``; the package's own errors pass through.
    """
    try:
        with preserved_modes(model), torch.no_grad():
            try:
                return call_model(model, example_inputs)
            except SparseforgeError:
                raise
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ConfigError(f"{param} does not run the model ({type(model).__name__}): {type(e).__name__}: "
                                  f"{msg}; pass a tensor, a tuple of positional arguments or a dict of keyword "
                                  "arguments that model(...) accepts") from e
    finally:
        for h in handles:
            h.remove()
