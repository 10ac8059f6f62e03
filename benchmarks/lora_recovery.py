"""lora_recovery: one-shot prune the Austen GPT, recover it with sparsity-preserving LoRA, quantize; masks checked at every stage.

Run it as ``sparseforge bench lora_recovery``. The small pretrained Austen GPT
(:func:`sparseforge.pretrained.austen_gpt`; it must be trained already, or pass
any sparseforge TinyGPT folder with ``--gpt PATH``) is pruned one-shot (``--method``, default
Wanda, calibration ``--nsamples`` windows of the training text) at each ``--targets`` sparsity
or N:M pattern; every Linear inside the transformer blocks is pruned, embeddings and head stay
dense. Then, for each target:

* ``masked`` LoRA (:func:`sparseforge.lora.add_lora`: ``W + alpha/r M ⊙ (B A)``) on the pruned
  layers, trained ``--steps`` AdamW steps (``--lr``, weight decay 0, linear warm-up over the first
  10 % then cosine to 10 %; batches of ``--batch`` random windows of the training text, the
  same batches for every variant), then merged;
* ``plain`` LoRA, the baseline users have today (the adapter's update not masked, as in a
  standard LoRA merge), trained identically, then merged;
* the merged ``masked`` model quantized to int8 (per output channel) and int4 (groups of
  ``--group``) with :func:`sparseforge.export.quantize_weights`.

The reference for the recovered perplexities is the *dense* model given the same LoRA training
(same layers, steps and batches): the Austen GPT saw only 0.68 of an epoch, so any further
training on its text lowers its perplexity, and a pruned model's recovery is measured against
that, not against the dense model before fine-tuning.

Per stage: validation perplexity (characters) on ``--val-windows`` held-out windows, the
sparsity of the pruned layers, the fraction of the one-shot pruned positions that are still
exactly zero, and for N:M targets the number of groups of M with more than N nonzeros.
Results: ``benchmarks/results/lora_recovery.{json,md}``. Use ``--threads 1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from sparseforge.bench import check_at_least, provenance, write_results

TARGETS = ["0.5", "2:4"]


def _layers(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach() for n in names}


def _stage(name: str, model: torch.nn.Module, names: list[str], pruned: dict[str, torch.Tensor], nm: tuple[int, int] | None,
           evaluate: Any) -> dict[str, Any]:
    """Quality and sparsity of ``model`` at one stage."""
    from sparseforge.lm import nm_violations

    w = _layers(model, names)
    zeros = sum(int((t == 0).sum()) for t in w.values())
    total = sum(t.numel() for t in w.values())
    still = sum(int((w[n][pruned[n]] == 0).sum()) for n in names)
    n_pruned = sum(int(p.sum()) for p in pruned.values())
    t0 = time.perf_counter()
    ev = evaluate(model)
    out = {"stage": name, "val_ppl": ev["ppl"], "val_loss": ev["loss"], "sparsity": zeros / total,
           "pruned_still_zero": still / n_pruned if n_pruned else 1.0, "eval_seconds": time.perf_counter() - t0}
    if nm is not None:
        out["nm_violations"] = sum(nm_violations(t, *nm) for t in w.values())
    return out


def _finetune(model: torch.nn.Module, tokens: torch.Tensor, a: argparse.Namespace, block_size: int) -> dict[str, Any]:
    """Train the adapters of ``model`` (base frozen); returns the loss curve."""
    from sparseforge.lm import lm_loss, lm_lr_factor
    from sparseforge.lora import lora_parameters
    from sparseforge.text import lm_batches

    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    warm = max(1, a.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lm_lr_factor(s, steps=a.steps, warmup_steps=warm, min_lr_ratio=0.1))
    model.train()
    losses = []
    t0 = time.perf_counter()
    for x, y in lm_batches(tokens, block_size, a.batch, seed=a.seed, steps=a.steps):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    every = max(1, a.steps // 20)
    return {"seconds": time.perf_counter() - t0, "loss_first": losses[0], "loss_last": losses[-1],
            "loss_curve": [sum(losses[i:i + every]) / len(losses[i:i + every]) for i in range(0, len(losses), every)]}


def _lora_copy(model: torch.nn.Module, names: list[str], a: argparse.Namespace, *, masked: bool) -> torch.nn.Module:
    """A copy of ``model`` with adapters on ``names``, initialised identically for every variant."""
    from sparseforge.lora import add_lora, lora_layers

    m = copy.deepcopy(model)
    add_lora(m, rank=a.rank, alpha=a.alpha, targets={"include": names})
    torch.manual_seed(a.seed)
    for adapter in lora_layers(m).values():
        if not masked:
            adapter.mask.fill_(True)  # what a standard LoRA merge does: the update is dense
        torch.nn.init.kaiming_uniform_(adapter.A, a=math.sqrt(5))
    return m


def dense_reference(dense: torch.nn.Module, names: list[str], train_tokens: torch.Tensor, evaluate: Any,
                    a: argparse.Namespace) -> dict[str, Any]:
    """The dense model with the same LoRA training: what further training alone gives."""
    from sparseforge.lora import merge_lora

    m = _lora_copy(dense, names, a, masked=False)
    training = _finetune(m, train_tokens, a, int(dense.block_size))
    merge_lora(m)
    ev = evaluate(m)
    print(f"dense + LoRA ppl {ev['ppl']:.3f} ({training['seconds']:.0f} s)", flush=True)
    return {"val_ppl": ev["ppl"], "val_loss": ev["loss"], "training": training}


def run_target(dense: torch.nn.Module, target: str, calib: Any, train_tokens: torch.Tensor, evaluate: Any,
               a: argparse.Namespace) -> dict[str, Any]:
    """All stages for one target."""
    from sparseforge.export import quantize_weights
    from sparseforge.lora import merge_lora
    from sparseforge.masking import finalize
    from sparseforge.core import parse_target_text
    from sparseforge.oneshot import prune_oneshot

    net = copy.deepcopy(dense)
    res = prune_oneshot(net, a.method, parse_target_text(target, "--targets"), calibration=calib, progress=False)
    finalize(net)
    names = [l.name.rsplit(".", 1)[0] for l in res.layers]
    pruned = {n: w == 0 for n, w in _layers(net, names).items()}
    nm = tuple(int(v) for v in target.split(":")) if ":" in target else None
    block = int(dense.block_size)
    targets = {"include": names}
    stages = [_stage("one-shot pruned", net, names, pruned, nm, evaluate)]
    print(f"{target}: pruned ppl {stages[-1]['val_ppl']:.3f}", flush=True)
    training = {}
    merged_masked = None
    for variant in ("masked", "plain"):
        m = _lora_copy(net, names, a, masked=variant == "masked")
        training[variant] = _finetune(m, train_tokens, a, block)
        merge_lora(m)
        stages.append(_stage(f"{variant} LoRA, merged", m, names, pruned, nm, evaluate))
        print(f"{target}: {variant} LoRA ppl {stages[-1]['val_ppl']:.3f} sparsity {stages[-1]['sparsity']:.4f} "
              f"({training[variant]['seconds']:.0f} s)", flush=True)
        if variant == "masked":
            merged_masked = m
    for bits, group in ((8, None), (4, a.group)):
        q = copy.deepcopy(merged_masked)
        quantize_weights(q, bits=bits, group_size=group, targets=targets)
        label = f"masked LoRA, int{bits} " + ("per channel" if group is None else f"groups of {group}")
        stages.append(_stage(label, q, names, pruned, nm, evaluate))
        print(f"{target}: {label} ppl {stages[-1]['val_ppl']:.3f}", flush=True)
    return {"target": target, "pattern": res.pattern, "layers": len(names), "layer_names": names, "stages": stages,
            "training": training}


def render(data: dict[str, Any]) -> str:
    """The markdown body."""
    a = data["config"]
    md = [f"{data['describe']}, validation perplexity (characters, lower is better) on {a['val_windows']} held-out "
          f"windows; dense **{data['dense']['val_ppl']:.3f}**, and **{data['dense_lora']['val_ppl']:.3f}** after the "
          f"same LoRA training as the pruned models (the reference for recovery: the dense model saw only part of "
          f"an epoch, so further training alone lowers its perplexity). One-shot `{a['method']}` with {a['nsamples']} calibration "
          f"windows; LoRA rank {a['rank']}, alpha {a['alpha']}, {a['steps']} AdamW steps of {a['batch']} windows "
          f"(lr {a['lr']}, warm-up 10 %, cosine to 10 %), on the pruned layers only; {data['threads']} torch thread(s).\n",
          "`sparsity` is over the pruned layers; `pruned still zero` is the fraction of the one-shot pruned "
          "positions that are exactly zero at that stage; `N:M violations` counts groups of M with more than N "
          "nonzeros.\n"]
    for r in data["runs"]:
        nm = ":" in r["target"]
        md.append(f"\n## target {r['target']} ({r['layers']} layers)\n")
        md.append("| stage | val ppl | sparsity | pruned still zero |" + (" N:M violations |" if nm else "")
                  + "\n|---|---|---|---|" + ("---|" if nm else ""))
        for s in r["stages"]:
            md.append(f"| {s['stage']} | {s['val_ppl']:.3f} | {100 * s['sparsity']:.2f} % | "
                      f"{100 * s['pruned_still_zero']:.2f} % |" + (f" {s['nm_violations']} |" if nm else ""))
        t = r["training"]
        md.append("\nTraining loss (first step -> last step), seconds: "
                  + "; ".join(f"{v} {t[v]['loss_first']:.3f} -> {t[v]['loss_last']:.3f}, {t[v]['seconds']:.0f} s"
                              for v in t))
    return "\n".join(md)


def main(argv: list[str]) -> None:
    """Run every target and write ``lora_recovery.{json,md}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench lora_recovery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpt", default="austen-gpt", help="the GPT: austen-gpt (cached) or a sparseforge TinyGPT folder")
    p.add_argument("--corpus", default="austen", help="training, calibration and held-out text: austen, bible or text:PATH")
    p.add_argument("--targets", nargs="+", default=TARGETS, help="sparsities (0.5) and N:M patterns (2:4)")
    p.add_argument("--method", default="wanda", help="one-shot method (default wanda)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--steps", type=int, default=300, help="LoRA steps (default 300)")
    p.add_argument("--batch", type=int, default=16, help="windows per LoRA step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--group", type=int, default=32, help="int4 group size (default 32)")
    p.add_argument("--val-windows", type=int, default=512, help="validation windows, evenly spread (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (use 1 on a shared machine)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="lora_recovery", help="results file name")
    a = p.parse_args(argv)
    from sparseforge.lm import evaluate_lm
    from sparseforge.core import parse_target_text
    from sparseforge.oneshot import load_calibration, method_from_spec, oneshot_target
    from sparseforge.oneshot.calibration import calibration_text, heldout_text, tokenize_text
    from sparseforge.oneshot.io import load_model

    for t in a.targets:
        oneshot_target(parse_target_text(t, "--targets"), "--targets")
    method_from_spec(a.method)
    check_at_least(a, "nsamples", "steps", "batch", "rank", "group", "val_windows", "threads")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    prov = provenance(["lora_recovery", *argv])
    loaded = load_model(a.gpt)
    dense, tok = loaded.model.eval(), loaded.tokenizer
    block = int(dense.block_size)
    val = tokenize_text(heldout_text(a.corpus), tok)
    train_tokens = tokenize_text(calibration_text(a.corpus), tok)
    calib = load_calibration(a.corpus, tokenizer=tok, nsamples=a.nsamples, seqlen=block, seed=0)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_lm(model, val, block, max_windows=a.val_windows)

    data: dict[str, Any] = {"provenance": prov, "config": vars(a), "threads": torch.get_num_threads(),
                            "describe": (f"TinyGPT ({sum(p.numel() for p in dense.parameters()):,} parameters, "
                                         f"{dense.n_layer} blocks, context {block}) from `{a.gpt}`"),
                            "dense": evaluate(dense), "runs": []}
    print(f"dense ppl {data['dense']['ppl']:.3f}", flush=True)
    data["dense"]["val_ppl"] = data["dense"]["ppl"]
    for target in a.targets:
        data["runs"].append(run_target(dense, target, calib, train_tokens, evaluate, a))
    data["dense_lora"] = dense_reference(dense, data["runs"][0]["layer_names"], train_tokens, evaluate, a)
    _, mp = write_results(a.name, data, render(data), Path(a.out) if a.out else None)
    print(mp.read_text())
