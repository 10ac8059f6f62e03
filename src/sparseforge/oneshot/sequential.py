"""Layer-sequential one-shot pruning of a whole model (the Wanda / SparseGPT / DSnoT pipeline).

:func:`prune_oneshot` finds the model's repeated blocks (:func:`find_blocks`), captures the
inputs of block 0 on the calibration data (hooking its forward *with kwargs*, so attention
masks, position ids and rotary embeddings come along, and stopping the forward there), then for
each block in turn:

1. hooks its ``nn.Linear`` / Hugging Face ``Conv1D`` layers and runs the calibration inputs
   through the *dense* block, accumulating each layer's :class:`~.stats.LayerStats` (layers that
   read the very same input tensor, like ``q``/``k``/``v``, share one accumulator);
2. prunes every layer with the method (a pure function of weight and statistics), writes the
   new weight and installs the mask as a ``<param>_mask`` buffer through
   :class:`~sparseforge.masking.Masking`;
3. re-runs the *pruned* block to produce the inputs of the next block, as the references do.

Only one block's statistics are alive at a time. Embeddings, heads and any layer outside the
blocks are left dense and listed in :attr:`OneShotResult.skipped`.

Assumptions, as in the references: block ``k + 1`` receives the output of block ``k`` (checked on
one calibration window; if not, the whole model is pruned as one block, with a warning), and
the extra arguments captured for block 0 (attention mask, position ids / embeddings) are valid
for every block, so models whose blocks get different masks (alternating sliding-window
attention) are not handled exactly. Caches are disabled during calibration.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..core.patterns import NM
from ..core.targets import INDIVISIBLE, Target
from ..errors import ConfigError, LayerError, check_int
from ..utils import check_module
from ..masking import MASK_SUFFIX, MaskedLayer, Masking, Targets, find_masked_layers, is_hf_conv1d
from ..results import Result
from ..tables import text_table
from ..transaction import transaction
from .calibration import load_calibration
from .base import OneShotMethod, _few_threads, oneshot_target
from .registry import method_from_spec
from .stats import LayerStats, reconstruction_error

__all__ = ["find_blocks", "prune_oneshot", "OneShotResult", "LayerResult", "peak_memory"]

_MAX_DEFAULT_SEQLEN = 2048


class _Stop(Exception):
    """Raised by the block-0 hook to end a forward pass once the block's inputs are captured."""


def _is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_blocks(model: nn.Module, blocks: str | nn.Module | None = None) -> tuple[str, list[nn.Module]]:
    """The repeated blocks of ``model``: ``(path, [block, ...])``.

    Automatic (``blocks=None``): the ``nn.ModuleList`` / ``nn.Sequential`` whose children are all
    of one class, are containers (not single layers) and hold Linear layers, with the most
    parameters -- ``model.layers`` (Llama, Mistral, Qwen2), ``transformer.h`` (GPT-2),
    ``model.decoder.layers`` (OPT), ``encoder.layer`` (BERT), ``blocks`` (TinyGPT). A model
    without one (a plain stack of Linear layers) is a single block: ``("", [model])``.
    ``blocks`` may name the list (``"transformer.h"``) or be the list itself.
    """
    if blocks is not None:
        modules = dict(model.named_modules())
        if isinstance(blocks, str):
            if blocks not in modules:
                raise ConfigError(f"blocks={blocks!r} is not a submodule of {type(model).__name__}; "
                                  f"lists present: {[n for n, m in modules.items() if isinstance(m, nn.ModuleList)]}")
            path, container = blocks, modules[blocks]
        elif isinstance(blocks, nn.Module):
            found = [n for n, m in modules.items() if m is blocks]
            if not found:
                raise ConfigError("blocks must be a submodule of the model")
            path, container = found[0], blocks
        else:
            raise ConfigError(f"blocks must be a module path or a module; got {type(blocks).__name__}")
        if container is model:
            return "", [model]
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) == 0:
            raise ConfigError(f"blocks={path!r} must be a non-empty nn.ModuleList or nn.Sequential; got {type(container).__name__}")
        return path, list(container)
    best: tuple[int, int, str, nn.Module] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0 or module is model:
            continue
        children = list(module)
        if len({type(c) for c in children}) != 1 or _is_prunable(children[0]) or len(list(children[0].children())) == 0:
            continue
        if not any(_is_prunable(m) for m in children[0].modules()):
            continue
        key = (_param_count(module), -name.count("."), name, module)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        return "", [model]
    return best[2], list(best[3])


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class peak_memory:
    """Context manager measuring the peak memory of the code inside it.

    CPU: the process's peak resident set size (``VmHWM``) after resetting it through
    ``/proc/self/clear_refs`` (Linux >= 4.0), so it covers only the ``with`` body; where that
    is not possible, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak since the process
    started). CUDA: ``torch.cuda.max_memory_allocated`` after a reset. ``source`` says which.
    (``tracemalloc`` is not used: it does not see tensor memory.)
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.bytes: int | None = None
        #: resident set size (CPU) or allocated bytes (CUDA) when the ``with`` body started
        self.start_bytes: int | None = None
        self.source = ""
        self._reset = False

    def __enter__(self) -> "peak_memory":
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
            return self
        self.start_bytes = _status_bytes("VmRSS:")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device is not None and self.device.type == "cuda":
            self.bytes, self.source = int(torch.cuda.max_memory_allocated(self.device)), "cuda max_memory_allocated"
            return
        if self._reset:
            peak = _status_bytes("VmHWM:")
            if peak is not None:
                self.bytes, self.source = peak, "VmHWM (peak RSS of the process, reset at start)"
                return
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = int(rss) * (1 if sys.platform == "darwin" else 1024)
        self.source = "ru_maxrss (peak RSS since process start)"


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerResult:
    """One pruned layer.

    Attributes:
        name: parameter name as in ``state_dict`` (``"model.layers.0.self_attn.q_proj.weight"``).
        block: index of its block.
        shape: canonical ``[out, in]`` shape.
        sparsity: fraction of zeros of the installed mask.
        reconstruction_error: ``||W X - W' X||_F / ||W X||_F`` on this layer's calibration inputs
            (see :func:`~.stats.reconstruction_error`), or None when not measured.
        seconds: time of the pruning rule itself (statistics excluded).
    """

    name: str
    block: int
    shape: tuple[int, ...]
    sparsity: float
    reconstruction_error: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"name": self.name, "block": self.block, "shape": list(self.shape), "sparsity": self.sparsity,
                "reconstruction_error": self.reconstruction_error, "seconds": self.seconds}


@dataclass(frozen=True, kw_only=True)
class OneShotResult(Result):
    """What :func:`prune_oneshot` did.

    Attributes:
        model: the model, pruned in place.
        method: method label (``"wanda"``, ``"magnitude-row"``, ``"dsnot+wanda"``...); ``method_spec`` its full repr.
        pattern: ``"unstructured"`` or ``"N:M"`` (N kept of M); ``target_sparsity`` the requested sparsity.
        layers: one :class:`LayerResult` per pruned layer, in order.
        skipped: ``(name, reason)`` for every prunable layer left dense.
        masking: the :class:`~sparseforge.masking.Masking` holding the installed masks
            (``result.masking.finalize()`` folds them; ``sparsity_report(result)`` measures them).
        blocks_path: where the blocks were found (``""``: the whole model was one block).
        nsamples, seqlen: calibration windows used (0 / None without calibration).
        wall_seconds: total time of the call; ``prune_seconds`` the sum of the rules' own times;
            ``calibration_seconds`` building the calibration data.
        peak_memory_bytes, peak_memory_source: see :class:`peak_memory` (the peak of the whole
            process, model and Python included); ``memory_at_start_bytes`` the same quantity when the
            pruning began, so the difference is what pruning added.
        notes: anything worth knowing (fallbacks taken).
    """

    method: str
    method_spec: str
    pattern: str
    target_sparsity: float
    masking: Masking | None
    blocks_path: str
    nsamples: int
    seqlen: int | None
    wall_seconds: float
    prune_seconds: float
    calibration_seconds: float
    peak_memory_bytes: int | None
    peak_memory_source: str
    memory_at_start_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned layers (from the masks)."""
        total = sum(math.prod(l.shape) for l in self.layers)
        zeros = sum(l.sparsity * math.prod(l.shape) for l in self.layers)
        return zeros / total if total else 0.0

    @property
    def mean_reconstruction_error(self) -> float | None:
        """Mean of the per-layer relative reconstruction errors (None if not measured)."""
        errs = [l.reconstruction_error for l in self.layers if l.reconstruction_error is not None]
        return sum(errs) / len(errs) if errs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the masking object is left out)."""
        return {
            "method": self.method, "method_spec": self.method_spec, "pattern": self.pattern,
            "target_sparsity": self.target_sparsity, "sparsity": self.sparsity,
            "mean_reconstruction_error": self.mean_reconstruction_error,
            "layers": [l.to_dict() for l in self.layers], "skipped": [list(s) for s in self.skipped],
            "blocks_path": self.blocks_path, "nsamples": self.nsamples, "seqlen": self.seqlen,
            "wall_seconds": self.wall_seconds, "prune_seconds": self.prune_seconds,
            "calibration_seconds": self.calibration_seconds, "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_source": self.peak_memory_source, "memory_at_start_bytes": self.memory_at_start_bytes,
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """Per-layer table plus totals, for printing."""
        lines = [f"one-shot {self.method} ({self.pattern}, target sparsity {self.target_sparsity:.4g}) -- "
                 f"simulated sparsity (masks)"]
        rows = [[l.name, "x".join(map(str, l.shape)), f"{l.sparsity:.4f}",
                 "-" if l.reconstruction_error is None else f"{l.reconstruction_error:.4f}", f"{l.seconds:.3f}"]
                for l in self.layers]
        lines.append(text_table(["layer", "shape", "sparsity", "rel.err", "sec"], rows, align="lrrrr"))
        mean = self.mean_reconstruction_error
        lines.append(f"total: {len(self.layers)} layers, sparsity {self.sparsity:.4f}, mean rel.err "
                     f"{'-' if mean is None else f'{mean:.4f}'}, wall {self.wall_seconds:.2f} s "
                     f"(rules {self.prune_seconds:.2f} s), peak memory "
                     f"{'-' if self.peak_memory_bytes is None else f'{self.peak_memory_bytes / 2**20:.0f} MiB'}"
                     f"{'' if self.memory_at_start_bytes is None else f' (at start {self.memory_at_start_bytes / 2**20:.0f} MiB)'}"
                     f" [{self.peak_memory_source}]")
        for name, reason in self.skipped:
            lines.append(f"skipped {name}: {reason}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# block inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class _BlockInput:
    hidden: torch.Tensor
    rest: tuple
    kwargs: dict
    hidden_in_kwargs: bool


def _sanitize(value: Any, previous: Any) -> Any:
    """Drop caches from captured block arguments; reuse the previous batch's equal tensors (one copy in memory)."""
    if isinstance(value, torch.Tensor):
        v = value.detach()
        if isinstance(previous, torch.Tensor) and previous.shape == v.shape and previous.dtype == v.dtype \
                and previous.device == v.device and torch.equal(previous, v):
            return previous
        return v
    if type(value).__name__.endswith("Cache"):
        return None
    if isinstance(value, dict):
        prev = previous if isinstance(previous, dict) else {}
        out = {k: _sanitize(v, prev.get(k)) for k, v in value.items()}
        if "use_cache" in out:
            out["use_cache"] = False
        return out
    if isinstance(value, (tuple, list)):
        prev = previous if isinstance(previous, (tuple, list)) and len(previous) == len(value) else [None] * len(value)
        return type(value)(_sanitize(v, p) for v, p in zip(value, prev))
    return value


def _split_hidden(args: tuple, kwargs: dict, where: str) -> tuple[torch.Tensor, tuple, dict, bool]:
    if args and isinstance(args[0], torch.Tensor):
        return args[0], tuple(args[1:]), dict(kwargs), False
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        kw = dict(kwargs)
        return kw.pop("hidden_states"), tuple(args), kw, True
    raise LayerError(f"{where}: cannot find the hidden-state tensor among the block's arguments "
                     f"(first positional argument or 'hidden_states='); pass blocks= explicitly")


def _capture_inputs(model: nn.Module, block: nn.Module, batches: Sequence[torch.Tensor]) -> list[_BlockInput]:
    captured: list[_BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, rest, kw, in_kw = _split_hidden(args, kwargs, "block 0")
        prev = captured[-1] if captured else None
        captured.append(_BlockInput(hidden.detach(), _sanitize(rest, prev.rest if prev else None),
                                    _sanitize(kw, prev.kwargs if prev else None), in_kw))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            before = len(captured)
            try:
                model(batch)
            except _Stop:
                pass
            if len(captured) == before:
                raise LayerError("the model's forward pass never called its first block; pass blocks= explicitly")
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, inp: _BlockInput, hidden: torch.Tensor | None = None) -> torch.Tensor:
    x = inp.hidden if hidden is None else hidden
    if inp.hidden_in_kwargs:
        out = block(*inp.rest, **{**inp.kwargs, "hidden_states": x})
    else:
        out = block(x, *inp.rest, **inp.kwargs)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        first = out[0]
        if isinstance(first, torch.Tensor):
            return first
    raise LayerError(f"block {type(block).__name__} returned {type(out).__name__}; expected a tensor or a tuple starting with one")


def _sequential_ok(model: nn.Module, blocks: list[nn.Module], batch: torch.Tensor) -> bool:
    """True if block 1 receives what block 0 returns (the pipeline feeds blocks to each other)."""
    seen: dict[int, Any] = {}

    def grab(i: int):
        def hook(module, args, kwargs):
            seen[i] = _split_hidden(args, kwargs, f"block {i}")[0].detach()
            if i == 1:
                raise _Stop
        return hook

    handles = [blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in (0, 1)]
    try:
        try:
            model(batch)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    if 0 not in seen or 1 not in seen:
        return False
    inp = _capture_inputs(model, blocks[0], [batch])[0]
    out = _run_block(blocks[0], inp)
    return out.shape == seen[1].shape and torch.allclose(out.float(), seen[1].float(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# statistics hooks
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Forward pre-hooks that feed each layer's inputs into its :class:`LayerStats`.

    On the first batch, a layer whose input is the very tensor another layer of the block already
    read (same storage, shape, strides and version: ``q``/``k``/``v`` after one LayerNorm) borrows
    that layer's accumulator instead of repeating the work; later batches must show the same
    sharing, else it is an error (``share_inputs=False`` turns the optimisation off).
    """

    def __init__(self, layers: list[tuple[str, MaskedLayer]], track_gram: bool, share: bool) -> None:
        self.stats: dict[str, LayerStats] = {}
        self.owner: dict[str, str] = {}
        self.batch = 0
        self._calls: dict[str, int] = {}
        self._first_calls: dict[str, int] | None = None
        self._total_calls = 0
        self._seen: dict[tuple, tuple[str, torch.Tensor]] = {}
        self._direct: set[str] = set()
        self._share = share
        self._handles = []
        for _, layer in layers:
            q = layer.qualname
            self.stats[q] = LayerStats(layer.canonical_shape[1], track_gram)
            self._handles.append(layer.module.register_forward_pre_hook(self._hook(q)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._calls[name] = self._calls.get(name, 0) + 1
            self._consume(name, args[0])
            # the rest of the block's forward (the last layer's product, norms) is not needed for
            # statistics: once every call of the first batch has been seen, stop the pass
            if self._first_calls is not None and sum(self._calls.values()) == self._total_calls:
                raise _Stop
        return hook

    def _consume(self, name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x._version, x.dtype, x.device)
        seen = self._seen.get(key)
        if self.batch == 0:
            if self._share and seen is not None and seen[0] != name and name not in self._direct:
                self.owner[name] = seen[0]
                return
            if name in self.owner:
                raise LayerError(f"{name}: called twice in one forward pass with different inputs while "
                                 f"sharing statistics with {self.owner[name]}; use share_inputs=False")
            self._direct.add(name)
        elif name in self.owner:
            if seen is None or seen[0] != self.owner[name]:
                raise LayerError(f"{name}: read the same input as {self.owner[name]} on the first calibration "
                                 f"batch but not on batch {self.batch}; use share_inputs=False")
            return
        self.stats[name].update(x, name)
        self._seen.setdefault(key, (name, x))  # holding x keeps its storage from being reused mid-pass

    def run(self, block: nn.Module, inp: "_BlockInput") -> None:
        """One calibration batch through the dense block."""
        try:
            _run_block(block, inp)
        except _Stop:
            pass
        if self._first_calls is None:
            self._first_calls = dict(self._calls)
            self._total_calls = sum(self._calls.values())
        elif self._calls != self._first_calls:
            raise LayerError(f"the block called its layers differently on calibration batch {self.batch} "
                             f"({self._calls}) than on the first ({self._first_calls}); one-shot pruning needs a "
                             f"static forward pass")
        self._calls = {}
        self._seen.clear()
        self.batch += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen.clear()

    def get(self, name: str) -> LayerStats:
        return self.stats[self.owner.get(name, name)]


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def _context_length(model: nn.Module) -> int | None:
    for obj, attrs in ((model, ("block_size", "seqlen")),
                       (getattr(model, "config", None), ("n_positions", "max_position_embeddings", "n_ctx"))):
        for a in attrs:
            v = getattr(obj, a, None) if obj is not None else None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _progress(iterable: Iterator, total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="block")


def _drop_layer(masking: Masking, layer: MaskedLayer, reason: str) -> None:
    delattr(layer.module, layer.param_name + MASK_SUFFIX)
    masking.layers.remove(layer)
    masking.skipped.append((layer.qualname, reason))


@dataclass
class _Plan:
    """What :func:`prune_oneshot` will do, decided (and validated) before the model is touched.

    ``blocks_path``/``blocks`` may still fall back to the whole model as one block once the
    calibration inputs show that the blocks do not feed each other (with a line in ``notes``).
    """

    method: OneShotMethod
    target: Target
    blocks_path: str
    blocks: list[nn.Module]
    layers: list[MaskedLayer]  # the layers to prune: the masks are installed on exactly these
    skipped: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)


def _check_options(nsamples: Any, batch_size: Any, seed: Any, seqlen: Any, indivisible: Any) -> None:
    check_int(nsamples, "nsamples", minimum=1)
    if batch_size is not None:
        check_int(batch_size, "batch_size", minimum=1)
    check_int(seed, "seed")
    if seqlen is not None:
        check_int(seqlen, "seqlen", minimum=1)
    if indivisible not in INDIVISIBLE:
        raise ConfigError(f"indivisible must be one of {list(INDIVISIBLE)}; got {indivisible!r}")
    if indivisible == "pad":
        raise ConfigError("indivisible='pad' is not supported by one-shot methods (SparseGPT and DSnoT update whole "
                          "N:M groups); use 'skip' (leave such layers dense) or 'error'")


def _select_layers(model: nn.Module, targets: Targets | dict | None, blocks_path: str, block_list: list[nn.Module],
                   target: Target, indivisible: str, strict: bool) -> tuple[list[MaskedLayer], list[tuple[str, str]]]:
    """``(layers, skipped)``: the prunable layers inside the blocks, intersected with the user's targets."""
    pattern = target.pattern
    user = Targets.from_spec(targets)
    try:
        candidates = user.select(model)
    except ConfigError as e:
        raise ConfigError(f"no prunable layer: one-shot methods prune nn.Linear and Hugging Face Conv1D layers ({e})") from None
    skipped: list[tuple[str, str]] = list(user.skipped)
    for l in candidates:
        if not _is_prunable(l.module):
            skipped.append((l.qualname, f"{type(l.module).__name__} is not pruned by one-shot methods "
                                        f"(nn.Linear and Hugging Face Conv1D only)"))
    candidates = [l for l in candidates if _is_prunable(l.module)]
    names_in_blocks = {id(m): i for i, b in enumerate(block_list) for m in b.modules()}
    chosen = []
    for l in candidates:
        if id(l.module) in names_in_blocks:
            chosen.append(l)
        else:
            skipped.append((l.qualname, f"outside the repeated blocks ({blocks_path or 'model'}); embeddings, heads "
                                        f"and other layers outside the blocks are not pruned by one-shot methods"))
    if not chosen:
        raise ConfigError(f"no prunable Linear layer inside the blocks of {type(model).__name__} "
                          f"(blocks: {blocks_path or 'the whole model'})")
    kept_layers = []
    for l in chosen:
        shape = l.canonical_shape
        if len(shape) != 2:
            skipped.append((l.qualname, f"weight shape {shape} is not 2-D"))
            continue
        if isinstance(pattern, NM) and shape[1] % pattern.m:
            if indivisible == "error":
                raise LayerError(f"{l.qualname}: input dimension {shape[1]} (shape {shape}) is not divisible by "
                                 f"M={pattern.m} for N:M {pattern.n}:{pattern.m}; pass indivisible='skip' or exclude it")
            skipped.append((l.qualname, f"input dimension {shape[1]} not divisible by M={pattern.m}; left dense"))
            continue
        kept_layers.append(l)
    if strict and skipped:
        raise LayerError(f"strict=True but {len(skipped)} layer(s) would be left dense: {skipped[:3]}")
    if not kept_layers:
        raise LayerError(f"every prunable layer was skipped: {skipped[:3]}")
    return kept_layers, skipped


def _plan(model: nn.Module, method: Any, sparsity: Any, *, nsamples: Any, batch_size: Any, seed: Any, seqlen: Any,
          blocks: str | nn.Module | None, targets: Targets | dict | None, indivisible: Any, strict: bool) -> _Plan:
    """Validate every argument that needs no data and choose the blocks and layers (step 1 of :func:`prune_oneshot`)."""
    meth: OneShotMethod = method_from_spec(method)
    target = oneshot_target(sparsity)  # parsed once; every layer's rule gets this object
    _check_options(nsamples, batch_size, seed, seqlen, indivisible)
    check_module(model)
    existing = find_masked_layers(model)
    if existing:
        raise ConfigError(f"model already carries masks ({existing[0].qualname}{MASK_SUFFIX}, ...); "
                          f"fold them with sparseforge.finalize(model) before one-shot pruning")
    blocks_path, block_list = find_blocks(model, blocks)
    layers, skipped = _select_layers(model, targets, blocks_path, block_list, target, indivisible, strict)
    return _Plan(meth, target, blocks_path, block_list, layers, skipped)


def _calibration_data(model: nn.Module, meth: OneShotMethod, calibration: Any, *, tokenizer: Any, nsamples: int,
                      seqlen: int | None, seed: int, measure_error: bool) -> torch.Tensor | None:
    """The calibration windows (or None: magnitude without error measurement), loaded before the model is touched."""
    needs_data = meth.needs_data or (measure_error and calibration is not None)
    if meth.needs_data and calibration is None:
        raise ConfigError(f"method {meth.name} needs calibration data; got calibration=None")
    if not needs_data:
        return None
    if seqlen is None and not (isinstance(calibration, torch.Tensor) and (calibration.dim() == 2 or calibration.is_floating_point())):
        ctx = _context_length(model)
        if ctx is None:
            raise ConfigError("seqlen is required: the model does not state a context length")
        seqlen = min(ctx, _MAX_DEFAULT_SEQLEN)
    return load_calibration(calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen, seed=seed)


@contextmanager
def _calibration_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no key/value cache while the calibration data runs; both restored after, whatever happens."""
    was_training = model.training
    config = getattr(model, "config", None)
    old_cache = getattr(config, "use_cache", None)
    try:
        model.eval()
        if old_cache is not None:
            config.use_cache = False
        yield
    finally:
        model.train(was_training)
        if old_cache is not None:
            config.use_cache = old_cache


def _calibration_batches(calib: torch.Tensor, batch_size: int | None, device: torch.device) -> list[torch.Tensor]:
    if batch_size is None:
        tokens_per_row = math.prod(calib.shape[1:]) if not calib.is_floating_point() else 1
        batch_size = max(1, 4096 // max(1, tokens_per_row)) if not calib.is_floating_point() else 1024
    return [calib[i : i + batch_size].to(device) for i in range(0, calib.shape[0], batch_size)]


def _first_block_inputs(model: nn.Module, plan: _Plan, batches: list[torch.Tensor]) -> list[_BlockInput]:
    """The inputs of the first block, one per batch (step 2); falls back to one block if the blocks do not chain."""
    if plan.blocks == [model]:
        return [_BlockInput(b, (), {}, False) for b in batches]
    if len(plan.blocks) > 1 and not _sequential_ok(model, plan.blocks, batches[0][:1]):
        msg = (f"block 1 of {plan.blocks_path} does not receive the output of block 0; pruned the model "
               f"as one block instead (all statistics held at once)")
        # attributed to the caller of prune_oneshot (through _prune_blocks and torch.no_grad's wrapper)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)
        plan.notes.append(msg)
        plan.blocks_path, plan.blocks = "", [model]
        return [_BlockInput(b, (), {}, False) for b in batches]
    return _capture_inputs(model, plan.blocks[0], batches)


def _next_inputs(block: nn.Module, inputs: list[_BlockInput]) -> list[_BlockInput]:
    """The next block's inputs: this (already pruned) block's outputs, with the same extra arguments."""
    return [_BlockInput(_run_block(block, i), i.rest, i.kwargs, i.hidden_in_kwargs) for i in inputs]


class _LayerPruner:
    """Prunes the layers of one block after another inside :func:`prune_oneshot`'s transaction (steps 3 and 4).

    Holds what the run accumulates: the per-layer results and the time spent in the rules. Every
    weight is saved to the transaction's journal just before it is overwritten.
    """

    def __init__(self, plan: _Plan, masking: Masking, txn: Any, *, measure_error: bool, share_inputs: bool,
                 strict: bool) -> None:
        self.method = plan.method
        self.target = plan.target
        self.masking = masking
        self.txn = txn
        self.track_gram = plan.method.needs_gram or measure_error
        self.share_inputs = share_inputs
        self.strict = strict
        self.by_module = {id(l.module): l for l in masking.layers}
        self.results: list[LayerResult] = []
        self.prune_seconds = 0.0

    def prune_block(self, index: int, block: nn.Module, inputs: list[_BlockInput] | None) -> None:
        """Gather the statistics of the block's layers on the dense block, then prune each layer."""
        layers = [(n, self.by_module[id(m)]) for n, m in block.named_modules() if id(m) in self.by_module]
        if not layers:
            return
        collector = None
        if inputs is not None:
            collector = _Collector(layers, self.track_gram, self.share_inputs)
            try:
                for inp in inputs:
                    collector.run(block, inp)
            finally:
                collector.remove()
        for rel, layer in layers:
            stats = collector.get(layer.qualname) if collector is not None else None
            if stats is not None and stats.n_tokens == 0:
                if self.method.needs_data:
                    reason = "received no calibration input (not called in the block's forward pass)"
                    if self.strict:
                        raise LayerError(f"{layer.qualname}: {reason}")
                    _drop_layer(self.masking, layer, reason)
                    continue
                stats = None
            self.prune_layer(index, rel, layer, stats)

    def prune_layer(self, index: int, rel: str, layer: MaskedLayer, stats: LayerStats | None) -> None:
        """Run the rule on one layer, write its new weight and mask, and measure it."""
        weight = layer.weight
        w = layer.canonical(weight.detach()).float()
        with _few_threads(w.numel(), w.device):
            t0 = time.perf_counter()
            mask, new_w = self.method.prune(w, stats, self.target, name=layer.qualname, layer_name=rel)
            dt = time.perf_counter() - t0
            err = reconstruction_error(w, new_w, stats.gram) if stats is not None and stats.gram is not None else None
        self.prune_seconds += dt
        self.txn.save(weight)
        weight.copy_(layer.from_canonical(new_w).to(weight.dtype))
        self.masking.set_mask(layer, mask, canonical=True)
        self.results.append(LayerResult(layer.qualname, index, tuple(w.shape), 1.0 - float(mask.sum()) / mask.numel(), err, dt))


def _prune_blocks(model: nn.Module, plan: _Plan, pruner: _LayerPruner, calib: torch.Tensor | None,
                  batch_size: int | None, device: torch.device, progress: bool | None) -> None:
    """Capture the first block's inputs, then prune block by block, feeding each pruned block's outputs on."""
    inputs: list[_BlockInput] | None = None
    if calib is not None:
        batches = _calibration_batches(calib, batch_size, device)
        inputs = _first_block_inputs(model, plan, batches)
        del batches
    for bi, block in _progress(enumerate(plan.blocks), len(plan.blocks), progress, f"{plan.method.label} blocks"):
        pruner.prune_block(bi, block, inputs)
        if inputs is not None and bi + 1 < len(plan.blocks):
            inputs = _next_inputs(block, inputs)


@torch.no_grad()
def prune_oneshot(
    model: nn.Module,
    method: Any = "wanda",
    sparsity: Any = 0.5,
    *,
    calibration: Any = "austen",
    tokenizer: Any = None,
    nsamples: int = 128,
    seqlen: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    blocks: str | nn.Module | None = None,
    targets: Targets | dict | None = None,
    indivisible: str = "error",
    measure_error: bool = True,
    share_inputs: bool = True,
    strict: bool = False,
    progress: bool | None = None,
) -> OneShotResult:
    """Prune ``model`` in place, block by block, with a one-shot method; masks installed as ``<param>_mask``.

    The pipeline of Wanda (Sun et al. 2023), SparseGPT (Frantar & Alistarh 2023) and DSnoT (Zhang
    et al. 2024); see the module docstring. Works on Hugging Face models (GPT-2 with ``Conv1D``,
    OPT, Llama, Mistral, Qwen2, BERT...), sparseforge's ``TinyGPT`` and any model of Linear layers.

    Args:
        model: the model; switched to eval mode during the call (restored after).
        method: ``"magnitude"``, ``"magnitude-row"``, ``"wanda"``, ``"sparsegpt"``, ``"dsnot"``
            (on Wanda), ``"dsnot+magnitude"``, ``"dsnot+sparsegpt"``, a dict or a
            :class:`~.methods.OneShotMethod` (see :func:`~.methods.method_from_spec`).
        sparsity: the target (:func:`~sparseforge.core.targets.parse_target`): a fraction in [0, 1)
            (unstructured, exact count per layer), an N:M pattern (``"2:4"`` or ``NM(2, 4)``: keep 2
            of every 4 consecutive inputs; the references count pruned weights) or a Target.
        calibration: ``"austen"`` (default), ``"bible"``, ``"text:PATH"``, a token tensor, a
            ``TextCorpus``, model inputs as a float tensor, or None (magnitude only, no error
            measured). See :func:`~.calibration.load_calibration`.
        tokenizer: for text sources: a Hugging Face tokenizer, ``"byte"`` or the ``TextCorpus``
            the model was trained on.
        nsamples: calibration windows (default 128, as the references).
        seqlen: tokens per window (default: the model's context length, at most 2048).
        seed: seed of the window draw (default 0).
        batch_size: calibration windows per forward call (memory vs. speed; results do not depend on it
            beyond float rounding). Default: ``max(1, 4096 // seqlen)`` windows (32 at seqlen 128).
        blocks: the block list (path or module) if the automatic :func:`find_blocks` is not wanted.
        targets: restrict the prunable layers further (:class:`~sparseforge.masking.Targets` or dict).
        indivisible: N:M on a layer whose input dimension M does not divide: ``"error"`` (default)
            or ``"skip"`` (left dense, listed in ``skipped``); ``"pad"`` (of :func:`prune_nm` and the
            N:M training methods) is refused here.
        measure_error: accumulate the Gram matrix of every layer's inputs to report the exact
            reconstruction error (costs one ``in x in`` product per layer input; SparseGPT needs it anyway).
        share_inputs: layers reading the same tensor share one statistics accumulator.
        strict: make every skipped layer an error.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        :class:`OneShotResult` with per-layer sparsity, reconstruction error and time, totals and peak memory.

    Raises:
        ConfigError: bad method, sparsity, calibration data, a model with no prunable layer, or a
            model that already carries masks. LayerError: an N:M pattern that does not fit a layer
            (with ``indivisible="error"``), a layer the method cannot prune.
    """
    t_start = time.perf_counter()
    plan = _plan(model, method, sparsity, nsamples=nsamples, batch_size=batch_size, seed=seed, seqlen=seqlen,
                 blocks=blocks, targets=targets, indivisible=indivisible, strict=strict)
    device = _device_of(model)
    t_cal = time.perf_counter()
    calib = _calibration_data(model, plan.method, calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                              seed=seed, measure_error=measure_error)
    calibration_seconds = time.perf_counter() - t_cal

    # all or nothing: a layer the method refuses (the last one, say) leaves every weight and
    # buffer as it was; only the weights about to change are copied (saved per layer)
    with transaction(model, tensors="journal") as txn:
        masking = Masking(model, Targets(include=[re.escape(l.name) for l in plan.layers], types=None))
        masking.skipped = plan.skipped
        pruner = _LayerPruner(plan, masking, txn, measure_error=measure_error, share_inputs=share_inputs, strict=strict)
        meter = peak_memory(device)
        with _calibration_mode(model), meter:
            _prune_blocks(model, plan, pruner, calib, batch_size, device, progress)
        if not masking.layers:
            raise LayerError(f"no layer was pruned: {masking.skipped[:3]}")
    pattern = plan.target.pattern
    return OneShotResult(
        model=model, method=plan.method.label, method_spec=repr(plan.method),
        pattern=f"{pattern.n}:{pattern.m}" if isinstance(pattern, NM) else "unstructured",
        target_sparsity=plan.target.sparsity, layers=pruner.results, skipped=list(masking.skipped), masking=masking,
        blocks_path=plan.blocks_path, nsamples=0 if calib is None else int(calib.shape[0]),
        seqlen=None if calib is None or calib.is_floating_point() else int(calib.shape[1]),
        wall_seconds=time.perf_counter() - t_start, prune_seconds=pruner.prune_seconds,
        calibration_seconds=calibration_seconds, peak_memory_bytes=meter.bytes, peak_memory_source=meter.source,
        memory_at_start_bytes=meter.start_bytes, notes=plan.notes,
    )
