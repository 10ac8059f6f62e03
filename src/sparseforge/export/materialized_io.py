"""Save and load materialized models as tensors plus a JSON description (no pickle).

A materialized model (:func:`~sparseforge.export.materialize`) holds :class:`SparseLinear` /
:class:`SparseConv2d` layers whose weights live in CSR/BSR buffers. :func:`save_materialized`
writes it into a folder::

    fast/
      model.safetensors   every tensor of the model's state_dict (sparse buffers, dense layers, masks)
      materialized.json   format version, per replaced layer its kind, kernel, dtype, block size,
                          shapes, buffer layout and decision, all decisions, and (optional) the
                          base architecture to rebuild

:func:`load_materialized` rebuilds the model: a dense base architecture (given by the caller, or
built from the description's ``base_model``, which ``sparseforge materialize`` records from the
run's recipe), its replaced layers swapped for empty sparse layers of the recorded kind and
storage, then every tensor loaded from the file. The reloaded layers use the same kernels and
the same index/value formats, so the reloaded model computes the same outputs at the same speed.
Nothing in the folder can run code: the tensors are safetensors, the description is JSON
whose values are checked (kinds, kernels, dtypes and model names from fixed lists), and the
sparse indices are range-checked before any kernel reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, LayerError
from ..utils import check_module
from ..fileio import atomic_dir, atomic_save_safetensors, load_safetensors, read_json
from ..masking import MASK_SUFFIX
from .autotune import MaterializeDecision
from .materialize import MaterializeResult
from .sparse_layers import KERNELS, SparseConv2d, SparseLinear, _SparseWeight

__all__ = ["MATERIALIZED_FORMAT", "save_materialized", "load_materialized", "read_materialized_description"]

#: the ``format`` field of ``materialized.json``
MATERIALIZED_FORMAT = "sparseforge-materialized-v1"
TENSORS_FILE = "model.safetensors"
DESCRIPTION_FILE = "materialized.json"
_KINDS: dict[str, type[_SparseWeight]] = {"SparseLinear": SparseLinear, "SparseConv2d": SparseConv2d}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_BUFFER_DTYPES = {"int16", "int32", "int64", "float32", "bfloat16"}


def _is_materialized_folder(path: Path) -> bool:
    return path.is_dir() and (path / DESCRIPTION_FILE).is_file()


def _check_out(path: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder, or (with ``overwrite``) a file or a materialized model."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    what = "a materialized model" if _is_materialized_folder(path) else ("a file" if path.is_file() else "a folder")
    if not overwrite:
        raise ConfigError(f"output {str(path)!r} already exists ({what}); choose a new path or pass overwrite=True "
                          "(--overwrite) to replace it")
    if path.is_dir() and not _is_materialized_folder(path):
        # replacing would delete files this function did not write (a run folder, a dataset ...)
        raise ConfigError(f"output {str(path)!r} is a non-empty folder that holds no materialized model; "
                          "overwrite only replaces a file or an earlier materialized model: choose another path")


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors with no shared storage (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model.state_dict().items():
        if not torch.is_tensor(v):
            raise ConfigError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor: cannot save it as tensors")
        if v.layout != torch.strided:
            raise ConfigError(f"state_dict entry {k!r} is a {v.layout} tensor; materialized layers keep plain buffers")
        t = v.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # tied or viewed tensors are stored as separate copies
        seen.add(ident)
        out[k] = t
    return out


def save_materialized(
    model: nn.Module | MaterializeResult,
    path: str | Path,
    *,
    decisions: Sequence[MaterializeDecision] | None = None,
    base_model: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a materialized model into the folder ``path`` (``model.safetensors`` + ``materialized.json``).

    Args:
        model: what :func:`~sparseforge.export.materialize` returned (its result, whose model and
            decisions are saved), or its ``.model`` (it may also have no sparse layer at all,
            e.g. when none was faster).
        path: the output folder; it must not exist or be empty, unless ``overwrite``.
        decisions: the decisions (``result.layers``) of :func:`materialize`; stored with each replaced
            layer and in full. Taken from ``model`` when it is a :class:`MaterializeResult`.
        base_model: ``{"name": registered model name, "kwargs": {...}}`` so that
            :func:`load_materialized` can rebuild the architecture without the caller's class
            (``sparseforge materialize`` records it from the run's recipe).
        recipe: the training recipe as a plain dict, stored for provenance.
        overwrite: replace an existing file or earlier materialized-model folder at ``path``
            (a non-empty folder of anything else is never replaced).

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The folder appears complete or not at all.
    """
    from .. import __version__

    if isinstance(model, MaterializeResult):
        if decisions is None:
            decisions = model.layers
        model = model.model
    check_module(model)
    if base_model is not None and not (isinstance(base_model, dict) and isinstance(base_model.get("name"), str)
                                       and isinstance(base_model.get("kwargs", {}), dict)):
        raise ConfigError(f"base_model must be {{'name': str, 'kwargs': dict}}; got {base_model!r}")
    out = Path(path)
    _check_out(out, overwrite)
    by_name = {d.name: d for d in decisions or []}
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, _SparseWeight):
            spec = m.spec()
            if name in by_name:
                spec["decision"] = by_name[name].to_dict()
            layers[name] = spec
    description = {
        "format": MATERIALIZED_FORMAT,
        "sparseforge_version": __version__,
        "torch_version": torch.__version__,
        "tensors": TENSORS_FILE,
        "layers": layers,
        "decisions": [d.to_dict() for d in decisions or []],
        "base_model": base_model,
        "recipe": recipe,
    }
    text = json.dumps(description, indent=2) + "\n"  # fails here, before anything is written, if not JSON-able
    tensors = _state_tensors(model)
    with atomic_dir(out) as tmp:
        atomic_save_safetensors(tensors, tmp / TENSORS_FILE, metadata={"format": MATERIALIZED_FORMAT})
        (tmp / DESCRIPTION_FILE).write_text(text)
    return out


def read_materialized_description(path: str | Path) -> dict[str, Any]:
    """The validated ``materialized.json`` of the folder ``path``.

    Raises:
        CheckpointError: not a materialized-model folder, unreadable or malformed description.
    """
    folder = Path(path)
    desc_path = folder / DESCRIPTION_FILE
    if not desc_path.is_file():
        hint = " (a pickled module from an older sparseforge: materialize the run again)" if folder.is_file() else ""
        raise CheckpointError(f"{str(folder)!r} is not a materialized model folder: no {DESCRIPTION_FILE}{hint}")
    desc = read_json(desc_path, what="materialized model description")
    if not isinstance(desc, dict) or desc.get("format") != MATERIALIZED_FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise CheckpointError(f"{str(desc_path)!r} has format {got!r}; this sparseforge reads {MATERIALIZED_FORMAT!r}")
    layers = desc.get("layers")
    if not isinstance(layers, dict):
        raise CheckpointError(f"{str(desc_path)!r}: 'layers' must be a mapping of layer name -> description")
    for name, spec in layers.items():
        _check_spec(name, spec, desc_path)
    base = desc.get("base_model")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("name"), str)
                                 and isinstance(base.get("kwargs", {}), dict)):
        raise CheckpointError(f"{str(desc_path)!r}: base_model must be {{'name': str, 'kwargs': {{...}}}}; got {base!r}")
    return desc


def _check_spec(name: str, spec: Any, where: Path) -> None:
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{str(where)!r}: layer {name!r}: {msg}")

    if not isinstance(spec, dict):
        raise bad(f"description must be a mapping; got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise bad(f"kind must be one of {sorted(_KINDS)}; got {kind!r}")
    if spec.get("kernel") not in KERNELS[1:]:
        raise bad(f"kernel must be one of {list(KERNELS[1:])}; got {spec.get('kernel')!r}")
    if spec.get("dtype") not in _DTYPES:
        raise bad(f"dtype must be one of {sorted(_DTYPES)}; got {spec.get('dtype')!r}")

    def ints(v: Any, n: int | None = None) -> bool:
        return (isinstance(v, list) and (n is None or len(v) == n)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))

    geometry = {"in_features": int, "out_features": int} if kind == "SparseLinear" else {
        "in_channels": int, "out_channels": int, "kernel_size": 2, "stride": 2, "padding": 2, "dilation": 2}
    for key, kind_of in geometry.items():
        v = spec.get(key)
        ok = (isinstance(v, int) and not isinstance(v, bool) and v > 0) if kind_of is int else ints(v, kind_of)
        if not ok:
            raise bad(f"{key} must be {'a positive int' if kind_of is int else f'{kind_of} ints'}; got {v!r}")
    if not ints(spec.get("weight_shape")) or len(spec["weight_shape"]) not in (2, 4):
        raise bad(f"weight_shape must be 2 or 4 ints; got {spec.get('weight_shape')!r}")
    bs = spec.get("block_size")
    if bs is not None and not (ints(bs, 2) and min(bs) > 0):
        raise bad(f"block_size must be null or 2 positive ints; got {bs!r}")
    if not isinstance(spec.get("nnz"), int) or not isinstance(spec.get("bias"), bool):
        raise bad("nnz (int) and bias (bool) are required")
    buffers = spec.get("buffers")
    if not isinstance(buffers, dict) or not {"crow_indices", "col_indices", "values"} <= set(buffers):
        raise bad("buffers must describe crow_indices, col_indices and values")
    for bname, b in buffers.items():
        if bname not in ("crow_indices", "col_indices", "values", "bias") or not isinstance(b, dict) \
                or b.get("dtype") not in _BUFFER_DTYPES or not ints(b.get("shape")):
            raise bad(f"buffer {bname!r}: expected {{'dtype': one of {sorted(_BUFFER_DTYPES)}, 'shape': [ints]}}; got {b!r}")
    if spec["bias"] != ("bias" in buffers):
        raise bad("bias flag and buffers disagree")


def _rebuild_base(desc: dict[str, Any], where: Path) -> nn.Module:
    from ..models import build_model

    base = desc.get("base_model")
    if base is None:
        raise CheckpointError(f"{str(where)!r} records no base architecture (saved from Python without "
                              "base_model=...): pass model=<the dense model's architecture> to load_materialized")
    try:
        return build_model(base["name"], None, **base.get("kwargs", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(where)!r}: cannot rebuild base model {base['name']!r}: {e}") from None


def load_materialized(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_materialized` (or ``sparseforge materialize --out``).

    Args:
        path: the folder holding ``model.safetensors`` and ``materialized.json``.
        model: the dense base architecture (a fresh instance of the model that was materialized;
            its weights are overwritten). ``None`` rebuilds it from the description's
            ``base_model`` (recorded by ``sparseforge materialize``).

    Returns:
        The model in eval mode, with the same sparse layers (kernel, dtype, block size, index and
        value formats) and the same tensors as the saved one. ``model`` itself is modified and
        returned (except when it is a bare Linear/Conv2d that was replaced as a whole).

    Raises:
        CheckpointError: not a materialized-model folder, malformed description or tensors, or a
            ``model`` whose layers do not match the description.
        LayerError: a layer's sparse storage is invalid, or it needs sparseforge's C++ kernel and
            the kernel cannot be built here (``sparseforge kernels info`` says why).
    """
    from ..kernels import cpu_sparse

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"path must be a folder path (str or os.PathLike); got {path!r}")
    check_module(model, allow_none=True)
    folder = Path(path)
    desc = read_materialized_description(folder)
    tensor_path = folder / TENSORS_FILE
    tensors = load_safetensors(tensor_path, what="materialized model tensor file")
    layers: dict[str, dict[str, Any]] = desc["layers"]
    needs_cpp = [n for n, s in layers.items() if s["kernel"] in ("custom", "custom-bsr")]
    if needs_cpp and cpu_sparse.load_kernel() is None:
        raise LayerError(f"layer {needs_cpp[0]!r} runs sparseforge's C++ kernel ({layers[needs_cpp[0]]['kernel']}), "
                         f"which is not available here: {cpu_sparse.kernel_unavailable_reason()}; "
                         "see `sparseforge kernels info`, or materialize with a torch kernel")
    net = _rebuild_base(desc, folder) if model is None else model

    # build every replacement and check the file against the model before changing the model
    modules = dict(net.named_modules())
    new_layers: dict[str, _SparseWeight] = {}
    for name, spec in layers.items():
        old = modules.get(name)
        cls = _KINDS[spec["kind"]]
        if not isinstance(old, (nn.Linear, nn.Conv2d, _SparseWeight)):
            raise CheckpointError(f"the model has no Linear/Conv2d layer {name!r} for the saved {spec['kind']}"
                                  + ("" if old is None else f" (it is a {type(old).__name__})"))
        old_shape = tuple(old.weight_shape) if isinstance(old, _SparseWeight) else tuple(old.weight.shape)
        if old_shape != tuple(spec["weight_shape"]) or isinstance(old, nn.Conv2d) != (cls is SparseConv2d):
            raise CheckpointError(f"layer {name!r}: the model's {type(old).__name__} with weight {old_shape} does not "
                                  f"match the saved {spec['kind']} with weight {tuple(spec['weight_shape'])}")
        new_layers[name] = cls.from_spec(spec)
    expected: dict[str, torch.Tensor] = {}
    for mname, module in modules.items():
        if any(mname == n or mname.startswith(n + ".") if n else True for n in new_layers):
            continue  # replaced (with its children)
        prefix = f"{mname}." if mname else ""
        for k, v in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if v is not None and k not in getattr(module, "_non_persistent_buffers_set", ()):
                expected[prefix + k] = v
    for name, layer in new_layers.items():
        prefix = f"{name}." if name else ""
        for k, v in layer.named_buffers():
            expected[prefix + k] = v
    masks = {k for k in tensors if k.endswith(MASK_SUFFIX) and k not in expected}
    for k in masks:  # masks of layers that stayed dense: registered on their layer, as load_masked_state_dict does
        mod_name, _, bname = k.rpartition(".")
        owner = f"{mod_name}.{bname[: -len(MASK_SUFFIX)]}" if mod_name else bname[: -len(MASK_SUFFIX)]
        if owner not in expected or not isinstance(expected[owner], nn.Parameter):
            raise CheckpointError(f"{str(tensor_path)!r} has mask {k!r} but the model has no parameter {owner!r}")
        if tensors[k].dtype != torch.bool or tensors[k].shape != expected[owner].shape:
            raise CheckpointError(f"mask {k!r} must be bool of shape {tuple(expected[owner].shape)}")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - masks)
    if missing or unexpected:
        raise CheckpointError(f"{str(tensor_path)!r} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, ref in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype and not (t.is_floating_point() and ref.is_floating_point()):
            raise CheckpointError(f"{str(tensor_path)!r}: {k!r} has {t.dtype} {tuple(t.shape)}; the model expects "
                                  f"{ref.dtype} {tuple(ref.shape)}")
    for name, layer in new_layers.items():
        prefix = f"{name}." if name else ""
        layer.load_state_dict({k: tensors[prefix + k] for k, _ in layer.named_buffers()}, assign=True)
        try:
            layer.check_storage()
        except LayerError as e:
            raise LayerError(f"layer {name!r} in {str(tensor_path)!r}: {e}") from None

    # every check passed: change the model
    for name, layer in new_layers.items():
        if not name:
            net = layer
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, layer)
    if not (len(new_layers) == 1 and "" in new_layers):
        for k in masks:
            mod_name, _, bname = k.rpartition(".")
            (net.get_submodule(mod_name) if mod_name else net).register_buffer(bname, tensors[k])
        rest = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.") for n in new_layers if n)}
        # assign: dense layers take the saved dtype (materialize(dtype="bf16") converts them too)
        net.load_state_dict({**rest, **{k: v for k, v in net.state_dict().items() if k not in rest}}, assign=True)
    return net.eval()
