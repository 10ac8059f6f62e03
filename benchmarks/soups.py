"""soups: Sparse Model Soups vs IMP vs the best single ingredient at three sparsities.

Run it as ``sparseforge bench soups``. Model: an MLP with hidden widths ``--hidden`` (default
256 256), output layer dense, the other layers pruned globally by magnitude. Each run trains the
dense model for ``--pretrain-epochs`` (cosine), then ``--phases`` IMP phases to the target
sparsity; in every phase ``m`` copies retrain (``--retrain-epochs``, LLR schedule, seeds
``seed + i``) from the pruned model and are averaged:

* ``SMS greedy`` / ``SMS uniform``: the final phase's greedy soup (ingredients added in order of
  held-out accuracy while it does not drop; this soup starts each next phase) and uniform soup;
* ``best ingredient``: the final phase's ingredient with the best held-out accuracy;
* ``IMP``: the same procedure with ``m = 1`` (one retrain per phase, same length; a separate run).

The held-out set is the last ``--val-size`` training samples (never trained on); the score is
the test accuracy (mean ± std over seeds). Defaults: datasets fashion-mnist and mnist1d,
sparsities 0.8 0.9 0.95, seeds 0 1 2, m = 3, 3 phases, pretrain fashion-mnist=5 mnist1d=30
epochs, retrain fashion-mnist=2 mnist1d=10 epochs per phase, val-size fashion-mnist=5000 mnist1d=500.

Examples::

    sparseforge bench soups --jobs 2
    sparseforge bench soups --datasets mnist1d --sparsities 0.9 --seeds 0 --pretrain-epochs 5 --retrain-epochs 2

Runs are cached in ``runs/bench-soups/``; results go to ``benchmarks/results/soups.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from sparseforge.bench import check_at_least, check_fractions, provenance, write_results
from sparseforge.errors import ConfigError
from sparseforge.experiments import parse_per_dataset, run_grid, run_soups


def _ms(vals: list[float]) -> str:
    if not vals:
        return "-"
    v = [100 * x for x in vals]
    return f"{v[0]:.2f}" if len(v) == 1 else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def _numbers(sms: list[dict[str, Any]], imp: list[dict[str, Any]]) -> dict[str, list[float]]:
    last = [r["phases"][-1] for r in sms]
    return {"SMS greedy": [p["greedy"]["test_accuracy"] for p in last],
            "SMS uniform": [p["uniform"]["test_accuracy"] for p in last],
            "best ingredient": [p["best_ingredient"]["test_accuracy"] for p in last],
            "max ingredient (test)": [max(i["test_accuracy"] for i in p["ingredients"]) for p in last],
            "IMP": [r["phases"][-1]["greedy"]["test_accuracy"] for r in imp]}


def _plot(table: dict[tuple[str, float], dict[str, list[float]]], datasets: list[str], sparsities: list[float],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for i, name in enumerate(["SMS greedy", "SMS uniform", "best ingredient", "IMP"]):
            xs = [s for s in sparsities if table.get((ds, s), {}).get(name)]
            ys = [100 * statistics.mean(table[(ds, s)][name]) for s in xs]
            if xs:
                ax.plot([100 * s for s in xs], ys, marker="o", color=f"C{i}", label=name)
        ax.set_title(ds)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``soups.{json,md,png}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench soups", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist1d"], help="default: %(default)s")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95], help="default: %(default)s")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: %(default)s")
    p.add_argument("--m", type=int, default=3, help="ingredients per phase; default: %(default)s")
    p.add_argument("--phases", type=int, default=3, help="IMP phases; default: %(default)s")
    p.add_argument("--pretrain-epochs", nargs="+", default=["fashion-mnist=5", "mnist1d=30"], help="default: %(default)s")
    p.add_argument("--retrain-epochs", nargs="+", default=["fashion-mnist=2", "mnist1d=10"], help="per phase; default: %(default)s")
    p.add_argument("--val-size", nargs="+", default=["fashion-mnist=5000", "mnist1d=500"], help="default: %(default)s")
    p.add_argument("--hidden", nargs="+", type=int, default=[256, 256], help="MLP hidden widths; default: %(default)s")
    p.add_argument("--n-train", type=int, default=None, help="first N training samples only (smoke tests)")
    p.add_argument("--n-test", type=int, default=None, help="first N test samples only (smoke tests)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes; default: %(default)s")
    p.add_argument("--cache", default="runs/bench-soups", help="default: %(default)s")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="soups", help="results file name; default: %(default)s")
    a = p.parse_args(argv)
    check_at_least(a, "m", "phases", "jobs")
    if a.m < 2:
        raise ConfigError(f"--m must be >= 2 to compare a soup with IMP; got {a.m}")
    check_fractions(a.sparsities)
    pre = parse_per_dataset(a.pretrain_epochs, a.datasets, "--pretrain-epochs")
    ret = parse_per_dataset(a.retrain_epochs, a.datasets, "--retrain-epochs")
    val = {d: int(v) for d, v in parse_per_dataset(a.val_size, a.datasets, "--val-size").items()}
    prov = provenance(["soups", *argv])
    jobs = [{"dataset": ds, "sparsity": s, "seed": seed, "m": m, "phases": a.phases, "pretrain_epochs": pre[ds],
             "retrain_epochs": ret[ds], "hidden": a.hidden, "val_size": val[ds], "n_train": a.n_train, "n_test": a.n_test}
            for ds in a.datasets for s in a.sparsities for seed in a.seeds for m in (a.m, 1)]
    runs = run_grid(run_soups, jobs, cache=a.cache, workers=a.jobs,
                    label=lambda j: f"{j['dataset']}_s{j['sparsity']}_m{j['m']}_seed{j['seed']}")
    table: dict[tuple[str, float], dict[str, list[float]]] = {}
    md = [f"Test accuracy (%) after the last of {a.phases} phases, mean ± std over seeds {a.seeds}; MLP hidden {a.hidden} "
          f"(output layer dense, global magnitude pruning); m = {a.m} ingredients varying the seed; pretrain "
          f"{', '.join(f'{d} {e:g}' for d, e in pre.items())} epochs; retrain {', '.join(f'{d} {e:g}' for d, e in ret.items())} "
          "epochs per phase (LLR); SGD 0.05, momentum 0.9, wd 1e-4, batch 128. IMP = the same with m = 1.\n"]
    wins = {"vs IMP": [0, 0], "vs best ingredient": [0, 0], "vs every ingredient": [0, 0]}
    names = ["SMS greedy", "SMS uniform", "best ingredient", "max ingredient (test)", "IMP"]
    for ds in a.datasets:
        md.append(f"\n## {ds}\n")
        md.append("| model | " + " | ".join(f"{100 * s:g} %" for s in a.sparsities) + " |")
        md.append("|---|" + "---|" * len(a.sparsities))
        for s in a.sparsities:
            sms = [r for r, j in zip(runs, jobs) if j["dataset"] == ds and j["sparsity"] == s and j["m"] == a.m]
            imp = [r for r, j in zip(runs, jobs) if j["dataset"] == ds and j["sparsity"] == s and j["m"] == 1]
            table[(ds, s)] = _numbers(sms, imp)
            for r_s, r_i in zip(sms, imp):
                soup = r_s["phases"][-1]["greedy"]["test_accuracy"]
                last = r_s["phases"][-1]
                for key, ref in (("vs IMP", r_i["phases"][-1]["greedy"]["test_accuracy"]),
                                 ("vs best ingredient", last["best_ingredient"]["test_accuracy"]),
                                 ("vs every ingredient", max(i["test_accuracy"] for i in last["ingredients"]))):
                    wins[key][0] += soup > ref
                    wins[key][1] += 1
        for name in names:
            md.append(f"| {name} | " + " | ".join(_ms(table[(ds, s)][name]) for s in a.sparsities) + " |")
    achieved = sorted({round(r["achieved_sparsity"], 6) for r in runs})
    md.append("\nSMS greedy soup beats (per seed and sparsity): "
              + "; ".join(f"{k}: {v[0]} of {v[1]}" for k, v in wins.items())
              + ". 'max ingredient (test)' is the best ingredient chosen with the test set (an upper bound for picking one).")
    md.append(f"\nAchieved sparsity of the pruned layers (from the masks): {achieved}.")
    md.append("\nSparsity is simulated (dense tensors with zeros).")
    summary = [{"dataset": ds, "sparsity": s, **{k: (statistics.mean(v) if v else None) for k, v in table[(ds, s)].items()}}
               for ds in a.datasets for s in a.sparsities]
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": {**vars(a), "pretrain_epochs": pre, "retrain_epochs": ret, "val_size": val},
                "summary": summary, "wins": wins, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        _plot(table, a.datasets, a.sparsities, jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs sparsity]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
