"""Importance scores: larger = more important = kept first.

Each score is a pure function ``score(weight, grad=None, generator=None) -> Tensor`` of the
same shape as ``weight``. Patterns aggregate element scores by summing them (blocks,
channels).

* ``magnitude``: ``|w|`` (Han et al. 2015; Zhu & Gupta 2017).
* ``random``: i.i.d. uniform noise from ``generator`` (the random baseline).
* ``gradient``: ``|g|`` (the RigL grow criterion, Evci et al. 2020).
* ``snip``: ``|w * g|``, the connection sensitivity of SNIP (Lee et al. 2019, "SNIP:
  Single-shot Network Pruning based on Connection Sensitivity"), whose normalisation by the
  sum over all weights does not change the ranking.
* ``taylor``: ``(w * g)**2``, the first-order Taylor importance of Molchanov et al. 2019
  ("Importance Estimation for Neural Network Pruning"). Per weight it ranks like SNIP; summed
  over a group (block, channel) it weights large contributions more.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..errors import ConfigError

__all__ = ["ScoreFn", "magnitude", "random", "gradient", "snip", "taylor", "SCORES", "get_score"]


class ScoreFn(Protocol):
    """Signature shared by every score function."""

    def __call__(
        self, weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


def _need_grad(name: str, grad: torch.Tensor | None) -> torch.Tensor:
    if grad is None:
        raise ConfigError(f"score {name!r} needs a gradient; run a backward pass (or pass data) before scoring")
    return grad


def magnitude(weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``|w|``."""
    return weight.detach().abs()


def random(weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise in [0, 1) drawn from ``generator`` (CPU), same shape as ``weight``."""
    return torch.rand(weight.shape, generator=generator).to(weight.device)


def gradient(weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``|g|``."""
    return _need_grad("gradient", grad).detach().abs()


def snip(weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``|w * g|``."""
    return (weight.detach() * _need_grad("snip", grad).detach()).abs()


def taylor(weight: torch.Tensor, grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(w * g)**2``."""
    return (weight.detach() * _need_grad("taylor", grad).detach()).pow(2)


SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "magnitude": magnitude,
    "random": random,
    "gradient": gradient,
    "snip": snip,
    "taylor": taylor,
}

#: Scores that need a gradient.
GRADIENT_SCORES = frozenset({"gradient", "snip", "taylor"})


def get_score(name: str) -> Callable[..., torch.Tensor]:
    """Look up a score function by name."""
    if name not in SCORES:
        raise ConfigError(f"score must be one of {sorted(SCORES)}; got {name!r}")
    return SCORES[name]
