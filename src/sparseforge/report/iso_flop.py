"""Iso-FLOP check of a Sparse-IFT model: per-layer FLOPs of the dense model next to its transformed version.

It reads the transformed model's layers and budgets from :mod:`sparseforge.transforms` and counts
FLOPs with :func:`~sparseforge.report.sparsity_report` (``2 x`` weight multiply-adds per sample,
from the masks), so it sits in the report package, above the transforms it measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..results import Result, renamed_keywords
from ..tables import text_table
from ..transforms.sparse_ift import ift_budgets, ift_layers
from .counting import sparsity_report

__all__ = ["IsoFlopRow", "IsoFlopReport", "iso_flop_report"]


@dataclass
class IsoFlopRow:
    """One layer of the dense model next to what replaced it (FLOPs per sample)."""

    name: str
    kind: str
    dense_flops: float
    ift_flops: float
    dense_params: int
    ift_params: int
    ift_nonzeros: int

    @property
    def ratio(self) -> float:
        """``ift_flops / dense_flops``."""
        return self.ift_flops / self.dense_flops if self.dense_flops else float("nan")


@dataclass
class IsoFlopReport:
    """Dense vs transformed FLOPs side by side; :meth:`table` renders it."""

    rows: list[IsoFlopRow]
    source: str
    totals: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table (FLOPs = 2 x weight multiply-adds per sample)."""
        head = ["layer", "kind", "dense FLOPs", "IFT FLOPs", "ratio", "dense params", "IFT params", "IFT nonzeros"]
        body = [[r.name, r.kind, f"{r.dense_flops:,.0f}", f"{r.ift_flops:,.0f}", f"{r.ratio:.4f}", f"{r.dense_params:,}",
                 f"{r.ift_params:,}", f"{r.ift_nonzeros:,}"] for r in self.rows]
        t = self.totals
        body.append(["total", "", f"{t['dense_flops']:,.0f}", f"{t['ift_flops']:,.0f}", f"{t['ratio']:.4f}",
                     f"{int(t['dense_params']):,}", f"{int(t['ift_params']):,}", f"{int(t['ift_nonzeros']):,}"])
        return text_table(head, body, align="ll" + "r" * 6) + f"\nIFT FLOPs counted from {self.source}"

    def __str__(self) -> str:
        return self.table()


@renamed_keywords(example_input="example_inputs")
def iso_flop_report(dense_model: nn.Module, ift_model: nn.Module | Result, example_inputs: Any) -> IsoFlopReport:
    """Per-layer FLOPs of ``dense_model`` next to its Sparse-IFT version ``ift_model``.

    FLOPs of the transformed model are counted from the masks of its sparse parts (after
    :func:`ift_method` or any method built on :func:`ift_targets`). Before masks exist, the
    exact budgets (:func:`ift_budgets`) are used and :attr:`IsoFlopReport.source` says so. Rows
    are the dense model's Linear/Conv2d layers; a transformed layer's row sums its parts.
    BatchNorm and activation costs are not counted (the convention of :mod:`sparseforge.report`).
    """
    if isinstance(ift_model, Result):
        ift_model = ift_model.model
    dense = sparsity_report(dense_model, example_inputs)
    ift = sparsity_report(ift_model, example_inputs)
    layers = ift_layers(ift_model)
    budgets = ift_budgets(ift_model)
    masked = {r.name for r in ift if r.masked}
    missing = [n for n in budgets if f"{n}.weight" not in masked]
    source = "masks" if not missing else "exact budgets (no masks yet)"
    if missing and len(missing) != len(budgets):
        raise ConfigError(f"only some Sparse-IFT parts have masks (missing {missing[:3]}); build the method with "
                          "ift_method or ift_targets")
    ift_rows = {r.name.removesuffix(".weight"): r for r in ift}
    rows = []
    for d in dense:
        if d.dense_flops is None:
            raise ConfigError(f"FLOPs of {d.name} are unknown; pass example_inputs that run the model")
        name = d.name.removesuffix(".weight")
        if name in layers:
            parts = [(n, r) for n, r in ift_rows.items() if n.startswith(name + ".")]
            flops = 0.0
            nonzeros = 0
            for n, r in parts:
                if r.dense_flops is None:
                    raise ConfigError(f"FLOPs of {n} are unknown; pass example_inputs that run the model")
                if missing and n in budgets:
                    kept = budgets[n]
                    flops += r.dense_flops * kept / r.params
                    nonzeros += kept
                else:
                    flops += r.sparse_flops
                    nonzeros += r.nonzeros
            rows.append(IsoFlopRow(name, layers[name].kind, d.dense_flops, flops, d.params,
                                   sum(r.params for _, r in parts), nonzeros))
        else:
            r = ift_rows[name]
            rows.append(IsoFlopRow(name, "dense", d.dense_flops, r.sparse_flops, d.params, r.params, r.nonzeros))
    dsum = sum(r.dense_flops for r in rows)
    isum = sum(r.ift_flops for r in rows)
    totals = {"dense_flops": dsum, "ift_flops": isum, "ratio": isum / dsum if dsum else float("nan"),
              "dense_params": sum(r.dense_params for r in rows), "ift_params": sum(r.ift_params for r in rows),
              "ift_nonzeros": sum(r.ift_nonzeros for r in rows),
              "dense_model_params": sum(p.numel() for p in dense_model.parameters()),
              "ift_model_params": sum(p.numel() for p in ift_model.parameters())}
    return IsoFlopReport(rows, source, totals)
