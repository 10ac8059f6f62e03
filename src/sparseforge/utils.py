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


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(**x)`` for a mapping, ``model(*x)`` for a tuple or list, ``model(x)`` otherwise."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def probe(model: nn.Module, example_input: Any, handles: Iterable[Any] = (), *, param: str = "example_input") -> Any:
    """One forward pass of ``example_input`` in eval mode without gradients; return the output.

    Every submodule gets its mode back afterwards (:func:`preserved_modes`), and ``handles``
    (the hooks a caller registered to observe this pass) are removed even if the pass fails.
    An input the model cannot run (a wrong shape or dtype) is a :class:`ConfigError` naming
    ``param``; the package's own errors pass through.
    """
    try:
        with preserved_modes(model), torch.no_grad():
            try:
                return call_model(model, example_input)
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
