"""Physical shrinking, the group-zeroed reference model, and a save format without pickling.

* :func:`zero_groups` returns a copy of the model in which the removed groups are zero. Layers
  that normalise over channels (LayerNorm, RMSNorm) compute their statistics over the kept
  channels only in that copy: with zeros inside, their mean and variance would differ from
  the shrunk model's, so this is the only definition under which "zeroed" and "shrunk" can
  agree exactly. Everything else is plain zeros.
* :func:`shrink` returns a copy with smaller tensors and updated size attributes
  (``in_features``, ``groups``, ``num_heads`` ...): a plain ``nn.Module`` of the same classes.
* :func:`save_structured` writes ``model.safetensors`` (weights) and ``structure.json`` (for
  every shrunk tensor dimension: original size and kept indices). :func:`load_structured`
  builds the original architecture with a user-supplied factory, shrinks it the same way and
  loads the weights: no class is pickled.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, LayerError
from ..utils import check_module
from ..fileio import atomic_dir, atomic_save_safetensors, load_safetensors, read_json
from .graph import DependencyGraph, slab_dims
from .trace import ELEMENTS
from .rules import find_rule

__all__ = ["kept_indices", "zero_groups", "shrink", "save_structured", "load_structured", "FORMAT"]

FORMAT = "sparseforge-structured-v1"

# (tensor name or "module::virtual", dim) -> (original size, kept indices)
Kept = dict[tuple[str, int], tuple[int, torch.Tensor]]


def kept_indices(graph: DependencyGraph, removed: Iterable[int]) -> Kept:
    """For every tensor dimension touched by a removed group: its original size and kept indices."""
    drop: dict[tuple[str, int], set[int]] = {}
    sizes: dict[tuple[str, int], int] = {}
    for gi in removed:
        for sp, ix in graph.groups[gi].slots:
            drop.setdefault((sp.key, sp.dim), set()).update(ix)
            sizes[(sp.key, sp.dim)] = sp.size
    # per-element slots of directly used parameters become whole slices per dimension
    shapes = {n: tuple(p.shape) for n, p in graph.model.named_parameters(remove_duplicate=False)}
    for (name, dim) in [k for k in drop if k[1] == ELEMENTS]:
        slabs = slab_dims(shapes[name], drop.pop((name, dim)))
        if slabs is None:
            raise LayerError(f"parameter {name}: the removed elements are not whole slices; it cannot shrink")
        for d, idx in slabs.items():
            drop.setdefault((name, d), set()).update(idx)
            sizes[(name, d)] = shapes[name][d]
    out: Kept = {}
    for key, d in drop.items():
        n = sizes[key]
        out[key] = (n, torch.tensor([i for i in range(n) if i not in d], dtype=torch.long))
    return out


def _owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str, bool]]]:
    """Canonical tensor name -> every (module, attribute, is_parameter) holding that tensor.

    The canonical name is the first one in ``named_parameters``/``named_buffers`` order, as
    the tracer uses, so tied parameters have one entry with several owners.
    """
    canon: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        canon.setdefault(id(p), n)
    for n, b in model.named_buffers(remove_duplicate=False):
        canon.setdefault(id(b), n)
    owners: dict[str, list[tuple[nn.Module, str, bool]]] = {}
    for m in model.modules():
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(canon[id(p)], []).append((m, pname, True))
        for bname, b in m.named_buffers(recurse=False):
            owners.setdefault(canon[id(b)], []).append((m, bname, False))
    return owners


def _check_kept(model: nn.Module, kept: Kept, owners: Mapping[str, Any]) -> None:
    mods = dict(model.named_modules())
    for (key, dim), (n, idx) in kept.items():
        if "::" in key:
            if key.split("::")[0] not in mods:
                raise CheckpointError(f"structure names layer {key.split('::')[0]!r}, which the model does not have")
            continue
        if key not in owners:
            raise CheckpointError(f"structure names tensor {key!r}, which the model does not have")
        m, attr, _ = owners[key][0]
        t = getattr(m, attr)
        if dim >= t.dim() or t.size(dim) != n:
            raise CheckpointError(f"tensor {key!r} has shape {tuple(t.shape)}; the structure expects size {n} in dim {dim}")


def _apply(model: nn.Module, kept: Kept, *, zero: bool) -> None:
    owners = _owners(model)
    _check_kept(model, kept, owners)
    per_tensor: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (key, dim), (_, idx) in kept.items():
        if "::" not in key:
            per_tensor.setdefault(key, []).append((dim, idx))
    replaced: set[int] = set()
    with torch.no_grad():
        for key, dims in per_tensor.items():
            m0, a0, is_param = owners[key][0]
            t = getattr(m0, a0)
            if zero:
                for dim, idx in dims:
                    mask = torch.ones(t.size(dim), dtype=torch.bool)
                    mask[idx] = False
                    shape = [1] * t.dim()
                    shape[dim] = t.size(dim)
                    t.masked_fill_(mask.reshape(shape).to(t.device), 0)
                continue
            new = t.detach()
            for dim, idx in dims:
                new = new.index_select(dim, idx.to(new.device))
            new = new.clone()
            new_t: torch.Tensor = nn.Parameter(new, requires_grad=t.requires_grad) if is_param else new
            replaced.add(id(new_t))
            for m, attr, _ in owners[key]:
                setattr(m, attr, new_t)
    if zero:
        return
    for mname, m in model.named_modules():
        rule = find_rule(m)
        if rule is None:
            continue
        prefix = f"{mname}::"
        sizes = {k[len(prefix):]: len(idx) for (k, _), (_, idx) in kept.items() if k.startswith(prefix)}
        mine = {id(t) for t in list(m.parameters()) + list(m.buffers())}
        if sizes or mine & replaced:
            rule.update(m, sizes)


def shrink(model: nn.Module, kept: Kept) -> nn.Module:
    """A deep copy of ``model`` whose tensors keep only the ``kept`` indices, with sizes updated."""
    new = copy.deepcopy(model)
    _apply(new, kept, zero=False)
    return new


def _stats_norms(model: nn.Module, kept: Kept) -> list[tuple[str, nn.Module, int, torch.Tensor]]:
    out = []
    for name, m in model.named_modules():
        rule = find_rule(m)
        dim = rule.stats_dim_of(m) if rule is not None else None
        if dim is None:
            continue
        for (key, d), (_, idx) in kept.items():
            if key in (f"{name}.weight", f"{name}.bias", f"{name}::channels") and d == 0:
                out.append((name, m, dim, idx))
                break
    return out


def zero_groups(model: nn.Module, kept: Kept) -> nn.Module:
    """A deep copy of ``model`` with the removed groups set to zero (the reference of :func:`shrink`).

    LayerNorm/RMSNorm layers with removed channels normalise over the kept channels only and
    output zeros on the removed ones (see the module docstring).
    """
    new = copy.deepcopy(model)
    norms = _stats_norms(new, kept)
    _apply(new, kept, zero=True)
    for name, m, dim, idx in norms:
        sub_kept = {(k[len(name) + 1:] if not k.startswith(f"{name}::") else "::" + k.split("::", 1)[1], d): v
                    for (k, d), v in kept.items() if k.startswith(f"{name}.") or k.startswith(f"{name}::")}
        small = copy.deepcopy(m)
        _apply_local(small, sub_kept)

        def hook(mod, args, output, small=small, idx=idx, dim=dim):
            x = args[0]
            d = dim % x.dim()
            return torch.zeros_like(output).index_copy(d, idx.to(x.device), small(x.index_select(d, idx.to(x.device))))

        m.register_forward_hook(hook)
    return new


def _apply_local(m: nn.Module, kept: Kept) -> None:
    with torch.no_grad():
        for (key, dim), (_, idx) in kept.items():
            if key.startswith("::"):
                continue
            t = getattr(m, key)
            new = t.detach().index_select(dim, idx).clone()
            setattr(m, key, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new)
    rule = find_rule(m)
    sizes = {k[2:]: len(idx) for (k, _), (_, idx) in kept.items() if k.startswith("::")}
    rule.update(m, sizes)


# ------------------------------------------------------------------------------- save
def _is_structured_folder(d: Path) -> bool:
    return (d / "structure.json").is_file()


def _untied_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with each tied tensor once (under its first name); other shared storage copied."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    storages: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and ident in seen:
            continue  # the same tensor under a second name: load_structured restores the tie
        seen.add(ident)
        t = t.contiguous()
        if t.numel() and (t.untyped_storage().data_ptr() in storages
                          or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # safetensors refuses views of one storage
        storages.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_structured(model: nn.Module, kept: Kept, directory: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a shrunk ``model`` to ``directory``: ``model.safetensors`` + ``structure.json``.

    ``kept`` is what :func:`kept_indices` returned for the shrink that produced ``model``.
    Reload with :func:`load_structured` and a factory that builds the original (unpruned)
    architecture. ``directory`` must be new, empty, or an earlier :func:`save_structured`
    folder (replaced whole); the folder appears complete or not at all
    (:func:`~sparseforge.fileio.atomic_dir`), so a failure keeps the previous one. Returns it.

    Raises:
        ConfigError: ``model`` is not a module, ``kept`` is malformed, ``extra`` is not
            JSON-serialisable, or ``directory`` holds files of something else.
    """
    check_module(model)
    if not isinstance(kept, Mapping) or not all(
            isinstance(k, tuple) and len(k) == 2 and isinstance(v, tuple) and len(v) == 2 and torch.is_tensor(v[1])
            for k, v in kept.items()):
        raise ConfigError("kept must map (tensor name, dim) -> (original size, kept index tensor), as "
                          f"kept_indices() or StructuredPruner.kept return it; got {type(kept).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise ConfigError(f"extra must be a mapping or None; got {type(extra).__name__}")
    d = Path(directory)
    if d.is_file() or (d.is_dir() and any(d.iterdir()) and not _is_structured_folder(d)):
        raise ConfigError(f"directory {str(d)!r} exists and holds something other than a save_structured folder; "
                          "choose a new or empty folder (an earlier save_structured folder is replaced)")
    desc = {
        "format": FORMAT,
        "kept": [{"key": k, "dim": dim, "size": n, "kept": idx.tolist()} for (k, dim), (n, idx) in sorted(kept.items())],
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(desc, indent=1)  # before anything is written
    except (TypeError, ValueError) as e:
        raise ConfigError(f"extra must hold JSON values only: {e}") from None
    with atomic_dir(d) as tmp:
        atomic_save_safetensors(_untied_tensors(model), tmp / "model.safetensors")
        (tmp / "structure.json").write_text(text)
    return d


def read_structure(directory: str | os.PathLike) -> Kept:
    """Read ``structure.json`` from ``directory`` into the ``kept`` mapping."""
    p = Path(directory) / "structure.json"
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: not a directory written by save_structured")
    desc = read_json(p, what="structure description (structure.json)")
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise CheckpointError(f"{p}: format is {got!r}; expected {FORMAT!r}")
    entries = desc.get("kept")
    if not isinstance(entries, list):
        raise CheckpointError(f"{p}: 'kept' must be a list; the file is corrupt")
    out: Kept = {}
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("kept"), list)
              and all(isinstance(e.get(f), int) and not isinstance(e.get(f), bool) for f in ("dim", "size"))
              and all(isinstance(j, int) and not isinstance(j, bool) for j in e["kept"]))
        if not ok:
            raise CheckpointError(f"{p}: malformed 'kept' entry {i} ({str(e)[:120]}); the file is corrupt")
        idx, size = e["kept"], e["size"]
        # indices in range and strictly increasing: index_select must never see a foreign index
        if e["dim"] < 0 or size < 1 or any(not 0 <= j < size for j in idx) or any(a >= b for a, b in zip(idx, idx[1:])):
            raise CheckpointError(f"{p}: 'kept' entry {i} ({e['key']!r}) has indices outside [0, {size}) or out of "
                                  "order, or a negative dim; the file is corrupt")
        out[(e["key"], e["dim"])] = (size, torch.tensor(idx, dtype=torch.long))
    return out


def load_structured(directory: str | os.PathLike, factory: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save_structured`.

    ``factory()`` must return the original, unpruned architecture (any weights: they are
    replaced). Its tensors are shrunk as recorded, then the saved weights are loaded strictly.
    """
    if not callable(factory):
        raise ConfigError(f"factory must be a callable returning the unpruned model; got {factory!r}")
    kept = read_structure(directory)
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"factory() must return an nn.Module; got {type(model).__name__}")
    _apply(model, kept, zero=False)
    weights = Path(directory) / "model.safetensors"
    tensors = load_safetensors(weights, what="structured model weights")
    own = model.state_dict()
    present = {(v.data_ptr(), tuple(v.shape)) for k, v in own.items() if k in tensors}
    # tied tensors are saved once (save_model): a missing key is fine if its storage was loaded under another name
    missing = [k for k, v in own.items() if k not in tensors and (v.data_ptr(), tuple(v.shape)) not in present]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"saved weights do not match the rebuilt model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k, t in tensors.items() if tuple(t.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError(f"{str(weights)!r}: {wrong[0]!r} has shape {tuple(tensors[wrong[0]].shape)} but the rebuilt "
                              f"model expects {tuple(own[wrong[0]].shape)}; the file does not match structure.json")
    model.load_state_dict(tensors, strict=False)
    return model
