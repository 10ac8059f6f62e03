"""lr_tuned: every method at its own learning rate, chosen on a validation split.

The ``fmnist`` suite trains every method with one SGD learning rate (0.05). Sparse networks
often train best at a larger rate than their dense parent, so one shared rate can favour one
method over another. Here each method gets the rate that suits it, chosen without looking at
the test set: the last ``--n-val`` (default 5,000) of the 60,000 training images are held out
(the recipe's ``data.n_val``), every method, sparsity, rate and seed trains on the rest with the
``fmnist`` recipe otherwise unchanged (20 epochs, SGD momentum 0.9, wd 1e-4, cosine, batch 128),
the rate with the best mean final-epoch *validation* accuracy over the seeds is chosen per
method and sparsity (the lower rate on a tie), and the final-epoch *test* accuracy of those runs
is reported, next to the test accuracy at 0.05.

Methods are the presets of :data:`sparseforge.demo.METHOD_PRESETS`; ``rigl-mlp`` is RigL as its
authors configure it for MLPs (update every 500 steps until the end, drop fraction following the
learning rate, optimizer step kept on update steps).

    sparseforge bench lr_tuned --jobs 2      # 6 methods x 6 rates x 3 seeds at 90 %, ~25 min on 2 idle cores
    sparseforge bench lr_tuned --methods dense gmp static-erk set rigl --sparsities 0.98 --jobs 2 --name lr_tuned_98

Runs are cached in ``runs/bench-lr-tuned/``; results go to ``benchmarks/results/NAME.{json,md}``
(``--name``, default ``lr_tuned``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from sparseforge.bench import parallel_map, provenance, split_cached, write_results
from sparseforge.data import load_dataset
from sparseforge.demo import demo_recipe, preset, run_recipe
from sparseforge.errors import ConfigError
from sparseforge.fileio import atomic_write_text

REFERENCE_LR = 0.05  # the fmnist suite's rate


def _key(job: dict) -> str:
    return (f"{job['model']}_{job['method']}_{job['sparsity']}_lr{job['lr']}_{job['seed']}_{job['epochs']}"
            f"_{job['dataset']}_val{job['n_val']}")


def _recipe(job: dict) -> dict:
    r = demo_recipe(job["method"], sparsity=job["sparsity"], epochs=job["epochs"], seed=job["seed"],
                    dataset=job["dataset"], model=job["model"]).to_dict()
    r["optimizer"]["lr"] = job["lr"]
    r["data"]["n_val"] = job["n_val"]
    return r


def choose(per_lr: dict[float, dict]) -> float:
    """The rate with the highest mean validation accuracy; the lowest such rate on a tie.

    A rate at which any seed failed (``"failed"`` instead of ``"val"``) is never chosen.
    """
    ok = [lr for lr, v in per_lr.items() if "failed" not in v]
    return min(ok, key=lambda lr: (-per_lr[lr]["val"], lr))


def main(argv: list[str]) -> None:
    """Run the grid, choose each method's rate on validation, write ``benchmarks/results/NAME.{json,md}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench lr_tuned", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet300100")
    p.add_argument("--methods", nargs="+", default=["dense", "gmp", "static-erk", "set", "rigl", "rigl-mlp"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9])
    p.add_argument("--lrs", nargs="+", type=float, default=[0.0125, 0.025, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-val", type=int, default=5000, help="training samples held out for validation")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (one torch thread per core each)")
    p.add_argument("--cache", default="runs/bench-lr-tuned")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="lr_tuned", help="results file name")
    a = p.parse_args(argv)
    bad = [lr for lr in a.lrs if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise ConfigError(f"--lrs must be positive finite learning rates; got {bad}")
    for m in a.methods:
        preset(m, 0.5)  # an unknown preset fails before any training
    load_dataset(a.dataset, n_val=a.n_val)  # so do an unknown dataset and a hold-out it cannot afford
    prov = provenance(["lr_tuned", *argv])
    lrs = sorted(set(a.lrs))
    jobs = [{"model": a.model, "method": m, "sparsity": s, "lr": lr, "seed": seed, "epochs": a.epochs,
             "dataset": a.dataset, "n_val": a.n_val}
            for m in a.methods for s in ([0.0] if m == "dense" else a.sparsities) for lr in lrs for seed in a.seeds]
    cache = Path(a.cache)
    results, todo = split_cached(jobs, cache, _key)
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to train with {a.jobs} worker(s)", flush=True)
    # a run that fails (a DST method cannot rank NaN weights once training diverged) is recorded as
    # failed, not fatal: at the top of a learning-rate grid some runs are expected to diverge
    for i, res in parallel_map(run_recipe, [{"recipe": _recipe(j)} for j in todo], jobs=a.jobs, errors="return"):
        j = todo[i]
        row = {k: j[k] for k in ("method", "sparsity", "lr", "seed")}
        if isinstance(res, Exception):
            row.update(failed=f"{type(res).__name__}: {res}", val_accuracy=None, test_accuracy=None)
            print(f"{j['method']:12s} s={j['sparsity']:.2f} lr={j['lr']:g} seed={j['seed']} failed: {row['failed']}", flush=True)
        else:
            loss = res["history"][-1]["train_loss"]
            row.update(val_accuracy=res["val_accuracy"], test_accuracy=res["accuracy"], achieved_sparsity=res["sparsity"],
                       final_train_loss=loss if math.isfinite(loss) else None,  # NaN once diverged; JSON has no NaN
                       seconds=res["seconds"])
            print(f"{j['method']:12s} s={j['sparsity']:.2f} lr={j['lr']:g} seed={j['seed']} val={100 * row['val_accuracy']:.2f} "
                  f"test={100 * row['test_accuracy']:.2f}", flush=True)
        atomic_write_text(cache / f"{_key(j)}.json", json.dumps(row))
        results[_key(j)] = row
    runs = [results[_key(j)] for j in jobs]
    summary = []
    for m in a.methods:
        for s in [0.0] if m == "dense" else a.sparsities:
            per_lr = {}
            for lr in lrs:
                rs = [r for r in runs if r["method"] == m and r["sparsity"] == s and r["lr"] == lr]
                if any(r.get("failed") for r in rs):
                    per_lr[lr] = {"failed": sum(bool(r.get("failed")) for r in rs)}
                    continue
                tests = [100 * r["test_accuracy"] for r in rs]
                losses = [r["final_train_loss"] for r in rs]
                per_lr[lr] = {"val": statistics.mean(100 * r["val_accuracy"] for r in rs), "test": statistics.mean(tests),
                              "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                              "train_loss": None if None in losses else statistics.mean(losses)}
            if all("failed" in v for v in per_lr.values()):
                raise RuntimeError(f"lr_tuned: every run of {m} at sparsity {s} failed; first error: "
                                   + next(r["failed"] for r in runs if r["method"] == m and r["sparsity"] == s and r.get("failed")))
            best = choose(per_lr)
            summary.append({"method": m, "sparsity": s, "chosen_lr": best, **per_lr[best],
                            "test_at_reference": per_lr.get(REFERENCE_LR, {}).get("test"),
                            "per_lr": {str(lr): v for lr, v in per_lr.items()}})
    dense = next((r for r in summary if r["method"] == "dense"), None)
    md = [f"{a.model} on {a.dataset}, {a.epochs} epochs, seeds {a.seeds}, the last {a.n_val} training samples held out "
          f"for validation. Per method and sparsity, the learning rate of {lrs} with the best mean final-epoch "
          "validation accuracy; test = mean ± std final-epoch test accuracy (%) of those runs"
          + ("; gap = dense test - method test, dense at its own chosen rate." if dense else ".") + "\n",
          f"| method | sparsity | chosen lr | val | test | gap to dense | test at lr {REFERENCE_LR:g} |", "|---|---|---|---|---|---|---|"]
    for r in summary:
        gap = f"{dense['test'] - r['test']:.2f}" if dense and r is not dense else "-"
        ref = f"{r['test_at_reference']:.2f}" if r["test_at_reference"] is not None else "-"
        md.append(f"| {r['method']} | {100 * r['sparsity']:g} % | {r['chosen_lr']:g} | {r['val']:.2f} | "
                  f"{r['test']:.2f} ± {r['test_std']:.2f} | {gap} | {ref} |")
    md += ["", "Every rate: mean validation / mean test accuracy (%); `failed` where a run stopped with an error (a diverged run that a DST method could not rank).", "",
           "| method | sparsity | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|---|" + "---|" * len(lrs)]
    for r in summary:
        md.append(f"| {r['method']} | {100 * r['sparsity']:g} % | "
                  + " | ".join(f"failed ({v['failed']} of {len(a.seeds)} seeds)" if "failed" in v
                               else f"{v['val']:.2f} / {v['test']:.2f}" for v in r["per_lr"].values()) + " |")
    data = {"provenance": prov, "config": vars(a), "summary": summary, "runs": runs}
    _, mp = write_results(a.name, data, "\n".join(md), Path(a.out) if a.out else None)
    print(mp.read_text())
