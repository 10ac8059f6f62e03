"""The custom CPU sparse kernel (C++/OpenMP), built on first use with ``torch.utils.cpp_extension``.

:func:`load_kernel` compiles ``csrc/csr_linear.cpp`` with flags for the host CPU (``-O3
-march=native -fopenmp``) into ``$SPARSEFORGE_CACHE/kernels/csr_linear_<key>`` (default
``~/.cache/sparseforge/kernels``) and returns the loaded module, or ``None`` with the reason
from :func:`kernel_unavailable_reason` (no compiler, ``ninja`` missing, a build error, or
``SPARSEFORGE_NO_CPP=1``). Callers fall back to torch's kernels and say why.

The ``<key>`` (:func:`cache_key`) hashes everything the binary depends on
(:func:`key_components`): the CPU's vector features (``/proc/cpuinfo`` flags such as avx2,
avx512f, avx512_bf16, amx, and torch's CPU capability), the compiler and its version, the
torch version and C++ ABI, the Python ABI tag, the compile flags and the source. So a home
directory shared by machines with different CPUs never loads a binary with instructions the
CPU lacks, and a torch or compiler upgrade builds a new binary instead of failing to load the
old one. ``sparseforge kernels build`` builds ahead of time; ``sparseforge kernels info``
shows the key, the folder, and what is loaded or why not (:func:`kernel_info`).

The module exposes ``csr_linear(rowptr, cols, vals, bias, K, x)`` (``y = x W^T + b`` for a
2-D fp32/bf16 ``x``) and ``csr_spmm_t(rowptr, cols, vals, XT)`` (``Y^T = W X^T`` for an fp32
``X^T [K, M]``), with ``rowptr`` int64, ``cols`` int16 (read as uint16, for ``K <= 65536``)
or int32, and ``vals`` fp32; and ``bsr_linear(browptr, bcols, vals, bias, K, x)`` for a
block-sparse weight (``vals [nblocks, bh, bw]`` fp32, ``bh`` a multiple of 8, ``browptr`` int64,
``bcols`` int32). See the comments in the C++ source for the loop structure. The same kernels
are registered as torch custom ops by :mod:`sparseforge.kernels.ops`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["load_kernel", "kernel_unavailable_reason", "cache_dir", "NO_CPP_ENV", "CFLAGS", "cpu_features",
           "key_components", "cache_key", "build_dir", "build_kernel", "kernel_info"]

#: set to ``1`` to never build or use the C++ kernel (forces the torch fallbacks)
NO_CPP_ENV = "SPARSEFORGE_NO_CPP"
#: compile flags; ``-march=native`` is why the cache key holds the CPU's features
CFLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast")
_SOURCE = Path(__file__).resolve().parent / "csrc" / "csr_linear.cpp"
# /proc/cpuinfo flags that change what -march=native emits (x86 and Arm spellings)
_VECTOR_FLAG = re.compile(r"^(sse|ssse|avx|amx|fma|f16c|fp16|bmi|adx|abm|lzcnt|popcnt|movbe|aes|pclmul|vaes|vpclmul|"
                          r"sha|gfni|xop|rtm|asimd|neon|sve|sme(?!p)|bf16|i8mm|dotprod|vfp)")
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where built kernels live: ``$SPARSEFORGE_CACHE/kernels`` or ``~/.cache/sparseforge/kernels``."""
    root = os.environ.get("SPARSEFORGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sparseforge") / "kernels"


def _disabled() -> bool:
    return os.environ.get(NO_CPP_ENV, "").strip() not in ("", "0")


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The CPU's vector and instruction-set features, sorted: ``/proc/cpuinfo`` flags such as
    ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_tile`` (x86) or ``asimd``, ``sve`` (Arm).

    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when ``None``). Flags that do not change
    generated code (``constant_tsc``, ``hypervisor`` ...) are left out. Empty where the file is
    missing (macOS, Windows): the key then relies on torch's CPU capability and the processor name.
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # the first CPU's; all cores of a host agree
            return sorted({f for f in value.split() if _VECTOR_FLAG.match(f)})
    return []


def _compiler() -> tuple[str | None, str | None]:
    """``(path, first line of --version)`` of the C++ compiler torch's extension builder uses."""
    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx) or (shutil.which("g++") if cxx == "c++" else None)
    if path is None:
        return None, None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return path, None
    return path, (out.strip().splitlines() or [None])[0]


def key_components() -> dict[str, Any]:
    """Everything the built binary depends on, as a JSON-able dict (hashed by :func:`cache_key`)."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch
        capability = None
    _, compiler = _compiler()
    features = cpu_features()
    return {
        "cpu_features": features,
        "torch_cpu_capability": capability,
        "machine": platform.machine(),
        "processor": "" if features else platform.processor(),
        "compiler": compiler,
        "torch": torch.__version__,
        "cxx11_abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)),
        "python": sys.implementation.cache_tag,
        "cflags": list(CFLAGS),
        "source_sha256": hashlib.sha256(_SOURCE.read_bytes()).hexdigest(),
    }


def cache_key(components: dict[str, Any] | None = None) -> str:
    """16 hex digits naming one build: a hash of ``components`` (default :func:`key_components`)."""
    comps = key_components() if components is None else components
    return hashlib.sha256(json.dumps(comps, sort_keys=True).encode()).hexdigest()[:16]


def build_dir(components: dict[str, Any] | None = None) -> Path:
    """The folder the kernel for ``components`` (default: this machine) is built into."""
    return cache_dir() / f"csr_linear_{cache_key(components)}"


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


def build_kernel(force: bool = False) -> ModuleType | None:
    """Build (or load) the kernel now, as ``sparseforge kernels build`` does; ``None`` if it cannot be built.

    ``force=True`` deletes this machine's build folder first, so the binary is compiled afresh
    (only in a process that has not loaded the kernel yet: a loaded library cannot be replaced).
    """
    if force and "module" not in _state:
        shutil.rmtree(build_dir(), ignore_errors=True)
        _state.pop("error", None)
    return load_kernel()


def kernel_info() -> dict[str, Any]:
    """What ``sparseforge kernels info`` prints: status, why not loaded, cache key, folder, components.

    Loads (and if needed builds) the kernel unless ``SPARSEFORGE_NO_CPP=1``.
    """
    components = key_components()
    folder = cache_dir() / f"csr_linear_{cache_key(components)}"
    if _disabled():
        status = "disabled"
    else:
        status = "loaded" if load_kernel() is not None else "unavailable"
    mod = _state.get("module")
    return {
        "status": status,
        "fallback_reason": kernel_unavailable_reason(),
        "key": cache_key(components),
        "build_dir": str(folder),
        "library": getattr(mod, "__file__", None) if status == "loaded" else None,
        "cached_builds": sorted(p.name for p in cache_dir().glob("csr_linear_*")) if cache_dir().is_dir() else [],
        "components": components,
    }


def _build() -> ModuleType:
    for tool in ("c++", "ninja"):
        if tool == "c++":
            found = _compiler()[0] is not None
        else:
            found = shutil.which(tool) is not None
        if not found:
            hint = "pip install ninja" if tool == "ninja" else "install a C++ compiler (e.g. apt-get install g++)"
            raise RuntimeError(f"{tool!r} not found on PATH ({hint})")
    from torch.utils.cpp_extension import load

    components = key_components()
    key = cache_key(components)
    build = cache_dir() / f"csr_linear_{key}"
    build.mkdir(parents=True, exist_ok=True)
    # the description next to the binary: what it was built for (read by people, not by the loader)
    (build / "key.json").write_text(json.dumps(components, indent=2, sort_keys=True) + "\n")
    return load(
        name=f"sparseforge_csr_linear_{key}",
        sources=[str(_SOURCE)],
        extra_cflags=list(CFLAGS),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        verbose=False,
    )
