"""A small reader of R's XDR serialization (format versions 2 and 3): enough for data frames and
character vectors in a lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``) or an ``.rda`` file.

It lets sparseforge read the Jane Austen novels that Debian ships as an R package without R
or an extra Python package. Pure parsing: it reads bytes and builds Python lists, strings and
:class:`RObject` values; it never evaluates anything in the data.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["RObject", "read_lazyload_db", "read_rda"]

# SEXP type codes and the pseudo-types of serialize.c
_NILSXP, _SYMSXP, _LISTSXP, _CLOSXP, _ENVSXP, _PROMSXP, _LANGSXP = 0, 1, 2, 3, 4, 5, 6
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _CPLXSXP, _STRSXP = 9, 10, 13, 14, 15, 16
_DOTSXP, _VECSXP, _EXPRSXP, _RAWSXP, _S4SXP = 17, 19, 20, 24, 25
_REFSXP, _NILVALUE, _GLOBALENV, _UNBOUNDVALUE, _MISSINGARG, _BASENAMESPACE = 255, 254, 253, 252, 251, 250
_EMPTYENV, _BASEENV, _ALTREP = 242, 241, 238
_PAIRLIST_TYPES = (_LISTSXP, _LANGSXP, _CLOSXP, _PROMSXP, _DOTSXP)
_NA_INT = -(2**31)
_LATIN1_MASK, _UTF8_MASK = 1 << 2, 1 << 3


class _RSymbol(str):
    """An R symbol (a name), kept apart from character data."""


@dataclass
class RObject:
    """An R value with attributes (names, class, levels, row.names ...)."""

    value: Any
    attributes: dict[str, Any]


class _RReader:
    """Reads one serialized R object from XDR bytes (the ``"X\\n"`` format of ``saveRDS``)."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source
        self.refs: list[Any] = []

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"cannot parse R data in {self.source}: {what} (at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: need {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper and lower halves
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        return n

    def array(self, dtype: str, n: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(n * size), dtype=dtype).astype(dtype[1:])

    def read(self) -> Any:
        head = self.take(2)
        if head != b"X\n":
            raise self.fail(f"only the XDR format 'X\\n' is supported, got header {head!r}")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name; strings carry their own flags
        elif version != 2:
            raise self.fail(f"unsupported serialization format version {version}")
        return self.item()

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        if kind == _NILVALUE:
            return None
        if kind in (_GLOBALENV, _UNBOUNDVALUE, _MISSINGARG, _BASENAMESPACE, _EMPTYENV, _BASEENV):
            return None  # environments and markers carry no data we need
        if kind == _REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"reference {index} to an object not read yet")
            return self.refs[index - 1]
        if kind == _SYMSXP:
            sym = _RSymbol(self.item() or "")
            self.refs.append(sym)
            return sym
        if kind == _ENVSXP:
            self.refs.append(None)  # registered before its contents, which may refer back to it
            self.int()  # locked flag
            for _ in range(4):  # enclosure, frame, hash table, attributes
                self.item()
            return None
        if kind in _PAIRLIST_TYPES:
            return self.pairlist(flags)
        if kind == _CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self.take(n)
            levels = flags >> 12
            return raw.decode("latin-1" if levels & _LATIN1_MASK and not levels & _UTF8_MASK else "utf-8", "replace")
        if kind == _ALTREP:
            return self.altrep()
        if kind == _S4SXP:
            value: Any = None
        elif kind in (_LGLSXP, _INTSXP):
            value = self.array(">i4", self.length())
        elif kind == _REALSXP:
            value = self.array(">f8", self.length())
        elif kind == _CPLXSXP:
            pairs = self.array(">f8", 2 * self.length())
            value = pairs[0::2] + 1j * pairs[1::2]
        elif kind == _RAWSXP:
            value = self.take(self.length())
        elif kind == _STRSXP:
            value = [self.item() for _ in range(self.length())]
        elif kind in (_VECSXP, _EXPRSXP):
            value = [self.item() for _ in range(self.length())]
        else:
            raise self.fail(f"unsupported R object type {kind}")
        if has_attr:  # vectors store attributes after their data
            return RObject(value, _attributes(self.item()))
        return value

    def pairlist(self, flags: int) -> Any:
        # iterate along the CDR chain instead of recursing: a pairlist can be long
        items: list[tuple[str | None, Any]] = []
        attrs: dict[str, Any] = {}
        first = True
        while True:
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            node_attrs = _attributes(self.item()) if has_attr else {}
            if first:
                attrs, first = node_attrs, False
            tag = self.item() if has_tag else None
            items.append((str(tag) if tag is not None else None, self.item()))
            flags = self.int()
            if flags & 0xFF not in _PAIRLIST_TYPES:
                # not a cons cell: the tail of the chain; push it back and read it as an item
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    items.append((None, tail))
                break
        return RObject(items, attrs) if attrs else items

    def altrep(self) -> Any:
        info, state, attr = self.item(), self.item(), self.item()
        cls = str(info[0][1]) if isinstance(info, list) and info else "?"
        if cls == "compact_intseq":
            n, start, step = (int(v) for v in np.asarray(state)[:3])
            value: Any = np.arange(start, start + n * step, step, dtype=np.int32)[:n]
        elif cls == "compact_realseq":
            n, start, step = np.asarray(state)[:3]
            value = start + step * np.arange(int(n), dtype=np.float64)
        elif cls == "deferred_string":
            src = state[0][1] if isinstance(state, list) else state
            src = src.value if isinstance(src, RObject) else src
            value = [None if v == _NA_INT else str(v) for v in np.asarray(src).tolist()]
        elif cls.startswith("wrap_"):
            value = state[0] if isinstance(state, list) else state
            if isinstance(value, RObject):
                value = value.value
        else:
            raise self.fail(f"unsupported ALTREP class {cls!r}")
        attrs = _attributes(attr)
        return RObject(value, attrs) if attrs else value


def _attributes(pairlist: Any) -> dict[str, Any]:
    if isinstance(pairlist, RObject):
        pairlist = pairlist.value
    if not isinstance(pairlist, list):
        return {}
    return {str(tag): value for tag, value in pairlist if tag is not None}


def _named(obj: Any, what: str) -> dict[str, Any]:
    """An R named list (or pairlist) as a dict."""
    if isinstance(obj, RObject) and isinstance(obj.value, list) and "names" in obj.attributes:
        return dict(zip(obj.attributes["names"], obj.value))
    if isinstance(obj, list) and obj and all(isinstance(x, tuple) and len(x) == 2 for x in obj):
        return {tag: value for tag, value in obj if tag is not None}
    raise ConfigError(f"{what} is not a named R list")


def _decompress(data: bytes, source: str) -> bytes:
    """Undo the gzip/bzip2/xz wrapping of an ``.rda``/``.rds`` file (plain data passes through)."""
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:3] == b"BZh":
            return bz2.decompress(data)
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise ConfigError(f"cannot parse R data in {source}: it does not decompress ({e})") from e
    return data


def read_lazyload_db(base: Path) -> dict[str, Any]:
    """All objects of an R lazy-load database ``base.rdx`` + ``base.rdb`` (``LazyData: true`` packages).

    The ``.rdx`` index is a compressed serialized list whose ``variables`` entry maps each name
    to ``(offset, length)`` in the ``.rdb`` file; every blob there is a 4-byte big-endian
    uncompressed size followed by zlib data, or, for ``compressed`` 2 and 3, by a type byte
    (``Z`` zlib, ``2`` bzip2, ``X`` xz, ``0`` stored) and the payload.
    """
    rdx, rdb = base.with_suffix(".rdx"), base.with_suffix(".rdb")
    index = _named(_RReader(_decompress(rdx.read_bytes(), str(rdx)), str(rdx)).read(), str(rdx))
    variables = _named(index.get("variables"), f"{rdx}: variables")
    blob_data = rdb.read_bytes()
    out: dict[str, Any] = {}
    for name, where in variables.items():
        offset, length = (int(v) for v in np.asarray(where)[:2])
        blob = blob_data[offset:offset + length]
        if len(blob) != length or length < 5:
            raise ConfigError(f"cannot parse R data in {rdb}: object {name!r} lies outside the file")
        size, body = struct.unpack(">I", blob[:4])[0], blob[4:]
        kind = body[:1]
        try:
            if kind == b"Z" and body[1:2] == b"\x78":
                raw = zlib.decompress(body[1:])
            elif kind == b"2":
                raw = bz2.decompress(body[1:])
            elif kind == b"X":
                raw = lzma.decompress(body[1:])
            elif kind == b"0":
                raw = body[1:]
            else:
                raw = zlib.decompress(body)
        except (zlib.error, OSError, EOFError, lzma.LZMAError) as e:
            raise ConfigError(f"cannot parse R data in {rdb}: object {name!r} does not decompress ({e})") from e
        if len(raw) != size:
            raise ConfigError(f"cannot parse R data in {rdb}: object {name!r} has {len(raw)} bytes, index says {size}")
        out[name] = _RReader(raw, f"{rdb}:{name}").read()
    return out


def read_rda(path: Path) -> dict[str, Any]:
    """All objects of an ``.rda``/``.RData`` file (``save()``): header ``RDX2``/``RDX3`` + a pairlist."""
    data = _decompress(path.read_bytes(), str(path))
    if data[:5] not in (b"RDX2\n", b"RDX3\n"):
        raise ConfigError(f"cannot parse R data in {path}: not an XDR .rda file (header {data[:5]!r})")
    return _named(_RReader(data[5:], str(path)).read(), str(path))
