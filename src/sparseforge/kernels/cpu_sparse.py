"""The custom CPU sparse kernel (C++/OpenMP), built on first use with ``torch.utils.cpp_extension``.

:func:`load_kernel` compiles ``csrc/csr_linear.cpp`` once per source version into
``$SPARSEFORGE_CACHE/kernels`` (default ``~/.cache/sparseforge/kernels``) with flags for the
host CPU (``-O3 -march=native -fopenmp``) and returns the loaded module, or ``None`` with the
reason from :func:`kernel_unavailable_reason` (no compiler, ``ninja`` missing, a build error,
or ``SPARSEFORGE_NO_CPP=1``). Callers fall back to torch's kernels and say why.

The module exposes ``csr_linear(rowptr, cols, vals, bias, K, x)`` (``y = x W^T + b`` for a
2-D fp32/bf16 ``x``) and ``csr_spmm_t(rowptr, cols, vals, XT)`` (``Y^T = W X^T`` for an fp32
``X^T [K, M]``), with ``rowptr`` int64, ``cols`` int16 (read as uint16, for ``K <= 65536``)
or int32, and ``vals`` fp32; and ``bsr_linear(browptr, bcols, vals, bias, K, x)`` for a
block-sparse weight (``vals [nblocks, bh, bw]`` fp32, ``bh`` a multiple of 8, ``browptr`` int64,
``bcols`` int32). See the comments in the C++ source for the loop structure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["load_kernel", "kernel_unavailable_reason", "cache_dir", "NO_CPP_ENV"]

#: set to ``1`` to never build or use the C++ kernel (forces the torch fallbacks)
NO_CPP_ENV = "SPARSEFORGE_NO_CPP"
_SOURCE = Path(__file__).resolve().parent / "csrc" / "csr_linear.cpp"
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where built kernels live: ``$SPARSEFORGE_CACHE/kernels`` or ``~/.cache/sparseforge/kernels``."""
    root = os.environ.get("SPARSEFORGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sparseforge") / "kernels"


def _disabled() -> bool:
    return os.environ.get(NO_CPP_ENV, "").strip() not in ("", "0")


def load_kernel() -> ModuleType | None:
    """The compiled kernel module, building it on first call; ``None`` if it cannot be built.

    The result (module or failure) is remembered for the process, except that setting
    ``SPARSEFORGE_NO_CPP=1`` always returns ``None``.
    """
    if _disabled():
        return None
    mod = _state.get("module")
    if mod is not None:  # fast path: called on every forward of a materialized layer
        return mod  # type: ignore[return-value]
    with _lock:
        if "module" in _state or "error" in _state:
            return _state.get("module")  # type: ignore[return-value]
        try:
            _state["module"] = _build()
        except Exception as e:  # any build failure is a fallback, never a crash
            _state["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
        return _state.get("module")  # type: ignore[return-value]


def kernel_unavailable_reason() -> str | None:
    """``None`` when :func:`load_kernel` works, else why the C++ kernel is not available."""
    if _disabled():
        return f"C++ kernel disabled ({NO_CPP_ENV}=1)"
    load_kernel()
    err = _state.get("error")
    return None if err is None else f"C++ kernel could not be built ({err})"


def _build() -> ModuleType:
    for tool in ("c++", "ninja"):
        if shutil.which(tool) is None and not (tool == "c++" and shutil.which("g++")):
            hint = "pip install ninja" if tool == "ninja" else "install a C++ compiler (e.g. apt-get install g++)"
            raise RuntimeError(f"{tool!r} not found on PATH ({hint})")
    from torch.utils.cpp_extension import load

    src = _SOURCE.read_bytes()
    # one build folder per source version: an edited kernel never loads a stale .so
    tag = hashlib.sha256(src).hexdigest()[:12]
    build = cache_dir() / f"csr_linear_{tag}"
    build.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
    return load(
        name=f"sparseforge_csr_linear_{tag}",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        verbose=False,
    )
