"""Benchmark harness: find suites, time things honestly, write results with their provenance.

A suite is a file ``benchmarks/<name>.py`` with a module docstring (its description) and a
``main(argv) -> None`` function. ``sparseforge bench NAME [args]`` runs it. Results go to
``benchmarks/results/<name>.json`` and ``.md``, each stamped with the exact command, the
machine (CPU model, cores, torch version and threads) and the date, via :func:`write_results`.

Timing rules (the machine is noisy): warm up first, report medians over repeats, and compare
methods as ratios measured side by side in the same process (:func:`median_time`,
:func:`interleaved_medians`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import ConfigError
from .fileio import atomic_write_text, read_json
from .parallel import parallel_map

__all__ = ["benchmarks_dir", "list_suites", "run_suite", "machine_info", "provenance", "write_results",
           "median_time", "interleaved_medians", "parallel_map"]


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder: ``$SPARSEFORGE_BENCHMARKS``, ``./benchmarks`` or the repo checkout's."""
    candidates = []
    if os.environ.get("SPARSEFORGE_BENCHMARKS"):
        candidates.append(Path(os.environ["SPARSEFORGE_BENCHMARKS"]))
    candidates += [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise ConfigError("no benchmarks/ folder found: run from a sparseforge checkout or set SPARSEFORGE_BENCHMARKS")


def list_suites() -> dict[str, str]:
    """Suite name -> first line of its docstring."""
    out = {}
    for f in sorted(benchmarks_dir().glob("*.py")):
        if f.name.startswith("_"):
            continue
        doc = ""
        text = f.read_text()
        if text.lstrip().startswith('"""'):
            doc = text.lstrip()[3:].split("\n", 1)[0].strip().rstrip('"')
        out[f.stem] = doc
    return out


def run_suite(name: str, argv: Sequence[str]) -> None:
    """Import ``benchmarks/<name>.py`` and call its ``main(argv)``."""
    suites = list_suites()
    if name not in suites:
        raise ConfigError(f"unknown benchmark suite {name!r}; available: {sorted(suites)}")
    path = benchmarks_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sparseforge_bench_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(list(argv))


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch version and threads, Python version, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command, machine and UTC date to store beside every result."""
    cmd = "sparseforge bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return {"command": cmd, "machine": machine_info(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``data`` + provenance) and ``<name>.md`` (provenance + ``markdown``)."""
    out_dir = out_dir or benchmarks_dir() / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = data.setdefault("provenance", provenance())
    jp, mp = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_text(jp, json.dumps(data, indent=2) + "\n")
    m = prov["machine"]
    head = (f"# Benchmark `{name}`\n\n- command: `{prov['command']}`\n- date: {prov['date']}\n"
            f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"Python {m['python']}, {m['os']}\n\n")
    atomic_write_text(mp, head + markdown.rstrip() + "\n")
    return jp, mp


def split_cached(jobs: Sequence[Any], cache: Path, key: Callable[[Any], str]) -> tuple[dict[str, Any], list[Any]]:
    """``(results, todo)``: the runs of ``jobs`` already stored as ``cache/<key(job)>.json``, by key,
    and the jobs still to run, in order. Creates ``cache``; a suite writes each finished run there,
    so an interrupted grid resumes where it stopped."""
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    todo = []
    for job in jobs:
        f = cache / f"{key(job)}.json"
        if f.exists():
            results[key(job)] = read_json(f, what="cached benchmark run")
        else:
            todo.append(job)
    return results, todo


def median_time(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], *, rounds: int = 7, calls: int = 20,
                        warmup: int = 5) -> dict[str, float]:
    """Median per-call time of each ``fns`` entry, measured in interleaved rounds.

    Each round times ``calls`` consecutive calls of every function in turn, so slow drifts of
    the machine (another process, frequency changes) hit all candidates alike; the order
    rotates from round to round, so no candidate always runs first (after the others have
    evicted its data from the caches). The result is the median over rounds of the per-call mean.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    per: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(rounds):
        for k, f in order[r % len(order):] + order[: r % len(order)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            per[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in per.items()}


def per_key_values(spec: Sequence[str], keys: Sequence[str], flag: str, *, kind: type = float,
                   unit: str = "dataset", missing: str = "value") -> dict[str, Any]:
    """Parse a per-key command-line value: ``["5"]`` -> every key 5; ``["a=5", "b=30"]`` -> per key.

    ``kind`` is ``int`` or ``float``; every value must be positive and every key must get one,
    else :class:`ConfigError` names ``flag``, the item and what is allowed.
    """
    what = "a positive integer or {}=INT" if kind is int else "a positive number or {}=NUMBER"
    out: dict[str, Any] = {}
    for item in spec:
        name, _, value = item.rpartition("=")
        try:
            v = kind(value)
        except ValueError:
            v = kind(0)
        if not v > 0:
            raise ConfigError(f"{flag}: expected {what.format(unit.upper())}; got {item!r}")
        for k in ([name] if name else keys):
            out[k] = v
    absent = [k for k in keys if k not in out]
    if absent:
        raise ConfigError(f"{flag}: no {missing} for {unit}(s) {absent}")
    return {k: out[k] for k in keys}


def check_at_least(a: Any, *flags: str, minimum: int = 1) -> None:
    """Raise :class:`ConfigError` naming the first option in ``flags`` (attribute names) below ``minimum``.

    ``None`` (an optional option left unset) passes.
    """
    for flag in flags:
        v = getattr(a, flag)
        if v is not None and v < minimum:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= {minimum}; got {v}")


def check_fractions(values: Sequence[float], flag: str = "--sparsities") -> None:
    """Raise :class:`ConfigError` unless every value lies in the open interval (0, 1)."""
    for v in values:
        if not 0.0 < v < 1.0:
            raise ConfigError(f"{flag} must be in (0, 1); got {v}")


# ----------------------------------------------------------------------------- N:M grid suites
def nm_density(pattern: str) -> float:
    """Density ``N / M`` of an ``"N:M"`` string."""
    n, m = (int(v) for v in pattern.split(":"))
    return n / m


def add_nm_grid_args(p: Any, methods: Sequence[str], allowed: Sequence[str], patterns: Sequence[str]) -> None:
    """The command-line options the N:M grid suites (``nm_lm``, ``nm_cnn``) share."""
    p.add_argument("--methods", nargs="+", default=list(methods), choices=list(allowed))
    p.add_argument("--patterns", nargs="+", default=list(patterns))
    p.add_argument("--no-dense", action="store_true", help="leave out the dense baseline")
    p.add_argument("--mdgf-decay-at", type=float, default=0.25,
                   help="fraction of the run at which MDGF's beta reaches 1 %% (sets decay_coef)")
    p.add_argument("--mdgf-decay-coef", type=float, default=None,
                   help="MDGF decay_coef c directly (overrides --mdgf-decay-at)")
    p.add_argument("--sdgf-kind", default="sparsify", choices=["sparsify", "fine"])
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (one torch thread per core each)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the one-process run (--jobs 1); default: torch's own setting. On a busy "
                        "machine use 1: idle-spinning OpenMP threads make a 2-thread step several times slower")


def check_nm_grid_args(a: Any, positive: Sequence[str] = ()) -> None:
    """Validate :func:`add_nm_grid_args` options (and the integer flags in ``positive``), then apply ``--threads``."""
    for pat in a.patterns:
        parts = pat.split(":")
        if not (len(parts) == 2 and all(v.isdigit() for v in parts) and 0 < int(parts[0]) < int(parts[1])):
            raise ConfigError(f"--patterns: expected N:M with 0 < N < M (e.g. 2:4); got {pat!r}")
    check_at_least(a, *positive, "jobs", "threads")
    if not 0.0 < a.mdgf_decay_at <= 1.0:
        raise ConfigError(f"--mdgf-decay-at must be in (0, 1]; got {a.mdgf_decay_at}")
    if a.mdgf_decay_coef is not None and not a.mdgf_decay_coef > 0:
        raise ConfigError(f"--mdgf-decay-coef must be > 0; got {a.mdgf_decay_coef}")
    if a.threads is not None:
        torch.set_num_threads(a.threads)


def mdgf_decay_coef(steps: int, decay_at: float) -> float:
    """``c`` with ``exp(-c * decay_at * steps) = 0.01``: MDGF's beta reaches 1 % at that fraction of the run."""
    import math

    return math.log(100.0) / (decay_at * steps)


def mean_std_cell(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``"mean ± std"`` of ``values`` (just the value for one, ``-`` for none)."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def plot_vs_nm_density(runs: Sequence[dict[str, Any]], methods: Sequence[str], value: Callable[[dict[str, Any]], float],
                       *, ylabel: str, title: str, path: Path) -> None:
    """One line per method of ``value(run)`` (mean ± std over seeds) against N:M density, dense as a dashed line."""
    from fractions import Fraction

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in methods:
        pts: dict[float, list[float]] = {}
        for r in runs:
            if r["method"] == method:
                pts.setdefault(nm_density(r["pattern"]), []).append(value(r))
        if pts:
            xs = sorted(pts)
            ax.errorbar(xs, [statistics.mean(pts[x]) for x in xs],
                        yerr=[statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0 for x in xs],
                        marker="o", capsize=3, label=method)
    dense = [value(r) for r in runs if r["method"] == "dense"]
    if dense:
        ax.axhline(statistics.mean(dense), color="k", ls="--", label="dense")
    ax.set_xscale("log", base=2)
    ticks = sorted({nm_density(r["pattern"]) for r in runs if r["method"] != "dense"})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(Fraction(t).limit_denominator(1024)) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("density of the N:M layers (N/M)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
