"""random-search: node configurations found by random search vs random ones vs the dense parent.

Run it as ``sparseforge bench random_search``. For every dataset, node sparsity and seed, an
overparameterised MLP (hidden ``--hidden``, default 512 512) is initialised with the seed; random
search samples ``--samples`` node configurations (each hidden layer keeps exactly
``n - round(s n)`` neurons), scores each untrained sub-network by its cross-entropy on the first
``--score-size`` training samples, and keeps the lowest. The searched sub-network, an independent
random configuration at the same node sparsity (same parent weights) and, once per seed, the
dense parent are trained alike: SGD lr 0.05, momentum 0.9, weight decay 1e-4, cosine, batch 128,
the same data order per seed; test accuracy after every epoch (and every ``--eval-every`` steps).

Reported: final test accuracy and convergence speed: ``steps to 95 %`` (first evaluation
reaching 95 % of the run's own final accuracy) and the mean test accuracy over all evaluations
(area under the curve; higher = faster). Defaults: datasets fashion-mnist and mnist1d, node
sparsities 0.5 0.75 0.9 0.95, seeds 0 1 2, 100 samples, epochs fashion-mnist=5 mnist1d=30.

Examples::

    sparseforge bench random_search --jobs 2
    sparseforge bench random_search --datasets mnist1d --sparsities 0.9 --seeds 0 --epochs 2 --samples 10

Runs are cached in ``runs/bench-random-search/``; results go to
``benchmarks/results/random_search.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from sparseforge.bench import check_at_least, check_fractions, provenance, write_results
from sparseforge.errors import ConfigError
from sparseforge.experiments import parse_per_dataset, run_grid, run_search


def _ms(vals: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not vals:
        return "-"
    v = [scale * x for x in vals]
    return f"{v[0]:.{digits}f}" if len(v) == 1 else f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def _plot(runs: list[dict[str, Any]], datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows = [r for r in runs if r["dataset"] == ds]
        for i, name in enumerate(["searched", "random"]):
            xs = sorted({r["sparsity"] for r in rows if name in r["runs"]})
            ys = [100 * statistics.mean(r["runs"][name]["accuracy"] for r in rows if r["sparsity"] == s and name in r["runs"])
                  for s in xs]
            ax.plot([100 * s for s in xs], ys, marker="o", color=f"C{i}", label=name)
        dense = [r["runs"]["dense"]["accuracy"] for r in rows if "dense" in r["runs"]]
        if dense:
            ax.axhline(100 * statistics.mean(dense), color="k", ls="--", label="dense parent")
        ax.set_title(ds)
        ax.set_xlabel("node sparsity (%)")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``random_search.{json,md,png}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench random_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist1d"], help="default: %(default)s")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9, 0.95],
                   help="node sparsities; default: %(default)s")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: %(default)s")
    p.add_argument("--samples", type=int, default=100, help="configurations scored per search; default: %(default)s")
    p.add_argument("--score-size", type=int, default=1000, help="training samples in the scoring batch; default: %(default)s")
    p.add_argument("--epochs", nargs="+", default=["fashion-mnist=5", "mnist1d=30"], help="default: %(default)s")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0 = per epoch only)")
    p.add_argument("--hidden", nargs="+", type=int, default=[512, 512], help="parent MLP hidden widths; default: %(default)s")
    p.add_argument("--n-train", type=int, default=None, help="first N training samples only (smoke tests)")
    p.add_argument("--n-test", type=int, default=None, help="first N test samples only (smoke tests)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes; default: %(default)s")
    p.add_argument("--cache", default="runs/bench-random-search", help="default: %(default)s")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="random_search", help="results file name; default: %(default)s")
    a = p.parse_args(argv)
    check_at_least(a, "samples", "jobs", "score_size")
    if a.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0; got {a.eval_every}")
    check_fractions(a.sparsities)
    epochs = parse_per_dataset(a.epochs, a.datasets, "--epochs")
    prov = provenance(["random_search", *argv])
    jobs = []
    for ds in a.datasets:
        common = {"dataset": ds, "epochs": epochs[ds], "hidden": a.hidden, "samples": a.samples,
                  "score_size": a.score_size, "n_train": a.n_train, "n_test": a.n_test, "eval_every": a.eval_every}
        for seed in a.seeds:
            for s in [0.0, *a.sparsities]:
                jobs.append({**common, "sparsity": s, "seed": seed})
    runs = run_grid(run_search, jobs, cache=a.cache, workers=a.jobs,
                    label=lambda j: f"{j['dataset']}_s{j['sparsity']}_seed{j['seed']}")
    md = [f"Parent MLP hidden {a.hidden}; {a.samples} node configurations per search, scored by cross-entropy at "
          f"initialisation on {a.score_size} training samples (lowest wins); epochs "
          f"{', '.join(f'{d} {e:g}' for d, e in epochs.items())}; SGD 0.05, momentum 0.9, wd 1e-4, cosine, batch 128. "
          f"Mean ± std over seeds {a.seeds}. 'steps to 95 %': first evaluation at 95 % of the run's final accuracy; "
          "'mean acc': mean test accuracy over all evaluations (higher = faster convergence).\n"]
    summary = []
    better = {"accuracy": [0, 0], "steps_to_95": [0, 0], "mean_accuracy": [0, 0]}
    for ds in a.datasets:
        rows = [r for r, j in zip(runs, jobs) if j["dataset"] == ds]
        dense = [r["runs"]["dense"] for r in rows if r["sparsity"] == 0]
        md.append(f"\n## {ds}\n")
        md.append(f"dense parent: final {_ms([d['accuracy'] for d in dense])} %, steps to 95 % "
                  f"{_ms([d['steps_to_95'] for d in dense], 1, 0)}, mean acc {_ms([d['mean_accuracy'] for d in dense])} %\n")
        md.append("| node sparsity | searched: final % | random: final % | searched: steps to 95 % | random: steps to 95 % "
                  "| searched: mean acc % | random: mean acc % | init loss searched / random |")
        md.append("|---|---|---|---|---|---|---|---|")
        for s in a.sparsities:
            hit = [r for r in rows if r["sparsity"] == s]
            srch = [r["runs"]["searched"] for r in hit]
            rnd = [r["runs"]["random"] for r in hit]
            for x, y in zip(srch, rnd):
                for k in better:
                    better[k][1] += 1
                    better[k][0] += (x[k] < y[k]) if k == "steps_to_95" else (x[k] > y[k])
            md.append(f"| {100 * s:g} % | {_ms([r['accuracy'] for r in srch])} | {_ms([r['accuracy'] for r in rnd])} | "
                      f"{_ms([r['steps_to_95'] for r in srch], 1, 0)} | {_ms([r['steps_to_95'] for r in rnd], 1, 0)} | "
                      f"{_ms([r['mean_accuracy'] for r in srch])} | {_ms([r['mean_accuracy'] for r in rnd])} | "
                      f"{statistics.mean(r['init_loss_best'] for r in hit):.4f} / "
                      f"{statistics.mean(r['init_loss_random'] for r in hit):.4f} |")
            summary.append({"dataset": ds, "sparsity": s,
                            "searched": statistics.mean(r["accuracy"] for r in srch),
                            "random": statistics.mean(r["accuracy"] for r in rnd),
                            "dense": statistics.mean(d["accuracy"] for d in dense) if dense else None,
                            "searched_steps_to_95": statistics.mean(r["steps_to_95"] for r in srch),
                            "random_steps_to_95": statistics.mean(r["steps_to_95"] for r in rnd)})
    md.append("\nSearched better than random (per seed and sparsity): "
              + "; ".join(f"{k.replace('_', ' ')}: {v[0]} of {v[1]}" for k, v in better.items())
              + " (ties count as not better).")
    md.append("\nNode sparsity removes whole hidden neurons (their weights are masked); the network is not shrunk.")
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": {**vars(a), "epochs": epochs}, "summary": summary, "better": better,
                "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        _plot(runs, a.datasets, jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs node sparsity]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
