"""sparse-ift: Sparse-IFT transformations vs the dense MLP at equal FLOPs and vs a dense MLP with as many parameters.

Run it as ``sparseforge bench sparse_ift``. Model: an MLP with hidden widths ``--hidden``
(default 256 256 256; ``fc1`` the stem and ``fc4`` the head stay dense, ``fc2`` and ``fc3``
are transformed). For every dataset, sparsity ``s`` and seed it trains:

* ``dense``: the MLP itself, the baseline at equal FLOPs (each transformation is iso-FLOP to it:
  the per-run ``flops_ratio`` is checked and reported);
* each transformation (wide, parallel, factorized, doped) at ``s``, sparse parts trained with
  RigL (update every 100 steps, drop fraction 0.3 cosine, until 75 % of training; each sparse
  part keeps its exact iso-FLOP budget);
* ``dense-params:<kind>`` (unless ``--no-param-matched``): a dense MLP with one uniform hidden
  width chosen so its parameter count is closest to the transformed model's (more FLOPs).

Normalisation: every MLP, the dense baselines included, has BatchNorm after each hidden layer
(``--no-norm``: plain MLPs). Sparse Parallel puts a BatchNorm after each branch and Sparse
Factorized BatchNorm + ReLU between its factors (the official defaults; ``--branch-norm off`` and
``--uv-layer relu`` or ``linear`` remove them). Without BatchNorm in the baseline the comparison
credits Sparse Parallel and Factorized with the normalisation they add.

Training: SGD lr 0.05, momentum 0.9, weight decay 1e-4, cosine, batch 128, the same data order
per seed; the score is the final test accuracy (mean ± std over seeds). Defaults: datasets
fashion-mnist and mnist1d, s = 0.5 0.75 0.9, seeds 0 1 2, epochs fashion-mnist=5 mnist1d=30.

Examples::

    sparseforge bench sparse_ift --jobs 2
    sparseforge bench sparse_ift --datasets mnist1d --kinds wide --sparsities 0.9 --seeds 0 --epochs 2

Runs are cached in ``runs/bench-sparse-ift/`` (one JSON per run); results go to
``benchmarks/results/sparse_ift.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from sparseforge.bench import check_at_least, check_fractions, provenance, write_results
from sparseforge.errors import ConfigError
from sparseforge.experiments import parse_per_dataset, run_grid, run_ift
from sparseforge.transforms import KINDS

DEFAULT_EPOCHS = ["fashion-mnist=5", "mnist1d=30"]


def _cell(rows: list[dict[str, Any]]) -> str:
    accs = [100 * r["accuracy"] for r in rows]
    if not accs:
        return "-"
    if len(accs) == 1:
        return f"{accs[0]:.2f}"
    return f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"


def _mean(rows: list[dict[str, Any]]) -> float | None:
    return statistics.mean(r["accuracy"] for r in rows) if rows else None


def _plot(runs: list[dict[str, Any]], datasets: list[str], kinds: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows = [r for r in runs if r["dataset"] == ds]
        for i, kind in enumerate(kinds):
            for name, style in ((kind, "-"), (f"dense-params:{kind}", ":")):
                pts = sorted({r["sparsity"] for r in rows if r["kind"] == name})
                if pts:
                    ys = [100 * _mean([r for r in rows if r["kind"] == name and r["sparsity"] == s]) for s in pts]
                    ax.plot([100 * s for s in pts], ys, style, marker="o", color=f"C{i}",
                            label=kind if style == "-" else f"dense, params of {kind}")
        dense = [r for r in rows if r["kind"] == "dense"]
        if dense:
            ax.axhline(100 * _mean(dense), color="k", ls="--", label="dense (equal FLOPs)")
        ax.set_title(ds)
        ax.set_xlabel("Sparse-IFT sparsity s (%)")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``sparse_ift.{json,md,png}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench sparse_ift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist1d"], help="default: %(default)s")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS), help="default: all four")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9], help="default: %(default)s")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: %(default)s")
    p.add_argument("--epochs", nargs="+", default=DEFAULT_EPOCHS,
                   help="one number for every dataset or DATASET=NUMBER ...; default: %(default)s")
    p.add_argument("--hidden", nargs="+", type=int, default=[256, 256, 256], help="MLP hidden widths; default: %(default)s")
    p.add_argument("--method", default="rigl", choices=["rigl", "set", "static"], help="DST method; default: %(default)s")
    p.add_argument("--branch-norm", default="on", choices=["on", "off"],
                   help="BatchNorm after each Sparse Parallel branch (official ResNet block); default: %(default)s")
    p.add_argument("--uv-layer", default="bn_relu", choices=["bn_relu", "relu", "linear"],
                   help="between Sparse Factorized's U and V (official default nonlinear_relu = bn_relu); default: %(default)s")
    p.add_argument("--no-norm", action="store_true",
                   help="plain MLPs without BatchNorm (default: BatchNorm after every hidden layer of every MLP, the "
                        "dense baselines included)")
    p.add_argument("--no-param-matched", action="store_true", help="skip the dense models with the transformations' parameter counts")
    p.add_argument("--n-train", type=int, default=None, help="first N training samples only (smoke tests)")
    p.add_argument("--n-test", type=int, default=None, help="first N test samples only (smoke tests)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes; default: %(default)s")
    p.add_argument("--cache", default="runs/bench-sparse-ift", help="default: %(default)s")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="sparse_ift", help="results file name; default: %(default)s")
    a = p.parse_args(argv)
    check_at_least(a, "jobs")
    if len(a.hidden) < 3:
        raise ConfigError(f"--hidden needs at least 3 widths (two transformed layers between a dense stem and head); got {a.hidden}")
    check_fractions(a.sparsities)
    epochs = parse_per_dataset(a.epochs, a.datasets, "--epochs")
    prov = provenance(["sparse_ift", *argv])
    jobs = []
    for ds in a.datasets:
        common = {"dataset": ds, "epochs": epochs[ds], "hidden": a.hidden, "n_train": a.n_train, "n_test": a.n_test}
        common["norm"] = not a.no_norm
        for seed in a.seeds:
            jobs.append({**common, "kind": "dense", "sparsity": 0.0, "seed": seed})
            for kind in a.kinds:
                for s in a.sparsities:
                    lopts = {"parallel": {"branch_norm": a.branch_norm == "on"},
                             "factorized": {"uv_layer": a.uv_layer}}.get(kind, {})
                    jobs.append({**common, "kind": kind, "sparsity": s, "seed": seed, "method": a.method, **lopts})
                    if not a.no_param_matched:
                        jobs.append({**common, "kind": f"dense-params:{kind}", "sparsity": s, "seed": seed, **lopts})
    runs = run_grid(run_ift, jobs, cache=a.cache, workers=a.jobs,
                    label=lambda j: f"{j['dataset']}_{j['kind'].replace(':', '-')}_{j['sparsity']}_seed{j['seed']}")
    md = [f"Final test accuracy (%), mean ± std over seeds {a.seeds}; MLP hidden {a.hidden} (stem and head dense); "
          f"epochs {', '.join(f'{d} {e:g}' for d, e in epochs.items())}; SGD 0.05, momentum 0.9, wd 1e-4, cosine, "
          f"batch 128; sparse parts trained with {a.method}. Columns: Sparse-IFT sparsity s. Layer options: Sparse "
          f"Parallel branch BatchNorm {a.branch_norm}, Sparse Factorized between U and V: {a.uv_layer} ("
          + ("every MLP, the dense baselines included, has BatchNorm after each hidden layer).\n" if not a.no_norm else
             "the dense MLP has no BatchNorm (--no-norm), so these add normalisation the baseline lacks).\n")]
    summary = []
    beats, total = 0, 0
    ratios = [r["flops_ratio"] for r in runs if r["kind"] in KINDS]
    for ds in a.datasets:
        rows = [r for r in runs if r["dataset"] == ds]
        dense = [r for r in rows if r["kind"] == "dense"]
        dmean = _mean(dense)
        md.append(f"\n## {rows[0]['dataset'] if rows else ds}\n")
        md.append(f"dense MLP (equal FLOPs, {dense[0]['params']:,} params): {_cell(dense)}\n")
        md.append("| model | " + " | ".join(f"s = {s:g}" for s in a.sparsities) + " |")
        md.append("|---|" + "---|" * len(a.sparsities))
        for kind in a.kinds:
            for name in [kind] + ([] if a.no_param_matched else [f"dense-params:{kind}"]):
                cells = []
                for s in a.sparsities:
                    hit = [r for r in rows if r["kind"] == name and r["sparsity"] == s]
                    extra = f" ({hit[0]['params'] / 1e3:.0f}k params)" if hit else ""
                    cells.append(_cell(hit) + extra)
                    if hit:
                        summary.append({"dataset": ds, "kind": name, "sparsity": s, "mean": _mean(hit),
                                        "std": statistics.stdev([r["accuracy"] for r in hit]) if len(hit) > 1 else 0.0,
                                        "seeds": len(hit), "params": hit[0]["params"], "flops_ratio": hit[0]["flops_ratio"]})
                        if name in KINDS and dmean is not None:
                            total += 1
                            beats += _mean(hit) > dmean
                label = name if name in KINDS else f"dense, params of {name.split(':')[1]}"
                md.append(f"| {label} | " + " | ".join(cells) + " |")
    md.append(f"\nSparse-IFT beats the dense MLP at equal FLOPs (higher mean) in {beats} of {total} cells. "
              f"Training FLOPs of every Sparse-IFT run / dense: {min(ratios) if ratios else 1:.6f} to "
              f"{max(ratios) if ratios else 1:.6f} (counted from the masks after training). Parameter-matched dense "
              "models use more FLOPs (their ratio is in the JSON).")
    md.append("\nSparsity is simulated (dense tensors with zeros).")
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": {**vars(a), "epochs": epochs}, "summary": summary, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        _plot(runs, a.datasets, a.kinds, jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs sparsity]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
