"""The report's data model: :class:`LayerReport` rows, the :class:`Report`, its JSON form and its table.

Nothing here looks at a model or a file: :mod:`.counting` fills a report from a model or a
``state_dict``, :mod:`.paths` from a run folder or a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Mapping

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text, read_json
from ..tables import text_table

__all__ = ["LayerReport", "Report", "MODES"]

MODES: tuple[str, ...] = ("simulated", "materialized")

_MODE_LABELS = {
    "simulated": "simulated (zeros stored in dense tensors)",
    "materialized": "materialized (the artefact stores and computes fewer weights)",
}

_FORMAT = "sparseforge-report-v1"


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
        lines = text_table(header, rows, align="ll" + "r" * 5 + ("l" if show_storage else "")).splitlines()
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
                f"FLOPs unknown for {shown} (no example_inputs for a conv, or the module's forward never ran: "
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
