"""Start-up time of the command line and of ``import sparseforge``, next to ``import torch``.

Each command runs in a fresh interpreter, ``--repeats`` times (default 10), interleaved round by
round after one warm-up run each; the wall time of the whole process is recorded and the median
reported. Commands (the ``sparseforge`` console script next to the Python running the suite, or
``python -m sparseforge`` where there is none):

* ``python -c "import torch"``        -- the reference;
* ``python -c "import sparseforge"``  -- target: at most 1.2x ``import torch``;
* ``sparseforge --help``              -- target: at most 0.5x ``import torch``;
* ``sparseforge methods``             -- imports torch and the methods, not torch's compiler or
  distributed stacks (reported, no target).

    sparseforge bench startup                 # median of 10, writes benchmarks/results/startup.{json,md}
    sparseforge bench startup --repeats 3 --only help import-sparseforge

The JSON records the machine (CPU model and vector features such as avx2, avx512f, avx512_bf16,
amx) and the load average before and after: the machine may be shared, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sparseforge.bench import provenance, write_results
from sparseforge.tables import markdown_table
from sparseforge.errors import ConfigError, check_int
from sparseforge.kernels.cpu_sparse import cpu_features

#: vector features worth naming in the table (all of them are in the JSON)
HEADLINE_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                     "asimd", "sve")
TARGETS = {"import-sparseforge": 1.2, "help": 0.5}  # at most this multiple of `import torch`


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "sparseforge"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("sparseforge")
    return [found] if found else [sys.executable, "-m", "sparseforge"]


def commands() -> dict[str, list[str]]:
    """Name -> argv of each measured command."""
    cli = _cli()
    return {
        "import-torch": [sys.executable, "-c", "import torch"],
        "import-sparseforge": [sys.executable, "-c", "import sparseforge"],
        "help": [*cli, "--help"],
        "methods": [*cli, "methods"],
    }


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    return t


def measure(names: list[str], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each named command, ``repeats`` interleaved rounds after one warm-up each."""
    cmds = commands()
    for n in names:
        _wall(cmds[n])  # warm-up: file system caches, .pyc files
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            samples[n].append(_wall(cmds[n]))
    return samples


def main(argv: list[str]) -> None:
    """Run the suite; write benchmarks/results/startup.{json,md}."""
    p = argparse.ArgumentParser(prog="sparseforge bench startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each command (default 10; median reported)")
    p.add_argument("--only", nargs="+", default=None, choices=list(commands()),
                   help="measure only these commands (import-torch is always measured as the reference)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="startup")
    a = p.parse_args(argv)
    check_int(a.repeats, "--repeats", minimum=1)
    names = list(commands()) if a.only is None else ["import-torch", *[n for n in a.only if n != "import-torch"]]
    if not names:
        raise ConfigError("--only needs at least one command")
    prov = provenance(["startup", *argv])
    features = cpu_features()
    prov["machine"]["cpu_features"] = features
    load_before = os.getloadavg()
    samples = measure(names, a.repeats)
    load_after = os.getloadavg()
    cmds = commands()
    torch_s = statistics.median(samples["import-torch"])
    rows: list[dict[str, Any]] = []
    for n in names:
        med = statistics.median(samples[n])
        row = {"name": n, "command": shlex.join(cmds[n]), "median_s": med, "min_s": min(samples[n]),
               "samples_s": samples[n], "vs_import_torch": med / torch_s}
        if n in TARGETS:
            row["target_vs_import_torch"] = TARGETS[n]
            row["meets_target"] = med / torch_s <= TARGETS[n]
        rows.append(row)
    data = {"provenance": prov, "repeats": a.repeats, "load_average_before": list(load_before),
            "load_average_after": list(load_after), "results": rows}
    headline = " ".join(f for f in HEADLINE_FEATURES if f in features) or "none of " + " ".join(HEADLINE_FEATURES)
    lines = [f"CPU vector features: {headline}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
             f"median of {a.repeats} wall times per command, interleaved, after one warm-up.", ""]
    cells = []
    for r in rows:
        target = "-" if "meets_target" not in r else f"<= {r['target_vs_import_torch']}x: {'met' if r['meets_target'] else 'MISSED'}"
        cells.append([f"`{r['command']}`", f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['vs_import_torch']:.2f}", target])
    lines.append(markdown_table(["command", "median s", "min s", "x import torch", "target"], cells))
    jp, mp = write_results(a.name, data, "\n".join(lines), Path(a.out) if a.out else None)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")
