"""Compressed sparse checkpoints: one ``.safetensors`` file whose size scales with density.

A dense checkpoint of a 90 %-sparse model is as large as the dense model: the zeros are
stored. :func:`save_compressed` stores only the kept values plus a compact record of where they
are, and :func:`load_compressed` restores weights and masks exactly into a model of the same
architecture. The file is plain safetensors (no pickle, so loading never executes code from
the file); everything sparseforge needs is in the safetensors header.

File layout (format ``sparseforge-compressed-v1``)
==================================================
Tensors, for each ``state_dict`` key ``k`` that is not a mask buffer:

* ``"dense"``: stored unchanged as ``k`` (biases, BatchNorm, unmasked layers).
* ``"bitmask"``: ``k::bitmask`` (uint8, ``ceil(numel / 8)`` bytes) and ``k::values`` (the kept
  values in row-major order, original dtype). Bit order is **little-endian**: element ``i`` of
  the row-major flattened tensor is bit ``i % 8`` (value ``1 << (i % 8)``) of byte ``i // 8``,
  exactly ``numpy.packbits(mask.ravel(), bitorder="little")``. The padding bits of the last byte
  are 0.
* ``"csr"``: the tensor viewed as 2-D ``[rows, cols]`` (``[out, prod(rest)]`` for more than
  two dims, ``[1, numel]`` for 0-/1-D tensors), stored as ``k::crow_indices`` (int32, int64 only
  when more than 2**31 - 1 values are kept), ``k::col_indices`` (int16 if ``cols <= 32767``,
  else int32, else int64; strictly increasing within a row) and ``k::values``.
* ``"alias"``: nothing stored; ``k`` is the very same tensor as an earlier key (tied weights).

Which tensors are encoded: every masked parameter (one with a ``<param>_mask`` buffer) when the
model has masks; otherwise (e.g. after :func:`sparseforge.masking.finalize`) every float tensor
with at least ``AUTO_MIN_NUMEL`` elements of which at least ``AUTO_MIN_SPARSITY`` are exactly 0.
Mask buffers are never stored: the kept positions of a masked parameter *are* its mask.

Header metadata (safetensors ``__metadata__``, strings only):

* ``sparseforge.format``: ``"sparseforge-compressed-v1"``;
* ``sparseforge.tensors``: JSON list, in ``state_dict`` order, of
  ``{"key", "encoding", "shape", "dtype"}`` (plus ``"of"`` for aliases): the model's keys with
  their original shapes and dtypes (mask buffers excluded);
* ``sparseforge.masked``: JSON list of the keys whose ``<key>_mask`` buffer is restored on load;
* ``sparseforge.bit_order``: ``"little"``;
* ``sparseforge.architecture_sha256``: SHA-256 of the canonical JSON ``[[key, shape, dtype],
  ...]`` (compare two files' architectures without loading them);
* ``sparseforge.content_sha256``: SHA-256 of the canonical dense state (every key in order,
  each mask right after its parameter; name, dtype, shape and raw bytes), checked after
  decoding so that corrupted value bytes are caught before the model is touched;
* the caller's own ``metadata`` entries (any key not starting with ``sparseforge.``).

Exactness: every kept value is restored bit for bit (including ``-0.0`` and NaN payloads) and
masks are restored exactly. Positions that are not kept are restored as ``+0.0``: a pruned
weight that held ``-0.0`` (what ``weight * mask`` gives for a negative weight) comes back as
``+0.0``, which is numerically equal. Storing the sign of every pruned zero would cost one
more bit per element, as much as the whole bitmask.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..utils import check_module
from ..fileio import atomic_path, first_sentence, require_file
from ..masking import MASK_SUFFIX, load_masked_state_dict
from ..results import Result

__all__ = [
    "FORMAT_VERSION",
    "FORMATS",
    "AUTO_MIN_NUMEL",
    "AUTO_MIN_SPARSITY",
    "CompressedInfo",
    "LoadCompressedResult",
    "save_compressed",
    "load_compressed",
    "load_compressed_state_dict",
    "compressed_size_report",
]

#: Written to and required in the header; a reader refuses any other version.
FORMAT_VERSION = "sparseforge-compressed-v1"
#: Encodings a caller can ask for.
FORMATS: tuple[str, ...] = ("bitmask", "csr")
#: Auto-detection (models without masks): smallest tensor worth encoding ...
AUTO_MIN_NUMEL = 1024
#: ... and the fraction of exact zeros it needs.
AUTO_MIN_SPARSITY = 0.5

_SEP = "::"  # component separator; state_dict keys never contain it (checked on save)
_PREFIX = "sparseforge."
_ENCODINGS = ("dense", "alias") + FORMATS
_INT32_MAX = 2**31 - 1

# torch dtype <-> safetensors dtype code. Dtype names read from a file are only resolved
# through this table (never getattr(torch, <file text>)).
_ST_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _ST_CODES[getattr(torch, _name)] = _code
_DTYPES: dict[str, torch.dtype] = {str(dt).removeprefix("torch."): dt for dt in _ST_CODES}
_CODE_SIZES: dict[str, int] = {code: dt.itemsize for dt, code in _ST_CODES.items()}
# dtypes whose zeros auto-detection counts (float8 has no CPU comparison kernels everywhere)
_AUTO_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


@dataclass
class CompressedInfo:
    """What :func:`save_compressed` wrote.

    Attributes:
        path: the file written.
        file_bytes: size of the file on disk (header included).
        dense_bytes: sum of ``numel * element_size`` over the model's ``state_dict`` tensors
            without the mask buffers, i.e. what a dense checkpoint of the weights holds.
        ratio: ``file_bytes / dense_bytes`` (0.13 means the file is 13 % of the dense size).
        encodings: ``state_dict`` key -> ``"dense"``, ``"bitmask"``, ``"csr"`` or ``"alias"``.
        masked: keys whose ``<key>_mask`` buffer the file restores.
    """

    path: Path
    file_bytes: int
    dense_bytes: int
    ratio: float
    encodings: dict[str, str] = field(default_factory=dict)
    masked: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class LoadCompressedResult(Result):
    """What :func:`load_compressed` returns.

    Attributes:
        model: the model the file was loaded into (in place).
        layers: the masked parameters whose masks the file restored
            (:class:`~sparseforge.masking.MaskedLayer`, with ``name`` = module name), in module order.
        skipped: with ``strict=False``, ``(key, reason)`` of the file's tensors the model lacks.
        path: the file read.
        encodings: ``state_dict`` key -> how the file stored it (``"dense"``, ``"bitmask"``,
            ``"csr"`` or ``"alias"``).
    """

    path: Path
    encodings: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------- helpers
def _view_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``[rows, cols]`` view used by CSR (``[out, prod(rest)]``; ``[1, numel]`` below 2-D)."""
    if len(shape) >= 2:
        return shape[0], math.prod(shape[1:])
    return 1, math.prod(shape)


def _index_dtype(limit: int, *, small: bool) -> torch.dtype:
    """Smallest index type holding values up to ``limit`` (int16 only when ``small``)."""
    if small and limit <= 32767:
        return torch.int16
    return torch.int32 if limit <= _INT32_MAX else torch.int64


def _mask_keys(model: nn.Module, sd: Mapping[str, Any]) -> dict[str, str]:
    """``state_dict`` mask keys of ``model`` -> the key of the parameter each one masks.

    Same rule as :func:`sparseforge.masking.find_masked_layers` (a bool ``<param>_mask`` buffer
    next to an ``nn.Parameter``), but per ``state_dict`` key so that a module reachable under two
    names is handled like ``state_dict`` handles it.
    """
    out: dict[str, str] = {}
    for key, value in sd.items():
        if not key.endswith(MASK_SUFFIX) or not torch.is_tensor(value) or value.dtype != torch.bool:
            continue
        pkey = key[: -len(MASK_SUFFIX)]
        mod_name, _, pname = pkey.rpartition(".")
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            continue
        param = module._parameters.get(pname)
        if isinstance(param, nn.Parameter) and pkey in sd and tuple(sd[pkey].shape) == tuple(value.shape):
            out[key] = pkey
    return out


def _hash_tensor(h: "hashlib._Hash", key: str, t: torch.Tensor) -> None:
    # name, dtype and shape go in too, so two states with equal bytes but different
    # layouts never share a hash
    h.update(json.dumps([key, _dtype_name(t.dtype), list(t.shape)]).encode())
    h.update(t.detach().reshape(-1).view(torch.uint8).numpy())


def _architecture_sha256(entries: list[dict[str, Any]]) -> str:
    arch = [[e["key"], list(e["shape"]), e["dtype"]] for e in entries]
    return hashlib.sha256(json.dumps(arch, separators=(",", ":")).encode()).hexdigest()


def _check_user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict of strings to strings; got {type(metadata).__name__}")
    out = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(
                f"metadata entries must be strings (safetensors headers hold strings only); got {k!r}: {v!r}"
            )
        if k.startswith(_PREFIX):
            raise ConfigError(f"metadata key {k!r} is reserved: keys starting with {_PREFIX!r} belong to sparseforge")
        out[k] = v
    return out


# ------------------------------------------------------------------------------- encoding
def _encode(key: str, t: torch.Tensor, mask: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """Components of ``t`` (CPU) keeping the positions where ``mask`` (CPU, bool) is True."""
    flat_mask = mask.reshape(-1)
    # boolean indexing walks the tensor in row-major order: the order both encodings promise
    values = t.reshape(-1)[flat_mask].contiguous()
    if fmt == "bitmask":
        bits = torch.from_numpy(np.packbits(flat_mask.numpy(), bitorder="little"))
        return {f"{key}{_SEP}bitmask": bits, f"{key}{_SEP}values": values}
    rows, cols = _view_2d(tuple(t.shape))
    counts = flat_mask.view(rows, cols).sum(dim=1)
    nnz = values.numel()
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    if nnz:
        col = flat_mask.nonzero().squeeze(1) % cols
    else:  # also covers cols == 0, where % would divide by zero
        col = torch.zeros(0, dtype=torch.int64)
    return {
        f"{key}{_SEP}crow_indices": crow.to(_index_dtype(nnz, small=False)),
        f"{key}{_SEP}col_indices": col.to(_index_dtype(cols, small=True)),
        f"{key}{_SEP}values": values,
    }


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "bitmask",
    metadata: Mapping[str, str] | None = None,
) -> CompressedInfo:
    """Write ``model``'s state as one compressed ``.safetensors`` file (atomically).

    Args:
        model: any ``nn.Module``. Masked parameters (``<param>_mask`` buffers) are encoded
            and their masks recorded; a model without masks gets every float tensor with at
            least :data:`AUTO_MIN_NUMEL` elements and :data:`AUTO_MIN_SPARSITY` exact zeros
            encoded. Everything else is stored dense.
        path: the file to write (``.safetensors`` recommended); written to a temporary file in
            the same folder and renamed, so a crash never leaves a half-written checkpoint.
        format: ``"bitmask"`` (1 bit per element + kept values; smaller below ~94 % sparsity
            with int16 column indices) or ``"csr"`` (row pointers, column indices, values;
            smaller above that, and directly usable as ``torch.sparse_csr_tensor`` parts).
        metadata: extra string entries for the safetensors header (keys must not start with
            ``"sparseforge."``).

    Returns:
        a :class:`CompressedInfo` with the sizes and the encoding of every tensor.

    Raises:
        ConfigError: unknown ``format``, bad ``metadata``, a non-tensor ``state_dict`` entry,
            an unsupported dtype, or a key containing ``"::"``.
        CheckpointError: a masked parameter holds nonzero values at pruned positions (they
            would be lost; call :func:`sparseforge.masking.apply_masks` first).
    """
    check_module(model)
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}; got {format!r}")
    user_meta = _check_user_metadata(metadata)
    _check_path(path)
    path = Path(path)
    sd = model.state_dict()
    mask_of = {pkey: sd[mkey] for mkey, pkey in _mask_keys(model, sd).items()}
    mask_keys = {pkey + MASK_SUFFIX for pkey in mask_of}
    auto = not mask_of

    entries: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    content = hashlib.sha256()
    first_view: dict[tuple, str] = {}  # identical views (tied weights) -> first key
    encoding_of: dict[str, str] = {}
    dense_storages: set[int] = set()
    dense_bytes = 0
    for key, value in sd.items():
        if key in mask_keys:
            continue
        if not torch.is_tensor(value):
            raise ConfigError(f"state_dict entry {key!r} is a {type(value).__name__}; a compressed checkpoint stores tensors only")
        if _SEP in key:
            raise ConfigError(f"state_dict key {key!r} contains {_SEP!r}, which the compressed format uses as its separator")
        if value.dtype not in _ST_CODES:
            raise ConfigError(f"state_dict entry {key!r} has dtype {value.dtype}; supported: {sorted(_DTYPES)}")
        t = value.detach()
        dense_bytes += t.numel() * t.element_size()
        entry: dict[str, Any] = {"key": key, "encoding": "dense", "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        ident = (str(t.device), t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else None
        target = first_view.get(ident) if ident is not None else None
        if target is not None and key not in mask_of and target not in mask_of:
            # tied weights: store once; load_state_dict fills both keys from the same tensor
            entry.update(encoding="alias", of=target)
            entries.append(entry)
            encoding_of[key] = "alias"
            tc = t.cpu()
            # hash what load rebuilds: the target's canonical form (an encoded target here is
            # auto-detected, so its kept positions are its nonzeros)
            dense_target = encoding_of[target] == "dense"
            _hash_tensor(content, key, tc if dense_target else torch.where(tc != 0, tc, torch.zeros((), dtype=tc.dtype)))
            continue
        if ident is not None:
            first_view.setdefault(ident, key)

        mask = mask_of.get(key)
        if mask is not None:
            mask = mask.detach().cpu()
            t = t.cpu()
            pruned_nonzero = int(((t != 0) & ~mask).sum())
            if pruned_nonzero:
                raise CheckpointError(
                    f"cannot save {key!r}: {pruned_nonzero} pruned position(s) (mask False) hold nonzero values, "
                    "which a compressed checkpoint would drop; zero them with sparseforge.masking.apply_masks(model) "
                    "or fix the mask"
                )
        elif auto and t.dtype in _AUTO_DTYPES and t.numel() >= AUTO_MIN_NUMEL:
            t = t.cpu()
            nonzero = t != 0
            if t.numel() - int(nonzero.sum()) >= AUTO_MIN_SPARSITY * t.numel():
                mask = nonzero

        if mask is not None:
            tensors.update(_encode(key, t, mask, format))
            entry["encoding"] = format
            # the canonical dense form: what load_compressed rebuilds (+0.0 where not kept)
            _hash_tensor(content, key, torch.where(mask, t, torch.zeros((), dtype=t.dtype)))
            if key in mask_of:
                _hash_tensor(content, key + MASK_SUFFIX, mask)
        else:
            t = t.cpu().contiguous()
            # safetensors refuses two entries on one storage (e.g. slices of a fused qkv)
            storage = t.untyped_storage().data_ptr()
            if t.numel() and storage in dense_storages:
                t = t.clone()
            dense_storages.add(storage)
            tensors[key] = t
            _hash_tensor(content, key, t)
        entries.append(entry)
        encoding_of[key] = entry["encoding"]

    masked = [e["key"] for e in entries if e["key"] in mask_of]
    header = dict(user_meta)
    header.update({
        _PREFIX + "format": FORMAT_VERSION,
        _PREFIX + "tensors": json.dumps(entries, separators=(",", ":")),
        _PREFIX + "masked": json.dumps(masked, separators=(",", ":")),
        _PREFIX + "bit_order": "little",
        _PREFIX + "architecture_sha256": _architecture_sha256(entries),
        _PREFIX + "content_sha256": content.hexdigest(),
    })

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    file_bytes = path.stat().st_size
    return CompressedInfo(
        path=path,
        file_bytes=file_bytes,
        dense_bytes=dense_bytes,
        ratio=file_bytes / dense_bytes if dense_bytes else math.inf,
        encodings={e["key"]: e["encoding"] for e in entries},
        masked=masked,
    )


# ------------------------------------------------------------------------------- reading
@dataclass
class _Entry:
    key: str
    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    of: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dense_bytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class _Header:
    path: Path
    entries: list[_Entry]
    masked: list[str]
    content_sha256: str
    components: dict[str, tuple[tuple[int, ...], str]]  # stored tensor -> (shape, safetensors dtype code)
    metadata: dict[str, str]

    @property
    def where(self) -> str:
        return repr(str(self.path))


def _check_path(path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"path must be a file path (str or os.PathLike); got {path!r:.80}")


def _fail(path: Path, msg: str) -> CheckpointError:
    return CheckpointError(f"{str(path)!r}: {msg}")


def _parse_entries(path: Path, text: str | None) -> list[_Entry]:
    if text is None:
        raise _fail(path, f"header lacks {_PREFIX}tensors; the file is corrupted")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"header entry {_PREFIX}tensors is not valid JSON ({first_sentence(e)}); the file is corrupted") from None
    if not isinstance(raw, list):
        raise _fail(path, f"header entry {_PREFIX}tensors must be a list; the file is corrupted")
    entries: list[_Entry] = []
    seen: dict[str, _Entry] = {}
    for i, d in enumerate(raw):
        ok = (
            isinstance(d, dict)
            and isinstance(d.get("key"), str)
            and d.get("encoding") in _ENCODINGS
            and isinstance(d.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in d["shape"])
            and d.get("dtype") in _DTYPES
        )
        if not ok:
            raise _fail(path, f"header tensor entry {i} is malformed ({str(d)[:200]}); the file is corrupted")
        e = _Entry(d["key"], d["encoding"], tuple(d["shape"]), _DTYPES[d["dtype"]], d.get("of"))
        if e.key in seen:
            raise _fail(path, f"header lists {e.key!r} twice; the file is corrupted")
        if e.encoding == "alias":
            tgt = seen.get(e.of) if isinstance(e.of, str) else None
            if tgt is None or tgt.encoding == "alias" or tgt.shape != e.shape or tgt.dtype != e.dtype:
                raise _fail(path, f"{e.key!r} is an alias of {e.of!r}, which is not an earlier tensor of the same shape and dtype")
        seen[e.key] = e
        entries.append(e)
    return entries


def _expected_components(e: _Entry) -> dict[str, tuple[tuple[int, ...] | None, tuple[str, ...]]]:
    """Stored tensors an entry needs: name -> (shape or None for any 1-D, allowed dtype codes)."""
    code = (_ST_CODES[e.dtype],)
    k = e.key + _SEP
    if e.encoding == "dense":
        return {e.key: (e.shape, code)}
    if e.encoding == "bitmask":
        return {k + "bitmask": (((e.numel + 7) // 8,), ("U8",)), k + "values": (None, code)}
    if e.encoding == "csr":
        rows, _ = _view_2d(e.shape)
        return {
            k + "crow_indices": ((rows + 1,), ("I32", "I64")),
            k + "col_indices": (None, ("I16", "I32", "I64")),
            k + "values": (None, code),
        }
    return {}  # alias


def _read_header(path: str | os.PathLike) -> _Header:
    """Open ``path``, parse and cross-check its header; reads no tensor data."""
    _check_path(path)
    path = Path(path)
    require_file(path, "compressed checkpoint")
    # safe_open, not load_safetensors: the header is checked before any tensor data is read
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            components = {}
            for name in f.keys():
                sl = f.get_slice(name)
                components[name] = (tuple(sl.get_shape()), str(sl.get_dtype()))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors' Rust panics derive from BaseException, not Exception
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file (truncated, corrupted header or another format): "
            f"{first_sentence(e)}"
        ) from None

    fmt = metadata.get(_PREFIX + "format")
    if fmt is None:
        raise _fail(
            path,
            f"a safetensors file but not a sparseforge compressed checkpoint (no {_PREFIX}format in its header); "
            "read plain safetensors files with safetensors.torch.load_file",
        )
    if fmt != FORMAT_VERSION:
        raise _fail(path, f"format version {fmt!r} is not supported; this version of sparseforge reads {FORMAT_VERSION!r}")
    entries = _parse_entries(path, metadata.get(_PREFIX + "tensors"))
    by_key = {e.key: e for e in entries}
    try:
        masked = json.loads(metadata.get(_PREFIX + "masked", "null"))
    except json.JSONDecodeError:
        masked = None
    if not isinstance(masked, list) or not all(isinstance(k, str) for k in masked) or len(set(masked)) != len(masked):
        raise _fail(path, f"header entry {_PREFIX}masked is missing or malformed; the file is corrupted")
    for k in masked:
        if k not in by_key or by_key[k].encoding not in FORMATS:
            raise _fail(path, f"{k!r} is listed as masked but is not an encoded tensor of the file; the file is corrupted")
    if metadata.get(_PREFIX + "bit_order", "little") != "little":
        raise _fail(path, f"bit order {metadata[_PREFIX + 'bit_order']!r} is not supported (only 'little')")
    arch = [{"key": e.key, "shape": list(e.shape), "dtype": _dtype_name(e.dtype)} for e in entries]
    if metadata.get(_PREFIX + "architecture_sha256") != _architecture_sha256(arch):
        raise _fail(path, "the architecture checksum does not match the tensor list in the header; the header was edited or corrupted")
    content = metadata.get(_PREFIX + "content_sha256")
    if not isinstance(content, str):
        raise _fail(path, f"header lacks {_PREFIX}content_sha256; the file is corrupted")

    # every stored tensor must be one an entry needs, with the shape and dtype it needs
    expected: dict[str, tuple[tuple[int, ...] | None, tuple[str, ...]]] = {}
    for e in entries:
        expected.update(_expected_components(e))
    for name, (shape, codes) in expected.items():
        if name not in components:
            raise _fail(path, f"stored tensor {name!r} is missing; the file is corrupted")
        got_shape, got_code = components[name]
        if got_code not in codes:
            raise _fail(path, f"stored tensor {name!r} has dtype {got_code}; expected {' or '.join(codes)}")
        if (shape is None and len(got_shape) != 1) or (shape is not None and got_shape != shape):
            want = "1-D" if shape is None else str(shape)
            raise _fail(path, f"stored tensor {name!r} has shape {got_shape}; expected {want}")
    extra = [n for n in components if n not in expected]
    if extra:
        raise _fail(path, f"unexpected stored tensor {extra[0]!r} ({len(extra)} in all); the file is corrupted")
    for e in entries:
        if e.encoding == "csr":
            n_col = components[f"{e.key}{_SEP}col_indices"][0][0]
            n_val = components[f"{e.key}{_SEP}values"][0][0]
            if n_col != n_val:
                raise _fail(path, f"{e.key!r}: {n_col} column indices but {n_val} values")
    user = {k: v for k, v in metadata.items() if not k.startswith(_PREFIX)}
    return _Header(path, entries, masked, content, components, user)


def _decode_bitmask(h: _Header, e: _Entry, bits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = e.numel
    unpacked = np.unpackbits(bits.numpy(), bitorder="little")
    if unpacked[n:].any():
        raise _fail(h.path, f"{e.key!r}: the padding bits after element {n} of the bitmask are set; the file is corrupted")
    mask = torch.from_numpy(unpacked[:n].view(np.bool_))
    kept = int(mask.sum())
    if kept != values.numel():
        raise _fail(
            h.path,
            f"{e.key!r}: the bitmask keeps {kept} positions but {e.key + _SEP + 'values'!r} holds {values.numel()} values; "
            "the file is corrupted or was edited",
        )
    dense = torch.zeros(n, dtype=e.dtype)
    dense[mask] = values
    return dense.view(e.shape), mask.view(e.shape)


def _decode_csr(
    h: _Header, e: _Entry, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = _view_2d(e.shape)
    nnz = values.numel()
    crow = crow.to(torch.int64)
    col = col.to(torch.int64)
    if int(crow[0]) != 0:
        raise _fail(h.path, f"{e.key!r}: crow_indices must start at 0; got {int(crow[0])}")
    counts = crow.diff()
    if bool((counts < 0).any()):
        r = int((counts < 0).nonzero()[0])
        raise _fail(h.path, f"{e.key!r}: crow_indices decrease at row {r}; the file is corrupted")
    if int(crow[-1]) != nnz:
        raise _fail(h.path, f"{e.key!r}: crow_indices end at {int(crow[-1])} but {nnz} values are stored")
    bad = (col < 0) | (col >= cols)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise _fail(h.path, f"{e.key!r}: column index {int(col[i])} at position {i} is out of range [0, {cols})")
    row_of = torch.repeat_interleave(torch.arange(rows), counts)
    # strictly increasing columns within a row: no duplicates, one canonical order
    unordered = (row_of[1:] == row_of[:-1]) & (col[1:] <= col[:-1])
    if bool(unordered.any()):
        i = int(unordered.nonzero()[0])
        raise _fail(h.path, f"{e.key!r}: column indices of row {int(row_of[i])} are not strictly increasing (duplicate or unsorted)")
    linear = row_of * cols + col
    mask = torch.zeros(e.numel, dtype=torch.bool)
    mask[linear] = True
    dense = torch.zeros(e.numel, dtype=e.dtype)
    dense[linear] = values
    return dense.view(e.shape), mask.view(e.shape)


def _decode(h: _Header) -> dict[str, torch.Tensor]:
    """Read and decode every tensor of ``h``; returns the dense state with mask buffers."""
    from safetensors import safe_open

    masked = set(h.masked)
    state: dict[str, torch.Tensor] = {}
    content = hashlib.sha256()
    try:
        f_ctx = safe_open(str(h.path), framework="pt")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        raise _fail(h.path, f"cannot be read: {first_sentence(err)}") from None
    with f_ctx as f:

        def get(name: str) -> torch.Tensor:
            try:
                return f.get_tensor(name)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as err:
                raise _fail(h.path, f"cannot read stored tensor {name!r}: {first_sentence(err)}") from None

        for e in h.entries:
            k = e.key + _SEP
            if e.encoding == "alias":
                state[e.key] = state[e.of]  # type: ignore[index]
            elif e.encoding == "dense":
                state[e.key] = get(e.key)
            elif e.encoding == "bitmask":
                state[e.key], mask = _decode_bitmask(h, e, get(k + "bitmask"), get(k + "values"))
            else:
                state[e.key], mask = _decode_csr(h, e, get(k + "crow_indices"), get(k + "col_indices"), get(k + "values"))
            _hash_tensor(content, e.key, state[e.key])
            if e.key in masked:
                state[e.key + MASK_SUFFIX] = mask
                _hash_tensor(content, e.key + MASK_SUFFIX, mask)
    if content.hexdigest() != h.content_sha256:
        raise _fail(h.path, "the decoded tensors do not match the content checksum in the header; the data bytes are corrupted")
    return state


def _check_model(h: _Header, model: nn.Module, strict: bool) -> None:
    """Raise unless ``h`` fits ``model``: keys, shapes (always) and dtypes, masks (strict)."""
    own = model.state_dict()
    own_masks = _mask_keys(model, own)
    own_entries = {k: v for k, v in own.items() if k not in own_masks and torch.is_tensor(v)}
    by_key = {e.key: e for e in h.entries}
    other = f"{h.where} is a checkpoint for another architecture"
    for key, t in own_entries.items():  # model order, so the first mismatch is the one reported
        e = by_key.get(key)
        if e is None:
            if strict:
                raise CheckpointError(
                    f"{other}: the model's {key!r} (shape {tuple(t.shape)}) is missing from the file "
                    "(load with strict=False to leave it as it is)"
                )
            continue
        if tuple(t.shape) != e.shape:
            raise CheckpointError(f"{other}: {key!r} has shape {e.shape} in the file but {tuple(t.shape)} in the model")
        if strict and t.dtype != e.dtype:
            raise CheckpointError(
                f"{h.where}: {key!r} is {_dtype_name(e.dtype)} in the file but {_dtype_name(t.dtype)} in the model; "
                f"convert the model first (e.g. model.to(torch.{_dtype_name(e.dtype)})) or load with strict=False to cast"
            )
    if strict:
        extra = [e for e in h.entries if e.key not in own_entries]
        if extra:
            raise CheckpointError(
                f"{other}: the file has {extra[0].key!r} (shape {extra[0].shape}) which the model does not have "
                f"({len(extra)} such key(s); load with strict=False to ignore them)"
            )
        stale = [p for p in own_masks.values() if p not in set(h.masked)]
        if stale:
            raise CheckpointError(
                f"{h.where}: the model has a mask for {stale[0]!r} but the file stores none for it "
                f"({len(stale)} such mask(s)); remove the masks (sparseforge.masking.finalize) or load with strict=False"
            )


def load_compressed_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense ``state_dict`` (mask buffers included) stored in a compressed checkpoint.

    Fully validated (header, encodings, content checksum); useful to inspect a file or to
    feed another tool. Pruned positions are ``+0.0``; masks are bool tensors ``<key>_mask``.
    """
    return _decode(_read_header(path))


def load_compressed(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadCompressedResult:
    """Load a file written by :func:`save_compressed` into ``model``, bit-exactly.

    Weights and masks are restored; a model without masks gets ``<param>_mask`` buffers for
    every parameter that had one when saved. The file is read with safetensors only, so no code
    from it is ever executed. Everything is validated before the model is touched: a failure
    leaves the model exactly as it was.

    Args:
        model: an instance of the architecture that was saved (any device; tensors are copied
            to the devices of the model's own tensors).
        path: the ``.safetensors`` file.
        strict: if True (default) keys, shapes and dtypes must match exactly and the model must
            not carry masks the file does not restore. If False, keys missing on either side are
            skipped (their tensors and masks are left as they are) and dtypes are cast; shapes
            must still match.

    Returns:
        a :class:`LoadCompressedResult`: ``.model`` (the same ``model``), ``.layers`` the
        parameters whose masks were restored, ``.skipped`` the file's keys left out (``strict=False``).

    Raises:
        CheckpointError: missing file; not a safetensors file, truncated or corrupted; another
            format version; a checkpoint for another architecture (names the first mismatching
            key with both shapes); inconsistent encodings (bitmask/values counts, CSR indices
            out of range); data bytes that fail the content checksum.
    """
    check_module(model)
    if not isinstance(strict, bool):
        raise ConfigError(f"strict must be True or False; got {strict!r:.80}")
    h = _read_header(path)
    _check_model(h, model, strict)
    state = _decode(h)
    skipped: list[tuple[str, str]] = []
    if not strict:
        # keep what the model has: its own keys, and the masks of parameters it has
        own = model.state_dict()
        mask_param = {p + MASK_SUFFIX: p for p in h.masked}
        kept = {k: v for k, v in state.items() if k in own or (k in mask_param and mask_param[k] in own)}
        skipped = [(k, "not in the model (strict=False)") for k in state if k not in kept]
        state = kept
    layers = load_masked_state_dict(model, state, strict=strict)
    return LoadCompressedResult(model=model, layers=list(layers), skipped=skipped, path=Path(path),
                                encodings={e.key: e.encoding for e in h.entries})


def compressed_size_report(model: nn.Module | None, path: str | os.PathLike) -> dict[str, Any]:
    """Dense versus compressed bytes of a compressed checkpoint, per tensor and in total.

    Reads the header only (no tensor data). With a ``model`` the file is first checked to fit
    it (same keys, shapes and dtypes); ``None`` reports the file alone.

    Returns:
        a dict with ``path``, ``format``, ``file_bytes`` (on disk), ``header_bytes``,
        ``stored_bytes`` (tensor data), ``dense_bytes`` (sum of ``numel * element_size`` of the
        dense tensors, i.e. what ``torch.save`` of the state without masks holds),
        ``mask_bytes`` (what the bool mask buffers would add to a dense checkpoint), ``ratio``
        (``file_bytes / dense_bytes``), ``masked``, ``metadata`` (the caller's header entries)
        and ``tensors``: key -> ``{encoding, shape, dtype, dense_bytes, stored_bytes, ratio}``
        (``stored_bytes / dense_bytes``).
    """
    check_module(model, allow_none=True)
    h = _read_header(path)
    if model is not None:
        _check_model(h, model, strict=True)
    tensors: dict[str, dict[str, Any]] = {}
    for e in h.entries:
        stored = 0
        for name in _expected_components(e):
            shape, code = h.components[name]
            stored += math.prod(shape) * _CODE_SIZES[code]
        tensors[e.key] = {
            "encoding": e.encoding,
            "shape": list(e.shape),
            "dtype": _dtype_name(e.dtype),
            "dense_bytes": e.dense_bytes,
            "stored_bytes": stored,
            "ratio": stored / e.dense_bytes if e.dense_bytes else (0.0 if stored == 0 else math.inf),
        }
    file_bytes = h.path.stat().st_size
    dense = sum(r["dense_bytes"] for r in tensors.values())
    stored = sum(r["stored_bytes"] for r in tensors.values())
    by_key = {e.key: e for e in h.entries}
    return {
        "path": str(h.path),
        "format": FORMAT_VERSION,
        "file_bytes": file_bytes,
        "header_bytes": file_bytes - stored,
        "stored_bytes": stored,
        "dense_bytes": dense,
        "mask_bytes": sum(by_key[k].numel for k in h.masked),
        "ratio": file_bytes / dense if dense else math.inf,
        "masked": list(h.masked),
        "metadata": dict(h.metadata),
        "tensors": tensors,
    }
