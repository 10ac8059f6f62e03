"""Accuracy vs sparsity of every training method on Fashion-MNIST (LeNet-300-100 and a small CNN).

Every method gets the same epochs, optimizer (SGD 0.05, momentum 0.9, wd 1e-4, cosine LR,
batch 128) and data order per seed; the reported accuracy is the final epoch's test accuracy
(never the best epoch), as mean and standard deviation over seeds. For SET and RigL a second
table gives the in-time over-parameterization rate ``R_s`` after training (Liu et al. 2021:
the fraction of the weights that were active at any time). Finished runs are cached in
``runs/bench-fmnist/`` so an interrupted suite continues where it stopped.

    sparseforge bench fmnist --jobs 2                           # full grid (long)
    sparseforge bench fmnist --models lenet300100 --epochs 10

``--jobs N`` trains N runs at a time in worker processes (one torch thread per core each).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sparseforge.bench import parallel_map, per_key_values, provenance, split_cached, write_results
from sparseforge.data import load_dataset
from sparseforge.demo import run_method
from sparseforge.fileio import atomic_write_text

METHODS = ["dense", "static-uniform", "static-erk", "snip", "gmp", "set", "rigl"]


def _epochs_per_model(spec: list[str], models: list[str]) -> dict[str, int]:
    """``["20"]`` -> every model 20; ``["lenet300100=20", "small-cnn=3"]`` -> per model."""
    return per_key_values(spec, models, "--epochs", kind=int, unit="model", missing="epoch count")


def _key(job: dict) -> str:
    return f"{job['model']}_{job['method']}_{job['sparsity']}_{job['seed']}_{job['epochs']}_{job['data']}"


def _record(row: dict) -> dict:
    """Cache record of one run of :func:`sparseforge.demo.run_method` (what the summary and plot read)."""
    return {"model": row["model"], "method": row["method"], "sparsity": row["target_sparsity"], "seed": row["seed"],
            "epochs": row["epochs"], "final_test_accuracy": row["accuracy"], "achieved_sparsity": row["sparsity"],
            "nonzeros": row["nonzeros"], "sparse_flops": row["sparse_flops"], "dense_flops": row["dense_flops"],
            "history": row["history"], "seconds": row["seconds"]}


def _plot(summary: list[dict], path: Path, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in summary})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in summary if r["model"] == model]
        dense = [r for r in rows if r["method"] == "dense"]
        for method in [m for m in methods if m != "dense"]:
            pts = sorted((r["sparsity"], r["mean"], r["std"]) for r in rows if r["method"] == method)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar([100 * x for x in xs], [100 * y for y in ys], yerr=[100 * e for e in es], marker="o",
                            capsize=3, label=method)
        if dense:
            ax.axhline(100 * dense[0]["mean"], color="k", ls="--", label="dense")
        ax.set_title(model)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    """Run the grid, write benchmarks/results/fmnist.{json,md,png}."""
    p = argparse.ArgumentParser(prog="sparseforge bench fmnist", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet300100", "small-cnn"])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95, 0.98])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", nargs="+", default=["lenet300100=20", "small-cnn=2"],
                   help="epochs for every model (one integer) or per model (MODEL=INT ...)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (one torch thread per core each)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--cache", default="runs/bench-fmnist")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="fmnist", help="results file name")
    a = p.parse_args(argv)
    prov = provenance(["fmnist", *argv])
    epochs = _epochs_per_model(a.epochs, a.models)
    data = load_dataset(a.dataset)
    cache = Path(a.cache)
    jobs = [{"model": model, "method": method, "sparsity": s, "seed": seed, "epochs": epochs[model], "data": data.name}
            for model in a.models for method in a.methods
            for s in ([0.0] if method == "dense" else a.sparsities) for seed in a.seeds]
    results, todo = split_cached(jobs, cache, _key)
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to train with {a.jobs} worker(s)", flush=True)
    # the CNN runs are the long ones: start them first so the workers finish together
    todo.sort(key=lambda j: -j["epochs"] * (10 if j["model"] != "lenet300100" else 1))
    # run_method lives in an installed module, so spawned workers can import it
    calls = todo if a.jobs > 1 else [{**j, "data": data} for j in todo]  # one process: reuse the loaded data
    for i, row in parallel_map(run_method, calls, jobs=a.jobs):
        key = _key(todo[i])
        r = _record({**row, "target_sparsity": todo[i]["sparsity"]})
        atomic_write_text(cache / f"{key}.json", json.dumps(r))
        results[key] = r
        print(f"{r['model']:12s} {r['method']:15s} s={r['sparsity']:.2f} seed={r['seed']} "
              f"acc={100 * r['final_test_accuracy']:.2f} ({r['seconds']:.0f} s)", flush=True)
    runs = [results[_key(j)] for j in jobs]
    summary = []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["method"], r["sparsity"]), []).append(r)
    for (model, method, s), rs in groups.items():
        accs = [r["final_test_accuracy"] for r in rs]
        summary.append({"model": model, "method": method, "sparsity": s, "mean": statistics.mean(accs),
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
                        "achieved_sparsity": statistics.mean(r["achieved_sparsity"] for r in rs),
                        "sparse_flops": rs[0]["sparse_flops"], "dense_flops": rs[0]["dense_flops"]})
        explored = [r["history"][-1].get("exploration_rate") for r in rs]
        if all(e is not None for e in explored):  # SET and RigL log it
            summary[-1]["exploration_rate"] = statistics.mean(explored)
    budget = ", ".join(f"{m} {e}" for m, e in epochs.items())
    md = [f"Final-epoch test accuracy (%), mean ± std over seeds {a.seeds}, dataset {data.name}; epochs per run: {budget}.\n"]
    for model in a.models:
        rows = [s for s in summary if s["model"] == model]
        dense = [s for s in rows if s["method"] == "dense"]
        md.append(f"\n## {model} ({epochs[model]} epochs)\n")
        if dense:
            md.append(f"dense: {100 * dense[0]['mean']:.2f} ± {100 * dense[0]['std']:.2f}\n")
        md.append("\n| method | " + " | ".join(f"{100 * s:g} %" for s in a.sparsities) + " |")
        md.append("|---|" + "---|" * len(a.sparsities))
        for method in a.methods:
            if method == "dense":
                continue
            cells = []
            for s in a.sparsities:
                hit = [r for r in rows if r["method"] == method and abs(r["sparsity"] - s) < 1e-9]
                cells.append(f"{100 * hit[0]['mean']:.2f} ± {100 * hit[0]['std']:.2f}" if hit else "-")
            md.append(f"| {method} | " + " | ".join(cells) + " |")
        explorers = [m for m in a.methods if any("exploration_rate" in r for r in rows if r["method"] == m)]
        if explorers:
            md.append("\nIn-time over-parameterization rate R_s after training (Liu et al. 2021): the fraction "
                      "of the masked layers' weights that were active at any time, mean over seeds "
                      "(1 - sparsity for a mask that never changes).\n")
            md.append("| method | " + " | ".join(f"{100 * s:g} %" for s in a.sparsities) + " |")
            md.append("|---|" + "---|" * len(a.sparsities))
            for method in explorers:
                hit = {round(r["sparsity"], 9): r["exploration_rate"] for r in rows
                       if r["method"] == method and "exploration_rate" in r}
                md.append(f"| {method} | " + " | ".join(f"{hit[round(s, 9)]:.3f}" if round(s, 9) in hit else "-"
                                                        for s in a.sparsities) + " |")
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": {**vars(a), "epochs": epochs}, "dataset": data.name, "summary": summary, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        _plot(summary, jp.with_suffix(".png"), a.methods)
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs sparsity]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
