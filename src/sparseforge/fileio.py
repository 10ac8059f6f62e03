"""Reading and writing sparseforge's files safely: no code ever runs from a file, no file is ever half-written.

Every file the package reads goes through one of the loaders here, and every file it writes
through :func:`atomic_write` (or one of its typed faces):

* :func:`load_torch` -- ``torch.load`` with ``weights_only=True``: only tensors, plain
  containers and numbers are rebuilt, plus the explicit allow-list :data:`SAFE_GLOBALS`
  (today empty: every file the package writes holds nothing else). A pickle that asks for any
  other global (``os.system``, ``builtins.exec``, a user class) is refused before anything runs.
  A zip-format file's CRC-32 checksums are verified first (``torch.load`` itself does not),
  so flipped bytes in the tensor data are refused instead of loaded.
* :func:`load_safetensors` -- safetensors (no pickle at all), with the header checked, and the
  tensors checked against the SHA-256 that :func:`atomic_save_safetensors` records in the
  header (files from other tools carry none and are read as they are).
* :func:`read_json` -- JSON, with a truncated or foreign file reported in one line.
* :func:`atomic_write` -- write into a temporary file in the target's folder, ``fsync`` it,
  then ``os.replace`` it over the target: a process killed at any instant, or a full disk,
  leaves either the old file or the new one, never half of either; the temporary file is
  removed on failure.
* :func:`atomic_dir` -- the same for a folder of several files (a model folder, a cache
  entry): they are written into a temporary folder beside the target, which then takes the
  target's place in one rename (Linux ``renameat2(RENAME_EXCHANGE)`` where available); the
  old folder is kept until the new one is complete.

Every failure to read is a :class:`~sparseforge.errors.CheckpointError` (a ``ValueError``)
naming the file, what it was expected to hold and why it was refused.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import CheckpointError

__all__ = [
    "SAFE_GLOBALS", "CHECKSUM_KEY", "tensors_sha256", "first_sentence", "require_file", "load_torch", "read_checkpoint", "load_safetensors", "read_json",
    "atomic_path", "atomic_dir", "atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_save", "atomic_save_safetensors",
]

#: The only non-builtin Python objects a ``.pt`` file may make ``torch.load`` build. Add a type
#: here only if it is a plain value class of this package (no behaviour on unpickling).
SAFE_GLOBALS: tuple[Any, ...] = ()

#: The safetensors header entry where :func:`atomic_save_safetensors` records :func:`tensors_sha256`.
CHECKSUM_KEY = "sparseforge.tensors_sha256"


def require_file(path: str | os.PathLike, what: str, param: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an existing file (``what`` names its expected content)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{param}no such file {str(path)!r} (expected a {what})")
    if path.is_dir():
        raise CheckpointError(f"{param}{str(path)!r} is a folder, not a {what} file")


def load_torch(path: str | os.PathLike, *, what: str = "checkpoint", param: str = "") -> Any:
    """Load a ``torch.save`` file without running any code from it.

    ``torch.load(weights_only=True)`` on CPU, with only :data:`SAFE_GLOBALS` allowed beyond
    tensors, containers and numbers. ``what`` names the expected content in messages,
    ``param`` (``"checkpoint: "``) the argument the path came from.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or asks for a
            Python global outside the allow-list (a pickle that would run code).
    """
    import torch

    path = Path(path)
    require_file(path, what, param)
    _check_zip_crcs(path, what, param)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message says "Weights only load failed", advises turning the safe mode off
        # (never here) and names the refused global on a later line: keep only that line
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if "global" in ln.lower()), "")
        if detail:
            raise CheckpointError(
                f"{param}refusing to load {what} {str(path)!r}: it holds Python objects beyond tensors and plain "
                f"data ({detail}); sparseforge never runs code from a file, so only load files you wrote "
                f"with sparseforge or plain torch.save of tensors") from None
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: {first_sentence(e)}") from None
    except Exception as e:
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: {first_sentence(e)} "
                              "(truncated, corrupt or not a torch.save file)") from None


def _check_zip_crcs(path: Path, what: str, param: str) -> None:
    """Refuse a zip-format torch file whose records fail their CRC-32 (``torch.load`` never checks them)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # a legacy or foreign file: torch.load below judges it
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.CRC == 0 and info.file_size:
                    continue  # written with torch's compute_crc32 off: nothing to check against
                with zf.open(info) as f:
                    while f.read(1 << 20):  # zipfile raises at the end of a record whose CRC differs
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: {first_sentence(e)} "
                              "(the file is truncated or corrupt)") from None


def read_checkpoint(path: Path, fmt: str, what: str, param: str = "") -> dict[str, Any]:
    """Load a checkpoint dict whose ``"format"`` is ``fmt``, or raise :class:`CheckpointError`.

    Read with :func:`load_torch` (``weights_only``: a crafted file's code
    never runs). A truncated or foreign file is refused whole, never half-loaded. ``what``
    names the kind of checkpoint in the message, ``param`` (e.g. ``"checkpoint: "``) the
    argument it came from.
    """
    ck = load_torch(path, what=what, param=param)
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise CheckpointError(f"{param}{str(path)!r} is not a {what}")
    return ck


def load_safetensors(path: str | os.PathLike, *, what: str = "safetensors file", param: str = "",
                     with_metadata: bool = False) -> Any:
    """The tensors of a safetensors file (and its header metadata if ``with_metadata``).

    Raises:
        CheckpointError: the file is missing, truncated or not safetensors.
    """
    path = Path(path)
    require_file(path, what, param)
    try:
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors' Rust panics derive from BaseException, not Exception
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: {first_sentence(e)} "
                              "(truncated, corrupt or not a safetensors file)") from None
    recorded = meta.pop(CHECKSUM_KEY, None)
    if recorded is not None and recorded != tensors_sha256(tensors):
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: its tensors do not match the checksum in its "
                              "header (the data bytes are corrupt)")
    return (tensors, meta) if with_metadata else tensors


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order), as hex."""
    import torch

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_json(path: str | os.PathLike, *, what: str = "JSON file", param: str = "") -> Any:
    """Parse a JSON file, or raise :class:`CheckpointError` naming it (missing, truncated, not JSON)."""
    path = Path(path)
    require_file(path, what, param)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: not valid JSON ({first_sentence(e)}); "
                              "the file is truncated or corrupt") from None
    except OSError as e:
        raise CheckpointError(f"{param}cannot read {what} {str(path)!r}: {e.strerror or e}") from None


def first_sentence(e: BaseException) -> str:
    """The first sentence of ``e``'s message (the type's name if it has none), for one-line errors."""
    # the libraries' own messages run to several sentences of advice (torch's suggests
    # turning its safe mode off): keep the first sentence, which says what is wrong
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    cut = line.find(". ")
    return line[: cut + 1] if 0 < cut < len(line) - 2 else line


_HOST = socket.gethostname().replace(".", "_").replace(os.sep, "_") or "host"


def _tmp_prefix(path: Path) -> str:
    # host and pid in the name: a later write can tell the leftovers of a killed writer from
    # the temporary files of writers still running (here or on another machine sharing the folder)
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _remove_stale(path: Path, suffix: str) -> None:
    """Delete temporary files (or folders) for ``path`` left by writers on this host that were killed."""
    head = f".{path.name}.{_HOST}-"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        if not (p.name.startswith(head) and p.name.endswith(suffix)):
            continue
        pid = p.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue  # ours: another thread of this process may be writing it
        try:
            os.kill(int(pid), 0)
            continue  # that writer still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue  # exists, owned by someone else
        _remove(p)


def _fsync_dir(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk; not every file
    # system lets a folder be opened for that, and it is not needed for atomicity
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on a clean exit it replaces ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``save_pretrained``
    of one file). The file is ``fsync``-ed before ``os.replace``; on any error it is deleted
    and ``path`` keeps its previous content.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    _remove_stale(path, ".tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temporary file, which then replaces ``path``.

    The temporary file lives in the same folder (so the rename cannot cross file systems),
    is flushed and ``fsync``-ed before ``os.replace``, and is deleted if ``write`` or the disk
    fails; the previous ``path``, if any, is untouched until the rename. Returns ``path``.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write` (read it back with :func:`load_torch`)."""
    import torch

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            # a full disk or a quota surfaces as torch's zip writer failing to close the archive
            # while the OSError that caused it propagates: report the OSError, which says why
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise

    return atomic_write(path, write)


def atomic_save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (contiguous, unshared) as safetensors through :func:`atomic_path`.

    The header also records :func:`tensors_sha256` under :data:`CHECKSUM_KEY`, which
    :func:`load_safetensors` verifies, so corrupted data bytes are refused on reading.
    """
    from safetensors.torch import save_file

    meta = {**(dict(metadata) if metadata is not None else {}), CHECKSUM_KEY: tensors_sha256(tensors)}
    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=meta)
    return Path(path)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the kernel or this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` at ``path``; whatever was there (file or folder) is removed after."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        os.replace(tmp, path)  # rename(2) replaces an empty folder in one step
        return
    if _exchange(tmp, path):
        _remove(tmp)  # now the old content
        return
    # no atomic exchange here: move the old one aside first; a crash between the two renames
    # leaves the complete old folder at the hidden name, never a mix of old and new files
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; on a clean exit it replaces ``path`` whole.

    For outputs of several files (a model folder with its weights and description, a cache
    entry). Write every file into the yielded folder; when the ``with`` block ends without an
    error the files are ``fsync``-ed and the folder takes ``path``'s place in one rename, so a
    reader (or a process killed at any instant) sees the old folder or the new one, never a mix.
    The old ``path`` (a folder, a file, or nothing) stays untouched until the new folder is
    complete and is deleted after. On any error the temporary folder is deleted and ``path``
    keeps its previous content. Callers decide beforehand whether ``path`` may be replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmpdir"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        yield tmp
        _fsync_tree(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    _remove_stale(path, ".tmpdir")

