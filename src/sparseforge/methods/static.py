"""Static sparse training: a mask chosen once at initialisation and kept fixed.

* Random masks with a layer-wise allocation (uniform, ER or ERK). Counts are exact per layer,
  not Bernoulli: ``round(s n)`` zeros (half up) placed uniformly at random, as RigL's
  ``get_mask_random`` does except that it floors ``s n`` (at most one weight per layer apart).
  Reference for random + ERK at init: Liu et al. 2022, "The Unreasonable Effectiveness of
  Random Pruning: Return of the Most Naive Baseline for Sparse Training".
* SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity"): on one batch at initialisation, score each weight by ``|w * dL/dw|`` and keep
  the top ``(1 - S)`` fraction *globally* (the paper normalises by the sum over all weights,
  which does not change the ranking). Default allocation for SNIP is therefore ``global``.
* ``magnitude`` at init: keep the largest initial weights (a baseline).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.init import check_init_scale
from ..core.scores import GRADIENT_SCORES, get_score
from ..core.targets import parse_target
from ..errors import ConfigError
from ..masking import is_sharded
from .base import SparsityMethod

__all__ = ["Dense", "StaticSparse"]


class Dense(SparsityMethod):
    """The dense baseline: masks exist (all kept) so reports and checkpoints look the same."""

    name = "dense"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: Any = 0.0,
                 **kwargs: Any) -> None:
        Dense._check_params({"sparsity": sparsity, **kwargs})
        super().__init__(model, optimizer, sparsity=0.0, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """The dense baseline takes sparsity 0 and no per-layer overrides."""
        if parse_target(p.get("sparsity", 0.0)).sparsity != 0.0:
            raise ConfigError(f"Dense takes sparsity 0; got {p.get('sparsity')!r}")
        if p.get("overrides"):
            raise ConfigError("Dense takes no overrides (every layer stays dense)")
        return {}


class StaticSparse(SparsityMethod):
    """Fixed mask from initialisation.

    Args:
        score: ``"random"`` (default), ``"magnitude"``, ``"snip"`` (or any score from
            :mod:`sparseforge.core.scores`).
        allocation: default ``"erk"`` for random/magnitude, ``"global"`` for gradient scores.
        data: one batch ``(inputs, targets)`` for gradient scores (SNIP).
        loss_fn: loss for gradient scores (default cross-entropy).
        init_scale: ``"dense"`` (default: the model's initial weights as they are), ``"unit"``
            (sparse initialisation of Evci et al. 2022: each output unit's kept weights times
            ``sqrt(fan_in / kept fan_in)``) or ``"layer"`` (times ``1 / sqrt(density)``);
            see :mod:`sparseforge.core.init`. Applied once, after the masks are chosen.
    Other arguments as :class:`~sparseforge.methods.base.SparsityMethod`.
    """

    name = "static"
    runner_args = frozenset({"data", "loss_fn"})

    @classmethod
    def needs_calibration_batch(cls, params: dict[str, Any]) -> bool:
        """Gradient scores (SNIP, Taylor) need one training batch."""
        return params.get("score", "random") in GRADIENT_SCORES
    default_allocation = "erk"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: float | None = None,
                 score: str = "random", data: tuple[Any, Any] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 allocation: Any = None, init_scale: str = "dense", **kwargs: Any) -> None:
        StaticSparse._check_params({"score": score, "init_scale": init_scale})
        self.init_scale = init_scale
        self.score_name = score
        self.score_fn = get_score(score)
        if score in GRADIENT_SCORES and data is None:
            raise ConfigError(f"StaticSparse(score={score!r}) needs data=(inputs, targets): one batch to compute gradients")
        self._data = data
        self._loss_fn = loss_fn or F.cross_entropy
        if allocation is None and score in GRADIENT_SCORES:
            allocation = "global"
        super().__init__(model, optimizer, sparsity=sparsity, allocation=allocation, **kwargs)
        self._data = None  # do not keep the batch alive

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """The score's name and the initial scaling."""
        check_init_scale(p.get("init_scale", "dense"))
        get_score(p.get("score", "random"))
        return {}

    def _gradients(self) -> list[torch.Tensor]:
        model = self.model
        params = [l.weight for l in self.layers]
        was_training = model.training
        model.train()
        x, y = self._data
        try:
            with torch.enable_grad():
                out = model(x)
                loss = self._loss_fn(out, y)
                if any(is_sharded(p) for p in params):
                    grads = self._sharded_gradients(loss, params)
                else:
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            model.train(was_training)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def _sharded_gradients(self, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        # FSDP2 runs the forward on gathered copies, so the sharded parameters are not in the
        # autograd graph and torch.autograd.grad finds no gradient for them; backward() delivers
        # them (reduce-scattered, averaged over ranks). Every parameter's .grad is put back after.
        everything = list(self.model.parameters())
        saved = [p.grad for p in everything]
        for p in everything:
            p.grad = None
        try:
            loss.backward()
            return [p.grad for p in params]
        finally:
            for p, g in zip(everything, saved):
                p.grad = g

    @torch.no_grad()
    def init_masks(self) -> None:
        """Score every masked weight once and install the masks."""
        grads = self._gradients() if self.score_name in GRADIENT_SCORES else [None] * len(self.layers)
        scores = [
            l.canonical(self.score_fn(l.weight, g, self.generator)) if g is not None or self.score_name not in GRADIENT_SCORES
            else None
            for l, g in zip(self.layers, grads)
        ]
        self.set_masks(self.masks_from_scores(scores))
        self.rescale_init()

    def extra_state(self) -> dict[str, Any]:
        """Score name, for reports."""
        return {"score": self.score_name}
