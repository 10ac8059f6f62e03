"""Offline English text for language-model training and calibration. Nothing downloads at run time
except :func:`ensure_austen`, once, through the system's Debian package manager.

Two sources:

* ``"austen"`` -- Jane Austen's six completed novels (*Sense and Sensibility*, *Pride and
  Prejudice*, *Mansfield Park*, *Emma*, *Northanger Abbey*, *Persuasion*; Project Gutenberg
  texts, public domain), as packaged by Julia Silge's R package ``janeaustenr`` (MIT) and shipped
  by Debian as ``r-cran-janeaustenr``. About 4 M characters. The package stores the novels as R
  objects in a lazy-load database (``data/Rdata.rdx`` + ``data/Rdata.rdb``); this module reads
  that format, and plain ``.rda`` files, with its own small parser of R's XDR serialization, so
  neither R nor an extra Python package is needed.
* ``"text:PATH"`` -- any local UTF-8 text file, one document (handy for tests and for your own
  calibration text).

Splits: every document (each novel, or the one file) is cut into a head for training and a
*contiguous tail* of ``val_fraction`` of its characters for validation, so no validation text is
ever seen in training and every novel is represented in both. The heads are joined by a blank
line (``"\\n\\n"``) into one training stream, the tails likewise into one validation stream.

Tokenizers: ``"byte"`` (UTF-8 bytes, vocabulary 256, nothing is ever unknown) and ``"char"``
(the sorted set of characters of the *training* text, plus one unknown id at the end, so the
vocabulary cannot leak validation characters).

Example::

    from sparseforge.text import load_text_corpus, lm_batches
    corpus = load_text_corpus("austen", tokenizer="char")
    for x, y in lm_batches(corpus.train, block_size=128, batch_size=32, seed=0, steps=1000):
        ...  # x, y: [32, 128] int64, y is x shifted by one token
"""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core.rng import stream_generator
from .errors import ConfigError, check_int

__all__ = [
    "AUSTEN_NOVELS",
    "AUSTEN_PACKAGE",
    "DATA_ENV_VAR",
    "TOKENIZERS",
    "TextCorpus",
    "austen_available",
    "default_austen_root",
    "ensure_austen",
    "lm_batches",
    "lm_eval_batches",
    "load_text_corpus",
    "read_austen_novels",
]

#: Debian package holding the novels (``apt-get download r-cran-janeaustenr``).
AUSTEN_PACKAGE = "r-cran-janeaustenr"
#: Environment variable naming sparseforge's data folder; the novels go to ``$SPARSEFORGE_DATA/janeaustenr``.
DATA_ENV_VAR = "SPARSEFORGE_DATA"
#: R object name -> title of the six novels, in publication order (the package's own order).
AUSTEN_NOVELS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
#: Tokenizers accepted by :func:`load_text_corpus`.
TOKENIZERS = ("char", "byte")

# where ``dpkg -x`` puts the R package, and where ``apt-get install`` puts it system-wide
_PKG_SUBDIR = Path("usr/lib/R/site-library/janeaustenr")
_SYSTEM_DIRS = (Path("/usr/lib/R/site-library/janeaustenr"), Path("/usr/local/lib/R/site-library/janeaustenr"))
_DOC_SEPARATOR = "\n\n"
_UNKNOWN_CHAR = "\ufffd"
_APT_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------
# R serialization (XDR, format versions 2 and 3), enough for data frames and character vectors
# ---------------------------------------------------------------------------------------------

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
class _RObject:
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
            return _RObject(value, _attributes(self.item()))
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
        return _RObject(items, attrs) if attrs else items

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
            src = src.value if isinstance(src, _RObject) else src
            value = [None if v == _NA_INT else str(v) for v in np.asarray(src).tolist()]
        elif cls.startswith("wrap_"):
            value = state[0] if isinstance(state, list) else state
            if isinstance(value, _RObject):
                value = value.value
        else:
            raise self.fail(f"unsupported ALTREP class {cls!r}")
        attrs = _attributes(attr)
        return _RObject(value, attrs) if attrs else value


def _attributes(pairlist: Any) -> dict[str, Any]:
    if isinstance(pairlist, _RObject):
        pairlist = pairlist.value
    if not isinstance(pairlist, list):
        return {}
    return {str(tag): value for tag, value in pairlist if tag is not None}


def _named(obj: Any, what: str) -> dict[str, Any]:
    """An R named list (or pairlist) as a dict."""
    if isinstance(obj, _RObject) and isinstance(obj.value, list) and "names" in obj.attributes:
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


def _read_lazyload_db(base: Path) -> dict[str, Any]:
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


def _read_rda(path: Path) -> dict[str, Any]:
    """All objects of an ``.rda``/``.RData`` file (``save()``): header ``RDX2``/``RDX3`` + a pairlist."""
    data = _decompress(path.read_bytes(), str(path))
    if data[:5] not in (b"RDX2\n", b"RDX3\n"):
        raise ConfigError(f"cannot parse R data in {path}: not an XDR .rda file (header {data[:5]!r})")
    return _named(_RReader(data[5:], str(path)).read(), str(path))


# ---------------------------------------------------------------------------------------------
# Jane Austen: finding, fetching and reading the package
# ---------------------------------------------------------------------------------------------


def default_austen_root() -> Path:
    """``$SPARSEFORGE_DATA/janeaustenr`` if that variable is set, else ``~/.cache/sparseforge/janeaustenr``."""
    base = os.environ.get(DATA_ENV_VAR)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "sparseforge") / "janeaustenr"


def _package_dir(root: Path) -> Path | None:
    """The R package folder (holding ``data/``) under ``root``, for either layout we accept."""
    for cand in (root, root / _PKG_SUBDIR):
        data = cand / "data"
        if (data / "Rdata.rdx").is_file() and (data / "Rdata.rdb").is_file():
            return cand
        if data.is_dir() and any(p.suffix.lower() in (".rda", ".rdata") for p in data.iterdir()):
            return cand
    return None


def austen_available(root: str | os.PathLike[str] | None = None) -> bool:
    """True if the Austen novels are already on disk (never downloads)."""
    try:
        ensure_austen(root, download=False)
    except ConfigError:
        return False
    return True


def ensure_austen(root: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """Find the extracted ``janeaustenr`` R package, fetching it once if needed; return its folder.

    Looks in ``root`` (default :func:`default_austen_root`), which may be either the package
    folder itself (the one holding ``data/``) or the target of ``dpkg -x`` (the package then
    lies in ``usr/lib/R/site-library/janeaustenr`` below it); without ``root`` also in the
    system-wide install of ``apt-get install r-cran-janeaustenr``. If nothing is found and
    ``download`` is true, it extracts an ``r-cran-janeaustenr_*.deb`` lying in ``root``, or runs
    ``apt-get download r-cran-janeaustenr`` (needs no root rights, only the Debian package
    registry) and ``dpkg -x`` into a temporary folder that is renamed to ``root`` when complete,
    so an interrupted fetch never leaves a half-extracted corpus behind.

    Returns:
        the package folder, e.g. ``~/.cache/sparseforge/janeaustenr/usr/lib/R/site-library/janeaustenr``.

    Raises:
        ConfigError: the novels are not there and could not be fetched; the message says what
            to run by hand.
    """
    explicit = root is not None
    target = Path(root).expanduser() if explicit else default_austen_root()
    for cand in (target,) if explicit else (target, *_SYSTEM_DIRS):
        found = _package_dir(cand)
        if found is not None:
            return found
    how = (
        f"get it with: cd /tmp && apt-get download {AUSTEN_PACKAGE} && dpkg -x {AUSTEN_PACKAGE}_*.deb {target} "
        f"(or `apt-get install {AUSTEN_PACKAGE}`, or set ${DATA_ENV_VAR} / pass root= to a folder holding it)"
    )
    if not download:
        raise ConfigError(f"Jane Austen corpus not found in {target}; {how}")
    try:
        _fetch_austen(target)
    except (OSError, subprocess.SubprocessError) as e:
        found = _package_dir(target)  # another process may have fetched it meanwhile
        if found is not None:
            return found
        raise ConfigError(f"Jane Austen corpus not found in {target} and fetching it failed ({e}); {how}") from e
    found = _package_dir(target)
    if found is None:
        raise ConfigError(f"the {AUSTEN_PACKAGE} package extracted into {target} holds no R data files; {how}")
    return found


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise subprocess.SubprocessError(f"`{' '.join(cmd)}` exited with {done.returncode}: {tail[0]}")


def _fetch_austen(target: Path) -> None:
    if target.exists() and any(p for p in target.iterdir() if not p.name.endswith(".deb")):
        raise OSError(f"{target} exists and is not empty but holds no janeaustenr package")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".janeaustenr-", dir=target.parent) as tmp:
        work = Path(tmp)
        debs = sorted(target.glob(f"{AUSTEN_PACKAGE}_*.deb")) if target.is_dir() else []
        if not debs:
            if shutil.which("apt-get") is None:
                raise OSError("apt-get is not available on this system")
            _run(["apt-get", "download", AUSTEN_PACKAGE], cwd=work)
            debs = sorted(work.glob(f"{AUSTEN_PACKAGE}_*.deb"))
            if not debs:
                raise OSError(f"apt-get download left no {AUSTEN_PACKAGE}_*.deb")
        if shutil.which("dpkg") is None:
            raise OSError("dpkg is not available on this system")
        extracted = work / "extracted"
        _run(["dpkg", "-x", str(debs[-1].resolve()), str(extracted)], cwd=work)
        if target.is_dir():  # only .deb files in it (checked above): keep them next to the extraction
            for deb in target.iterdir():
                os.replace(deb, extracted / deb.name)
            target.rmdir()
        os.replace(extracted, target)


@functools.lru_cache(maxsize=4)
def _parse_austen(package_dir: str, signature: tuple[Any, ...]) -> tuple[tuple[str, str], ...]:
    del signature  # part of the cache key only: a re-extracted package is parsed again
    data_dir = Path(package_dir) / "data"
    if (data_dir / "Rdata.rdx").is_file():
        objects = _read_lazyload_db(data_dir / "Rdata")
    else:
        objects = {}
        for path in sorted(data_dir.iterdir()):
            if path.suffix.lower() in (".rda", ".rdata"):
                objects.update(_read_rda(path))
    novels = []
    for key, title in AUSTEN_NOVELS.items():
        obj = objects.get(key)
        lines = obj.value if isinstance(obj, _RObject) else obj
        if not isinstance(lines, list) or not all(isinstance(s, str) or s is None for s in lines):
            raise ConfigError(
                f"{data_dir} does not hold the novel {key!r} as a character vector; found objects {sorted(objects)}"
            )
        # Gutenberg line breaks are kept: the model learns them like any other character
        novels.append((title, "\n".join(s or "" for s in lines).strip("\n") + "\n"))
    return tuple(novels)


def read_austen_novels(root: str | os.PathLike[str] | None = None, *, download: bool = True) -> dict[str, str]:
    """The six novels as ``{title: text}`` in publication order (lines joined with ``"\\n"``).

    ``root`` and ``download`` are passed to :func:`ensure_austen`. Parsed once per process.
    """
    pkg = ensure_austen(root, download=download)
    data_dir = pkg / "data"
    signature = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.iterdir()))
    return dict(_parse_austen(str(pkg), signature))


# ---------------------------------------------------------------------------------------------
# Corpus and tokenizers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """A tokenized text corpus split into a training and a validation token stream.

    Attributes:
        name: the corpus name it was loaded with (``"austen"`` or ``"text:PATH"``).
        train: 1-D int64 tensor of training tokens.
        val: 1-D int64 tensor of validation tokens (the held-out tails of the documents).
        vocab_size: number of token ids; every id in ``train`` and ``val`` is below it.
        tokenizer: ``"char"`` or ``"byte"``.
        chars: the character vocabulary of a ``"char"`` corpus, sorted; id ``i`` is ``chars[i]``
            and ``len(chars)`` is the unknown id. Empty for ``"byte"``.
        documents: titles of the documents, in the order their parts appear in both streams.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    tokenizer: str
    chars: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    _codepoints: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # sorted code points of the vocabulary: searchsorted encodes millions of chars at once
        object.__setattr__(self, "_codepoints", np.array([ord(c) for c in self.chars], dtype=np.uint32))

    @property
    def unk_id(self) -> int | None:
        """Id of characters outside the training vocabulary (``"char"`` only), else None."""
        return len(self.chars) if self.tokenizer == "char" else None

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` as a 1-D int64 tensor (unknown characters map to :attr:`unk_id`)."""
        if not isinstance(text, str):
            raise ConfigError(f"text must be a str; got {type(text).__name__}")
        if self.tokenizer == "byte":
            return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, points)
        inside = ids < len(self._codepoints)
        known = np.zeros(points.shape, dtype=bool)
        known[inside] = self._codepoints[ids[inside]] == points[inside]
        return torch.from_numpy(np.where(known, ids, len(self.chars)).astype(np.int64))

    def decode(self, tokens: torch.Tensor | Sequence[int]) -> str:
        """The text of a 1-D sequence of token ids (the unknown id decodes to U+FFFD)."""
        ids = torch.as_tensor(tokens).reshape(-1)
        if ids.numel() == 0:
            return ""  # an empty list becomes a float tensor; nothing to check
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ConfigError(f"tokens must be integer ids; got dtype {ids.dtype}")
        ids = ids.to(torch.int64).cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0].item()
            raise ConfigError(f"tokens must be ids in [0, {self.vocab_size}); got {bad}")
        if self.tokenizer == "byte":
            return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")
        table = [*self.chars, _UNKNOWN_CHAR]
        return "".join(table[i] for i in ids.tolist())

    def __repr__(self) -> str:
        return (
            f"TextCorpus(name={self.name!r}, tokenizer={self.tokenizer!r}, vocab_size={self.vocab_size}, "
            f"train={self.train.numel()}, val={self.val.numel()}, documents={len(self.documents)})"
        )


def _check_val_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"val_fraction must be a number in (0, 1); got {value!r}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1) (exclusive: both splits need text); got {v}")
    return v


def _split_document(title: str, text: str, val_fraction: float) -> tuple[str, str]:
    n_val = round(len(text) * val_fraction)
    if n_val < 1 or n_val >= len(text):
        raise ConfigError(
            f"document {title!r} has {len(text)} characters, too few to hold out val_fraction={val_fraction} "
            f"of them (it gives {n_val} validation characters); use a longer text or another val_fraction"
        )
    return text[:-n_val], text[-n_val:]


def _read_text_file(spec: str) -> tuple[str, str]:
    path = Path(spec).expanduser()
    if not spec or not path.is_file():
        raise ConfigError(f"name 'text:{spec}' must point to an existing text file; {str(path)!r} is not a file")
    try:
        return path.name, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"name 'text:{spec}': {path} is not UTF-8 text ({e})") from e


def load_text_corpus(
    name: str = "austen",
    *,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    tokenizer: str = "char",
    download: bool = True,
) -> TextCorpus:
    """Load and tokenize a text corpus; deterministic (same arguments, same tensors).

    Each document (each novel, or the one file) contributes its first ``1 - val_fraction`` of
    characters to ``train`` and the contiguous rest to ``val``, so validation text is never
    trained on. Parts are joined by a blank line. The ``"char"`` vocabulary is built from the
    training text only; characters that occur only in validation text become the unknown id.

    Args:
        name: ``"austen"`` (Jane Austen's six novels, see :func:`ensure_austen`) or
            ``"text:PATH"`` for a local UTF-8 text file.
        root: where the Austen package lies or is fetched to (``"austen"`` only).
        val_fraction: fraction of each document's characters held out, in (0, 1).
        tokenizer: ``"char"`` (characters, vocabulary = training characters + 1 unknown) or
            ``"byte"`` (UTF-8 bytes, vocabulary 256).
        download: allow :func:`ensure_austen` to fetch the Debian package when it is missing.

    Raises:
        ConfigError: unknown name or tokenizer, ``val_fraction`` outside (0, 1), a missing or
            non-UTF-8 file, a document too short to split, or Austen not available.

    Example (the corpus :func:`~sparseforge.lm.train_lm` takes, by object or by name)::

        corpus = load_text_corpus("austen", tokenizer="char", val_fraction=0.1)
        print(corpus.vocab_size, corpus.train.numel(), corpus.val.numel(), corpus.documents)
    """
    if not isinstance(name, str):
        raise ConfigError(f"name must be a string: 'austen' or 'text:PATH'; got {name!r}")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of {list(TOKENIZERS)}; got {tokenizer!r}")
    val_fraction = _check_val_fraction(val_fraction)
    key = name.strip()
    if key.lower() == "austen":
        documents = list(read_austen_novels(root, download=download).items())
    elif key.lower().startswith("text:"):
        documents = [_read_text_file(key[5:])]
    else:
        raise ConfigError(f"unknown text corpus name {name!r}; allowed: 'austen' or 'text:PATH' (a local UTF-8 file)")
    parts = [_split_document(title, text, val_fraction) for title, text in documents]
    train_text = _DOC_SEPARATOR.join(head for head, _ in parts)
    val_text = _DOC_SEPARATOR.join(tail for _, tail in parts)
    if tokenizer == "byte":
        chars: tuple[str, ...] = ()
        vocab_size = 256
    else:
        chars = tuple(sorted(set(train_text)))
        vocab_size = len(chars) + 1
    # encode with a vocabulary-only corpus first, so the stored corpus has its final tensors
    proto = TextCorpus(key, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), vocab_size,
                       tokenizer, chars, tuple(title for title, _ in documents))
    return TextCorpus(key, proto.encode(train_text), proto.encode(val_text), vocab_size, tokenizer, chars,
                      proto.documents)


# ---------------------------------------------------------------------------------------------
# Batches for language modelling
# ---------------------------------------------------------------------------------------------


def _check_tokens(tokens: Any, block_size: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point() \
            or tokens.is_complex() or tokens.dtype == torch.bool:
        if isinstance(tokens, torch.Tensor):
            shown = f"a {tokens.dim()}-D {tokens.dtype} tensor"
        else:
            shown = type(tokens).__name__
        raise ConfigError(f"tokens must be a 1-D integer tensor (e.g. TextCorpus.train); got {shown}")
    check_int(block_size, "block_size", minimum=1)
    n = tokens.numel()
    if n < block_size + 1:
        raise ConfigError(
            f"block_size must be at most {max(n - 1, 0)} for a split of {n} tokens "
            f"(a window needs block_size + 1 tokens); got {block_size}"
        )
    return tokens


def lm_batches(
    tokens: torch.Tensor,
    block_size: int,
    batch_size: int,
    *,
    seed: int,
    steps: int | None,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random contiguous training windows: yields ``(x, y)``, each ``[batch_size, block_size]`` int64.

    Window starts are drawn uniformly (with replacement) from every position that leaves room
    for ``block_size + 1`` tokens; ``y`` is ``x`` shifted left by one token (next-token
    targets). The draws come from the ``"lm-batches"`` stream derived from ``seed``
    (:func:`sparseforge.core.rng.stream_generator`), independent of ``torch.manual_seed``, so
    the same seed gives the same batches in any process. Arguments are checked when this is
    called, not at the first ``next()``.

    Args:
        tokens: 1-D integer tensor, e.g. ``corpus.train``.
        block_size: tokens per window (the model's context length).
        batch_size: windows per batch.
        seed: seed of the window stream.
        steps: number of batches to yield, or None for an endless stream.
        start: skip the first ``start`` batches of that stream (their draws are made, their
            windows are not gathered): a resumed run continues with the batches it would
            have seen. ``steps`` counts from the beginning, so ``steps - start`` are yielded.

    Raises:
        ConfigError: ``tokens`` not a 1-D integer tensor, ``block_size`` or ``batch_size``
            below 1, ``block_size`` too large for ``tokens``, ``steps`` below 1, or ``start``
            negative or beyond ``steps``.
    """
    tokens = _check_tokens(tokens, block_size)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(seed, "seed")
    if steps is not None:
        check_int(steps, "steps", minimum=1)
    check_int(start, "start", minimum=0)
    if steps is not None and start > steps:
        raise ConfigError(f"start must be in [0, steps={steps}]; got {start}")
    generator = stream_generator(seed, "lm-batches")
    offsets = torch.arange(block_size)
    n_starts = tokens.numel() - block_size

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(start):  # the same draws as the batches skipped, so the stream lines up
            torch.randint(n_starts, (batch_size, 1), generator=generator)
        step = start
        while steps is None or step < steps:
            starts = torch.randint(n_starts, (batch_size, 1), generator=generator)
            idx = (starts + offsets).to(tokens.device)
            # two gathers rather than slicing one window: both tensors come out contiguous
            yield tokens[idx].to(torch.int64), tokens[idx + 1].to(torch.int64)
            step += 1

    return windows()


def lm_eval_batches(
    tokens: torch.Tensor, block_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation windows: non-overlapping ``(x, y)`` windows covering ``tokens`` in order.

    Window ``i`` starts at ``i * block_size``; there are ``(len(tokens) - 1) // block_size`` of
    them (the last partial window is dropped, so every prediction has a full-length context
    budget), grouped in batches of ``batch_size`` (the last batch may be smaller). Averaging
    the loss over all of them gives the validation loss / perplexity of a split.

    Raises:
        ConfigError: as :func:`lm_batches`.
    """
    tokens = _check_tokens(tokens, block_size)
    check_int(batch_size, "batch_size", minimum=1)
    n_windows = (tokens.numel() - 1) // block_size
    offsets = torch.arange(block_size, device=tokens.device)

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, n_windows, batch_size):
            starts = torch.arange(first, min(first + batch_size, n_windows), device=tokens.device) * block_size
            idx = starts[:, None] + offsets
            yield tokens[idx].to(torch.int64), tokens[idx + 1].to(torch.int64)

    return windows()
