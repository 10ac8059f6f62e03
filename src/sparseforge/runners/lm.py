"""The language-model trainer: causal LM training with any sparsity method, and its evaluation.

One face of the training-loop core (:mod:`sparseforge.runners.loop`); the other is the recipe
trainer. A run is described by an :class:`LMRecipe` (validated when built) and run by
:class:`LMTrainer`; :func:`train_lm` builds both from keyword arguments.

:func:`train_lm` trains a next-token model (:class:`~sparseforge.models.TinyGPT` by default)
on a :class:`~sparseforge.text.TextCorpus` with one method of the registry (``"dense"``, the
N:M methods ``"ste"``, ``"srste"``, ``"mdgf"``, ``"sdgf"``, ``"bdwp"``, or the unstructured
ones), for a fixed token budget ``steps x batch_size x block_size``, and reports the
validation loss and perplexity of the *finished* model: the method's :meth:`finalize` folds
the final hard mask into the weights first, the N:M zeros are checked, and only then is the
validation text scored. The recipe is the usual small-GPT one (nanoGPT, Chinchilla):

* AdamW (Loshchilov & Hutter 2019), ``lr = 1e-3``, ``betas = (0.9, 0.95)``, weight decay
  0.1 on matrices only (every parameter with ``dim >= 2``: Linear weights and embeddings;
  biases and LayerNorm parameters get none);
* learning rate at step ``t`` (0-based) of ``T`` with ``W`` warm-up steps and
  ``lr_min = min_lr_ratio * lr``::

      lr_t = lr * (t + 1) / W                                              t <  W
      lr_t = lr_min + (lr - lr_min) * (1 + cos(pi * (t - W) / (T - W))) / 2  t >= W

* gradients clipped to a global L2 norm of 1.0 before every step (after the N:M method's
  backward, so SR-STE's decay term is clipped with the rest; for unstructured methods the
  norm is the sparse network's, since masked gradients are zeroed during backward);
* the mean token cross-entropy ``L = -(1/|P|) sum_{(x,t) in P} log p(x_{t+1} | x_{<=t})``
  over the predicted positions ``P`` of a batch; perplexity ``= exp(L)``.

Same seed, same result: the seed fixes the weight initialisation (``torch.manual_seed``), the
training windows (the ``"lm-batches"`` stream of :func:`sparseforge.text.lm_batches`) and the
method's own generator.

"""

from __future__ import annotations

import hashlib
import math
import time
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.lr import LRSchedule, build_lr_scheduler
from ..core.patterns import NM, nm_groups_view
from ..errors import CheckpointError, ConfigError, check_fraction, check_int, check_number
from ..masking import MaskedLayer, Targets, load_masked_state_dict
from ..methods import build_method, method_entry, method_names
from .loop import TrainLoop, progress_bar
from .setup import method_arguments, runtime_arguments

__all__ = ["DEFAULT_LM_TARGETS", "LM_CHECKPOINT_FORMAT", "LMRecipe", "LMTrainer", "evaluate_lm", "lm_loss",
           "lm_lr_factor", "nm_violations", "train_lm"]

#: the Linear layers inside TinyGPT's blocks (attention qkv and proj, MLP fc and proj); the
#: ``head`` and the embeddings stay dense. ``targets="blocks"`` in :func:`train_lm` means this.
DEFAULT_LM_TARGETS: dict[str, Any] = {"include": [r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)"]}


# ---------------------------------------------------------------------------------------------
# loss, learning rate, evaluation, N:M check
# ---------------------------------------------------------------------------------------------


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Token cross-entropy of ``logits [B, T, V]`` against ``targets [B, T]`` (``"mean"`` or ``"sum"``)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def lm_lr_factor(step: int, *, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at 0-based ``step``: linear warm-up, then cosine to ``min_lr_ratio``.

    ``(step + 1) / W`` for ``step < W``; afterwards
    ``r + (1 - r) (1 + cos(pi (step - W) / (T - W))) / 2`` with ``r = min_lr_ratio``, ``T = steps``,
    ``W = warmup_steps``; held at ``r`` past ``T``.
    """
    return LRSchedule("cosine", total_steps=steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)(step)


def _eval_starts(n_tokens: int, block_size: int, max_windows: int | None) -> torch.Tensor:
    n = (n_tokens - 1) // block_size
    if max_windows is None or max_windows >= n:
        return torch.arange(n) * block_size
    # evenly spread over the whole stream, so every document's tail is represented
    idx = torch.div(torch.arange(max_windows) * n, max_windows, rounding_mode="floor")
    return idx * block_size


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: torch.Tensor, block_size: int, *, batch_size: int = 32,
                max_windows: int | None = None) -> dict[str, float]:
    """Validation loss and perplexity of ``model`` on the token stream ``tokens``.

    The stream is cut into non-overlapping windows of ``block_size`` tokens (window ``i``
    predicts tokens ``i*block_size+1 .. (i+1)*block_size``; the partial last window is
    dropped, as in :func:`sparseforge.text.lm_eval_batches`). With ``max_windows`` only that
    many windows are scored, at evenly spaced indices ``floor(j * n / max_windows)`` so the
    sample covers the whole stream; None scores all ``n`` of them. Runs in eval mode under
    ``no_grad`` (the training flag is restored).

    Returns:
        ``loss`` (mean cross-entropy per predicted token, summed in float64), ``ppl``
        (``exp(loss)``), ``windows`` and ``tokens`` (predicted positions scored).

    Raises:
        ConfigError: ``tokens`` not a 1-D integer tensor, too short for one window, or
            ``block_size``, ``batch_size``, ``max_windows`` below 1.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ConfigError(f"tokens must be a 1-D tensor of integer token ids; got {type(tokens).__name__} "
                          f"{getattr(tokens, 'shape', '')}")
    check_int(block_size, "block_size", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    if max_windows is not None:
        check_int(max_windows, "max_windows", minimum=1)
    if tokens.numel() < block_size + 1:
        raise ConfigError(f"tokens: {tokens.numel()} validation tokens are too few for one window of "
                          f"block_size={block_size} (need at least {block_size + 1})")
    starts = _eval_starts(tokens.numel(), block_size, max_windows)
    offsets = torch.arange(block_size)
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, starts.numel(), batch_size):
            idx = starts[i:i + batch_size, None] + offsets
            x, y = tokens[idx].to(torch.int64), tokens[idx + 1].to(torch.int64)
            total += float(lm_loss(model(x), y, reduction="sum").double())
            count += y.numel()
    finally:
        model.train(was)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else math.inf, "windows": int(starts.numel()),
            "tokens": count}


def nm_violations(weight: torch.Tensor, n: int, m: int) -> int:
    """Groups of ``m`` consecutive inputs of canonical ``weight`` with more than ``n`` nonzeros.

    An input dimension that is not a multiple of ``m`` is padded with zeros (the ``"pad"``
    policy's convention). 0 means ``weight`` really is N:M sparse.
    """
    w = weight.detach()
    cin = w.shape[1]
    if cin % m:
        shape = list(w.shape)
        shape[1] = m - cin % m
        w = torch.cat([w, w.new_zeros(shape)], dim=1)
    return int(((nm_groups_view(w != 0, m).sum(dim=1)) > n).sum())


# ---------------------------------------------------------------------------------------------
# the recipe of a run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LMRecipe:
    """What an LM run trains: the method, the model, the budget and the optimisation; validated when built.

    Every field is checked at construction (a bad value raises :class:`ConfigError` naming
    it, its value and what is allowed), and the defaults that depend on others are filled in:
    after construction ``warmup_steps`` and ``log_every`` are integers, ``method_params`` and
    ``model_params`` dicts, ``betas`` a tuple of floats, ``grad_clip`` a float or None. What
    needs the model or the corpus (``block_size`` against them, the targets matching a layer)
    is checked when :class:`LMTrainer` builds them.

    Example::

        recipe = LMRecipe("srste", method_params={"sparsity": "2:4"}, steps=600, batch_size=16,
                          model_params={"d_model": 256})
        result = LMTrainer("austen", recipe).fit()

    Fields (see :func:`train_lm` for each one's meaning and range): ``method``,
    ``method_params``, ``model``, ``model_params``, ``targets``, ``steps``, ``batch_size``,
    ``block_size``, ``lr``, ``min_lr_ratio``, ``warmup_steps``, ``weight_decay``, ``betas``,
    ``grad_clip``, ``seed``, ``val_windows``, ``eval_every``, ``curve_val_windows``,
    ``eval_batch_size``, ``log_every``, ``checkpoint_every``.
    """

    method: str = "dense"
    method_params: dict[str, Any] | None = None
    model: str | nn.Module = "tiny-gpt"
    model_params: dict[str, Any] | None = None
    targets: Targets | dict | str | None = "blocks"
    steps: int = 1000
    batch_size: int = 32
    block_size: int | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    seed: int = 0
    val_windows: int | None = None
    eval_every: int = 0
    curve_val_windows: int | None = 64
    eval_batch_size: int = 32
    log_every: int | None = None
    #: steps between checkpoints when the run has one (None = ``max(1, steps // 10)``)
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        steps = check_int(self.steps, "steps", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.seed, "seed", minimum=0)
        put("lr", float(check_number(self.lr, "lr", minimum=0.0, min_open=True)))
        put("min_lr_ratio", float(check_number(self.min_lr_ratio, "min_lr_ratio", minimum=0.0, maximum=1.0)))
        put("weight_decay", float(check_number(self.weight_decay, "weight_decay", minimum=0.0)))
        if self.warmup_steps is None:
            put("warmup_steps", max(1, steps // 20))
        check_int(self.warmup_steps, "warmup_steps", minimum=0, maximum=steps)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ConfigError(f"betas must be a pair (beta1, beta2), each in [0, 1); got {self.betas!r}")
        put("betas", tuple(check_fraction(b, f"betas[{i}]", allow_one=False) for i, b in enumerate(self.betas)))
        if self.grad_clip is not None and self.grad_clip != 0:
            put("grad_clip", float(check_number(self.grad_clip, "grad_clip", minimum=0.0, min_open=True)))
        else:
            put("grad_clip", None)
        for value, name in ((self.val_windows, "val_windows"), (self.curve_val_windows, "curve_val_windows")):
            if value is not None:
                check_int(value, name, minimum=1)
        check_int(self.eval_every, "eval_every", minimum=0)
        check_int(self.eval_batch_size, "eval_batch_size", minimum=1)
        put("log_every", max(1, steps // 100) if self.log_every is None else check_int(self.log_every, "log_every", minimum=1))
        if self.checkpoint_every is not None:
            check_int(self.checkpoint_every, "checkpoint_every", minimum=0)
        if self.block_size is not None:
            check_int(self.block_size, "block_size", minimum=1)
        put("method_params", {} if self.method_params is None else self.method_params)
        put("model_params", {} if self.model_params is None else self.model_params)
        if not isinstance(self.model_params, dict):
            raise ConfigError(f"model_params must be a dict of model constructor arguments; got {self.model_params!r}")
        if isinstance(self.model, nn.Module):
            if self.model_params:
                raise ConfigError("model_params apply to a named model only; got a module and model_params")
        elif not isinstance(self.model, str):
            raise ConfigError(f"model must be a registry name (e.g. 'tiny-gpt') or an nn.Module; got {self.model!r}")
        if isinstance(self.targets, str) and self.targets != "blocks":
            raise ConfigError(f"targets must be 'blocks', None, a Targets or a dict; got {self.targets!r}")
        self.method_arguments()  # the method's name and parameters, resolved for this run (checks them)

    @property
    def resolved_targets(self) -> Targets | dict | None:
        """The targets handed to the method: ``"blocks"`` is :data:`DEFAULT_LM_TARGETS`."""
        return DEFAULT_LM_TARGETS if self.targets == "blocks" else self.targets

    def method_arguments(self) -> dict[str, Any]:
        """The method's keyword arguments for this run: ``method_params``, the seed, the method's
        run defaults for ``steps`` (no epochs) and its step specs (``"50%"``) resolved.

        Raises:
            ConfigError: an unknown method, a method that trains in rounds (IMP), parameters
                the LM trainer sets itself, or an epoch-valued step spec.
        """
        name, params = self.method, self.method_params
        if not isinstance(name, str) or name not in method_names():
            raise ConfigError(f"method must be one of {method_names()}; got {name!r}")
        entry = method_entry(name)
        if entry.cls.trains_in_rounds:
            raise ConfigError(f"method {name!r} trains several rounds with rewinding; train_lm runs one budget "
                              "(use gmp for gradual magnitude pruning)")
        if not isinstance(params, dict):
            raise ConfigError(f"method_params must be a dict of the method's keyword arguments; got {params!r}")
        bad = sorted({"targets", "seed", "model", "optimizer"} & set(params))
        if bad:
            raise ConfigError(f"method_params must not set {bad}: pass them as train_lm arguments")
        return method_arguments(entry, dict(params), seed=self.seed, total_steps=self.steps, steps_per_epoch=None,
                                where="method_params")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain mapping (a module ``model`` stays the module object)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


LM_CHECKPOINT_FORMAT = "sparseforge-lm-checkpoint-v1"


def _corpus_identity(corpus: Any) -> dict[str, Any]:
    # a digest of the tokens themselves: a corpus file edited under the same name must not resume
    digest = hashlib.sha256()
    for split in (corpus.train, corpus.val):
        digest.update(split.contiguous().numpy().tobytes())
    return {"name": corpus.name, "train_tokens": corpus.train.numel(), "val_tokens": corpus.val.numel(),
            "sha256": digest.hexdigest()}


def _read_lm_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    from ..fileio import read_checkpoint

    saved = read_checkpoint(path, LM_CHECKPOINT_FORMAT, f"train_lm checkpoint ({LM_CHECKPOINT_FORMAT})",
                            param="checkpoint: ")
    theirs = saved.get("config", {})
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} here" for k, v in config.items()
            if k != "model_shapes" and theirs.get(k) != v]
    if theirs.get("model_shapes") != config["model_shapes"]:
        diff.append("model: other parameter names or shapes")
    if diff:
        raise CheckpointError(f"checkpoint {str(path)!r} was written by another run ({'; '.join(diff[:4])}); "
                              "pass another checkpoint path or delete the file to start over")
    return saved


class LMTrainer:
    """Run one :class:`LMRecipe` on a corpus: build the model, optimizer, schedule and method, then train.

    Args:
        corpus: a :class:`~sparseforge.text.TextCorpus` or a corpus name (``"austen"``, ``"text:PATH"``).
        recipe: the validated :class:`LMRecipe`.
        checkpoint: file to save the run's state to and resume from (None = no checkpoints).
        max_steps: stop after this many steps in this call (needs ``checkpoint``).
        progress: show a tqdm bar.

    :meth:`fit` returns what :func:`train_lm` documents.
    """

    def __init__(self, corpus: Any, recipe: LMRecipe, *, checkpoint: str | Path | None = None,
                 max_steps: int | None = None, progress: bool = False) -> None:
        from ..models import build_model
        from ..text import TextCorpus, load_text_corpus

        self.t_start = time.perf_counter()
        if not isinstance(recipe, LMRecipe):
            raise ConfigError(f"recipe must be an LMRecipe; got {type(recipe).__name__}")
        self.recipe = r = recipe
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = (r.checkpoint_every if r.checkpoint_every is not None
                                 else max(1, r.steps // 10) if self.checkpoint is not None else 0)
        if max_steps is not None:
            check_int(max_steps, "max_steps", minimum=1)
            if self.checkpoint is None:
                raise ConfigError(f"max_steps={max_steps} stops the run early; pass checkpoint=PATH so it can resume")
        self.max_steps = max_steps
        self.progress = progress
        if isinstance(corpus, str):
            corpus = load_text_corpus(corpus)
        if not isinstance(corpus, TextCorpus):
            raise ConfigError(f"corpus must be a TextCorpus or a corpus name ('austen', 'text:PATH'); "
                              f"got {type(corpus).__name__}")
        self.corpus = corpus

        torch.manual_seed(r.seed)
        if isinstance(r.model, str):
            net = build_model(r.model, corpus, **r.model_params)
            self.model_name = r.model
        else:
            net, self.model_name = r.model, type(r.model).__name__
        self.model = net
        model_block = getattr(net, "block_size", None)
        block_size = r.block_size
        if block_size is None:
            if model_block is None:
                raise ConfigError(f"block_size: {self.model_name} has no block_size attribute; pass block_size")
            block_size = model_block
        check_int(block_size, "block_size", minimum=1)
        if model_block is not None and block_size > model_block:
            raise ConfigError(f"block_size must be <= the model's block_size {model_block}; got {block_size}")
        for split in ("train", "val"):
            n = getattr(corpus, split).numel()
            if n < block_size + 1:
                raise ConfigError(f"block_size={block_size} is too long for the corpus' {split} split ({n} tokens; "
                                  f"need at least block_size + 1)")
        self.block_size = block_size
        targets = r.resolved_targets

        # everything that shapes the result: a checkpoint resumes only the run that wrote it
        self.config = {"method": r.method, "method_params": dict(r.method_params), "model": self.model_name,
                       "model_params": dict(r.model_params),
                       "model_shapes": {k: tuple(v.shape) for k, v in net.state_dict().items()},
                       "targets": repr(targets), "steps": r.steps, "batch_size": r.batch_size, "block_size": block_size,
                       "lr": r.lr, "min_lr_ratio": r.min_lr_ratio, "warmup_steps": r.warmup_steps,
                       "weight_decay": r.weight_decay, "betas": tuple(r.betas), "grad_clip": r.grad_clip,
                       "seed": r.seed, "eval_every": r.eval_every, "curve_val_windows": r.curve_val_windows,
                       "eval_batch_size": r.eval_batch_size, "log_every": r.log_every,
                       "corpus": _corpus_identity(corpus)} if self.checkpoint is not None else {}

        # matrices decay; biases, LayerNorm gains and shifts do not (they set scales, not features)
        decay = [p for p in net.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in net.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=r.betas)
        self.scheduler = build_lr_scheduler(self.optimizer, LRSchedule("cosine", total_steps=r.steps,
                                                                       warmup_steps=r.warmup_steps,
                                                                       min_lr_ratio=r.min_lr_ratio))
        entry = method_entry(r.method)
        mparams = r.method_arguments()
        # a calibration batch (SNIP-like scores) comes from a stream of its own (seed + 1), so the
        # training batches do not shift
        runtime_arguments(entry, mparams, {
            "data": lambda: next(self._text().lm_batches(corpus.train, block_size, r.batch_size, seed=r.seed + 1,
                                                         steps=1)),
            "loss_fn": lambda: lm_loss,
            "lr_scheduler": lambda: self.scheduler,
        })
        self.method = build_method(r.method, net, self.optimizer, targets=targets, **mparams)
        # any N:M pattern gets the zero check; the SAD log exists only for methods that keep one
        self.is_nm = isinstance(self.method.pattern, NM)
        self.logs_sad = type(self.method).logs_mask_flips
        self.losses: list[float] = []
        self.curve: list[dict[str, float]] = []
        self.sad_curve: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.nonfinite = 0
        self.done = self.start = 0
        self.seconds_before = 0.0
        self.resumed = False
        self._bar: Any = None

    @staticmethod
    def _text() -> Any:
        # looked up at call time, so a patched sparseforge.text.lm_batches (tests) is the one used
        from .. import text

        return text

    def try_resume(self) -> bool:
        """Load the checkpoint if it exists (it must be this run's); True if the run resumed."""
        path = self.checkpoint
        if path is None or not path.exists():
            return False
        saved = _read_lm_checkpoint(path, self.config)
        load_masked_state_dict(self.model, saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.method.load_state_dict(saved["method"])
        torch.set_rng_state(saved["torch_rng"])
        self.done = self.start = int(saved["step"])
        self.losses, self.curve, self.sad_curve, self.evals = (saved["losses"], saved["curve"], saved["sad_curve"],
                                                               saved["evals"])
        self.nonfinite, self.seconds_before = int(saved["nonfinite"]), float(saved["train_seconds"])
        self.resumed = True
        return True

    def save_checkpoint(self) -> None:
        """Write the run's state to the checkpoint file, atomically."""
        from ..fileio import atomic_save

        atomic_save({"format": LM_CHECKPOINT_FORMAT, "config": self.config, "step": self.done,
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
                     "losses": self.losses, "curve": self.curve, "sad_curve": self.sad_curve, "evals": self.evals,
                     "nonfinite": self.nonfinite, "torch_rng": torch.get_rng_state(),
                     "train_seconds": self.seconds_before + time.perf_counter() - self.t_train}, self.checkpoint)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        loss = lm_loss(self.model(x), y)
        return loss, loss

    def _after_step(self, done: int, loss: torch.Tensor) -> bool:
        r = self.recipe
        value = loss.item()
        self.losses.append(value)
        self.nonfinite += not math.isfinite(value)
        self.done = done
        if done % r.log_every == 0 or done == r.steps:
            k = (done - 1) % r.log_every + 1
            self.curve.append({"step": done, "loss": sum(self.losses[-k:]) / k})
            if self.logs_sad:
                self.sad_curve.append({"step": done, "sad": sum(h["sad"] for h in self.method.sad_history[-k:])})
        if r.eval_every and done % r.eval_every == 0 and done < r.steps:
            ev = evaluate_lm(self.model, self.corpus.val, self.block_size, batch_size=r.eval_batch_size,
                             max_windows=r.curve_val_windows)
            self.evals.append({"step": done, "val_loss": ev["loss"], "val_ppl": ev["ppl"]})
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{value:.3f}")
        return False

    def fit(self, *, return_model: bool = False) -> dict[str, Any]:
        """Train (resuming from the checkpoint if there is one), finalize and score; see :func:`train_lm`."""
        from ..report import sparsity_report

        r, net, method = self.recipe, self.model, self.method
        steps, block_size = r.steps, self.block_size
        self.try_resume()
        start = self.start
        stop_at = steps if self.max_steps is None else min(steps, start + self.max_steps)
        self.t_train = time.perf_counter()
        loop = TrainLoop(self.optimizer, self.scheduler, loss=self._loss, after_step=self._after_step,
                         save=self.save_checkpoint if self.checkpoint is not None else None,
                         checkpoint_every=self.checkpoint_every, grad_clip=r.grad_clip, clip_params=net.parameters,
                         bar=progress_bar(self.progress, total=steps, initial=start, desc=f"{r.method}"))
        self._bar = loop.bar
        net.train()
        batches = self._text().lm_batches(self.corpus.train, block_size, r.batch_size, seed=r.seed, steps=stop_at,
                                          start=start)
        self.done = loop.run(batches, step=start, stop_at=stop_at)
        train_seconds = self.seconds_before + time.perf_counter() - self.t_train
        loop.close()
        done = self.done
        if done < steps:
            return {"finished": False, "step": done, "steps": steps, "checkpoint": str(self.checkpoint)}
        # the report's own forward pass refreshes N:M masks in the finished ("done") state, so it
        # counts exactly the masks finalize() folds in next
        report = sparsity_report(net, torch.zeros(1, block_size, dtype=torch.int64), **method.report_kwargs())
        layers: list[MaskedLayer] = list(method.layers)
        metrics = method.metrics()
        method.finalize()
        is_nm = self.is_nm
        violations = 0
        zeros = numel = 0
        for layer in layers:
            w = layer.canonical(layer.weight.detach())
            zeros += int((w == 0).sum())
            numel += w.numel()
            if is_nm:
                violations += nm_violations(w, method.pattern.n, method.pattern.m)
        if violations:
            raise RuntimeError(f"{r.method}: {violations} groups break {method.pattern.n}:{method.pattern.m} "
                               "after finalize(); this is a bug in sparseforge")
        ev = evaluate_lm(net, self.corpus.val, block_size, batch_size=r.eval_batch_size, max_windows=r.val_windows)
        totals = report.totals
        losses = self.losses
        tail = losses[-max(1, steps // 10):]
        out: dict[str, Any] = {
            "method": r.method,
            "method_params": {k: v for k, v in r.method_params.items()},
            "pattern": f"{method.pattern.n}:{method.pattern.m}" if is_nm else None,
            "model": self.model_name,
            "model_params": dict(r.model_params),
            "corpus": self.corpus.name,
            "seed": r.seed,
            "steps": steps,
            "batch_size": r.batch_size,
            "block_size": block_size,
            "tokens": steps * r.batch_size * block_size,
            "lr": r.lr,
            "warmup_steps": r.warmup_steps,
            "val_loss": ev["loss"],
            "val_ppl": ev["ppl"],
            "val_windows": ev["windows"],
            "val_tokens": ev["tokens"],
            "train_loss": self.curve,
            "final_train_loss": sum(tail) / len(tail),
            "evals": self.evals,
            "nonfinite_steps": self.nonfinite,
            "sparsity": totals["global_sparsity"],
            "overall_sparsity": totals["overall_sparsity"],
            "weight_sparsity": zeros / numel if numel else 0.0,
            "nonzeros": totals["nonzeros"],
            "params": totals["total_params"],
            "prunable_params": totals["prunable_params"],
            "masked_layers": [l.qualname for l in layers],
            "skipped": list(totals.get("skipped", [])),
            "notes": list(totals.get("notes", [])),
            "dense_flops": totals["dense_flops"],
            "sparse_flops": totals["sparse_flops"],
            "nm_violations": violations if is_nm else None,
            "sad": metrics.get("sad") if self.logs_sad else None,
            "sad_curve": self.sad_curve,
            "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / steps,
            "seconds": time.perf_counter() - self.t_start,
            "finished": True,
            "resumed_from": start if self.resumed else None,
        }
        if return_model:
            out["model_object"] = net
        return out


_RUN_OPTIONS = ("checkpoint", "max_steps", "progress", "return_model")


def train_lm(corpus: Any, method: str = "dense", **kwargs: Any) -> dict[str, Any]:
    """Train a causal LM with ``method`` for ``steps`` optimizer steps and score the finished model.

    A thin wrapper: the keywords other than ``progress``, ``return_model``, ``checkpoint`` and
    ``max_steps`` build an :class:`LMRecipe` (validated when built), which :class:`LMTrainer`
    runs on ``corpus``.

    After the last step the method is in its finished state (N:M methods: phase ``"done"``,
    the hard target pattern); :meth:`~sparseforge.methods.base.SparsityMethod.finalize` folds
    that mask into the weights, every N:M layer is checked to have at most N nonzeros in each
    group of M (a violation raises ``RuntimeError``: it would be a bug), and the validation
    loss is measured on that plain, truly sparse model. The sparsity report is taken just
    before, from the same final masks.

    Args:
        corpus: a :class:`~sparseforge.text.TextCorpus` or a corpus name for
            :func:`~sparseforge.text.load_text_corpus` (``"austen"``, ``"text:PATH"``; char tokenizer).
        method: a registered method name or alias (:func:`sparseforge.methods.method_names`),
            not one that trains in rounds (IMP).
        method_params: the method's keyword arguments, e.g. ``{"sparsity": "2:4"}`` or
            ``{"pattern": "1:8", "decay": "exp", "decay_coef": 1e-3}``. ``total_steps``
            (N:M methods, RigL, SET) defaults to ``steps``; GMP's ``begin``/``end`` to 0 and 75 %;
            step-valued entries may be ``"N%"`` of ``steps``.
        model: a registry model name (sized from the corpus; default ``"tiny-gpt"``) or a
            module mapping ``[B, T]`` token ids to ``[B, T, V]`` logits.
        model_params: constructor arguments for a named model (e.g. ``{"d_model": 128}``).
        targets: ``"blocks"`` (default, :data:`DEFAULT_LM_TARGETS`: the Linear layers inside
            TinyGPT's blocks; head and embeddings dense), None (every Linear/Conv layer), or a
            :class:`~sparseforge.masking.Targets` / dict.
        steps: optimizer steps; the token budget is ``steps * batch_size * block_size``.
        batch_size: windows per step.
        block_size: tokens per window (default: the model's ``block_size``).
        lr: peak learning rate (> 0).
        min_lr_ratio: final learning rate as a fraction of ``lr``, in [0, 1] (default 0.1).
        warmup_steps: linear warm-up steps in [0, steps] (default ``max(1, steps // 20)``).
        weight_decay: AdamW decoupled weight decay on matrices (>= 0, default 0.1).
        betas: AdamW betas, each in [0, 1).
        grad_clip: maximum global gradient norm (> 0), or None / 0 for no clipping.
        seed: seed of the initialisation, the training windows and the method.
        val_windows: validation windows scored at the end (None = all of them).
        eval_every: also score ``curve_val_windows`` windows every this many steps (0 = never);
            these intermediate points use the method's training-time state (e.g. MDGF's soft
            mask, an SDGF frame's pattern), not a finalized model.
        curve_val_windows: windows per intermediate evaluation (None = all).
        eval_batch_size: windows per evaluation forward pass.
        log_every: steps per point of the ``train_loss`` curve (default ``max(1, steps // 100)``).
        progress: show a tqdm bar.
        return_model: add the finalized model under ``"model_object"`` (not JSON-serialisable).
        checkpoint: file to save the run's state to and resume from (None = no checkpoints).
            If the file exists, it must hold a checkpoint of this same run (every argument
            above that shapes the result, and the corpus' tokens); training continues from its
            step and gives the same result as a run never interrupted: weights, masks,
            optimizer and scheduler, the method's state, the batch stream, the torch RNG
            (dropout) and the loss and SAD curves are all restored. A finished run's checkpoint
            (written at the last step) is only finalized and scored again.
        checkpoint_every: steps between checkpoints (default ``max(1, steps // 10)``; 0 = only
            when the call stops at ``max_steps`` or on Ctrl-C). Ctrl-C between steps saves the
            state before re-raising; one that lands inside a step leaves the last checkpoint
            as it was (the step is half applied, so nothing consistent could be saved).
        max_steps: stop after this many steps in this call, save the checkpoint and return
            ``{"finished": False, "step", "steps", "checkpoint"}``; calling again resumes.
            Needs ``checkpoint``. None = run to the end.

    Returns:
        A dict with ``val_loss``, ``val_ppl`` (``exp(val_loss)``), ``val_windows``,
        ``val_tokens``; ``train_loss`` (list of ``{"step", "loss"}``, each the mean over
        ``log_every`` steps ending at ``step``), ``final_train_loss`` (mean of the last 10 %
        of steps), ``evals`` (intermediate ``{"step", "val_loss", "val_ppl"}``), ``steps``,
        ``tokens``, ``seconds`` (all), ``train_seconds``, ``seconds_per_step``; from the
        report (computed from the final masks): ``sparsity`` (of the masked layers),
        ``overall_sparsity``, ``nonzeros``, ``params``, ``prunable_params``,
        ``masked_layers``, ``skipped``, ``notes``, ``dense_flops``/``sparse_flops`` per
        sequence; ``weight_sparsity`` (zeros counted in the finalized weights of the masked
        layers); ``pattern`` and ``nm_violations`` (0) for N:M; ``sad`` (total mask flips
        of the run, N:M methods) and ``sad_curve``; ``nonfinite_steps`` (steps whose loss was
        NaN or inf); ``finished`` (True) and ``resumed_from`` (the checkpoint's step, or None).

    Raises:
        ConfigError: any argument out of range (named with its value and the allowed range),
            an unknown method or method parameter, a block size the model or corpus cannot
            hold, targets that match no layer, or ``max_steps`` without ``checkpoint``.
        CheckpointError: ``checkpoint`` exists but cannot be read, is not a train_lm
            checkpoint, or was written by a run with other arguments or another corpus (the
            message names the differences).
    """
    unknown = sorted(set(kwargs) - {f.name for f in fields(LMRecipe)} - set(_RUN_OPTIONS) - {"method"})
    if unknown:
        raise TypeError(f"train_lm() got unexpected keyword argument(s) {unknown}")
    options = {k: kwargs.pop(k) for k in _RUN_OPTIONS if k in kwargs}
    return_model = options.pop("return_model", False)
    recipe = LMRecipe(method, **kwargs)
    return LMTrainer(corpus, recipe, **options).fit(return_model=return_model)


def _train_lm_signature() -> inspect.Signature:
    # the wrapper's keywords are the recipe's fields plus the run options: one list of defaults
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("corpus", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("method", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="dense")]
    params += [inspect.Parameter(f.name, kw, default=f.default) for f in fields(LMRecipe) if f.name != "method"]
    params += [inspect.Parameter("progress", kw, default=False), inspect.Parameter("return_model", kw, default=False),
               inspect.Parameter("checkpoint", kw, default=None), inspect.Parameter("max_steps", kw, default=None)]
    return inspect.Signature(params)


train_lm.__signature__ = _train_lm_signature()  # type: ignore[attr-defined]
