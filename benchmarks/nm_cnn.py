"""nm-cnn: N:M training methods on the Fashion-MNIST SmallCNN, final-epoch test accuracy.

Run it as ``sparseforge bench nm_cnn`` (the suite is named after this file). Every run trains
``small-cnn`` (conv1 3x3x32 - BN - conv2 3x3x64 - BN - fc1 128 - fc2 10) with the recipe of
the ``fmnist`` suite and the demo (SGD lr 0.05, momentum 0.9, weight decay 1e-4, cosine, batch
128) for the same number of epochs. Grid: dense, and 2:4, 1:4, 1:8, 1:16 x {ste, srste, mdgf,
sdgf}. BDWP is not offered: it handles Linear layers only (conv2 is a convolution).

N:M layers: ``conv1`` stays dense (one input channel: nothing to group, and first layers
are left dense by convention); ``conv2`` (groups of M input channels at each kernel position),
``fc1`` and ``fc2`` are N:M (``--last-layer dense`` keeps fc2 dense). Policy for a layer whose
input dimension is not a multiple of M: ``indivisible="skip"``, i.e. the layer stays dense and
is listed under "skipped" in the output. With the default model and patterns no layer is
skipped (inputs 32, 3136 and 128 are multiples of 16).

Score: test accuracy after the last epoch (never the best epoch), measured in the method's
finished state (hard target N:M mask); the model is then finalized (mask folded into the
weights, N:M zeros checked) and scored again, and the two numbers must agree.

Gradient-flow defaults, as in ``nm_lm``: SR-STE ``lambda_w = 2e-4``; MDGF exponential decay
with ``c = ln(100) / (0.25 T)`` so that ``beta`` reaches 1 % a quarter of the way through the
``T`` steps (the official ``c = 2e-4`` barely moves over a few thousand steps); SDGF
``kind = "sparsify"``; no dense or fine-tuning phase.

Examples::

    sparseforge bench nm_cnn --jobs 2                      # full grid (see --help for the budget)
    sparseforge bench nm_cnn --methods srste --patterns 2:4 1:16 --epochs 1 --seeds 0

Runs are cached in ``runs/bench-nm-cnn/`` (one JSON per run, keyed by its recipe); results go to
``benchmarks/results/nm_cnn.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

from sparseforge.bench import (add_nm_grid_args, check_nm_grid_args, mdgf_decay_coef, mean_std_cell, nm_density,
                               parallel_map, plot_vs_nm_density, provenance, split_cached, write_results)
from sparseforge.demo import run_recipe
from sparseforge.fileio import atomic_write_text

METHODS = ["ste", "srste", "mdgf", "sdgf"]
ALLOWED_METHODS = ["ste", "srste", "mdgf", "sdgf"]
PATTERNS = ["2:4", "1:4", "1:8", "1:16"]
BATCH = 128


def recipe(method: str, pattern: str | None, seed: int, a: argparse.Namespace, total_steps: int) -> dict[str, Any]:
    """The recipe of one run (see the module docstring for the choices)."""
    if method == "dense":
        m: dict[str, Any] = {"name": "dense"}
    else:
        m = {"name": method, "pattern": pattern, "indivisible": "skip"}
        if method == "mdgf":
            c = a.mdgf_decay_coef if a.mdgf_decay_coef is not None else mdgf_decay_coef(total_steps, a.mdgf_decay_at)
            m.update({"decay": "exp", "decay_coef": c})
        elif method == "sdgf":
            m["kind"] = a.sdgf_kind
    data: dict[str, Any] = {"name": a.dataset, "batch_size": BATCH}
    if a.n_train is not None:
        data["n_train"] = a.n_train
    if a.n_test is not None:
        data["n_test"] = a.n_test
    return {"name": f"nm-cnn-{method}-{pattern or 'dense'}-{seed}", "seed": seed, "epochs": a.epochs,
            "model": {"name": "small-cnn"}, "data": data, "method": m,
            "targets": {"first_layer": "dense", "last_layer": a.last_layer},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
            "lr_schedule": {"name": "cosine"}}


def _key(rec: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:10]
    pat = rec["method"].get("pattern", "dense").replace(":", "-")
    return f"{rec['method']['name']}_{pat}_seed{rec['seed']}_{rec['epochs']}ep_{digest}"


def _preflight(recipes: list[dict[str, Any]], data: Any) -> None:
    """Build every distinct method on a throw-away model, so a bad cell fails before any training."""
    from sparseforge.methods import build_method
    from sparseforge.models import build_model

    seen = set()
    for rec in recipes:
        params = {k: v for k, v in rec["method"].items() if k != "name"}
        sig = json.dumps(rec["method"], sort_keys=True)
        if rec["method"]["name"] == "dense" or sig in seen:
            continue
        seen.add(sig)
        build_method(rec["method"]["name"], build_model("small-cnn", data), None, targets=rec["targets"],
                     total_steps=1000, **params)


def _cell(rows: list[dict[str, Any]]) -> str:
    return mean_std_cell([100 * r["accuracy"] for r in rows], "{:.2f}")


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``nm_cnn.{json,md,png}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench nm_cnn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_nm_grid_args(p, METHODS, ALLOWED_METHODS, PATTERNS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--last-layer", default="sparse", choices=["sparse", "dense"], help="N:M on fc2 or not")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test images (smoke tests)")
    p.add_argument("--cache", default="runs/bench-nm-cnn")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="nm_cnn", help="results file name")
    a = p.parse_args(argv)
    check_nm_grid_args(a, positive=("epochs",))
    prov = provenance(["nm_cnn", *argv])
    from sparseforge.data import load_dataset

    data = load_dataset(a.dataset, n_train=a.n_train, n_test=a.n_test)
    total_steps = a.epochs * math.ceil(data.x_train.shape[0] / BATCH)
    cells = ([] if a.no_dense else [("dense", None)]) + [(m, pat) for pat in a.patterns for m in a.methods]
    recipes = [recipe(m, pat, seed, a, total_steps) for m, pat in cells for seed in a.seeds]
    _preflight(recipes, data)
    cache = Path(a.cache)
    results, todo = split_cached(recipes, cache, _key)
    print(f"{len(recipes)} runs, {len(recipes) - len(todo)} cached, {len(todo)} to train with {a.jobs} worker(s); "
          f"{a.epochs} epoch(s) = {total_steps} steps per run", flush=True)
    # workers load the dataset from the recipe; one process reuses the loaded copy
    calls = [{"recipe": r} for r in todo] if a.jobs > 1 else [{"recipe": r, "dataset": data} for r in todo]
    for i, row in parallel_map(run_recipe, calls, jobs=a.jobs):
        rec = todo[i]
        r = {"method": rec["method"]["name"], "pattern": rec["method"].get("pattern"), "seed": rec["seed"],
             "epochs": rec["epochs"], **{k: v for k, v in row.items() if k not in ("method",)}}
        atomic_write_text(cache / f"{_key(rec)}.json", json.dumps(r))
        results[_key(rec)] = r
        print(f"{r['method']:6s} {r['pattern'] or 'dense':5s} seed={r['seed']} acc {100 * r['accuracy']:.2f} "
              f"(finalized {100 * r['finalized_accuracy']:.2f}) ({r['seconds']:.0f} s)", flush=True)
    runs = [results[_key(rec)] for rec in recipes]

    summary = []
    for m, pat in cells:
        rs = [r for r in runs if r["method"] == m and r["pattern"] == pat]
        accs = [r["accuracy"] for r in rs]
        summary.append({"method": m, "pattern": pat, "density": 1.0 if pat is None else nm_density(pat),
                        "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "seeds": len(rs), "sparsity": statistics.mean(r["sparsity"] for r in rs),
                        "sparse_flops": rs[0]["sparse_flops"], "dense_flops": rs[0]["dense_flops"]})
    mismatched = [f"{r['method']} {r['pattern']} seed {r['seed']}" for r in runs if r["accuracy"] != r["finalized_accuracy"]]
    skipped = sorted({s for r in runs for s in r["skipped"]})
    sparse_runs = [r for r in runs if r["method"] != "dense"]
    nm_layers = sparse_runs[0]["masked_layers"] if sparse_runs else []
    head = ["dense"] + [f"{pat} ({100 * nm_density(pat):g} %)" for pat in a.patterns]
    seeds_txt = f"mean ± std over seeds {', '.join(map(str, a.seeds))}" if len(a.seeds) > 1 else f"seed {a.seeds[0]}"
    md = [f"Final-epoch test accuracy (%) of SmallCNN on {data.name} ({data.x_train.shape[0]} train / "
          f"{data.x_test.shape[0]} test), {seeds_txt}; {a.epochs} epoch(s) = {total_steps} steps per run, SGD lr 0.05 "
          "momentum 0.9, weight decay 1e-4, cosine, batch 128. Column headers give N:M and the density of the N:M layers.\n",
          f"N:M layers: {', '.join(n.removesuffix('.weight') for n in nm_layers) or '-'}; conv1 (1 input channel) "
          f"stays dense{'' if a.last_layer == 'sparse' else ', fc2 stays dense'}. Layers whose input dimension is not a "
          f"multiple of M are left dense (policy `indivisible='skip'`); skipped here: {'; '.join(skipped) or 'none'}.\n",
          "Accuracy is measured in the finished state (hard target N:M mask) and again after `finalize()` folded the "
          "mask into the weights (N:M zeros checked): "
          + ("identical in every run." if not mismatched else f"DIFFERENT in {mismatched}.") + "\n",
          f"MDGF: exp decay, decay_coef = {recipe('mdgf', '2:4', 0, a, total_steps)['method']['decay_coef']:.4g}; "
          f"SDGF: kind '{a.sdgf_kind}'; SR-STE lambda_w 2e-4; no dense or fine-tuning phase.\n",
          "\n| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    if not a.no_dense:
        md.append("| dense | " + _cell([r for r in runs if r["method"] == "dense"]) + " |" + " |" * len(a.patterns))
    for m in a.methods:
        md.append(f"| {m} | | " + " | ".join(_cell([r for r in runs if r["method"] == m and r["pattern"] == pat])
                                             for pat in a.patterns) + " |")
    md.append("\nSparsity is simulated (dense tensors with zeros).")
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": vars(a), "dataset": data.name, "summary": summary, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        plot_vs_nm_density(runs, a.methods, lambda r: 100 * r["accuracy"], ylabel="final-epoch test accuracy (%)",
                           title="SmallCNN, final hard N:M mask", path=jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![accuracy vs density]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
