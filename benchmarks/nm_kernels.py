"""nm-kernels (GPU only): speed of 2:4 semi-structured sparse Linear layers against dense fp16/bf16.

Run it as ``sparseforge bench nm_kernels`` on a machine with an NVIDIA GPU of compute
capability >= 8.0 (Ampere or newer); without CUDA it stops with a clear error before doing
anything (on CPU an N:M model can only be simulated; see ``sparseforge.kernels.semi_structured``).

Per layer: a square ``nn.Linear(d, d)`` for every ``d`` in ``--sizes`` (default 1024 to 8192),
its weight pruned 2:4 by magnitude, is timed with ``F.linear`` dense and with the weight
converted by ``torch.sparse.to_sparse_semi_structured``, for every batch (rows of the input) in
``--batches`` (default 1 to 4096) and every dtype in ``--dtypes`` (fp16, bf16). Times are
medians of ``--repeats`` CUDA-event timings after ``--warmup`` untimed calls, both variants
interleaved per cell; every cell also records the largest difference between the sparse and
the dense outputs, relative to the largest dense output.

End to end: a stack of ``--blocks`` MLP blocks (``Linear(d, 4d) - GELU - Linear(4d, d)`` with a
residual add) at width ``--e2e-width``, pruned 2:4, converted by
:func:`sparseforge.kernels.semi_structured.accelerate_2to4` (which keeps a layer dense unless its
own micro-benchmark at that batch shows a gain), then timed as a whole against the dense
(masked) stack at each batch; the table lists how many layers were converted.

Results: ``benchmarks/results/nm_kernels.{json,md}`` with the GPU name, driver-visible
capability and backend (cuSPARSELt or CUTLASS).

    sparseforge bench nm_kernels
    sparseforge bench nm_kernels --sizes 4096 --batches 1 256 4096 --dtypes fp16
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.bench import check_at_least, provenance, write_results
from sparseforge.core.patterns import NM
from sparseforge.errors import ConfigError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def prune_2to4_(linear: nn.Linear) -> None:
    """Zero all but the 2 largest-magnitude weights in every group of 4 consecutive inputs."""
    with torch.no_grad():
        linear.weight.mul_(NM(2, 4).mask(linear.weight.abs().float(), layer="nm_kernels").to(linear.weight.dtype))


def _paired_ms(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median CUDA-event milliseconds of each function, the functions interleaved call by call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end))
    return {k: statistics.median(v) for k, v in times.items()}


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(F.gelu(self.fc(x)))


@torch.no_grad()
def layer_cell(d: int, batch: int, dtype: torch.dtype, repeats: int, warmup: int) -> dict[str, Any]:
    """Dense vs 2:4 ``F.linear`` timing of one ``d x d`` layer at one batch and dtype."""
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    lin = nn.Linear(d, d).to(device="cuda", dtype=dtype)
    prune_2to4_(lin)
    w, b = lin.weight, lin.bias
    ws = to_sparse_semi_structured(w.detach().contiguous())
    x = torch.randn(batch, d, device="cuda", dtype=dtype)
    ref = F.linear(x, w, b)
    err = float((F.linear(x, ws, b) - ref).abs().max()) / (float(ref.abs().max()) or 1.0)
    ms = _paired_ms({"dense": lambda: F.linear(x, w, b), "sparse": lambda: F.linear(x, ws, b)}, repeats, warmup)
    return {"size": d, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "dense_ms": ms["dense"],
            "sparse_ms": ms["sparse"], "speedup": ms["dense"] / ms["sparse"], "rel_err": err}


@torch.no_grad()
def e2e_cell(d: int, blocks: int, batch: int, dtype: torch.dtype, repeats: int, warmup: int) -> dict[str, Any]:
    """Dense vs auto-converted 2:4 timing of a stack of MLP blocks at one batch."""
    from sparseforge.kernels.semi_structured import accelerate_2to4

    torch.manual_seed(0)
    dense = nn.Sequential(*[_Block(d) for _ in range(blocks)]).to(device="cuda", dtype=dtype).eval()
    for m in dense.modules():
        if isinstance(m, nn.Linear):
            prune_2to4_(m)
    sparse = nn.Sequential(*[_Block(d) for _ in range(blocks)]).to(device="cuda", dtype=dtype).eval()
    sparse.load_state_dict(dense.state_dict())
    decisions = accelerate_2to4(sparse, batch=batch, repeats=max(10, repeats // 2), warmup=warmup)
    x = torch.randn(batch, d, device="cuda", dtype=dtype)
    ref = dense(x)
    err = float((sparse(x) - ref).abs().max()) / (float(ref.abs().max()) or 1.0)
    ms = _paired_ms({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, repeats, warmup)
    return {"width": d, "blocks": blocks, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
            "dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "speedup": ms["dense"] / ms["sparse"], "rel_err": err,
            "converted": sum(dd.status == "converted" for dd in decisions), "layers": len(decisions),
            "decisions": [dd.to_dict() for dd in decisions]}


def _gpu_info() -> dict[str, Any]:
    from sparseforge.kernels.semi_structured import _backend_tile

    cap = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{cap[0]}.{cap[1]}", "backend": _backend_tile()[2],
            "cuda": torch.version.cuda}


def main(argv: list[str]) -> None:
    """Time the grid on the GPU and write ``nm_kernels.{json,md}``."""
    p = argparse.ArgumentParser(prog="sparseforge bench nm_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048, 4096, 8192], help="default: %(default)s")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64, 256, 1024, 4096], help="default: %(default)s")
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--e2e-width", type=int, default=4096, help="width of the end-to-end MLP stack; default: %(default)s")
    p.add_argument("--blocks", type=int, default=4, help="MLP blocks in the end-to-end stack; default: %(default)s")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per variant; default: %(default)s")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per variant; default: %(default)s")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="nm_kernels", help="results file name; default: %(default)s")
    a = p.parse_args(argv)
    check_at_least(a, "e2e_width", "blocks", "repeats")
    check_at_least(a, "warmup", minimum=0)
    for flag, values in (("--sizes", a.sizes), ("--batches", a.batches)):
        bad = [v for v in values if v < 1]
        if bad:
            raise ConfigError(f"{flag} must all be >= 1; got {bad}")
    bad = [d for d in [*a.sizes, a.e2e_width] if d % 64]
    if bad:
        raise ConfigError(f"--sizes and --e2e-width must be multiples of 64 (the 2:4 kernels' tile); got {bad}")
    if not torch.cuda.is_available():
        raise ConfigError("nm_kernels times the 2:4 sparse tensor-core kernels and needs an NVIDIA GPU (CUDA); "
                          "none is available here. On CPU, N:M sparsity is simulated (see `sparseforge bench nm_lm`).")
    if torch.cuda.get_device_capability() < (8, 0):
        cap = torch.cuda.get_device_capability()
        raise ConfigError(f"2:4 sparse kernels need compute capability >= 8.0; this GPU has {cap[0]}.{cap[1]}")
    prov = provenance(["nm_kernels", *argv])
    gpu = _gpu_info()
    layers, e2e = [], []
    for dt in a.dtypes:
        for d in a.sizes:
            for b in a.batches:
                row = layer_cell(d, b, DTYPES[dt], a.repeats, a.warmup)
                layers.append(row)
                print(f"layer {dt} d={d} batch={b}: dense {row['dense_ms']:.4f} ms, 2:4 {row['sparse_ms']:.4f} ms, "
                      f"{row['speedup']:.2f}x (rel err {row['rel_err']:.1e})", flush=True)
        for b in a.batches:
            row = e2e_cell(a.e2e_width, a.blocks, b, DTYPES[dt], a.repeats, a.warmup)
            e2e.append(row)
            print(f"e2e {dt} batch={b}: {row['speedup']:.2f}x, {row['converted']}/{row['layers']} layers converted",
                  flush=True)
    md = [f"GPU: {gpu['gpu']} (compute capability {gpu['capability']}, CUDA {gpu['cuda']}, backend {gpu['backend']}). "
          f"Median of {a.repeats} CUDA-event timings after {a.warmup} warm-up calls, dense and 2:4 interleaved; "
          "speedup = dense / 2:4 (> 1 means the sparse kernel is faster). Weights pruned 2:4 by magnitude.\n",
          "## Per layer: square `nn.Linear(d, d)`, speedup by batch (rows of the input)\n"]
    for dt in a.dtypes:
        md.append(f"\n### {dt}\n\n| d | " + " | ".join(f"batch {b}" for b in a.batches) + " |")
        md.append("|---|" + "---|" * len(a.batches))
        for d in a.sizes:
            cells = {r["batch"]: r for r in layers if r["size"] == d and r["dtype"] == str(DTYPES[dt]).removeprefix("torch.")}
            md.append(f"| {d} | " + " | ".join(f"{cells[b]['speedup']:.2f}x" for b in a.batches) + " |")
    md.append(f"\n## End to end: {a.blocks} MLP blocks of width {a.e2e_width} (Linear d-4d-d, GELU, residual), "
              "layers converted by `accelerate_2to4` only where its micro-benchmark shows >= 1.05x\n")
    md.append("| dtype | batch | dense ms | 2:4 ms | speedup | layers converted | rel. error |\n|---|---|---|---|---|---|---|")
    for r in e2e:
        md.append(f"| {r['dtype']} | {r['batch']} | {r['dense_ms']:.3f} | {r['sparse_ms']:.3f} | {r['speedup']:.2f}x | "
                  f"{r['converted']}/{r['layers']} | {r['rel_err']:.1e} |")
    data = {"provenance": prov, "config": vars(a), "gpu": gpu, "layers": layers, "e2e": e2e}
    _, mp = write_results(a.name, data, "\n".join(md), Path(a.out) if a.out else None)
    print(mp.read_text())
