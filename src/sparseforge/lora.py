"""Sparsity-preserving LoRA: fine-tune a sparse model with low-rank adapters and merge without losing a zero.

Plain LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") trains
``W + (alpha / r) B A`` with the base ``W`` frozen. ``B A`` is dense, so merging it into a
pruned ``W`` fills every pruned position: users report 40 % sparsity dropping to 33 % after a
LoRA merge (locuslab/wanda#83). Following SparsePEFT (Muñoz et al. 2024, "SQFT: Low-cost Model
Adaptation in Low-precision Sparse Foundation Models"), the adapter's update is masked with the
base weight's mask ``M``::

    W' = W + (alpha / r) * M ⊙ (B A)          A: [r, fan_in], B: [fan_out, r]

in training and in the merge, so the merged weight has exactly the base model's zeros (and so
its N:M pattern). The adapted layers' gradients reach ``A`` and ``B`` only through the kept
positions.

Defaults: rank ``r = 8``, ``alpha = 16`` (scale ``alpha / r = 2``); ``A`` starts Kaiming-uniform
(``a = sqrt(5)``, as ``nn.Linear``) and ``B`` at zero, so the adapted model starts equal to
the base model (the LoRA paper's initialisation). ``fan_in`` is the product of the weight's
input dimensions in the canonical ``[out, in, ...]`` layout (Hugging Face ``Conv1D`` weights
are stored transposed; convolutions adapt their flattened ``[out, in * kh * kw]`` matrix).

The mask ``M`` of a layer is its sparseforge mask buffer (``weight_mask``) when it has one,
otherwise the positions where the weight is nonzero (a finalized or one-shot pruned model).
The adapter is a ``torch.nn.utils.parametrize`` parametrization of ``weight``, so the model
keeps its classes, ``state_dict`` keys follow torch's parametrization layout, and
:func:`merge_lora` folds it with ``remove_parametrizations``.

    add_lora(model, rank=8, alpha=16)                 # freezes the base model
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-3)
    ...train...
    merge_lora(model)                                 # plain model, the same zeros
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError, LayerError, check_number
from .utils import check_module
from .masking import MASK_SUFFIX, MaskedLayer, Targets
from .results import LegacyMapping, Result
from .transaction import transaction

__all__ = ["MaskedLoRA", "LoRALayer", "LoRAResult", "add_lora", "lora_parameters", "lora_layers", "merge_lora"]


class MaskedLoRA(nn.Module):
    """Parametrization ``weight -> weight + scale * M ⊙ (B A)`` of one layer (see the module docstring).

    Args:
        canonical_shape: the weight's shape in the ``[out, in, ...]`` layout.
        mask: bool mask in the canonical layout (``True`` = kept).
        rank: adapter rank ``r`` (>= 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        transposed: the stored weight is the canonical one transposed (HF ``Conv1D``).
    """

    def __init__(self, canonical_shape: tuple[int, ...], mask: torch.Tensor, rank: int, alpha: float,
                 transposed: bool = False, dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        fan_out, fan_in = canonical_shape[0], math.prod(canonical_shape[1:])
        self.canonical_shape = tuple(canonical_shape)
        self.transposed = transposed
        self.rank = rank
        self.scale = float(alpha) / rank
        self.A = nn.Parameter(torch.empty(rank, fan_in, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(fan_out, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("mask", mask.to(device=device, dtype=torch.bool).reshape(canonical_shape).clone())

    def delta(self) -> torch.Tensor:
        """The masked update ``scale * M ⊙ (B A)`` in the stored layout."""
        d = (self.B @ self.A).reshape(self.canonical_shape) * self.mask.to(self.A.dtype)
        d = d * self.scale
        return d.t() if self.transposed else d

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Adapted weight (what the layer uses in its forward)."""
        return weight + self.delta().to(weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def lora_layers(model: nn.Module) -> dict[str, MaskedLoRA]:
    """Qualified module name -> its :class:`MaskedLoRA`, for every adapted layer of ``model``."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, MaskedLoRA):
                    out[name] = p
    return out


@dataclass(frozen=True)
class LoRALayer:
    """One adapted layer: its module name and its adapter (``adapter.A``, ``adapter.B``, ``adapter.mask``)."""

    name: str
    adapter: MaskedLoRA


@dataclass(frozen=True, kw_only=True)
class LoRAResult(LegacyMapping, Result):
    """What :func:`add_lora` returns.

    Attributes:
        model: the model, adapters registered in place.
        layers: one :class:`LoRALayer` per adapted layer, in module order; :attr:`adapters` the
            adapters by module name.
        rank, alpha: the settings used.

    Reading it as the dict of old (``result["fc1"]``) still works for one release, with a
    ``DeprecationWarning``.
    """

    rank: int
    alpha: float

    _legacy_mapping = "adapters"

    @property
    def adapters(self) -> dict[str, MaskedLoRA]:
        """The adapters by module name (as in ``named_modules()``)."""
        return {layer.name: layer.adapter for layer in self.layers}

    def parameters(self) -> list[nn.Parameter]:
        """The ``A`` and ``B`` parameters of the adapters (what the optimizer trains)."""
        return [t for layer in self.layers for t in (layer.adapter.A, layer.adapter.B)]


def add_lora(model: nn.Module, *, rank: int = 8, alpha: float = 16.0, targets: Targets | dict | None = None,
             freeze_base: bool = True) -> LoRAResult:
    """Add a sparsity-preserving LoRA adapter to every target layer of ``model`` (in place).

    Args:
        model: a (usually pruned) model; its layers keep their classes.
        rank: adapter rank (default 8); at most ``min(fan_out, fan_in)`` of each layer.
        alpha: scaling numerator (default 16): the update is ``alpha / rank * M ⊙ (B A)``.
        targets: which layers (:class:`~sparseforge.masking.Targets` or a dict of its fields;
            default every Linear, Conv1d/2d/3d and HF ``Conv1D`` weight).
        freeze_base: set ``requires_grad=False`` on every parameter of the model that is not
            an adapter (default True, as in LoRA); the optimizer then takes
            :func:`lora_parameters`.

    Returns:
        a :class:`LoRAResult`: ``.model``, ``.layers`` (one :class:`LoRALayer` per adapted
        layer) and ``.adapters`` (the adapters by module name).

    Raises:
        ConfigError: bad ``rank``/``alpha``, a model that already has adapters, or targets
            that match nothing.
        LayerError: a layer whose rank is too large, or a masked layer whose pruned weights
            are not zero (apply the masks first).
    """
    check_module(model)
    check_number(rank, "rank", integer=True, minimum=1)
    check_number(alpha, "alpha", minimum=0.0, min_open=True)
    existing = lora_layers(model)
    if existing:
        raise ConfigError(f"model already has LoRA adapters on {sorted(existing)[:5]}; merge_lora() first")
    selection = Targets.from_spec(targets)
    layers = selection.select(model)
    plans: list[tuple[MaskedLayer, torch.Tensor]] = []
    for layer in layers:
        shape = layer.canonical_shape
        fan_out, fan_in = shape[0], math.prod(shape[1:])
        if rank > min(fan_out, fan_in):
            raise LayerError(f"{layer.qualname}: rank {rank} exceeds min(fan_out={fan_out}, fan_in={fan_in}) of this layer")
        w = layer.weight.detach()
        buf = layer.module._buffers.get(layer.param_name + MASK_SUFFIX)
        if buf is not None:
            if bool((w[~buf.to(torch.bool)] != 0).any()):
                raise LayerError(f"{layer.qualname}: weights outside its mask are not zero; apply the masks "
                                 "(Masking.apply() or finalize()) before adding LoRA")
            mask = buf.to(torch.bool)
        else:
            mask = w != 0
        plans.append((layer, layer.canonical(mask)))
    adapters = {}
    # all or nothing: a registration refused at the last layer removes the earlier adapters
    # and gives every parameter its requires_grad back
    with transaction(model, tensors="journal") as txn:
        txn.save(*(layer.weight for layer, _ in plans))  # registration re-seats the original weight
        if freeze_base:
            for p in model.parameters():
                p.requires_grad_(False)
        for layer, mask in plans:
            w = layer.weight
            p = MaskedLoRA(layer.canonical_shape, mask, rank, alpha, layer.transposed, dtype=w.dtype, device=w.device)
            parametrize.register_parametrization(layer.module, layer.param_name, p)
            adapters[layer.name] = p
    return LoRAResult(model=model, layers=[LoRALayer(n, a) for n, a in adapters.items()],
                      skipped=list(selection.skipped), rank=rank, alpha=float(alpha))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``A`` and ``B`` parameters of every adapter in ``model`` (what the optimizer trains)."""
    check_module(model)
    return [t for p in lora_layers(model).values() for t in (p.A, p.B)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W + scale * M ⊙ (B A)``) and remove it; returns ``model``.

    The merged weights are plain parameters that keep the base's ``requires_grad`` (``False``
    after ``add_lora(freeze_base=True)``: call ``requires_grad_(True)`` to train the model
    further). Pruned positions stay exactly zero.
    """
    check_module(model)
    adapted = lora_layers(model)
    if not adapted:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapters to merge (add_lora() adds them)")
    modules = dict(model.named_modules())
    with transaction(model, tensors="journal") as txn:  # all or nothing (adapters back on failure)
        for name in adapted:
            module = modules[name]
            txn.save(module.parametrizations.weight.original)  # the merge writes into it
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
