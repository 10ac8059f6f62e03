"""N:M training with dense weights: STE, SR-STE, progressive gradient flow (MDGF, SDGF), BDWP.

All of these keep the *dense* weight ``W`` as the trained parameter and recompute the N:M
mask ``m = m_NM(|W|)`` (keep the N largest magnitudes in every group of M consecutive input
weights) at **every forward pass**; the forward pass reads a sparse weight and the gradient
reaches every dense entry. The mask of the last forward pass is kept in the ``<param>_mask``
buffer, so reports, checkpoints and the Sparse Architecture Divergence read it;
:meth:`NMTraining.finalize` folds the final hard mask into the weights (exact N:M zeros).

* **STE** (straight-through estimator; Zhou et al. 2021 use it as their baseline): forward
  ``W ⊙ m``, backward ``dL/dW = dL/dW̃``.
* **SR-STE** (Zhou et al., ICLR 2021, "Learning N:M Fine-grained Structured Sparse Neural
  Networks From Scratch"): backward ``dL/dW = dL/dW̃ + λ_w (1 - m) ⊙ W`` with
  ``λ_w = 2e-4`` (the official default).
* **MDGF** (mask-decay gradient flow; Bambhaniya et al., CPAL 2025, "Progressive Gradient Flow
  for Robust N:M Sparsity Training in Transformers"): forward ``W ⊙ (m + (1 - m) β_t)``,
  straight-through backward; ``β_t = max(0, 1 - c t)`` (linear) or ``exp(-c t)``
  (exponential), ``c = 2e-4`` (official CLI default), ``t`` counted from the end of the dense
  phase.
* **SDGF** (structure-decay gradient flow, same paper): the sparse phase is split into equal
  frames whose N:M patterns get sparser and end at the target. ``"sparsify"``: ``(M-1):M,
  M/2:M, M/4:M, ..., N:M`` (1:8 -> 7:8, 4:8, 2:8, 1:8); ``"fine"``: ``8N:8M, 4N:4M, 2N:2M,
  N:M``. Hard masks within a frame.
* **BDWP** (Fang et al. 2023, "Efficient N:M Sparse DNN Training Using Algorithm,
  Architecture, and Dataflow Co-Design"): the forward GEMM reads ``W ⊙ m`` (groups along the
  input dimension) and the input-gradient GEMM reads ``W ⊙ m_T`` with a separate N:M mask
  along the *output* dimension; the weight gradient is dense, plus the SR-STE term.

Every variant shares a three-phase schedule (the gradient-flow paper's): ``dense_fraction``
of ``total_steps`` dense, then the method, then ``finetune_fraction`` with the plain hard
target mask. Defaults are 0 and 0 (pure N:M training from step 0). Steps count optimizer
updates. Deviation from the official MDGF code: there the decay clock is offset by
``dense_steps * steps / 100`` although ``dense_steps`` is a fraction (a 100x smaller offset);
here ``t`` starts at 0 exactly when the dense phase ends.

The Sparse Architecture Divergence of SR-STE (how many mask entries flipped) is measured at
every optimizer step from the masks of consecutive forward passes and exposed by
:meth:`NMTraining.metrics` and :attr:`NMTraining.sad_history`.

Layers whose input dimension is not divisible by M raise :class:`~sparseforge.errors.LayerError`
unless ``indivisible`` is ``"skip"`` (left dense, listed in ``masking.skipped``) or ``"pad"``
(the tail group is treated as zero-padded to M: it keeps its ``min(N, r)`` largest of ``r``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.patterns import INDIVISIBLE_POLICIES, NM, is_valid_nm
from ..core.targets import target_from_args
from ..errors import ConfigError, LayerError, check_fraction, check_number
from ..masking import MASK_SUFFIX, MaskedLayer, is_sharded, mask_to
from .base import SparsityMethod, step_param

__all__ = ["NMTraining", "STE", "SRSTE", "MDGF", "SDGF", "BDWP", "nm_mask", "sdgf_patterns"]

def nm_mask(weight: torch.Tensor, n: int, m: int, *, pad: bool = False) -> torch.Tensor:
    """Boolean N:M mask of a canonical ``[out, in, *kernel]`` weight by magnitude.

    Keeps the ``n`` largest ``|w|`` of every ``m`` consecutive inputs (at each output and kernel
    position); among ties the lower index is pruned first, so the mask is deterministic. With
    ``pad``, an input dimension that is not a multiple of ``m`` is padded (scored below every
    weight) and the padding is cut off again. It is :meth:`NM.mask <sparseforge.core.patterns.NM.mask>`
    on ``|w|``.
    """
    return NM(n, m).mask(weight.detach().abs(), pad=pad)


def sdgf_patterns(n: int, m: int, kind: str) -> list[tuple[int, int]]:
    """The SDGF frame patterns for target ``n:m``.

    ``"sparsify"``: ``(m-1):m`` then ``m/2:m, m/4:m, ...`` while larger than ``n``, then
    ``n:m`` (1:8 -> 7:8, 4:8, 2:8, 1:8; 2:4 -> 3:4, 2:4). ``"fine"``: ``8n:8m, 4n:4m, 2n:2m, n:m``.
    """
    if kind == "sparsify":
        out = [(m - 1, m)]
        k = m // 2
        while k > n:
            if k < out[-1][0]:
                out.append((k, m))
            k //= 2
        if out[-1] != (n, m):
            out.append((n, m))
        return out
    if kind == "fine":
        return [(8 * n, 8 * m), (4 * n, 4 * m), (2 * n, 2 * m), (n, m)]
    raise ConfigError(f"SDGF kind must be 'sparsify' or 'fine'; got {kind!r}")


class _MaskedWeight(torch.autograd.Function):
    """Forward ``W ⊙ (m + (1 - m) β)``; backward ``g + λ (1 - m) ⊙ W`` (β = λ = 0: plain STE)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, m: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
        ctx.lam = lam
        if lam:
            ctx.save_for_backward(w, m)
        keep = m if beta == 0.0 else m + (1 - m) * beta
        return w * keep

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.lam:
            w, m = ctx.saved_tensors
            g = g + ctx.lam * (1 - m) * w
        return g, None, None, None


class _Holder:
    """Carries BDWP's input-gradient correction from the output node to the input node."""

    __slots__ = ("delta", "correction")

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta  # canonical [out, in]: W ⊙ m_T - W ⊙ m
        self.correction: torch.Tensor | None = None


class _BDWPOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, holder: _Holder) -> torch.Tensor:
        ctx.holder = holder
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        # dX = dY (W ⊙ m_T) = dY (W ⊙ m) + dY Δ: the layer's own backward computes the first
        # term, the input node adds the second
        ctx.holder.correction = dy @ ctx.holder.delta.to(dy.dtype)
        return dy, None


class _BDWPInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, holder: _Holder) -> torch.Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, dx: torch.Tensor) -> tuple[torch.Tensor, None]:
        c = ctx.holder.correction
        ctx.holder.correction = None
        return (dx if c is None else dx + c.reshape(dx.shape)), None


def _check_lambda(lambda_w: Any) -> float:
    return float(check_number(lambda_w, "lambda_w", minimum=0.0))


class NMTraining(SparsityMethod):
    """Plain STE N:M training (base class of the other variants).

    Args:
        sparsity: the N:M target, e.g. ``"2:4"`` (default) or ``NM(1, 8)`` (N < M). ``pattern=``
            is a deprecated alias (warns).
        total_steps: optimizer steps of the run (needed for the phases and SDGF frames).
        dense_fraction: leading fraction of ``total_steps`` trained dense (default 0).
        finetune_fraction: trailing fraction trained with the hard target mask (default 0).
        indivisible: ``"error"`` (default), ``"skip"`` or ``"pad"`` for layers whose input
            dimension is not divisible by M.
        targets, seed: as :class:`~sparseforge.methods.base.SparsityMethod`.

    Supported layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and Hugging Face ``Conv1D``.
    """

    name = "ste"
    logs_mask_flips = True

    @classmethod
    def run_defaults(cls, total_steps: int, steps_per_epoch: int | None) -> dict[str, Any]:
        """The phases (dense, method, fine-tune) and SDGF's frames split the run's length."""
        return {"total_steps": total_steps}
    supported_patterns = (NM,)
    default_target = "2:4"
    #: SR-STE's decay of pruned weights (0 = plain STE)
    lambda_w = 0.0

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, sparsity: Any = None,
                 total_steps: int | None = None, dense_fraction: float = 0.0, finetune_fraction: float = 0.0,
                 indivisible: str = "error", pattern: Any = None, **kwargs: Any) -> None:
        v = NMTraining._check_params.__func__(type(self), {  # type: ignore[attr-defined]
            "sparsity": sparsity, "pattern": pattern, "total_steps": total_steps, "dense_fraction": dense_fraction,
            "finetune_fraction": finetune_fraction, "indivisible": indivisible, **kwargs})
        self.indivisible = indivisible
        self.total_steps = total_steps
        self.dense_fraction = float(dense_fraction)
        self.finetune_fraction = float(finetune_fraction)
        self._padded: set[str] = set()
        self._hooks: list[Any] = []
        self._prev: dict[str, torch.Tensor] = {}
        self._metrics_from = 0
        self.sad_history: list[dict[str, float]] = []
        super().__init__(model, optimizer, sparsity=v["target"], **kwargs)
        self._install_hooks()

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """The N:M target (N < M; ``"2:4"`` by default), the phases and the indivisible-layer policy."""
        if p.get("allocation") not in (None, "uniform"):
            raise ConfigError(f"{cls.__name__}: N:M fixes every layer's sparsity; allocation must be left unset")
        if p.get("overrides"):
            raise ConfigError(f"{cls.__name__}: N:M fixes every layer's sparsity; overrides take no effect "
                              "(leave layers dense with targets: {exclude: [...]})")
        if p.get("indivisible", "error") not in INDIVISIBLE_POLICIES:
            raise ConfigError(f"indivisible must be one of {list(INDIVISIBLE_POLICIES)}; got {p.get('indivisible')!r}")
        total = p.get("total_steps")
        step_param(p, "total_steps", minimum=1)
        dense = check_fraction(p.get("dense_fraction", 0.0), "dense_fraction")
        fine = check_fraction(p.get("finetune_fraction", 0.0), "finetune_fraction")
        if dense + fine > 1.0:
            raise ConfigError(f"dense_fraction + finetune_fraction must be <= 1; got {dense} + {fine}")
        if (dense or fine) and total is None:
            raise ConfigError(f"{cls.__name__}: dense_fraction/finetune_fraction need total_steps")
        target = target_from_args(p.get("sparsity"), p.get("pattern"), owner=cls.__name__, default=cls.default_target)
        if not target.is_nm:
            raise ConfigError(f"{cls.__name__} trains an N:M pattern; sparsity must be N:M such as '2:4'; got "
                              f"{p.get('sparsity')!r}")
        return {"target": target}

    # ------------------------------------------------------------------ set-up
    def _check_layers(self) -> None:
        p = self.pattern
        if p.n >= p.m or p.m < 2:
            raise ConfigError(f"{type(self).__name__}: N:M training needs N < M and M >= 2; got {p.n}:{p.m}")
        for layer in list(self.layers):
            if is_sharded(layer.weight):
                # the forward hooks swap in a masked weight, and FSDP2 swaps in the unsharded one
                raise ConfigError(f"{type(self).__name__}: {layer.qualname} is sharded by FSDP2 (fully_shard); N:M "
                                  "training does not support sharded weights yet: train with DDP, or shard after training")
            if not isinstance(layer.module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not layer.transposed:
                raise LayerError(f"{layer.qualname}: N:M training supports Linear, Conv1d/2d/3d and HF Conv1D; "
                                 f"got {type(layer.module).__name__}")
            cin = layer.canonical_shape[1]
            bad = [f"{a}:{b}" for a, b in self._patterns_used() if cin % b]
            if not bad:
                continue
            if self.indivisible == "error":
                raise LayerError(f"{layer.qualname}: input dimension {cin} (shape {layer.canonical_shape}) is not "
                                 f"divisible by M of pattern(s) {bad}; pass indivisible='skip' or 'pad', or exclude it")
            if self.indivisible == "pad":
                self._padded.add(layer.qualname)
            else:
                delattr(layer.module, layer.param_name + MASK_SUFFIX)
                self.masking.layers.remove(layer)
                self.masking.skipped.append((layer.qualname, f"input dimension {cin} not divisible by M ({bad}); left dense"))
        if not self.layers:
            raise LayerError(f"{type(self).__name__}: no layer left to sparsify (skipped: {self.masking.skipped})")

    def _patterns_used(self) -> list[tuple[int, int]]:
        return [(self.pattern.n, self.pattern.m)]

    def init_masks(self) -> None:
        """Masks of the current weights (weights are not zeroed: they stay dense)."""
        self._refresh_all()

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Count optimizer steps (phases, SAD) without masking gradients or weights."""
        self.masking.attach(optimizer, enforce=False)
        self.masking.add_callbacks(before=self._before_step, after=self._after_step)

    def _install_hooks(self) -> None:
        for layer in self.layers:
            self._hooks.append(layer.module.register_forward_pre_hook(self._make_pre_hook(layer)))
            self._hooks.append(layer.module.register_forward_hook(self._make_post_hook(layer)))

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ schedule
    def phase(self, t: int | None = None) -> str:
        """``"dense"``, ``"sparse"``, ``"finetune"`` or (after ``total_steps``) ``"done"`` at step ``t``.

        ``"finetune"`` and ``"done"`` use the hard target mask.
        """
        t = self.step if t is None else t
        if self.total_steps is None:
            return "sparse"
        if t >= self.total_steps:
            return "done"
        if t < self.dense_steps:
            return "dense"
        if t >= self.total_steps - int(self.finetune_fraction * self.total_steps):
            return "finetune"
        return "sparse"

    @property
    def dense_steps(self) -> int:
        """Steps of the leading dense phase."""
        return int(self.dense_fraction * self.total_steps) if self.total_steps else 0

    def current_pattern(self, t: int | None = None) -> tuple[int, int]:
        """The N:M pattern the forward pass uses at step ``t``."""
        return self.pattern.n, self.pattern.m

    def beta(self, t: int | None = None) -> float:
        """Weight given to pruned entries in the forward pass (0 = hard mask)."""
        return 0.0

    # ------------------------------------------------------------------ forward
    def _mask_of(self, layer: MaskedLayer, n: int, m: int) -> torch.Tensor:
        w = layer.canonical(layer.weight)
        return layer.from_canonical(nm_mask(w, n, m, pad=layer.qualname in self._padded))

    @torch.no_grad()
    def _refresh(self, layer: MaskedLayer) -> torch.Tensor:
        if self.phase() == "dense":
            mask = torch.ones_like(layer.mask)
        else:
            mask = self._mask_of(layer, *self.current_pattern())
        layer.mask.copy_(mask)
        return mask

    def _refresh_all(self) -> None:
        for layer in self.layers:
            self._refresh(layer)

    def _make_pre_hook(self, layer: MaskedLayer):
        def pre_hook(module: nn.Module, args: tuple) -> Any:
            module.__dict__.pop(layer.param_name, None)  # a forward that raised leaves its shadow behind
            mask = self._refresh(layer)
            w = module._parameters[layer.param_name]
            if self.phase() == "dense":
                return None
            fwd = _MaskedWeight.apply(w, mask_to(mask, w.dtype), self._beta_now(), self._lambda_now())
            # shadow the parameter for this call only: Module.__getattr__ is not consulted when
            # the instance dict has the name, so forward() reads the sparse weight while
            # state_dict(), the optimizer and every other user still see the dense parameter
            module.__dict__[layer.param_name] = fwd
            return self._wrap_input(layer, w, mask, args)
        return pre_hook

    def _make_post_hook(self, layer: MaskedLayer):
        def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            module.__dict__.pop(layer.param_name, None)
            return self._wrap_output(layer, output)
        return post_hook

    def _beta_now(self) -> float:
        return 0.0 if self.phase() in ("finetune", "done") else self.beta()

    def _lambda_now(self) -> float:
        return self.lambda_w

    def _wrap_input(self, layer: MaskedLayer, w: torch.Tensor, mask: torch.Tensor, args: tuple) -> Any:
        return None

    def _wrap_output(self, layer: MaskedLayer, output: Any) -> Any:
        return None

    # ------------------------------------------------------------------ steps, SAD, results
    def _before_step(self) -> None:
        super()._before_step()
        # the masks the forward passes of this step used: SAD compares consecutive steps
        self._step_masks = {l.qualname: l.mask.clone() for l in self.layers}

    def update(self, t: int) -> None:
        """Record the Sparse Architecture Divergence of step ``t`` (mask flips since step ``t - 1``)."""
        total = sum(l.mask.numel() for l in self.layers)
        flips = 0
        if self._prev:
            flips = sum(int((self._prev[k] != v).sum()) for k, v in self._step_masks.items())
        self._prev = self._step_masks
        self.sad_history.append({"step": t, "sad": flips, "sad_fraction": flips / total})

    def report_kwargs(self) -> dict[str, Any]:
        """Skipped and padded layers, and that the forward pass applies the masks."""
        notes = [f"{name}: input dimension padded with zeros to a multiple of M={self.pattern.m}" for name in sorted(self._padded)]
        return {**super().report_kwargs(), "notes": notes, "forward_masked": True}

    def metrics(self) -> dict[str, Any]:
        """SAD summed over the steps since the last call, the current pattern and phase."""
        sad = sum(h["sad"] for h in self.sad_history[self._metrics_from:])
        self._metrics_from = len(self.sad_history)
        n, m = self.current_pattern()
        return {"sad": sad, "pattern": f"{n}:{m}", "phase": self.phase(), "beta": self._beta_now()}

    @torch.no_grad()
    def _finalize(self) -> nn.Module:
        """Fold the hard target N:M mask of the current weights into them and remove the hooks."""
        self._remove_hooks()
        for layer in self.layers:
            mask = self._mask_of(layer, self.pattern.n, self.pattern.m)
            layer.mask.copy_(mask)
        return self.masking.finalize()

    def is_valid(self) -> bool:
        """True if every current mask is a valid target N:M mask (padded tails included)."""
        for layer in self.layers:
            mask = layer.canonical(layer.mask)
            if layer.qualname in self._padded:
                continue
            if not is_valid_nm(mask, self.pattern.n, self.pattern.m):
                return False
        return True

    def extra_state(self) -> dict[str, Any]:
        """Previous masks (SAD) and the SAD log."""
        return {"prev": {k: v.clone() for k, v in self._prev.items()}, "sad_history": list(self.sad_history)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` and recompute the masks for the restored step."""
        self._prev = dict(state.get("prev", {}))
        self.sad_history = list(state.get("sad_history", []))
        self._refresh_all()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_hooks"] = []
        return state


class STE(NMTraining):
    """Plain straight-through N:M training (see the module docstring)."""

    name = "ste"


class SRSTE(NMTraining):
    """SR-STE (Zhou et al., ICLR 2021): ``g + λ_w (1 - m) ⊙ W``, ``lambda_w`` default 2e-4."""

    name = "srste"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, lambda_w: float = 2e-4,
                 **kwargs: Any) -> None:
        self.lambda_w = _check_lambda(lambda_w)
        super().__init__(model, optimizer, **kwargs)


class MDGF(NMTraining):
    """Mask-decay gradient flow (Bambhaniya et al. 2025).

    ``β_t = max(0, 1 - c t)`` (``decay="linear"``) or ``exp(-c t)`` (``decay="exp"``, default),
    ``c = decay_coef`` (default 2e-4), ``t`` = steps since the dense phase ended.
    """

    name = "mdgf"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, decay: str = "exp",
                 decay_coef: float = 2e-4, **kwargs: Any) -> None:
        MDGF._check_params({"decay": decay, "decay_coef": decay_coef})
        self.decay, self.decay_coef = decay, float(decay_coef)
        super().__init__(model, optimizer, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """``decay`` (linear or exp) and ``decay_coef`` (> 0)."""
        if p.get("decay", "exp") not in ("linear", "exp"):
            raise ConfigError(f"MDGF decay must be 'linear' or 'exp'; got {p.get('decay')!r}")
        check_number(p.get("decay_coef", 2e-4), "decay_coef", minimum=0.0, min_open=True)
        return {}

    def beta(self, t: int | None = None) -> float:
        """``β_t`` of the docstring (1 during the dense phase, 0 in fine-tuning)."""
        t = self.step if t is None else t
        ph = self.phase(t)
        if ph != "sparse":
            return 1.0 if ph == "dense" else 0.0
        k = t - self.dense_steps
        return max(0.0, 1.0 - self.decay_coef * k) if self.decay == "linear" else math.exp(-self.decay_coef * k)


class SDGF(NMTraining):
    """Structure-decay gradient flow (Bambhaniya et al. 2025): sparser N:M patterns frame by frame.

    The sparse phase ``[dense_steps, total_steps - finetune_steps)`` is cut into
    ``len(patterns)`` equal frames; frame ``i`` starts at ``dense_steps + floor(i F)`` with
    ``F = sparse_steps / frames`` and uses ``sdgf_patterns(N, M, kind)[i]``. Needs ``total_steps``.
    """

    name = "sdgf"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, kind: str = "sparsify",
                 **kwargs: Any) -> None:
        SDGF._check_params({"kind": kind})
        self.kind = kind
        if kwargs.get("total_steps") is None:
            raise ConfigError("SDGF needs total_steps (its frames divide the run)")
        target = target_from_args(kwargs.pop("sparsity", None), kwargs.pop("pattern", None), owner="SDGF",
                                  default=self.default_target)
        if not target.is_nm:
            raise ConfigError(f"SDGF needs an N:M target such as '2:4'; got {target}")
        self.frames = sdgf_patterns(target.pattern.n, target.pattern.m, kind)
        super().__init__(model, optimizer, sparsity=target, **kwargs)

    @classmethod
    def _check_params(cls, p: dict[str, Any]) -> dict[str, Any]:
        """``kind`` of the frame sequence."""
        if p.get("kind", "sparsify") not in ("sparsify", "fine"):
            raise ConfigError(f"SDGF kind must be 'sparsify' or 'fine'; got {p.get('kind')!r}")
        return {}

    def _patterns_used(self) -> list[tuple[int, int]]:
        return list(self.frames)

    def frame_starts(self) -> list[int]:
        """First step of each frame."""
        sparse = self.total_steps - int(self.finetune_fraction * self.total_steps) - self.dense_steps
        f = sparse / len(self.frames)
        return [self.dense_steps + int(i * f) for i in range(len(self.frames))]

    def current_pattern(self, t: int | None = None) -> tuple[int, int]:
        """The frame's pattern during the sparse phase, the target otherwise."""
        t = self.step if t is None else t
        if self.phase(t) != "sparse":
            return self.pattern.n, self.pattern.m
        i = max(i for i, s in enumerate(self.frame_starts()) if s <= t)
        return self.frames[i]

    def extra_state(self) -> dict[str, Any]:
        """Adds the kind."""
        return {**super().extra_state(), "kind": self.kind}


class BDWP(NMTraining):
    """Bidirectional weight pruning (Fang et al. 2023) on Linear and HF Conv1D layers.

    Forward ``Y = X (W ⊙ m)^T``; input gradient ``dX = dY (W ⊙ m_T)`` where ``m_T`` is the N:M
    mask of ``W^T`` (groups of M consecutive *output* rows per input column); weight gradient
    dense plus the SR-STE term ``λ_w (1 - m) ⊙ W`` (``lambda_w`` default 2e-4).
    """

    name = "bdwp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, lambda_w: float = 2e-4,
                 **kwargs: Any) -> None:
        self.lambda_w = _check_lambda(lambda_w)
        super().__init__(model, optimizer, **kwargs)

    def _check_layers(self) -> None:
        super()._check_layers()
        for layer in self.layers:
            if len(layer.canonical_shape) != 2:
                raise LayerError(f"{layer.qualname}: BDWP supports Linear and HF Conv1D layers; got "
                                 f"{type(layer.module).__name__} (exclude it from the targets)")
            out = layer.canonical_shape[0]
            if out % self.pattern.m:
                raise LayerError(f"{layer.qualname}: BDWP also groups the output dimension; {out} is not divisible "
                                 f"by M={self.pattern.m}")

    def _wrap_input(self, layer: MaskedLayer, w: torch.Tensor, mask: torch.Tensor, args: tuple) -> Any:
        x = args[0]
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            self._holder = None
            return None
        wc = layer.canonical(w.detach())
        m_f = layer.canonical(mask)
        m_t = nm_mask(wc.t(), self.pattern.n, self.pattern.m).t()
        self._holder = _Holder(wc * m_t - wc * m_f)
        return (_BDWPInput.apply(x, self._holder), *args[1:])

    def _wrap_output(self, layer: MaskedLayer, output: Any) -> Any:
        holder, self._holder = getattr(self, "_holder", None), None
        if holder is None or self.phase() == "dense":
            return None
        return _BDWPOutput.apply(output, holder)
