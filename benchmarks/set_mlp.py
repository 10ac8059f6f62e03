"""set_mlp: SET vs static Erdős–Rényi vs dense on the authors' 784-1000-1000-1000-10 MLP / Fashion-MNIST, per grow_init.

Mocanu et al. 2018 ("Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science") train an MLP whose layers are Erdős–Rényi graphs
(``epsilon = 13`` on Fashion-MNIST in the authors' tutorial code) and, after every epoch,
remove the fraction ``zeta = 0.3`` of the smallest positive and of the largest negative weights
and regrow as many at random. Published: SET above the same sparse network kept static, and
close to dense. This suite runs, through :class:`sparseforge.methods.SET`:

* ``dense``: the MLP without masks;
* ``static``: ``SET`` with the same initial masks and no topology update (static ER);
* ``set-<grow_init>``: SET with each :data:`~sparseforge.methods.dst.GROW_INITS` choice:
  ``normal`` (N(0, 0.1), the authors' SciPy code), ``zeros`` (RigL default / Keras SET),
  ``glorot_uniform`` (the ECMLPKDD 2019 tutorial code), ``random_normal`` and
  ``random_uniform`` (RigL's options).

Setup as the authors' SciPy code (``SET-MLP-Sparse-Python-Data-Structures``: epsilon 13,
batch 40, dropout 0.2, lr 0.05, momentum 0.9, weight decay 2e-4, weights ``N(0, 1) / 10``),
with the output the issue names: ReLU hidden layers with dropout 0.2, sigmoid outputs trained
with MSE against one-hot targets, SGD lr 0.05 with momentum 0.9, weight decay
``w <- w - 2e-4 w`` applied after each step (not scaled by the learning rate), initial
weights ``N(0, 0.1)`` and zero biases (dense too), masks of ``epsilon (n_in + n_out)``
positions drawn with replacement on *all four* layers (``sampling="with_replacement"``; the
output layer keeps about 73 % of its weights and evolves too), topology update after every
epoch but the last, batch 40. (With the tutorial's Glorot-uniform weights, lr 0.01 and batch
128, the static ER network at 97 % sparsity stayed at 10 % accuracy for 3 epochs: the signal
vanishes through three layers of ~25 inputs per unit.) Test accuracy is measured at the end of every epoch on the network as trained
(before the topology update, via the ``before_topology_update`` event).
**Budget: ``--epochs`` (default 3; the authors train hundreds of epochs)**, full
Fashion-MNIST (60k/10k).

    sparseforge bench set_mlp --jobs 1        # 7 conditions x 3 seeds x 3 epochs; ~40 s/epoch on an idle core

Runs are cached in ``runs/bench-set-mlp/`` (an interrupted run resumes); results go to
``benchmarks/results/set_mlp.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CONDITIONS = ["dense", "static", "set-normal", "set-zeros", "set-glorot_uniform", "set-random_normal",
              "set-random_uniform"]


def build_mlp(dropout: float = 0.2, init_std: float = 0.1):
    """The authors' Fashion-MNIST MLP: 784-1000-1000-1000-10, ReLU + dropout hidden, logits out (sigmoid in the loss).

    Weights ``N(0, init_std)`` (the SciPy code's ``N(0, 1) / 10``), biases zero.
    """
    from torch import nn

    layers: list[nn.Module] = []
    dims = [784, 1000, 1000, 1000, 10]
    for i in range(4):
        lin = nn.Linear(dims[i], dims[i + 1])
        nn.init.normal_(lin.weight, 0.0, init_std)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < 3:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def run_one(condition: str, seed: int, epochs: int, epsilon: float, zeta: float, lr: float, batch: int,
            weight_decay: float, threads: int) -> dict:
    """Train one condition; return the per-epoch test accuracy / loss and the final sparsity."""
    import torch
    import torch.nn.functional as F

    from sparseforge.data import load_fashion_mnist
    from sparseforge.methods import SET
    from sparseforge.train import iterate_batches

    torch.set_num_threads(threads)
    data = load_fashion_mnist()
    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    torch.manual_seed(seed)
    model = build_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    per_epoch = (len(x_train) + batch - 1) // batch
    method = None
    if condition != "dense":
        grow = condition.split("-", 1)[1] if condition.startswith("set-") else "zeros"
        interval = per_epoch if condition.startswith("set-") else 10**12  # static: never updates
        method = SET(model, opt, epsilon=epsilon, zeta=zeta, update_interval=interval, total_steps=per_epoch * epochs,
                     sampling="with_replacement", grow_init=grow, seed=seed)

    @torch.no_grad()
    def test() -> dict:
        was = model.training
        model.eval()
        out = torch.cat([torch.sigmoid(model(x_test[i:i + 2000])) for i in range(0, len(x_test), 2000)])
        model.train(was)
        target = F.one_hot(data.y_test, 10).float()
        return {"accuracy": float((out.argmax(1) == data.y_test).float().mean()),
                "mse": float(F.mse_loss(out, target))}

    pending: list[dict] = []
    if method is not None:
        method.on("before_topology_update", lambda e: pending.append(test()))
    curve = []
    t0 = time.time()
    for epoch in range(epochs):
        train_loss, n = 0.0, 0
        for xb, yb in iterate_batches(x_train, data.y_train, batch, seed=seed * 1000 + epoch):
            opt.zero_grad()
            loss = F.mse_loss(torch.sigmoid(model(xb)), F.one_hot(yb, 10).float())
            loss.backward()
            opt.step()
            with torch.no_grad():  # the authors' decay: w <- w - wd * w, outside the learning rate
                for p in model.parameters():
                    p.mul_(1.0 - weight_decay)
            train_loss += float(loss.detach()) * len(yb)
            n += len(yb)
        ev = pending.pop() if pending else test()
        curve.append({"epoch": epoch + 1, **ev, "train_mse": train_loss / n})
    sparsity = method.sparsity if method is not None else 0.0
    layers = ({l.qualname: 1.0 - float(l.mask.float().mean()) for l in method.layers} if method is not None else {})
    return {"condition": condition, "seed": seed, "curve": curve, "sparsity": sparsity, "layer_sparsity": layers,
            "seconds": time.time() - t0}


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cond, pts in summary.items():
        ax.errorbar([p["epoch"] for p in pts], [100 * p["mean"] for p in pts], yerr=[100 * p["std"] for p in pts],
                    marker="o", capsize=3, label=cond)
    ax.set_xticks([p["epoch"] for p in next(iter(summary.values()))])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("SET MLP 784-1000-1000-1000-10 / Fashion-MNIST (reduced budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    """Run conditions x seeds and write ``benchmarks/results/set_mlp.{json,md,png}``."""
    from sparseforge.bench import parallel_map, provenance, split_cached, write_results
    from sparseforge.fileio import atomic_write_text
    from sparseforge.kernels.cpu_sparse import cpu_features

    p = argparse.ArgumentParser(prog="sparseforge bench set_mlp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conditions", nargs="+", default=CONDITIONS, choices=CONDITIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epsilon", type=float, default=13.0)
    p.add_argument("--zeta", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--cache", default="runs/bench-set-mlp")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="set_mlp")
    p.add_argument("--summarize-only", action="store_true", help="write results from the cached runs, train nothing")
    a = p.parse_args(argv)
    prov = provenance(["set_mlp", *argv])
    jobs = [(c, s) for s in a.seeds for c in a.conditions]  # seed-major: partial grids cover every condition
    key = {j: f"{j[0]}_s{j[1]}_e{a.epochs}_eps{a.epsilon}_z{a.zeta}_lr{a.lr}_b{a.batch}_wd{a.weight_decay}" for j in jobs}
    cached, todo = split_cached(jobs, Path(a.cache), lambda j: key[j])
    runs = {j: cached[key[j]] for j in jobs if key[j] in cached}
    print(f"{len(jobs)} runs, {len(runs)} cached, {0 if a.summarize_only else len(todo)} to train", flush=True)
    calls = [dict(condition=c, seed=s, epochs=a.epochs, epsilon=a.epsilon, zeta=a.zeta, lr=a.lr, batch=a.batch,
                  weight_decay=a.weight_decay, threads=a.threads) for c, s in todo]
    for i, res in parallel_map(run_one, [] if a.summarize_only else calls, jobs=a.jobs):
        atomic_write_text(Path(a.cache) / f"{key[todo[i]]}.json", json.dumps(res))
        runs[todo[i]] = res
        print(f"{todo[i][0]:20s} seed={todo[i][1]} acc per epoch "
              f"{[round(100 * c['accuracy'], 2) for c in res['curve']]} ({res['seconds']:.0f} s)", flush=True)
    seeds_done = {c: [s for s in a.seeds if (c, s) in runs] for c in a.conditions}
    summary: dict[str, list[dict]] = {}
    for c in a.conditions:
        rs = [runs[(c, s)] for s in seeds_done[c]]
        if not rs:
            continue
        pts = []
        for k in range(a.epochs):
            accs = [r["curve"][k]["accuracy"] for r in rs]
            pts.append({"epoch": k + 1, "mean": statistics.mean(accs),
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "train_mse": statistics.mean(r["curve"][k]["train_mse"] for r in rs)})
        summary[c] = pts
    md = [f"784-1000-1000-1000-10 MLP on Fashion-MNIST (60k/10k): ReLU + dropout 0.2, sigmoid outputs with MSE, weights N(0, 0.1), SGD lr "
          f"{a.lr} momentum 0.9, decoupled weight decay {a.weight_decay}, batch {a.batch}; sparse runs: ER epsilon = "
          f"{a.epsilon:g} drawn with replacement on all four layers, zeta = {a.zeta}, topology update after every "
          f"epoch but the last. **Reduced budget: {a.epochs} epochs** (the authors train hundreds). Test accuracy (%) "
          "at the end of each epoch, before that epoch's topology update, mean ± std over the seeds listed.\n",
          "| condition | seeds | sparsity | " + " | ".join(f"epoch {k + 1}" for k in range(a.epochs))
          + " | final train MSE |",
          "|---|---|---|" + "---|" * a.epochs + "---|"]
    for c, pts in summary.items():
        sp = statistics.mean(runs[(c, s)]["sparsity"] for s in seeds_done[c])
        md.append(f"| {c} | {len(seeds_done[c])} | {100 * sp:.2f} % | "
                  + " | ".join(f"{100 * p['mean']:.2f} ± {100 * p['std']:.2f}" for p in pts)
                  + f" | {pts[-1]['train_mse']:.4f} |")
    missing = [f"{c} seed {s}" for c, s in jobs if (c, s) not in runs]
    if missing:
        md.append(f"\nNot run (out of time): {', '.join(missing)}.")
    if "static" in summary and "dense" in summary:
        last = {c: pts[-1]["mean"] for c, pts in summary.items()}
        sets = {c: v for c, v in last.items() if c.startswith("set-")}
        lines = [f"- final epoch: dense {100 * last['dense']:.2f}, static {100 * last['static']:.2f}"]
        for c, v in sorted(sets.items(), key=lambda kv: -kv[1]):
            lines.append(f"- {c}: {100 * v:.2f} ({100 * (v - last['static']):+.2f} vs static, "
                         f"{100 * (v - last['dense']):+.2f} vs dense)")
        both = [s for s in seeds_done["static"] if all((c, s) in runs for c in sets)]
        for c in sorted(sets, key=lambda c: -last[c]):
            diffs = [100 * (runs[(c, s)]["curve"][-1]["accuracy"] - runs[("static", s)]["curve"][-1]["accuracy"])
                     for s in both]
            lines.append(f"- {c} minus static, same seed (same initial masks): "
                         + ", ".join(f"{d:+.2f}" for d in diffs))
        md += ["", "Final-epoch comparison:", *lines]
        if a.epochs < 50:
            md.append(f"- caveat: {a.epochs} epochs mean {a.epochs - 1} topology update(s); the authors' gains come over "
                      "hundreds of epochs. With the SciPy code's N(0, 0.1) weights the dense network stays near chance for "
                      "one or two epochs (seed-dependent; likely saturation, with about 1000 inputs per unit), so its "
                      "early epochs are not a fair reference; its final epoch still leads.")
    if a.summarize_only:
        md.append("- this summary was written from the run cache (`--summarize-only`); the runs were trained by the "
                  "same command without that flag.")
    flags = [f for f in cpu_features() if f.startswith(("avx", "amx", "asimd", "sve", "fma"))]
    md.append(f"\nCPU vector features: {', '.join(flags) or 'unknown'}.")
    data_out = {"provenance": prov, "config": vars(a), "cpu_features": flags, "summary": summary,
                "runs": [runs[j] for j in jobs if j in runs], "missing": missing}
    jp, mp = write_results(a.name, data_out, "\n".join(md), Path(a.out) if a.out else None)
    try:
        _plot(summary, jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![test accuracy per epoch]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
