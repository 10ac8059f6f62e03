"""Counting a report from masks: :func:`sparsity_report` of a model, :func:`report_from_state_dict` of a checkpoint.

Everything is computed from the masks (``<param>_mask`` buffers, ``True`` = kept), never from
the weight values, so a weight that happens to be exactly zero does not count as pruned. The
values are only used for a health check: ``mask_violations`` counts pruned positions whose
weight is nonzero, which must be 0 for a model whose masks are enforced.

FLOPs are ``2 x`` the multiply-adds of the weight products only (no bias, activation, norm or
attention score products), per sample. They come from one forward pass on ``example_inputs``
that records how many output positions each layer produced:

* ``nn.Linear`` and Hugging Face ``Conv1D``: positions = output elements / out features (the
  tokens of a ``[B, T, F]`` input count, ``B * T`` of them), MACs = weight elements x positions.
* ``nn.Conv1d/2d/3d``: positions = output elements / out channels (batch x spatial), MACs =
  weight elements x positions (the weight already holds ``in_channels / groups``).
* sparse MACs = kept weights x positions.

Totals are divided by the batch size (dim 0 of the first input tensor). Without an example
input a ``Linear`` is assumed to run once per sample (per-token FLOPs) and a convolution's
FLOPs are unknown (``None``).

Every report states whether the sparsity is ``"simulated"`` (zeros stored inside dense
tensors, no memory or compute saved yet) or ``"materialized"`` (the caller states that the
artefact really has fewer bytes or operations). Layers swapped by
:func:`sparseforge.export.materialize` (they set ``sparseforge_materialized = True`` and
expose ``sparsity_stats()``) are recognised on their own: their rows say
``storage = "materialized (<kernel>)"`` whatever the report's mode, and the table gets a
``storage`` column.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..core.layout import is_hf_conv1d
from ..errors import CheckpointError, ConfigError, LayerError
from ..masking import MASK_SUFFIX, MaskedLayer, find_masked_layers, full_tensor
from ..results import Result, renamed_keywords
from ..utils import probe
from .model import LayerReport, Report, _check_mode

__all__ = ["sparsity_report", "report_from_state_dict"]

# Layer types that always get a row (dense if unmasked) so FLOP totals cover the whole model.
_CONV_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------- counting
def _bool_mask(mask: torch.Tensor, where: str) -> torch.Tensor:
    # masks are bool by contract; a 0/1 float mask (e.g. torch.nn.utils.prune) is accepted,
    # anything else is a broken mask and must not be silently thresholded
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_complex() and bool(((mask == 0) | (mask == 1)).all()):
        return mask != 0
    raise LayerError(f"{where}: mask must be bool (or hold only 0 and 1); got dtype {mask.dtype}")


@torch.no_grad()
def _mask_counts(weight: torch.Tensor, mask: torch.Tensor, where: str) -> tuple[int, int]:
    """``(kept, violations)`` for one weight and its mask."""
    if tuple(mask.shape) != tuple(weight.shape):
        raise LayerError(f"{where}: mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    weight, mask = full_tensor(weight), full_tensor(mask)  # FSDP2 shards: count the whole layer
    m = _bool_mask(mask, where)
    kept = int(m.sum())
    w = weight.detach()
    if w.layout != torch.strided:  # a materialized (CSR/BSR/COO) weight: compare densely
        w = w.to_dense()
    violations = int(((w != 0) & ~m.to(w.device)).sum())
    return kept, violations


def _sparsity(kept: int, numel: int) -> float:
    return (numel - kept) / numel if numel else 0.0


def _is_materialized(module: nn.Module) -> bool:
    return bool(getattr(module, "sparseforge_materialized", False)) and hasattr(module, "sparsity_stats")


def _out_features(module: nn.Module) -> int | None:
    """Size of the output dimension whose elements count as one position each, or None if unsupported."""
    if _is_materialized(module):
        return int(module.sparsity_stats()[0][0])
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_hf_conv1d(module):
        return int(module.nf)
    if isinstance(module, _CONV_TYPES):
        return module.out_channels
    return None


def _flop_module(module: nn.Module, param_name: str) -> bool:
    return param_name == "weight" and _out_features(module) is not None


def _to_device(x: Any, device: torch.device | None) -> Any:
    if device is None:
        return x
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _first_tensor(x: Any) -> torch.Tensor | None:
    if torch.is_tensor(x):
        return x
    vals = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    for v in vals:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def _count_positions(model: nn.Module, modules: list[nn.Module], example_inputs: Any) -> tuple[dict[int, int], int]:
    """Run one forward pass; return output positions per module id (summed over calls) and the batch size."""
    first = _first_tensor(example_inputs)
    if first is None:
        raise ConfigError(f"example_inputs must be a tensor, a tuple/list of tensors or a dict of tensors; got {type(example_inputs).__name__}")
    batch = int(first.shape[0]) if first.dim() >= 1 else 1
    if batch < 1:
        raise ConfigError(f"example_inputs has batch size {batch} (dim 0 of its first tensor); need at least 1")
    param = next(model.parameters(), None)
    example_inputs = _to_device(example_inputs, param.device if param is not None else None)

    positions: dict[int, int] = {}
    unsupported: set[int] = set()

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        key = id(module)
        if not torch.is_tensor(output):
            unsupported.add(key)  # a subclass returning something else: we cannot count it
            return
        positions[key] = positions.get(key, 0) + output.numel() // _out_features(module)

    # the report must not change the model: eval() keeps BatchNorm statistics and dropout
    # untouched, and each submodule gets its own mode back (models can mix train/eval parts)
    probe(model, example_inputs, [m.register_forward_hook(hook) for m in modules])
    for key in unsupported:
        positions.pop(key, None)
    return positions, batch


def _per_sample(macs_total: int, batch: int) -> int | float:
    flops = 2 * macs_total
    return flops // batch if flops % batch == 0 else flops / batch


def _totals(rows: list[LayerReport], total_params: int, flopless: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    masked = [r for r in rows if r.masked]
    prunable = sum(r.params for r in masked)
    kept = sum(r.nonzeros for r in masked)
    # every parameter without a mask counts as nonzero: reports read masks, not values
    nonzeros = kept + (total_params - prunable)
    unknown = [r.name for r in rows if (r.dense_flops is None or r.sparse_flops is None) and r.name not in flopless]
    counted = [r for r in rows if r.name not in flopless]
    return {
        "total_params": total_params,
        "prunable_params": prunable,
        "nonzeros": nonzeros,
        "global_sparsity": _sparsity(kept, prunable),
        "overall_sparsity": _sparsity(nonzeros, total_params),
        "dense_flops": None if unknown else sum(r.dense_flops for r in counted),  # type: ignore[misc]
        "sparse_flops": None if unknown else sum(r.sparse_flops for r in counted),  # type: ignore[misc]
        "flops_unknown": unknown,
        "masked_layers": len(masked),
        "mask_violations": sum(r.mask_violations for r in rows),
        "skipped": [],
    }


# --------------------------------------------------------------------------------- public API
@renamed_keywords(example_input="example_inputs")
def sparsity_report(model: nn.Module | Result, example_inputs: Any = None, *, mode: str = "simulated",
                    skipped: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (),
                    forward_masked: bool = False) -> Report:
    """Per-layer sparsity, parameters and FLOPs of ``model``, computed from its masks.

    Args:
        model: any ``nn.Module``; masked parameters are found by their ``<param>_mask`` buffers.
            Unmasked ``Linear``, ``Conv1d/2d/3d`` and HF ``Conv1D`` weights get dense rows so
            that the FLOP totals cover the whole model. Or a verb's :class:`~sparseforge.Result`
            (``sparsity_report(sf.prune_nm(model))``): its ``.model`` is measured and its
            ``.skipped`` layers are listed (after any ``skipped`` given).
        example_inputs: a tensor, a tuple/list of tensors (positional arguments) or a dict
            (keyword arguments) for one forward pass that measures FLOPs; dim 0 of the first
            tensor is the batch. The pass runs in eval mode under ``no_grad``; every module's
            training flag is restored afterwards and the hooks are removed, even on error.
            Without it, ``Linear`` rows count one position per sample and conv rows are unknown.
        mode: ``"simulated"`` (zeros inside dense tensors) or ``"materialized"`` (the caller
            states the artefact really stores and computes fewer weights).
        skipped: ``(layer, reason)`` pairs of layers a method left dense (listed in the report).
        notes: extra lines for the report (e.g. per-layer policies such as N:M padding).
        forward_masked: the weights stay dense and the forward pass applies the masks (N:M
            training with a straight-through estimator), so nonzeros at pruned positions are
            expected and not reported as violations.

    Returns:
        a :class:`Report`; ``report.table()`` renders it, ``report.to_json(path)`` saves it.
    """
    if isinstance(model, Result):
        skipped = [*skipped, *model.skipped]
        model = model.model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module or a sparseforge Result; got {type(model).__name__}")
    mode = _check_mode(mode)
    masked_by_module: dict[int, list[MaskedLayer]] = {}
    for ml in find_masked_layers(model):
        masked_by_module.setdefault(id(ml.module), []).append(ml)

    # (qualname, module, param_name, weight, masked layer or None), in module order
    entries: list[tuple[str, nn.Module, str, torch.Tensor, MaskedLayer | None]] = []
    for name, module in model.named_modules():
        if _is_materialized(module):
            entries.append((f"{name}.weight" if name else "weight", module, "weight", None, None))
            continue
        mls = masked_by_module.get(id(module), [])
        for ml in mls:
            entries.append((ml.qualname, module, ml.param_name, ml.weight, ml))
        weight = getattr(module, "weight", None)
        if _out_features(module) is not None and isinstance(weight, torch.Tensor) and not any(ml.param_name == "weight" for ml in mls):
            entries.append((f"{name}.weight" if name else "weight", module, "weight", weight, None))

    positions: dict[int, int] | None = None
    batch = 1
    if example_inputs is not None:
        flop_modules = list({id(m): m for _, m, p, _, _ in entries if _flop_module(m, p)}.values())
        positions, batch = _count_positions(model, flop_modules, example_inputs)

    rows = []
    materialized_params = 0
    for qualname, module, pname, weight, ml in entries:
        storage = "simulated"
        if weight is None:  # a materialized layer: its structure is its mask
            wshape, kept = module.sparsity_stats()
            numel = math.prod(wshape)
            violations = 0
            storage = f"materialized ({getattr(module, 'kernel', 'sparse')})"
            bias = getattr(module, "bias", None)
            materialized_params += numel + (bias.numel() if torch.is_tensor(bias) else 0)
        elif ml is not None:
            wshape, numel = tuple(weight.shape), weight.numel()
            kept, violations = _mask_counts(weight, ml.mask, qualname)
            violations = 0 if forward_masked else violations
        else:
            wshape, numel = tuple(weight.shape), weight.numel()
            kept, violations = numel, 0
        dense = sparse = None
        if _flop_module(module, pname):
            if positions is not None:
                # a module whose forward never ran (e.g. MultiheadAttention.out_proj, which is
                # used through F.linear) is unknown rather than free
                pos = positions.get(id(module))
            else:
                linear_like = isinstance(module, nn.Linear) or is_hf_conv1d(module) or (
                    _is_materialized(module) and len(module.sparsity_stats()[0]) == 2)
                pos = 1 if linear_like else None
            if pos is not None:
                dense, sparse = _per_sample(numel * pos, batch), _per_sample(kept * pos, batch)
        rows.append(
            LayerReport(
                name=qualname,
                module_type=type(module).__name__,
                shape=wshape,
                sparsity=_sparsity(kept, numel),
                nonzeros=kept,
                params=numel,
                dense_flops=dense,
                sparse_flops=sparse,
                mask_violations=violations,
                masked=ml is not None or weight is None,
                storage=storage,
            )
        )
    # materialized layers hold their weights in buffers: count them as the parameters they were
    total_params = sum(p.numel() for p in model.parameters()) + materialized_params
    # a masked bias (or other non-weight parameter) has no FLOPs of its own (FLOPs count the
    # weights' multiply-adds, as for every unmasked bias): not applicable rather than unknown
    flopless = {q for q, _, p, _, ml in entries if ml is not None and p != "weight"}
    totals = _totals(rows, total_params, flopless)
    totals["skipped"] = [f"{name}: {reason}" for name, reason in skipped]
    totals["notes"] = list(notes) + (["weights stay dense; the forward pass applies the masks"] if forward_masked else [])
    return Report(layers=rows, totals=totals, mode=mode)


# Buffers that are not parameters but look like them in a bare state_dict.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def report_from_state_dict(state_dict: Mapping[str, Any], *, mode: str = "simulated") -> Report:
    """A report of a checkpoint without its model class: one row per ``*_mask`` key, FLOPs ``None``.

    The weight of mask ``"a.b.weight_mask"`` is ``"a.b.weight"``; for checkpoints of
    ``torch.nn.utils.prune`` (``weight_orig`` + float 0/1 ``weight_mask``) the weight is
    ``weight_orig * weight_mask``. Without the model, ``total_params`` counts every
    floating-point tensor that is neither a mask nor a BatchNorm running statistic (a bare
    state_dict cannot tell parameters from other float buffers).
    """
    mode = _check_mode(mode)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"state_dict must be a mapping of names to tensors; got {type(state_dict).__name__}")
    rows = []
    skipped: list[str] = []
    for key, mask in state_dict.items():
        if not (isinstance(key, str) and key.endswith(MASK_SUFFIX) and torch.is_tensor(mask)):
            continue
        wkey = key[: -len(MASK_SUFFIX)]
        weight = state_dict.get(wkey)
        if not torch.is_tensor(weight) and torch.is_tensor(state_dict.get(wkey + "_orig")):
            orig = state_dict[wkey + "_orig"]
            weight = orig * _bool_mask(mask, key).to(orig.dtype) if mask.shape == orig.shape else orig
        if not torch.is_tensor(weight):
            # some models keep unrelated persistent buffers named ``*_mask`` (attention masks)
            skipped.append(f"{key}: no tensor {wkey!r} to go with it")
            continue
        kept, violations = _mask_counts(weight, mask, wkey)
        rows.append(
            LayerReport(
                name=wkey,
                module_type=None,
                shape=tuple(weight.shape),
                sparsity=_sparsity(kept, weight.numel()),
                nonzeros=kept,
                params=weight.numel(),
                mask_violations=violations,
                masked=True,
            )
        )
    total = 0
    for key, t in state_dict.items():
        if not torch.is_tensor(t) or not t.is_floating_point() or str(key).endswith(MASK_SUFFIX):
            continue
        if str(key).endswith(_BUFFER_SUFFIXES):
            continue
        total += t.numel()
    # ``weight_orig`` of prune-style checkpoints is counted above, so the masked elements are
    # always part of the total (keeps nonzeros <= total_params)
    total = max(total, sum(r.params for r in rows))
    totals = _totals(rows, total)
    totals["skipped"] = skipped
    return Report(layers=rows, totals=totals, mode=mode)
