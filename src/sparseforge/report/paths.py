"""Reports of what lies on disk: a run folder, a training checkpoint, a ``state_dict`` file, a saved report
or a compressed checkpoint (:func:`report_for_path`, the back end of ``sparseforge report PATH``).

Reading a compressed checkpoint needs :mod:`sparseforge.export`, which sits below the report in
the layering; the data model and the counting (:mod:`.model`, :mod:`.counting`) do not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..fileio import load_safetensors, load_torch
from .counting import report_from_state_dict
from .model import Report

__all__ = ["report_for_path"]

_TRAINING_CHECKPOINT_FORMAT = "sparseforge-checkpoint-v1"


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
        # imported only for this file type: decoding pulls in the export package
        from ..export.compressed import compressed_size_report, load_compressed_state_dict

        rep = report_from_state_dict(load_compressed_state_dict(path), mode="materialized")
        size = compressed_size_report(None, path)
        rep.totals["notes"] = [
            f"compressed checkpoint: {size['file_bytes']} bytes on disk vs {size['dense_bytes']} bytes of dense "
            f"tensors ({100 * size['ratio']:.1f} %)"
        ]
        rep.totals["file_bytes"], rep.totals["dense_bytes"] = size["file_bytes"], size["dense_bytes"]
        return rep
    return report_from_state_dict(_load_state_dict_file(path))
