"""Masks in and out of a model's state: apply, fold (:func:`finalize`), load a ``state_dict`` with masks."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import CheckpointError
from ..transaction import transaction
from .layers import MASK_SUFFIX, MaskedLayer, find_masked_layers

__all__ = ["apply_masks", "finalize", "load_masked_state_dict", "iter_parameters_with_masks"]


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Multiply every masked parameter of ``model`` by its mask (in place)."""
    for layer in find_masked_layers(model):
        layer.weight.mul_(layer.mask)


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """Fold the masks into the weights and remove them: a plain model with exact zeros.

    Returns ``model`` (modified in place). Any :class:`Masking` still attached to an
    optimizer should be detached first (``method.finalize()`` does both).
    """
    layers = find_masked_layers(model)
    with transaction(model, tensors="journal") as txn:  # all or nothing
        for layer in layers:
            txn.save(layer.weight)
            layer.weight.mul_(layer.mask)
            delattr(layer.module, layer.param_name + MASK_SUFFIX)
    return model


def load_masked_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> list[MaskedLayer]:
    """Load a ``state_dict`` that contains masks into a model that may not have them yet.

    Mask buffers named in ``state_dict`` are registered first (checking that each belongs to
    an existing parameter of the same shape), then the whole dict is loaded. Nothing is
    modified if a check fails.
    """
    modules = dict(model.named_modules())
    todo = []
    for key, value in state_dict.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        mod_name, _, bname = key.rpartition(".")
        pname = bname[: -len(MASK_SUFFIX)]
        module = modules.get(mod_name)
        param = getattr(module, pname, None) if module is not None else None
        if not isinstance(param, nn.Parameter):
            raise CheckpointError(f"checkpoint has mask {key!r} but the model has no parameter {mod_name}.{pname}")
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"mask {key!r} has shape {tuple(value.shape)} but parameter {mod_name}.{pname} has shape {tuple(param.shape)}"
            )
        if value.dtype != torch.bool:
            raise CheckpointError(f"mask {key!r} must be bool; got {value.dtype}")
        todo.append((module, bname, value))
    own_sd = model.state_dict()
    own = set(own_sd.keys())
    if strict:
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise CheckpointError(f"checkpoint is missing {len(missing)} key(s) of the model, e.g. {missing[:5]}")
    # check shapes (and, if strict, unexpected keys) up front: torch's load_state_dict copies
    # every matching tensor before it reports a mismatch, which would leave a half-loaded model
    for key, value in state_dict.items():
        if key.endswith(MASK_SUFFIX) and key not in own:
            continue  # a mask checked above, registered below
        if key in own_sd:
            ref = own_sd[key]
            if torch.is_tensor(value) and torch.is_tensor(ref) and tuple(value.shape) != tuple(ref.shape):
                raise CheckpointError(
                    f"checkpoint does not match the model: {key!r} has shape {tuple(value.shape)} "
                    f"but the model's has shape {tuple(ref.shape)}"
                )
        elif strict:
            raise CheckpointError(f"checkpoint does not match the model: unexpected key {key!r}")
    own_tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    # all or nothing: torch's load_state_dict copies tensor by tensor, so a late failure
    # (a dtype it cannot convert, say) must put back the tensors already copied
    with transaction(model, tensors="journal") as txn:
        txn.save(*(own_tensors[k] for k in state_dict if k in own_tensors))
        for module, bname, value in todo:
            if bname not in module._buffers:
                module.register_buffer(bname, torch.ones_like(value, dtype=torch.bool, device=getattr(module, bname[: -len(MASK_SUFFIX)]).device))
        try:
            model.load_state_dict(state_dict, strict=strict)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not match the model: {e}") from None
    return find_masked_layers(model)


def iter_parameters_with_masks(model: nn.Module) -> Iterable[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield ``(qualname, weight, mask)`` for every masked parameter."""
    for layer in find_masked_layers(model):
        yield layer.qualname, layer.weight, layer.mask
