"""``sparseforge prune``: one-shot pruning of a saved model from the command line.

::

    sparseforge prune minilm --method wanda --sparsity 0.5 --out pruned/minilm-wanda50
    sparseforge prune austen-gpt --method sparsegpt --sparsity 2:4 --calibration austen --out pruned/gpt-24
    sparseforge prune path/to/hf-folder --method dsnot+wanda --sparsity 0.6 \\
        --calibration tokens.pt --nsamples 64 --seqlen 256 --out pruned/x

:func:`run_prune` loads the model (:func:`~sparseforge.oneshot.io.load_model`), draws the calibration windows
(:func:`~sparseforge.oneshot.calibration.load_calibration`), prunes with :func:`~sparseforge.oneshot.sequential.prune_oneshot`, writes
the sparsity report while the masks are installed (``report.json``, ``report.txt``), folds the
masks into exact zeros, saves the model in its input's layout (:func:`~sparseforge.oneshot.io.save_pruned`) and
writes ``summary.json``: the command, wall time of each phase, peak memory, per-layer sparsity,
reconstruction error and time, the N:M check and the files written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError, check_int
from ..fileio import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    import torch

# torch and everything that needs it are imported inside the functions that run a prune:
# ``sparseforge --help`` builds this parser and must start without importing torch

__all__ = ["add_prune_parser", "resolve_calibration", "run_prune"]

_TOKEN_SUFFIXES = (".pt", ".pth", ".safetensors")


def resolve_calibration(spec: str) -> Any:
    """The ``--calibration`` value as :func:`~sparseforge.oneshot.calibration.load_calibration` takes it.

    ``austen`` / ``bible`` / ``text:PATH`` pass through; ``none`` is None (magnitude only); a path
    ending in ``.pt``, ``.pth`` or ``.safetensors`` is a tokenized tensor (:func:`~sparseforge.oneshot.io.load_tokens`);
    any other existing file is text (``text:PATH``).
    """
    from ..oneshot.io import load_tokens

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--calibration must be austen, bible, text:PATH, a token file (.pt/.safetensors), "
                          f"a text file or none; got {spec!r}")
    s = spec.strip()
    if s.lower() in ("austen", "bible"):
        return s.lower()
    if s.lower() == "none":
        return None
    if s.startswith("text:"):
        if not Path(s[5:]).is_file():
            raise ConfigError(f"--calibration {s!r}: no such text file {s[5:]!r}")
        return s
    p = Path(s)
    if p.suffix in _TOKEN_SUFFIXES:
        return load_tokens(p)
    if p.is_file():
        return f"text:{p}"
    raise ConfigError(f"--calibration {s!r}: not austen, bible or none, and no such file (text, or tokens as "
                      f".pt/.safetensors)")


def _tokenizer_from_arg(arg: str | None, loaded: Any) -> Any:
    if arg is None:
        return loaded.tokenizer
    if arg == "byte":
        return "byte"
    p = Path(arg)
    if not p.is_dir():
        raise ConfigError(f"--tokenizer must be 'byte' or a folder with a Hugging Face tokenizer; got {arg!r}")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p))
    except Exception as e:
        raise ConfigError(f"--tokenizer {arg!r}: cannot load a Hugging Face tokenizer: {e}") from None


def _nm_violations(model: torch.nn.Module, names: Sequence[str], n: int, m: int) -> int:
    from ..lm import nm_violations
    from ..core.layout import is_hf_conv1d

    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    total = 0
    for name in names:
        w = params[name].detach()
        if is_hf_conv1d(modules[name.rsplit(".", 1)[0]]):
            w = w.t()  # HF Conv1D stores [in, out]
        total += nm_violations(w, n, m)
    return total


def run_prune(
    model: str,
    *,
    out: str | os.PathLike[str],
    method: str = "wanda",
    sparsity: Any = 0.5,
    calibration: str = "austen",
    nsamples: int = 128,
    seqlen: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    tokenizer: str | None = None,
    indivisible: str = "error",
    overwrite: bool = False,
    progress: bool | None = None,
    command: Sequence[str] | None = None,
    measure_error: bool = True,
    preserve_zeros: bool = False,
    return_model: bool = False,
) -> dict[str, Any]:
    """Prune a saved model one-shot and write the pruned model, its report and ``summary.json`` into ``out``.

    Args:
        model: ``"minilm"``, ``"austen-gpt"``, a Hugging Face folder or a sparseforge model folder
            (:func:`~sparseforge.oneshot.io.load_model`).
        out: output folder; must be new or empty unless ``overwrite``.
        method: ``magnitude``, ``magnitude-row``, ``wanda``, ``sparsegpt``, ``dsnot`` (on Wanda) or
            ``dsnot+X`` (X one of magnitude, magnitude-row, wanda, sparsegpt).
        sparsity: fraction of zeros per layer in [0, 1) (float or its string), or ``"N:M"`` (N kept of M).
        calibration: see :func:`resolve_calibration`.
        nsamples, seqlen, seed, batch_size, indivisible: as in :func:`~sparseforge.oneshot.sequential.prune_oneshot`
            (``seqlen`` defaults to the model's context length, at most 2048).
        tokenizer: ``"byte"`` or a Hugging Face tokenizer folder, for text calibration of a model
            that brings no tokenizer of its own.
        overwrite: allow a non-empty ``out``.
        progress: progress bar (default: when stderr is a terminal).
        command: the command line to record in the summary.
        measure_error: report each layer's reconstruction error (accumulates the Gram matrix of every
            layer's inputs; Wanda and magnitude do not need it otherwise: on MiniLM it cost about a
            quarter of a Wanda run). SparseGPT and DSnoT build the Gram matrix anyway.
        preserve_zeros: SparseGPT only: weights that are zero on entry stay zero
            (:func:`~.methods.sparsegpt_prune`); other methods never make a zero nonzero.
        return_model: add the pruned model (masks folded) under ``"model_object"`` (not written to JSON).

    Returns:
        The summary dict (also written to ``out/summary.json``).

    Raises:
        ConfigError / CheckpointError / LayerError: bad input, named, before any file is written.
    """
    import torch

    from ..core.patterns import NM
    from ..masking import finalize
    from ..report import sparsity_report
    from ..core.targets import parse_target_text
    from ..oneshot.calibration import load_calibration
    from ..oneshot.io import load_model, save_pruned
    from ..oneshot.base import oneshot_target
    from ..oneshot.registry import method_from_spec
    from ..oneshot.sparsegpt import SparseGPT
    from ..oneshot.sequential import _context_length, prune_oneshot

    t0 = time.perf_counter()
    # validate everything cheap before the model is loaded
    meth = method_from_spec(method)
    if preserve_zeros:
        if not isinstance(meth, SparseGPT):
            raise ConfigError(f"--preserve-zeros applies to sparsegpt only (the one method that updates weights); "
                              f"{meth.label} never turns a zero weight nonzero")
        meth = dataclasses.replace(meth, preserve_zeros=True)
    # parsed once here; prune_oneshot and every layer's rule receive this object
    target = oneshot_target(parse_target_text(sparsity, "--sparsity"), "--sparsity")
    pattern = target.pattern
    check_int(nsamples, "--nsamples", minimum=1)
    if seqlen is not None:
        check_int(seqlen, "--seqlen", minimum=1)
    check_int(seed, "--seed", minimum=0)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ConfigError(f"--out {str(out)!r} exists and is not an empty folder; pass --overwrite or another --out")
    if overwrite and out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        # --overwrite replaces the folder whole: never one that holds another command's files
        raise ConfigError(f"--out {str(out)!r} holds files that sparseforge prune did not write (no summary.json); "
                          "--overwrite only replaces an earlier prune output: choose another --out")
    calib_source = resolve_calibration(calibration)
    if calib_source is None and meth.needs_data:
        raise ConfigError(f"method {meth.label} needs calibration data; --calibration none works with magnitude only")

    loaded = load_model(model)
    t_loaded = time.perf_counter()
    net = loaded.model
    calib = None
    if calib_source is not None:
        if seqlen is None and not (isinstance(calib_source, torch.Tensor) and calib_source.dim() == 2):
            ctx = _context_length(net)
            if ctx is None:
                raise ConfigError(f"--seqlen is required: model {model!r} does not state a context length")
            seqlen = min(ctx, 2048)
        tok = None
        if isinstance(calib_source, str):
            tok = _tokenizer_from_arg(tokenizer, loaded)
            if tok is None:
                raise ConfigError(f"--calibration {calibration!r} is text, but model {model!r} brings no tokenizer; "
                                  f"pass --tokenizer (byte or a Hugging Face tokenizer folder) or token ids "
                                  f"(--calibration tokens.pt)")
        calib = load_calibration(calib_source, tokenizer=tok, nsamples=nsamples, seqlen=seqlen, seed=seed)
        vocab = getattr(getattr(net, "config", None), "vocab_size", None) or getattr(net, "vocab_size", None)
        if isinstance(vocab, int) and calib.numel() and int(calib.max()) >= vocab:
            raise ConfigError(f"calibration token id {int(calib.max())} is outside the model's vocabulary "
                              f"(vocab_size {vocab}); tokenize with the model's own tokenizer")
        ctx = _context_length(net)
        if ctx is not None and calib.shape[1] > ctx:
            raise ConfigError(f"--seqlen {int(calib.shape[1])} is longer than the model's context of {ctx} positions; "
                              f"use --seqlen {ctx} or less")
    t_calib = time.perf_counter()

    result = prune_oneshot(net, meth, target,
                           calibration=calib, nsamples=nsamples, seqlen=seqlen, seed=seed, batch_size=batch_size,
                           indivisible=indivisible, measure_error=measure_error, progress=progress)
    t_pruned = time.perf_counter()
    example = calib[:1] if calib is not None else None
    report = sparsity_report(net, example, skipped=result.skipped, notes=result.notes)
    names = [l.name for l in result.layers]
    finalize(net)
    nm_bad = _nm_violations(net, names, pattern.n, pattern.m) if isinstance(pattern, NM) else None
    if nm_bad:
        raise RuntimeError(f"{nm_bad} groups break {pattern.n}:{pattern.m} after pruning; this is a bug in sparseforge")
    # zeros counted in the saved weights, per layer (the mask count, unless a kept weight was already 0)
    params = dict(net.named_parameters())
    weight_zeros = {n: int((params[n] == 0).sum()) for n in names}

    # every file goes into a temporary folder that then replaces --out whole: a failure or a kill
    # leaves the previous output (or none), never a mix
    with atomic_dir(out) as tmp:
        files = save_pruned(loaded, tmp)
        report.to_json(tmp / "report.json")
        atomic_write_text(tmp / "report.txt", report.table() + "\n")
        t_saved = time.perf_counter()

        summary: dict[str, Any] = {
            "command": list(command) if command is not None else None,
            "model": str(model), "model_kind": loaded.kind, "output": str(out),
            "calibration": {"source": calibration, "nsamples": 0 if calib is None else int(calib.shape[0]),
                            "seqlen": None if calib is None else int(calib.shape[1]), "seed": seed},
            # prune_oneshot got ready windows, so its own calibration time is 0: the phase times are under "seconds"
            **{k: v for k, v in result.to_dict().items() if k not in ("layers", "calibration_seconds", "wall_seconds")},
            "layers": [{**l.to_dict(), "weight_zeros": weight_zeros[l.name]} for l in result.layers],
            "nm_violations": nm_bad,
            "seconds": {"load": t_loaded - t0, "calibration": t_calib - t_loaded, "prune": t_pruned - t_calib,
                        "save": t_saved - t_pruned, "total": t_saved - t0},
            "files": sorted([*files, "report.json", "report.txt", "summary.json"]),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    if return_model:
        summary["model_object"] = net
    return summary


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (tuple, set)):
        return list(x)
    return str(x)


def add_prune_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``prune`` subcommand to ``sub`` (an ``argparse`` subparsers object)."""
    p = sub.add_parser("prune", help="one-shot prune a model (magnitude, Wanda, SparseGPT, DSnoT) with calibration data",
                       description="One-shot (post-training) pruning, layer by layer on calibration data. Writes the "
                                   "pruned model (save_pretrained layout for Hugging Face inputs), report.json/.txt "
                                   "and summary.json into --out.")
    p.add_argument("model", help="minilm, austen-gpt, a Hugging Face folder (save_pretrained) or a sparseforge model "
                                 "folder (config.json + model.safetensors)")
    p.add_argument("--method", default="wanda",
                   help="magnitude, magnitude-row, wanda, sparsegpt, dsnot (on wanda) or dsnot+X (default wanda)")
    p.add_argument("--sparsity", default="0.5", help="fraction of zeros per layer in [0, 1), or N:M such as 2:4 "
                                                     "(N kept of every M inputs); default 0.5")
    p.add_argument("--calibration", default="austen",
                   help="austen (default), bible, text:PATH, a text file, a token file (.pt/.safetensors, 1-D stream "
                        "or [n, seqlen]) or none (magnitude only)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: model context, <= 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window draw (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward call (memory only)")
    p.add_argument("--tokenizer", default=None, help="byte or a Hugging Face tokenizer folder, for text calibration "
                                                     "of a model without its own tokenizer")
    p.add_argument("--indivisible", choices=("error", "skip"), default="error",
                   help="N:M on a layer whose input size M does not divide: error (default) or skip (leave dense)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-error", action="store_true", help="do not measure per-layer reconstruction errors "
                                                           "(faster for magnitude and Wanda)")
    p.add_argument("--preserve-zeros", action="store_true",
                   help="sparsegpt on an already sparse model: weights that are zero stay zero (the OBS update "
                        "would otherwise refill some); the sparsity must be at least the model's")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.set_defaults(func=_cmd_prune)
    return p


def _cmd_prune(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(check_int(args.threads, "--threads", minimum=1))
    summary = run_prune(args.model, out=args.out, method=args.method, sparsity=args.sparsity,
                        calibration=args.calibration, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                        batch_size=args.batch_size, tokenizer=args.tokenizer, indivisible=args.indivisible,
                        overwrite=args.overwrite, progress=False if args.no_progress else None,
                        measure_error=not args.no_error, preserve_zeros=args.preserve_zeros,
                        command=["sparseforge", *sys.argv[1:]] if sys.argv and sys.argv[0] else None)
    err = summary["mean_reconstruction_error"]
    mem = summary["peak_memory_bytes"]
    print(f"pruned {len(summary['layers'])} layers of {summary['model']} with {summary['method']} "
          f"({summary['pattern']}, sparsity {summary['sparsity']:.4f}); mean rel. reconstruction error "
          f"{'-' if err is None else f'{err:.4f}'}; {summary['seconds']['total']:.1f} s; peak memory "
          f"{'-' if mem is None else f'{mem / 2**20:.0f} MiB'}")
    for name, reason in summary["skipped"]:
        print(f"  left dense: {name}: {reason}")
    print(f"wrote {summary['output']}: {', '.join(summary['files'])}")
    return 0
