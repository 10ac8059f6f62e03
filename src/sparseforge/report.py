"""Per-layer sparsity, parameter and FLOP report of a model or a checkpoint.

Everything is computed from the masks (``<param>_mask`` buffers, ``True`` = kept), never from
the weight values, so a weight that happens to be exactly zero does not count as pruned. The
values are only used for a health check: ``mask_violations`` counts pruned positions whose
weight is nonzero, which must be 0 for a model whose masks are enforced.

FLOPs are ``2 x`` the multiply-adds of the weight products only (no bias, activation, norm or
attention score products), per sample. They come from one forward pass on ``example_input``
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

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .utils import probe
from .errors import CheckpointError, ConfigError, LayerError
from .fileio import atomic_write_text, load_safetensors, load_torch, read_json
from .masking import MASK_SUFFIX, MaskedLayer, find_masked_layers, full_tensor, is_hf_conv1d

__all__ = [
    "LayerReport",
    "Report",
    "sparsity_report",
    "report_from_state_dict",
    "report_for_path",
    "MODES",
]

MODES: tuple[str, ...] = ("simulated", "materialized")

_MODE_LABELS = {
    "simulated": "simulated (zeros stored in dense tensors)",
    "materialized": "materialized (the artefact stores and computes fewer weights)",
}

_FORMAT = "sparseforge-report-v1"
_TRAINING_CHECKPOINT_FORMAT = "sparseforge-checkpoint-v1"

# Layer types that always get a row (dense if unmasked) so FLOP totals cover the whole model.
_CONV_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}; got {mode!r}")
    return mode


# --------------------------------------------------------------------------------- data
@dataclass
class LayerReport:
    """One row of a :class:`Report`: one weight tensor.

    Attributes:
        name: qualified parameter name as in ``state_dict`` (``"features.0.weight"``).
        module_type: class name of the owning module (``None`` when read from a bare state_dict).
        shape: stored shape (HF ``Conv1D`` keeps ``[in, out]``).
        sparsity: fraction of pruned positions according to the mask (0 for unmasked rows).
        nonzeros: kept positions according to the mask (all elements for unmasked rows).
        params: elements of the tensor.
        dense_flops / sparse_flops: FLOPs per sample (2 x weight multiply-adds) without / with
            the mask; ``None`` when unknown.
        mask_violations: pruned positions that hold a nonzero value (0 when healthy).
        masked: whether the tensor has a mask (or, for a materialized layer, a sparse structure).
        storage: ``"simulated"`` (zeros inside a dense tensor) or ``"materialized (<kernel>)"``
            for a layer that stores and multiplies only its kept weights.
    """

    name: str
    module_type: str | None
    shape: tuple[int, ...]
    sparsity: float
    nonzeros: int
    params: int
    dense_flops: int | float | None = None
    sparse_flops: int | float | None = None
    mask_violations: int = 0
    masked: bool = True
    storage: str = "simulated"

    @property
    def density(self) -> float:
        """``1 - sparsity``."""
        return 1.0 - self.sparsity


@dataclass
class Report:
    """A sparsity report: per-layer rows, whole-model totals and the kind of sparsity measured.

    ``totals`` keys: ``total_params`` (every parameter of the model), ``prunable_params``
    (masked elements), ``nonzeros`` (kept masked elements + every unmasked parameter),
    ``global_sparsity`` (over masked elements), ``overall_sparsity`` (over all parameters),
    ``dense_flops`` / ``sparse_flops`` (per sample, ``None`` if any row's FLOPs are unknown),
    ``flops_unknown`` (names of the rows without FLOPs), ``masked_layers``,
    ``mask_violations`` (sum over rows) and ``skipped`` (``"key: reason"`` for checkpoint
    entries that look like masks but could not be reported).
    """

    layers: list[LayerReport]
    totals: dict[str, Any]
    mode: str = "simulated"

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> LayerReport:
        """The row whose parameter name (or module name) is ``name``."""
        for row in self.layers:
            if row.name == name or row.name.rpartition(".")[0] == name:
                return row
        raise ConfigError(f"no layer named {name!r} in the report; layers: {[r.name for r in self.layers][:10]}")

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (shapes become lists)."""
        layers = []
        for row in self.layers:
            d = asdict(row)
            d["shape"] = list(row.shape)
            layers.append(d)
        totals = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.totals.items()}
        return {"format": _FORMAT, "mode": self.mode, "layers": layers, "totals": totals}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping) or "layers" not in d or "totals" not in d:
            raise ConfigError("a report dict needs the keys 'layers', 'totals' and 'mode'")
        fmt = d.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ConfigError(f"report format must be {_FORMAT!r}; got {fmt!r}")
        known = {f.name for f in fields(LayerReport)}
        rows = []
        if not isinstance(d["layers"], list) or not isinstance(d["totals"], Mapping):
            raise ConfigError("a report dict's 'layers' must be a list and its 'totals' a mapping")
        for i, ld in enumerate(d["layers"]):
            if not isinstance(ld, Mapping):
                raise ConfigError(f"report layer {i} must be a mapping; got {type(ld).__name__}")
            unknown = set(ld) - known
            missing = {"name", "module_type", "shape", "sparsity", "nonzeros", "params"} - set(ld)
            if unknown or missing:
                raise ConfigError(f"report layer {i}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
            try:
                rows.append(LayerReport(**{**ld, "shape": tuple(ld["shape"])}))
            except TypeError as e:
                raise ConfigError(f"report layer {i} ({ld.get('name')!r}) has a malformed value: {e}") from None
        return cls(layers=rows, totals=dict(d["totals"]), mode=d.get("mode", "simulated"))

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
        """Return the report as JSON; if ``path`` is given also write it there (atomically)."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "Report":
        """Read a report written by :meth:`to_json` (a path, or the JSON text itself)."""
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(path_or_text))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"report JSON text is not valid JSON: {e}") from None
        return cls.from_dict(read_json(path_or_text, what="sparseforge report (report.json)"))

    # ------------------------------------------------------------------ rendering
    def table(self) -> str:
        """An aligned plain-text table, a totals line and the line naming the kind of sparsity."""
        header = ["layer", "shape", "sparsity %", "nonzeros", "params", "dense FLOPs", "sparse FLOPs"]
        show_storage = any(r.storage != "simulated" for r in self.layers)
        rows = [
            [
                r.name,
                "x".join(str(s) for s in r.shape),
                f"{100 * r.sparsity:.2f}" if r.masked else "dense",
                _human(r.nonzeros),
                _human(r.params),
                _human(r.dense_flops),
                _human(r.sparse_flops),
            ] + ([r.storage] if show_storage else [])
            for r in self.layers
        ]
        if show_storage:
            header.append("storage")
        widths = [max(len(x) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
        left = {0, 1, len(header) - 1} if show_storage else {0, 1}

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
        if not rows:
            lines.append("(no Linear, Conv or masked layers)")
        t = self.totals
        lines.append("")
        lines.append(
            f"total: params {_human(t.get('total_params'))}, prunable {_human(t.get('prunable_params'))}, "
            f"nonzeros {_human(t.get('nonzeros'))}, global sparsity {_pct(t.get('global_sparsity'))} "
            f"(masked params), overall sparsity {_pct(t.get('overall_sparsity'))} (all params), "
            f"FLOPs/sample dense {_human(t.get('dense_flops'))} -> sparse {_human(t.get('sparse_flops'))}"
        )
        unknown = t.get("flops_unknown") or []
        if unknown and all(r.module_type is None for r in self.layers):
            lines.append("FLOPs unknown: read from a checkpoint without its model (no layer types or input shapes)")
        elif unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            lines.append(
                f"FLOPs unknown for {shown} (no example_input for a conv, or the module's forward never ran: "
                "e.g. MultiheadAttention calls out_proj through F.linear)"
            )
        for item in t.get("skipped") or []:
            lines.append(f"skipped {item}")
        for item in t.get("notes") or []:
            lines.append(f"note: {item}")
        bad = [r for r in self.layers if r.mask_violations]
        for r in bad:
            lines.append(f"WARNING: {r.name} has {r.mask_violations} pruned position(s) holding nonzero values (masks not applied?)")
        n_mat = sum(r.storage != "simulated" for r in self.layers)
        if n_mat and self.mode == "simulated":
            lines.append(f"sparsity: {n_mat} of {len(self.layers)} layer(s) materialized (storage column); "
                         f"the others {_MODE_LABELS['simulated']}")
        else:
            lines.append(f"sparsity: {_MODE_LABELS[self.mode]}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _human(x: int | float | None) -> str:
    """``1234567 -> '1.2M'``; small numbers stay exact; ``None -> '-'``."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if abs(x) < 1000:
        return str(int(x)) if float(x).is_integer() else f"{x:.1f}"
    v = float(x)
    for suffix in ("K", "M", "G", "T", "P"):
        v /= 1000.0
        # 999_960 rounds to "1000.0K"; move on to the next unit instead
        if abs(round(v, 1)) < 1000 or suffix == "P":
            return f"{v:.1f}{suffix}"
    return str(x)  # pragma: no cover


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


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


def _count_positions(model: nn.Module, modules: list[nn.Module], example_input: Any) -> tuple[dict[int, int], int]:
    """Run one forward pass; return output positions per module id (summed over calls) and the batch size."""
    first = _first_tensor(example_input)
    if first is None:
        raise ConfigError(f"example_input must be a tensor, a tuple/list of tensors or a dict of tensors; got {type(example_input).__name__}")
    batch = int(first.shape[0]) if first.dim() >= 1 else 1
    if batch < 1:
        raise ConfigError(f"example_input has batch size {batch} (dim 0 of its first tensor); need at least 1")
    param = next(model.parameters(), None)
    example_input = _to_device(example_input, param.device if param is not None else None)

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
    probe(model, example_input, [m.register_forward_hook(hook) for m in modules])
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
def sparsity_report(model: nn.Module, example_input: Any = None, *, mode: str = "simulated",
                    skipped: Sequence[tuple[str, str]] = (), notes: Sequence[str] = (),
                    forward_masked: bool = False) -> Report:
    """Per-layer sparsity, parameters and FLOPs of ``model``, computed from its masks.

    Args:
        model: any ``nn.Module``; masked parameters are found by their ``<param>_mask`` buffers.
            Unmasked ``Linear``, ``Conv1d/2d/3d`` and HF ``Conv1D`` weights get dense rows so
            that the FLOP totals cover the whole model.
        example_input: a tensor, a tuple/list of tensors (positional arguments) or a dict
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
    if example_input is not None:
        flop_modules = list({id(m): m for _, m, p, _, _ in entries if _flop_module(m, p)}.values())
        positions, batch = _count_positions(model, flop_modules, example_input)

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


def _compressed_header(path: Path) -> bool:
    """True if ``path`` is a safetensors file written by :func:`sparseforge.export.save_compressed`."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return "sparseforge.format" in (f.metadata() or {})
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # unreadable: the plain loader below reports it
        return False


def _load_state_dict_file(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        return load_safetensors(path, what="state_dict")
    obj = load_torch(path, what="checkpoint or state_dict")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state_dict or training checkpoint")
    if obj.get("format") == _TRAINING_CHECKPOINT_FORMAT:
        return obj["model"]
    for key in ("model", "state_dict", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(torch.is_tensor(v) for v in inner.values()):
            return inner
    if not any(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{str(path)!r} holds no tensors (keys: {list(obj)[:10]})")
    return obj


def _same_masks(a: Report, b: Report) -> bool:
    key = lambda r: [(x.name, tuple(x.shape), x.nonzeros) for x in r.layers if x.masked]  # noqa: E731
    return key(a) == key(b)


def report_for_path(path: str | os.PathLike) -> Report:
    """Report of a run folder, a training checkpoint, a ``state_dict`` file or a saved report.

    * a run folder: its ``checkpoint.pt``; if the folder's ``report.json`` (written with the
      model, so it has FLOPs and dense rows) has exactly the same masks, that richer report is
      returned, with mask violations re-checked on the checkpoint's weights;
    * ``*.json``: a report written by :meth:`Report.to_json`;
    * a compressed checkpoint (``.safetensors`` from :func:`sparseforge.export.save_compressed`):
      decoded and validated, reported with mode ``"materialized"`` and a note with the file size
      against the dense tensors (``totals["file_bytes"]``, ``totals["dense_bytes"]``);
    * anything else: a training checkpoint or a plain ``state_dict`` (``torch.save`` or
      ``.safetensors``), reported by :func:`report_from_state_dict` (FLOPs unknown).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file or folder: {str(path)!r}")
    if path.is_dir():
        ckpt, saved_json = path / "checkpoint.pt", path / "report.json"
        if not ckpt.exists():
            if saved_json.exists():
                return Report.from_json(saved_json)
            raise CheckpointError(f"{str(path)!r} has neither checkpoint.pt nor report.json; is it a run folder?")
        fresh = report_from_state_dict(_load_state_dict_file(ckpt))
        if saved_json.exists():
            saved = Report.from_json(saved_json)
            if _same_masks(saved, fresh):
                violations = {r.name: r.mask_violations for r in fresh.layers}
                for r in saved.layers:
                    if r.masked:
                        r.mask_violations = violations[r.name]
                saved.totals["mask_violations"] = sum(r.mask_violations for r in saved.layers)
                return saved
        return fresh
    if path.suffix == ".json":
        return Report.from_json(path)
    if path.suffix == ".safetensors" and _compressed_header(path):
        # export sits above report in the layering; import it only for this file type
        from .export.compressed import compressed_size_report, load_compressed_state_dict

        rep = report_from_state_dict(load_compressed_state_dict(path), mode="materialized")
        size = compressed_size_report(None, path)
        rep.totals["notes"] = [
            f"compressed checkpoint: {size['file_bytes']} bytes on disk vs {size['dense_bytes']} bytes of dense "
            f"tensors ({100 * size['ratio']:.1f} %)"
        ]
        rep.totals["file_bytes"], rep.totals["dense_bytes"] = size["file_bytes"], size["dense_bytes"]
        return rep
    return report_from_state_dict(_load_state_dict_file(path))
