"""nm-lm: N:M training methods on a character-level TinyGPT (Jane Austen), validation perplexity.

Run it as ``sparseforge bench nm_lm`` (the suite is named after this file). Every run trains
TinyGPT (``tiny-gpt``: width 256, 4 blocks, 4 heads, context 128 by default) on the Austen
corpus (char tokenizer, the last 10 % of every novel held out) with the same token budget
``steps x batch x 128`` and the recipe of :func:`sparseforge.lm.train_lm` (AdamW lr 1e-3,
betas (0.9, 0.95), weight decay 0.1 on matrices, 5 % linear warm-up then cosine to 10 %, gradient
clipping 1.0). Grid: dense, and 2:4, 1:4, 1:8, 1:16 x {ste, srste, mdgf, sdgf} (``--methods``
also accepts ``bdwp``).

N:M layers: every Linear layer inside the blocks (``attn.qkv``, ``attn.proj``, ``mlp.fc``,
``mlp.proj``); the token and position embeddings and the output ``head`` stay dense.

Score: validation loss and perplexity ``exp(loss)`` of the *finished* model on every
validation window (``--val-windows`` to sample fewer): the method's final hard N:M mask is
folded into the weights (``finalize``), the N:M zeros are checked, then the text is scored.

Gradient-flow defaults (documented choices, not the papers' numbers):

* SR-STE: ``lambda_w = 2e-4`` (the official default).
* MDGF: exponential decay ``beta_t = exp(-c t)`` from step 0 (no dense phase, no fine-tuning
  phase), with ``c`` chosen so that ``beta`` falls to 1 % a quarter of the way through the run:
  ``c = ln(100) / (0.25 T)`` (``--mdgf-decay-at 0.25``); for T = 1000 steps, c = 0.0184. The
  official default ``c = 2e-4`` is tuned for runs of ~10^5 steps: over 1000 steps it would
  only reach ``beta = exp(-0.2) = 0.82``, so training would see an almost dense forward pass
  until the hard mask appears at the very end, which measures the switch, not the method.
  ``--mdgf-decay-coef`` sets ``c`` directly.
* SDGF: ``kind = "sparsify"`` (SdGf-Stepwise): the run is split into equal frames of
  ``(M-1):M, M/2:M, ..., N:M`` (1:16 -> 15:16, 8:16, 4:16, 2:16, 1:16; 2:4 -> 3:4, 2:4).
* All methods start sparse at step 0 and end at the target pattern (``dense_fraction =
  finetune_fraction = 0``), so they see the same budget.

Examples::

    sparseforge bench nm_lm --jobs 2                         # full grid (hours; see --help)
    sparseforge bench nm_lm --methods srste --patterns 2:4 --steps 200
    sparseforge bench nm_lm --d-model 128 --steps 2000 --seeds 0 1

Runs are cached in ``runs/bench-nm-lm/`` (one JSON per run, keyed by its full
configuration), so an interrupted grid resumes and a second call only re-renders. Results go to
``benchmarks/results/nm_lm.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

from sparseforge.bench import (add_nm_grid_args, check_nm_grid_args, mdgf_decay_coef, mean_std_cell, nm_density,
                               parallel_map, plot_vs_nm_density, provenance, split_cached, write_results)
from sparseforge.fileio import atomic_write_text
from sparseforge.lm import DEFAULT_LM_TARGETS, train_lm

METHODS = ["ste", "srste", "mdgf", "sdgf"]
ALLOWED_METHODS = ["ste", "srste", "mdgf", "sdgf", "bdwp"]
PATTERNS = ["2:4", "1:4", "1:8", "1:16"]


def method_params(method: str, pattern: str, a: argparse.Namespace) -> dict[str, Any]:
    """The method section of one grid cell (the module docstring explains the choices)."""
    if method == "dense":
        return {}
    p: dict[str, Any] = {"pattern": pattern}
    if method == "mdgf":
        c = a.mdgf_decay_coef if a.mdgf_decay_coef is not None else mdgf_decay_coef(a.steps, a.mdgf_decay_at)
        p.update({"decay": "exp", "decay_coef": c})
    elif method == "sdgf":
        p["kind"] = a.sdgf_kind
    return p


def _preflight(corpus: Any, model_params: dict[str, Any], jobs: list[dict[str, Any]], steps: int) -> None:
    """Build every (method, parameters) cell on a throw-away model, so a bad cell fails before any training."""
    from sparseforge.methods import build_method
    from sparseforge.models import build_model

    seen = set()
    for job in jobs:
        sig = json.dumps([job["method"], job["method_params"]], sort_keys=True)
        if job["method"] == "dense" or sig in seen:
            continue
        seen.add(sig)
        build_method(job["method"], build_model("tiny-gpt", corpus, **model_params), None, targets=DEFAULT_LM_TARGETS,
                     total_steps=steps, **job["method_params"])


def _key(job: dict[str, Any]) -> str:
    blob = json.dumps(job, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    pat = job["method_params"].get("pattern", "dense").replace(":", "-")
    return f"{job['method']}_{pat}_seed{job['seed']}_{job['steps']}st_{digest}"


def _record(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("method", "method_params", "pattern", "model_params", "corpus", "seed", "steps", "batch_size", "block_size",
            "tokens", "val_loss", "val_ppl", "val_windows", "val_tokens", "final_train_loss", "train_loss", "evals",
            "nonfinite_steps", "sparsity", "weight_sparsity", "nonzeros", "params", "prunable_params", "masked_layers",
            "skipped", "notes", "dense_flops", "sparse_flops", "nm_violations", "sad", "sad_curve", "seconds_per_step",
            "train_seconds", "seconds")
    return {k: row[k] for k in keep}


def _cell(rows: list[dict[str, Any]], key: str, fmt: str = "{:.3f}") -> str:
    return mean_std_cell([r[key] for r in rows], fmt)


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``nm_lm.{json,md,png}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench nm_lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_nm_grid_args(p, METHODS, ALLOWED_METHODS, PATTERNS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (same for every run)")
    p.add_argument("--batch", type=int, default=32, help="windows per step")
    p.add_argument("--block", type=int, default=128, help="context length (tokens per window)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-windows", type=int, default=None, help="validation windows scored at the end (default all)")
    p.add_argument("--corpus", default="austen", help="'austen' or 'text:PATH'")
    p.add_argument("--cache", default="runs/bench-nm-lm")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="nm_lm", help="results file name")
    a = p.parse_args(argv)
    check_nm_grid_args(a, positive=("steps", "batch", "block", "d_model", "n_layer", "n_head"))
    prov = provenance(["nm_lm", *argv])
    from sparseforge.text import load_text_corpus

    corpus = load_text_corpus(a.corpus)
    model_params = {"d_model": a.d_model, "n_layer": a.n_layer, "n_head": a.n_head, "block_size": a.block}
    cells = ([] if a.no_dense else [("dense", None)]) + [(m, pat) for pat in a.patterns for m in a.methods]
    jobs = [{"corpus": corpus.name, "method": m, "method_params": method_params(m, pat or "", a),
             "model_params": model_params, "steps": a.steps, "batch_size": a.batch, "lr": a.lr, "seed": seed,
             "val_windows": a.val_windows} for m, pat in cells for seed in a.seeds]
    _preflight(corpus, model_params, jobs, a.steps)
    cache = Path(a.cache)
    results, todo = split_cached(jobs, cache, _key)
    tokens = a.steps * a.batch * a.block
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to train with {a.jobs} worker(s); "
          f"{a.steps} steps x {a.batch} x {a.block} = {tokens:,} tokens per run", flush=True)
    # the one-process path reuses the loaded corpus; workers load it by name (nothing large crosses processes)
    calls = todo if a.jobs > 1 else [{**j, "corpus": corpus} for j in todo]
    for i, row in parallel_map(train_lm, calls, jobs=a.jobs):
        key = _key(todo[i])
        r = _record(row)
        atomic_write_text(cache / f"{key}.json", json.dumps(r))
        results[key] = r
        print(f"{r['method']:6s} {r['pattern'] or 'dense':5s} seed={r['seed']} val loss {r['val_loss']:.4f} "
              f"ppl {r['val_ppl']:.3f} ({r['train_seconds']:.0f} s, {r['seconds_per_step']:.3f} s/step)", flush=True)
    runs = [results[_key(j)] for j in jobs]

    methods_shown = ([] if a.no_dense else ["dense"]) + a.methods
    summary = []
    for m, pat in cells:
        rs = [r for r in runs if r["method"] == m and (r["pattern"] == pat or m == "dense")]
        ppl = [r["val_ppl"] for r in rs]
        summary.append({"method": m, "pattern": pat, "density": 1.0 if pat is None else nm_density(pat),
                        "val_ppl_mean": statistics.mean(ppl), "val_ppl_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                        "val_loss_mean": statistics.mean(r["val_loss"] for r in rs), "seeds": len(rs),
                        "sparsity": statistics.mean(r["sparsity"] for r in rs)})
    ex = runs[0]
    head = ["dense"] + [f"{pat} ({100 * nm_density(pat):g} %)" for pat in a.patterns]
    md = [f"Validation perplexity (character level, lower is better) of TinyGPT (d_model {a.d_model}, {a.n_layer} "
          f"blocks, {a.n_head} heads, context {a.block}) on corpus `{ex['corpus']}` (char tokenizer, last 10 % of each "
          f"document held out), {'mean ± std over seeds' if len(a.seeds) > 1 else 'seed'} "
          f"{', '.join(map(str, a.seeds))}. Every run: {a.steps} steps x batch "
          f"{a.batch} x {a.block} tokens = {tokens:,} training tokens, AdamW lr {a.lr:g}, warm-up + cosine.\n",
          f"Scored on {ex['val_windows']} validation windows ({ex['val_tokens']:,} predicted tokens) after `finalize()` "
          "folded the final hard N:M mask into the weights (N:M zeros checked: 0 violations). Column headers give "
          "N:M and the density of the sparse layers.\n",
          "N:M layers: every Linear inside the blocks (" + ", ".join(sorted({n.split('.', 2)[2].removesuffix('.weight')
                                                                             for n in ex['masked_layers']}))
          + f", {len(ex['masked_layers'])} layers); embeddings and the output head stay dense.\n",
          f"MDGF: exp decay, decay_coef = {method_params('mdgf', '2:4', a)['decay_coef']:.4g} "
          f"(beta = 1 % at {100 * a.mdgf_decay_at:g} % of the run unless set directly); SDGF: kind '{a.sdgf_kind}'; "
          "SR-STE lambda_w 2e-4; no dense or fine-tuning phase.\n",
          "\n| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for m in methods_shown:
        if m == "dense":
            rs = [r for r in runs if r["method"] == "dense"]
            md.append("| dense | " + _cell(rs, "val_ppl") + " |" + " |" * len(a.patterns))
            continue
        # the dense column stays empty for sparse methods
        md.append(f"| {m} | | " + " | ".join(_cell([r for r in runs if r["method"] == m and r["pattern"] == pat], "val_ppl")
                                             for pat in a.patterns) + " |")
    md.append("\nValidation loss (nats per character):\n")
    md.append("| method | " + " | ".join(head) + " |")
    md.append("|---|" + "---|" * len(head))
    for m in methods_shown:
        if m == "dense":
            md.append("| dense | " + _cell([r for r in runs if r["method"] == "dense"], "val_loss", fmt="{:.4f}") + " |"
                      + " |" * len(a.patterns))
            continue
        md.append(f"| {m} | | " + " | ".join(_cell([r for r in runs if r["method"] == m and r["pattern"] == pat],
                                                     "val_loss", fmt="{:.4f}") for pat in a.patterns) + " |")
    sps = statistics.median(r["seconds_per_step"] for r in runs)
    md.append(f"\nMedian training time {sps:.3f} s/step ({a.jobs} worker process(es) at a time); "
              "sparsity is simulated (dense tensors with zeros).")
    out = Path(a.out) if a.out else None
    data_out = {"provenance": prov, "config": vars(a), "targets": DEFAULT_LM_TARGETS, "summary": summary, "runs": runs}
    jp, mp = write_results(a.name, data_out, "\n".join(md), out)
    try:
        plot_vs_nm_density(runs, a.methods, lambda r: r["val_ppl"], ylabel="validation perplexity (char)",
                           title=f"TinyGPT on {runs[0]['corpus']}, final hard N:M mask", path=jp.with_suffix(".png"))
        with open(mp, "a") as f:
            f.write(f"\n![perplexity vs density]({jp.with_suffix('.png').name})\n")
    except ImportError:
        print("matplotlib not installed: no plot")
    print(mp.read_text())
