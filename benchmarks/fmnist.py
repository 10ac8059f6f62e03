"""Accuracy vs sparsity of every training method on Fashion-MNIST (LeNet-300-100 and a small CNN).

Every method gets the same epochs, optimizer (SGD 0.05, momentum 0.9, wd 1e-4, cosine LR,
batch 128) and data order per seed; the reported accuracy is the final epoch's test accuracy
(never the best epoch), as mean and standard deviation over seeds. Finished runs are cached in
``runs/bench-fmnist/`` so an interrupted suite continues where it stopped.

    sparseforge bench fmnist                      # full grid (long)
    sparseforge bench fmnist --models lenet300100 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sparseforge.bench import provenance, write_results
from sparseforge.data import load_dataset
from sparseforge.demo import demo_recipe
from sparseforge.train import Trainer

METHODS = ["dense", "static-uniform", "static-erk", "snip", "gmp", "set", "rigl"]


def _run(model: str, method: str, sparsity: float, seed: int, epochs: int, data, cache: Path) -> dict:
    key = f"{model}_{method}_{sparsity}_{seed}_{epochs}_{data.name}"
    f = cache / f"{key}.json"
    if f.exists():
        return json.loads(f.read_text())
    t0 = time.perf_counter()
    trainer = Trainer(demo_recipe(method, sparsity=sparsity, epochs=epochs, seed=seed, dataset=data.name, model=model),
                      progress=False, dataset=data)
    res = trainer.fit()
    totals = trainer.report().totals
    out = {"model": model, "method": method, "sparsity": sparsity if method != "dense" else 0.0, "seed": seed,
           "epochs": epochs, "final_test_accuracy": res.final["test_accuracy"],
           "achieved_sparsity": totals["global_sparsity"], "nonzeros": totals["nonzeros"],
           "sparse_flops": totals["sparse_flops"], "dense_flops": totals["dense_flops"],
           "history": res.history, "seconds": time.perf_counter() - t0}
    f.write_text(json.dumps(out))
    return out


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in summary})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in summary if r["model"] == model]
        dense = [r for r in rows if r["method"] == "dense"]
        for method in METHODS[1:]:
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
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--cache", default="runs/bench-fmnist")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="fmnist", help="results file name")
    a = p.parse_args(argv)
    prov = provenance(["fmnist", *argv])
    data = load_dataset(a.dataset)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    runs = []
    for model in a.models:
        for method in a.methods:
            for s in ([0.0] if method == "dense" else a.sparsities):
                for seed in a.seeds:
                    r = _run(model, method, s, seed, a.epochs, data, cache)
                    runs.append(r)
                    print(f"{model:12s} {method:15s} s={s:.2f} seed={seed} acc={100 * r['final_test_accuracy']:.2f} "
                          f"({r['seconds']:.0f} s)", flush=True)
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
    md = [f"Final-epoch test accuracy (%), mean ± std over seeds {a.seeds}, {a.epochs} epochs each, dataset {data.name}.\n"]
    for model in a.models:
        rows = [s for s in summary if s["model"] == model]
        dense = [s for s in rows if s["method"] == "dense"]
        md.append(f"\n## {model}\n")
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
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": vars(a), "dataset": data.name, "summary": summary, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        _plot(summary, jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs sparsity]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
