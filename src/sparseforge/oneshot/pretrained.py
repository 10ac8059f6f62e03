"""The cache of the small pretrained Austen GPT: its format, its key and loading it.

The model is trained by :func:`sparseforge.pretrained.austen_gpt` (a runner: it calls
:func:`sparseforge.lm.train_lm`); this module only finds and loads what that wrote, so the
one-shot model loader (the model name ``austen-gpt`` of the prune command) never imports a
training loop: :func:`cached_austen_gpt` returns the cached model, or raises a ``ConfigError``
if it was never trained.

The cache folder is ``$SPARSEFORGE_CACHE/austen-gpt/<key>`` (default
``~/.cache/sparseforge/austen-gpt/<key>``), where ``<key>`` is a hash of everything that
determines the weights: corpus name, model shape, training budget, optimiser settings and
seed. The folder holds

* ``model.safetensors`` -- the ``state_dict`` (safetensors: loading never runs code);
* ``config.json`` -- the TinyGPT constructor arguments, the training arguments, the corpus
  name, its character vocabulary (id ``i`` is ``chars[i]``) and the cache key;
* ``train_log.json`` -- the :func:`~sparseforge.lm.train_lm` result (validation loss and
  perplexity on the whole held-out split, the training-loss curve, steps, tokens, seconds),
  plus the unigram baseline perplexity, torch version, thread count and date.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, check_int, check_number
from ..fileio import first_sentence, load_safetensors, read_json

__all__ = ["AUSTEN_GPT_DEFAULTS", "CACHE_ENV_VAR", "PretrainedLM", "cached_austen_gpt", "default_cache_dir",
           "unigram_perplexity"]

#: environment variable that moves the cache root (default ``~/.cache/sparseforge``)
CACHE_ENV_VAR = "SPARSEFORGE_CACHE"

#: the budget of the default model: 3.23 M parameters (d 256, 4 layers, 4 heads, context 128,
#: char vocabulary 81), 1200 AdamW steps of 16 windows x 128 tokens (2.46 M tokens, about
#: 0.68 of an epoch of the 3.62 M training characters). Measured: 47 min on one thread of a 2-core
#: machine shared with other jobs (2.34 s/step), validation perplexity 4.16 on the whole held-out
#: split (unigram baseline 21.97).
AUSTEN_GPT_DEFAULTS: dict[str, Any] = {
    "d_model": 256,
    "n_layer": 4,
    "n_head": 4,
    "block_size": 128,
    "steps": 1200,
    "batch_size": 16,
    "lr": 1e-3,
    "seed": 0,
}

_FORMAT = "sparseforge-austen-gpt-v1"
_FILES = ("model.safetensors", "config.json", "train_log.json")


@dataclass
class PretrainedLM:
    """A cached pretrained language model.

    Attributes:
        model: the :class:`~sparseforge.models.TinyGPT` in eval mode.
        config: contents of ``config.json`` (``model`` constructor arguments, ``training``
            arguments, ``corpus``, ``chars``, ``key``).
        log: contents of ``train_log.json`` (``val_ppl``, ``val_loss``, ``steps``,
            ``train_seconds``, ``unigram_val_ppl``, ...).
        path: the cache folder.
        trained: True if this call trained the model, False if it was loaded from the cache.
    """

    model: nn.Module
    config: dict[str, Any]
    log: dict[str, Any]
    path: Path
    trained: bool


def default_cache_dir() -> Path:
    """``$SPARSEFORGE_CACHE`` if set, else ``~/.cache/sparseforge``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparseforge"


def unigram_perplexity(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on ``val`` of the unigram model fitted to ``train`` (add-one smoothing).

    ``p(t) = (count_train(t) + 1) / (|train| + V)``; perplexity ``= exp(-mean_t log p(val_t))``.
    It is the baseline a language model must beat to have learned anything beyond letter
    frequencies.
    """
    check_int(vocab_size, "vocab_size", minimum=1)
    counts = torch.bincount(train.reshape(-1).to(torch.int64), minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return math.exp(-float(logp[val.reshape(-1).to(torch.int64)].mean()))


def _check_args(kw: dict[str, Any]) -> None:
    for name in ("d_model", "n_layer", "n_head", "block_size", "steps", "batch_size"):
        check_int(kw[name], name, minimum=1)
    check_int(kw["seed"], "seed", minimum=0)
    check_number(kw["lr"], "lr", minimum=0.0, min_open=True)
    if kw["d_model"] % kw["n_head"]:
        raise ConfigError(f"d_model must be divisible by n_head ({kw['n_head']}); got d_model={kw['d_model']}")


def _cache_key(corpus: str, kw: dict[str, Any]) -> str:
    ident = json.dumps({"format": _FORMAT, "corpus": corpus, **kw}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _checkpoint_path(folder: Path) -> Path:
    # beside the model folder, hidden, so a half-trained model is never mistaken for a cached one
    return folder.parent / f".{folder.name}-training.pt"


def _load(folder: Path) -> PretrainedLM:
    from ..models import TinyGPT

    try:
        config = read_json(folder / "config.json", what="cached model config")
        log = read_json(folder / "train_log.json", what="cached training log")
        state = load_safetensors(folder / "model.safetensors", what="cached model weights")
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete {str(folder)!r} to train again") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{str(folder)!r} holds format {got!r}, expected {_FORMAT!r}")
    try:
        model = TinyGPT(**config["model"])
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # an edited or corrupt cache entry
        raise CheckpointError(f"{str(folder)!r}: the cached model does not match its config ({first_sentence(e)}); "
                              f"delete {str(folder)!r} to train again") from None
    model.eval()
    return PretrainedLM(model=model, config=config, log=log, path=folder, trained=False)


def _resolve(cache_dir: str | os.PathLike[str] | None, corpus: Any, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any], str]:
    """``(folder, training arguments, key)`` of the model these arguments describe; bad arguments raise."""
    unknown = sorted(set(overrides) - set(AUSTEN_GPT_DEFAULTS))
    if unknown:
        raise ConfigError(f"austen_gpt got unknown argument(s) {unknown}; allowed: {sorted(AUSTEN_GPT_DEFAULTS)}")
    if not isinstance(corpus, str):
        raise ConfigError(f"corpus must be a corpus name ('austen' or 'text:PATH'); got {corpus!r}")
    kw = {**AUSTEN_GPT_DEFAULTS, **overrides}
    _check_args(kw)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = _cache_key(corpus, kw)
    return root / "austen-gpt" / key, kw, key


def _is_cached(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _FILES)


def cached_austen_gpt(*, cache_dir: str | os.PathLike[str] | None = None, corpus: str = "austen",
                      **overrides: Any) -> PretrainedLM:
    """The Austen GPT that :func:`sparseforge.pretrained.austen_gpt` trained with these arguments, from the cache.

    Takes the same ``cache_dir``, ``corpus`` and overrides (:data:`AUSTEN_GPT_DEFAULTS`) and
    never trains.

    Raises:
        ConfigError: an unknown override or an invalid value; no cached model for these arguments.
        CheckpointError: a cache folder that cannot be read.
    """
    folder, _, _ = _resolve(cache_dir, corpus, overrides)
    if not _is_cached(folder):
        raise ConfigError(f"no cached Austen GPT for these arguments in {str(folder)!r}; train it once with "
                          f"sparseforge.pretrained.austen_gpt() (20-50 minutes on one CPU thread)")
    return _load(folder)
