"""Structured pruning on a zoo of small architectures, side by side with Torch-Pruning.

Every model is built offline (Hugging Face ``from_config`` with small sizes, or a hand-written
edge case), pruned at one channel sparsity (default 50 %, per-layer L2 ranking, the last
Linear/Conv layer ignored) and checked: the pruned model runs and keeps the output shape, it equals the
group-zeroed model, it reloads from disk (``save_structured``/``load_structured`` with the
model's factory), and its ONNX export runs in onnxruntime. Reported: params and MACs (weight
multiply-accumulates per sample) before/after, requested vs achieved sparsity per layer (JSON),
layers left alone and unknown operations, and CPU latency before/after at the given batch.
Latency is timed on the same architecture rebuilt ``--latency-scale`` times wider (default 4;
sequences and images grow too), where compute rather than per-call overhead dominates, and
compared with the MAC reduction at that size (target: speedup >= 0.9 x MAC reduction). Torch-Pruning
(``torch-pruning`` from PyPI, ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` at the
same ratio and ignored layer) runs on a fresh copy of the same model in the same process,
with a time limit per model (``--tp-limit``, it can hang on some Hugging Face models).

    sparseforge bench structured_zoo [--sparsity 0.5] [--batch 8] [--rounds 5] [--latency-scale 4] [--only NAME ...]
                                     [--no-tp] [--tp-limit 120]
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
import traceback
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.bench import interleaved_medians, provenance, write_results
from sparseforge.structured import StructuredPruner, count_params_macs, load_structured, save_structured
from sparseforge.structured.onnx import export_onnx


# ------------------------------------------------------------------ hand-written edge cases
class Concat(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32 * w, 3, padding=1), nn.Conv2d(3, 16 * w, 3, padding=1)
        self.bn, self.c = nn.BatchNorm2d(48 * w), nn.Conv2d(48 * w, 32 * w, 3, padding=1)
        self.fc = nn.Linear(32 * w, 10)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(F.relu(self.c(y)).mean((2, 3)))


class Chunk(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.up, self.down, self.fc = nn.Linear(32 * w, 256 * w), nn.Linear(128 * w, 32 * w), nn.Linear(32 * w, 10)

    def forward(self, x):
        u, g = self.up(x).chunk(2, dim=-1)
        return self.fc(x + self.down(u * F.silu(g)))


class GroupedDepthwise(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        c = 64 * w
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.grouped = nn.Conv2d(c, c, 3, padding=1, groups=8)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        y = F.relu(self.stem(x))
        y = F.relu(self.grouped(y))
        y = F.relu(self.pw(F.relu(self.dw(y))))
        return self.fc(y.mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 32 * w, 3, padding=1), nn.Conv2d(32 * w, 32 * w, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * w * 8 * 8, 128 * w), nn.Linear(128 * w, 10)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 4)
        return self.fc2(F.relu(self.fc1(torch.flatten(y, 1))))


class TiedLM(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.emb = nn.Embedding(100, 64 * w)
        self.ff1, self.ff2 = nn.Linear(64 * w, 256 * w), nn.Linear(256 * w, 64 * w)
        self.norm = nn.LayerNorm(64 * w)
        self.head = nn.Linear(64 * w, 100, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.ff2(F.gelu(self.ff1(h)))
        return self.head(self.norm(h))


class MHA(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.inp = nn.Linear(16, 64 * w)
        self.att = nn.MultiheadAttention(64 * w, 8, batch_first=True)
        self.ff1, self.ff2 = nn.Linear(64 * w, 128 * w), nn.Linear(128 * w, 64 * w)
        self.fc = nn.Linear(64 * w, 10)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.att(h, h, h, need_weights=False)[0]
        h = h + self.ff2(F.relu(self.ff1(h)))
        return self.fc(h.mean(1))


class ConvTranspose(nn.Module):
    def __init__(self, w: int = 1):
        super().__init__()
        self.enc = nn.Conv2d(3, 32 * w, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(32 * w, 16 * w, 2, stride=2)
        self.bn = nn.BatchNorm2d(16 * w)
        self.out = nn.Conv2d(16 * w, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.dec(F.relu(self.enc(x))))))


def _img(b: int, size: int = 32) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0))


def _ids(b: int, vocab: int = 100, t: int = 16) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(0))}


Case = tuple[Callable[[], nn.Module], Callable[[int], Any], str]


def _hf_cases(k: int = 1) -> dict[str, Case]:
    """The Hugging Face models; ``k`` scales widths (and sequence length / image size) for the latency pass."""
    import transformers as T

    h, ff, t, img = 64 * k, 128 * k, 16 * k, 32 * max(1, k // 2)
    dec = dict(num_hidden_layers=2, hidden_size=h, intermediate_size=ff, num_attention_heads=8, vocab_size=100,
               max_position_embeddings=max(64, t))
    gqa = dict(dec, num_key_value_heads=2)
    enc = dec
    vis = dict(num_hidden_layers=2, hidden_size=h, intermediate_size=ff, num_attention_heads=8, image_size=img,
               patch_size=8, num_labels=10)

    def lm(b: int) -> dict[str, Any]:
        # an explicit all-ones mask: without one, HF decoders scan position ids for packed
        # sequences with torch.diff, which ONNX cannot export
        ids = _ids(b, t=t)["input_ids"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}

    def ids(b: int) -> dict[str, Any]:
        return _ids(b, t=t)

    def pix(b: int) -> dict[str, Any]:
        return {"pixel_values": _img(b, img)}

    c = [16 * k, 32 * k, 64 * k]
    return {
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=h, n_head=8, vocab_size=100, n_positions=max(64, t))), lm, "decoder"),
        "llama-gqa": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**gqa)), lm, "decoder"),
        "mistral-gqa": (lambda: T.MistralForCausalLM(T.MistralConfig(**gqa)), lm, "decoder"),
        "qwen2-gqa": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**gqa)), lm, "decoder"),
        "gemma": (lambda: T.GemmaForCausalLM(T.GemmaConfig(**dict(gqa, head_dim=h // 8))), lm, "decoder"),
        "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(num_hidden_layers=2, hidden_size=h, ffn_dim=ff, num_attention_heads=8,
                                                      vocab_size=100, max_position_embeddings=max(64, t), word_embed_proj_dim=h)),
                lm, "decoder"),
        "gpt-neo": (lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(num_layers=2, hidden_size=h, num_heads=8, vocab_size=100,
                                                                max_position_embeddings=max(64, t), attention_types=[[["global"], 2]])),
                    lm, "decoder"),
        "bloom": (lambda: T.BloomForCausalLM(T.BloomConfig(n_layer=2, hidden_size=h, n_head=8, vocab_size=100)), lm, "decoder"),
        "phi": (lambda: T.PhiForCausalLM(T.PhiConfig(**dec)), lm, "decoder"),
        "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**enc)), ids, "encoder"),
        "roberta": (lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**dict(enc, pad_token_id=1,
                                                                                       max_position_embeddings=max(64, t) + 2))),
                    ids, "encoder"),
        "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(n_layers=2, dim=h, hidden_dim=ff, n_heads=8,
                                                                                         vocab_size=100, max_position_embeddings=max(64, t))),
                       ids, "encoder"),
        "electra": (lambda: T.ElectraForSequenceClassification(T.ElectraConfig(**dict(enc, embedding_size=h))), ids, "encoder"),
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(**vis)), pix, "vision transformer"),
        "deit": (lambda: T.DeiTForImageClassification(T.DeiTConfig(**vis)), pix, "vision transformer"),
        "resnet": (lambda: T.ResNetForImageClassification(T.ResNetConfig(embedding_size=16 * k, hidden_sizes=c, depths=[1, 1, 1],
                                                                           num_labels=10, layer_type="bottleneck")), pix, "CNN"),
        "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=c[:2], depths=[1, 1], num_stages=2,
                                                                               num_labels=10)), pix, "CNN"),
        "mobilenet-v2": (lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(num_labels=10, depth_multiplier=0.35 * k,
                                                                                         image_size=img)), pix, "CNN"),
        "regnet": (lambda: T.RegNetForImageClassification(T.RegNetConfig(embedding_size=16 * k, hidden_sizes=c[:2], depths=[1, 1],
                                                                           groups_width=8, num_labels=10)), pix, "CNN"),
        "swin": (lambda: T.SwinForImageClassification(T.SwinConfig(image_size=img, patch_size=4, embed_dim=32 * k, depths=[1, 1],
                                                                    num_heads=[2, 4], window_size=4, num_labels=10)),
                 pix, "vision transformer"),
    }


def _cases(k: int = 1) -> dict[str, Case]:
    """Every model of the zoo at width multiplier ``k`` (1: the coverage run)."""
    def img(b: int) -> torch.Tensor:
        return _img(b)

    hand: dict[str, Case] = {
        "edge-concat": (lambda: Concat(k), img, "edge case"),
        "edge-chunk": (lambda: Chunk(k), lambda b: torch.randn(b, 32 * k, generator=torch.Generator().manual_seed(0)), "edge case"),
        "edge-grouped-depthwise": (lambda: GroupedDepthwise(k), img, "edge case"),
        "edge-flatten-linear": (lambda: FlattenLinear(k), img, "edge case"),
        "edge-tied-embeddings": (lambda: TiedLM(k), lambda b: _ids(b, t=16 * k)["input_ids"], "edge case"),
        "edge-multihead-attention": (lambda: MHA(k), lambda b: torch.randn(b, 16 * k, 16, generator=torch.Generator().manual_seed(0)),
                                     "edge case"),
        "edge-conv-transpose": (lambda: ConvTranspose(k), img, "edge case"),
    }
    return {**hand, **_hf_cases(k)}


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear/Conv layer in module order (the classifier or LM head), kept whole by both tools."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return last[-1:]


def _first(out: Any) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return _first(out[0])
    return out[next(iter(out))]


def _call(model: nn.Module, x: Any) -> Any:
    return model(**x) if isinstance(x, dict) else model(x)


def _latency(factory, make_x, sparsity: float, batch: int, rounds: int) -> dict[str, Any]:
    """Prune a fresh model the same way and time it before and after (interleaved medians, batch ``batch``)."""
    torch.manual_seed(0)
    model = factory().eval()
    x = make_x(batch)
    result = StructuredPruner(model, x, sparsity=sparsity, ignore=_classifier(model)).prune()
    small, rep = result.model, result.report
    small.eval()
    with torch.no_grad():
        lat = interleaved_medians({"dense": lambda: _call(model, x), "pruned": lambda: _call(small, x)},
                                  rounds=rounds, calls=5, warmup=2)
        weight_ms = {k: _weight_op_ms(lambda m=m: _call(m, x)) for k, m in (("dense", model), ("pruned", small))}
    return {"latency_dense_ms": lat["dense"] * 1e3, "latency_pruned_ms": lat["pruned"] * 1e3,
            "weight_ops_dense_ms": weight_ms["dense"], "weight_ops_pruned_ms": weight_ms["pruned"],
            "latency_macs_before": rep.macs_before, "latency_macs_after": rep.macs_after}


# the kernels that do the weight multiply-accumulates counted as MACs (Linear and convolutions);
# attention's activation-by-activation products, norms, activations and copies are the rest
WEIGHT_OPS = frozenset({"aten::addmm", "aten::mm", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                        "aten::slow_conv_transpose2d", "aten::slow_conv3d_forward", "aten::slow_conv_dilated2d",
                        "aten::_nnpack_spatial_convolution", "aten::convolution_overrideable"})


def _weight_op_ms(fn: Callable[[], Any], calls: int = 5) -> float:
    """Milliseconds per call spent in :data:`WEIGHT_OPS` (self CPU time under ``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in WEIGHT_OPS) / calls / 1e3


def _ours(name: str, factory, make_x, sparsity: float, batch: int, rounds: int, big: Case) -> dict[str, Any]:
    torch.manual_seed(0)
    model = factory().eval()
    x = make_x(batch)
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    pruner = StructuredPruner(model, x, sparsity=sparsity, ignore=_classifier(model))
    result = pruner.prune()
    small, rep = result.model, result.report
    small.eval()
    row["prune_s"] = round(time.perf_counter() - t0, 3)
    with torch.no_grad():
        ref, out, zero = _first(_call(model, x)), _first(_call(small, x)), _first(_call(pruner.zeroed().eval(), x))
    row.update(success=True, forward=True, shape_kept=tuple(out.shape) == tuple(ref.shape),
               zeroed_max_diff=float((out - zero).abs().max()),
               params_before=rep.params_before, params_after=rep.params_after,
               macs_before=rep.macs_before, macs_after=rep.macs_after,
               groups=len(pruner.graph.groups), removed=len(pruner.removed or []),
               channels_before=sum(r.channels_before for r in rep.rows), channels_after=sum(r.channels_after for r in rep.rows),
               skipped=len(rep.skipped), unknown=sorted(rep.unknown))
    row["layers"] = [{"layer": r.layer, "requested": r.requested, "achieved": r.achieved, "note": r.note} for r in rep.rows]
    row.update(_latency(big[0], big[1], sparsity, batch, rounds))
    with tempfile.TemporaryDirectory() as d:
        try:
            save_structured(small, pruner.kept, d)
            back = load_structured(d, factory).eval()
            with torch.no_grad():
                row["reload_max_diff"] = float((_first(_call(back, x)) - out).abs().max())
        except Exception as e:  # noqa: BLE001 - reported per model
            row["reload_error"] = f"{type(e).__name__}: {e}"[:200]
        try:
            row["onnx_max_diff"] = export_onnx(small, x, f"{d}/m.onnx")
        except Exception as e:  # noqa: BLE001
            row["onnx_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"[:200]
    return row


def _torch_pruning(name: str, factory, make_x, sparsity: float, batch: int) -> dict[str, Any]:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = factory().eval()
    x = make_x(batch)
    ref = _first(_call(model, x)).detach()
    p0, m0 = count_params_macs(model, x)
    t0 = time.perf_counter()
    kw: dict[str, Any] = {}
    if isinstance(x, dict):
        kw["forward_fn"] = lambda m, inp: _first(m(**inp))
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, ignored_layers=_classifier(model), **kw)
    pruner.step()
    row: dict[str, Any] = {"prune_s": round(time.perf_counter() - t0, 3)}
    with torch.no_grad():
        out = _first(_call(model, x))
    p1, m1 = count_params_macs(model, x)
    row.update(success=True, forward=True, shape_kept=tuple(out.shape) == tuple(ref.shape),
               params_before=p0, params_after=p1, macs_before=m0, macs_after=m1)
    return row


def _alarm(signum, frame):  # noqa: ARG001
    raise TimeoutError("time limit reached")


def _safe(fn, *args, limit_s: int = 0) -> dict[str, Any]:
    """Run one side on one model; failures and (with ``limit_s``) time-outs are reported, not raised."""
    old = signal.signal(signal.SIGALRM, _alarm) if limit_s else None
    if limit_s:
        signal.alarm(limit_s)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - every model is reported, failures included
        return {"success": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:240],
                "where": traceback.extract_tb(e.__traceback__)[-1].name}
    finally:
        if limit_s:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


def _efficiency(o: dict[str, Any]) -> float:
    """Measured speedup divided by the MAC reduction at the latency size (1.0: latency falls with the MACs)."""
    speedup = o["latency_dense_ms"] / o["latency_pruned_ms"]
    return speedup / (o["latency_macs_before"] / o["latency_macs_after"])


def _speed_cell(o: dict[str, Any]) -> str:
    speedup = o["latency_dense_ms"] / o["latency_pruned_ms"]
    red = o["latency_macs_before"] / o["latency_macs_after"]
    cell = f"{speedup:.2f} / {red:.2f} = {_efficiency(o):.2f}" + (" ✓" if _efficiency(o) >= 0.9 else "")
    if o.get("weight_ops_pruned_ms"):
        w = o["weight_ops_dense_ms"] / o["weight_ops_pruned_ms"] / red
        share = o["weight_ops_dense_ms"] / o["latency_dense_ms"]
        cell += f" (weight ops {w:.2f}, {100 * share:.0f} % of dense time)"
    return cell


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}" if a and b is not None else "-"


def main(argv: list[str]) -> None:
    """Run the zoo and write ``benchmarks/results/structured-zoo.{json,md}``."""
    ap = argparse.ArgumentParser(prog="sparseforge bench structured_zoo")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--tp-limit", type=int, default=120, help="seconds per model for Torch-Pruning (it can hang)")
    ap.add_argument("--latency-scale", type=int, default=4,
                    help="latency is timed on each model rebuilt this many times wider (longer sequences, larger "
                         "images), where compute rather than per-call overhead dominates (1: the coverage size)")
    ap.add_argument("--out", default="structured-zoo")
    args = ap.parse_args(argv)
    if args.latency_scale < 1:
        ap.error(f"--latency-scale must be >= 1; got {args.latency_scale}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: list[str]) -> None:
    cases = _cases()
    big_cases = _cases(args.latency_scale)
    names = args.only or list(cases)
    try:
        import torch_pruning as tp
        tp_version = getattr(tp, "__version__", "installed")
    except ImportError:
        tp_version = None
    results = []
    for name in names:
        factory, make_x, family = cases[name]
        ours = _safe(_ours, name, factory, make_x, args.sparsity, args.batch, args.rounds, big_cases[name])
        theirs = (_safe(_torch_pruning, name, factory, make_x, args.sparsity, args.batch, limit_s=args.tp_limit)
                  if tp_version and not args.no_tp else {"success": None, "error": "not run"})
        results.append({"model": name, "family": family, "sparseforge": ours, "torch_pruning": theirs})
        print(f"{name:26s} ours={'ok' if ours.get('success') else ours.get('error')} "
              f"tp={'ok' if theirs.get('success') else theirs.get('error')}", flush=True)

    lines = [f"Channel sparsity {args.sparsity}, batch {args.batch}, per-layer L2, the last Linear/Conv layer ignored by both tools; "
             f"Torch-Pruning {tp_version or 'not installed'}. MACs = weight multiply-accumulates per sample.",
             f"Latency: each model rebuilt {args.latency_scale}x wider (sequences and images scaled too), pruned the same way, "
             f"timed at batch {args.batch} with 1 thread (medians of {args.rounds} interleaved rounds); speedup = dense / pruned "
             "latency, MAC reduction = MACs before / after at that size, and the target is speedup >= 0.9 x MAC reduction. "
             "In brackets: the same ratio for the time spent in the Linear/convolution kernels alone (torch.profiler self "
             "time; the MACs are theirs) and their share of the dense model's time: the rest (norms, activations, attention "
             "products, copies, per-call overhead) shrinks with the activation width, not with the weight MACs.", "",
             "| model | family | ours: ok / shape / zeroed diff | params after/before | MACs after/before | "
             f"latency ms before → after (x{args.latency_scale}) | speedup / MAC reduction | "
             "reload diff | ONNX diff | groups removed | skipped / unknown | Torch-Pruning: ok / shape | TP params | TP MACs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o, t = r["sparseforge"], r["torch_pruning"]
        if o.get("success"):
            ours_cells = [f"yes / {'yes' if o['shape_kept'] else 'NO'} / {o['zeroed_max_diff']:.1e}",
                          _fmt_ratio(o["params_before"], o["params_after"]), _fmt_ratio(o["macs_before"], o["macs_after"]),
                          f"{o['latency_dense_ms']:.2f} → {o['latency_pruned_ms']:.2f}",
                          _speed_cell(o),
                          f"{o['reload_max_diff']:.1e}" if "reload_max_diff" in o else o.get("reload_error", "-"),
                          f"{o['onnx_max_diff']:.1e}" if "onnx_max_diff" in o else o.get("onnx_error", "-")[:60],
                          f"{o['removed']}/{o['groups']}", f"{o['skipped']} / {len(o['unknown'])}"]
        else:
            ours_cells = [f"FAILED: {o.get('error', '')[:80]}"] + ["-"] * 8
        if t.get("success"):
            tp_cells = [f"yes / {'yes' if t['shape_kept'] else 'NO'}", _fmt_ratio(t["params_before"], t["params_after"]),
                        _fmt_ratio(t["macs_before"], t["macs_after"])]
        else:
            tp_cells = [f"no: {t.get('error', '')[:80]}", "-", "-"]
        lines.append("| " + " | ".join([r["model"], r["family"]] + ours_cells + tp_cells) + " |")
    ok = sum(1 for r in results if r["sparseforge"].get("success") and r["sparseforge"].get("shape_kept"))
    fast = [r["model"] for r in results if r["sparseforge"].get("success") and _efficiency(r["sparseforge"]) >= 0.9]
    tp_ok = sum(1 for r in results if r["torch_pruning"].get("success") and r["torch_pruning"].get("shape_kept"))
    lines += ["", f"sparseforge: {ok}/{len(results)} pruned with the output shape kept; "
                  f"Torch-Pruning: {tp_ok}/{len(results)}.",
              f"Speedup at least 0.9 x the MAC reduction: {len(fast)}/{len(results)}."]
    data = {"args": vars(args), "torch_pruning": tp_version, "results": results, "provenance": provenance(["structured_zoo"] + argv)}
    jp, mp = write_results(args.out, data, "\n".join(lines))
    print(f"wrote {jp} and {mp}")
