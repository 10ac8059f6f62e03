"""A small pretrained Austen GPT for one-shot pruning benchmarks, trained once on CPU and cached.

:func:`austen_gpt` trains a character-level :class:`~sparseforge.models.TinyGPT` on the
training split of the Jane Austen corpus (:func:`sparseforge.text.load_text_corpus`) with
:func:`sparseforge.lm.train_lm` (dense, AdamW, warm-up + cosine; see that module), writes the
weights, the model configuration and a training log into a cache folder outside the
repository, and loads that folder on every later call instead of training again::

    from sparseforge.pretrained import austen_gpt
    lm = austen_gpt()                  # 20-50 min on one CPU thread the first time, then < 1 s
    print(lm.log["val_ppl"], lm.log["unigram_val_ppl"])
    logits = lm.model(torch.zeros(1, 16, dtype=torch.long))

It is a runner (it trains), so it sits above the one-shot package; the cache's format, key and
loader live in :mod:`sparseforge.oneshot.pretrained`, which ``sparseforge prune austen-gpt``
reads without importing any training code. The cache folder is
``$SPARSEFORGE_CACHE/austen-gpt/<key>`` (default ``~/.cache/sparseforge/austen-gpt/<key>``),
where ``<key>`` is a hash of everything that determines the weights: corpus name, model shape,
training budget, optimiser settings and seed. Change any of them and a new model is trained
next to the old one.

Same seed and arguments, same weights: the seed fixes the initialisation and the training
windows. Bitwise equality holds for the same torch build and thread count; other thread counts
change the summation order of matrix products, so the last bits (not the quality) may differ.
The folder is written under a temporary name and renamed when complete, so an interrupted
run leaves no half-written cache behind. Training saves a checkpoint every tenth of its steps
(hidden beside the folder, ``.<key>-training.pt``); calling again after an interruption
resumes from it on the same trajectory (see :func:`sparseforge.lm.train_lm`), and the
checkpoint is deleted once the folder is written.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from .errors import ConfigError
from .fileio import atomic_dir, atomic_save_safetensors, atomic_write_text
from .oneshot.pretrained import (
    _FORMAT,
    PretrainedLM,
    _checkpoint_path,
    _is_cached,
    _load,
    _resolve,
    unigram_perplexity,
)

__all__ = ["austen_gpt"]


def austen_gpt(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    corpus: str = "austen",
    retrain: bool = False,
    train_if_missing: bool = True,
    progress: bool = False,
    **overrides: Any,
) -> PretrainedLM:
    """The small pretrained Austen GPT: load it from the cache, or train it once and cache it.

    Args:
        cache_dir: cache root (default :func:`~sparseforge.oneshot.pretrained.default_cache_dir`); the model lives in
            ``<cache_dir>/austen-gpt/<key>``.
        corpus: corpus name for :func:`~sparseforge.text.load_text_corpus` (``"austen"``, or
            ``"text:PATH"`` for a quick model on another text, as the tests do).
        retrain: train again even if the cache holds this model (the cache is replaced, and
            a checkpoint of an interrupted training is discarded, not resumed).
        train_if_missing: if False and the model is not cached, raise instead of training
            (for callers that must not start a long training job by accident).
        progress: show a progress bar while training.
        **overrides: any of :data:`~sparseforge.oneshot.pretrained.AUSTEN_GPT_DEFAULTS` (``d_model``, ``n_layer``, ``n_head``,
            ``block_size``, ``steps``, ``batch_size``, ``lr``, ``seed``).

    Returns:
        A :class:`~sparseforge.oneshot.pretrained.PretrainedLM` (model in eval mode, config, training log, folder).

    Raises:
        ConfigError: an unknown override or an invalid value (named with the allowed range);
            ``train_if_missing=False`` and no cached model.
        CheckpointError: a cache folder that cannot be read.
    """
    folder, kw, key = _resolve(cache_dir, corpus, overrides)
    if not retrain and _is_cached(folder):
        return _load(folder)
    if not train_if_missing:
        raise ConfigError(f"no cached Austen GPT for these arguments in {str(folder)!r} and train_if_missing=False; "
                          f"call austen_gpt() once to train it (20-50 minutes on one CPU thread)")

    from .lm import train_lm  # looked up at call time, so a test can interrupt it
    from .text import load_text_corpus

    data = load_text_corpus(corpus)
    # 20-50 minutes of training: an interrupted call resumes from here instead of starting over
    checkpoint = _checkpoint_path(folder)
    if retrain:
        checkpoint.unlink(missing_ok=True)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    model_kw = {"vocab_size": int(data.vocab_size), "block_size": kw["block_size"], "d_model": kw["d_model"],
                "n_layer": kw["n_layer"], "n_head": kw["n_head"]}
    result = train_lm(data, "dense", model_params={k: v for k, v in model_kw.items() if k != "vocab_size"},
                      steps=kw["steps"], batch_size=kw["batch_size"], lr=kw["lr"], seed=kw["seed"],
                      progress=progress, return_model=True, checkpoint=checkpoint)
    model = result.pop("model_object")
    model.eval()
    log = {**result, "unigram_val_ppl": unigram_perplexity(data.train, data.val, data.vocab_size),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    config = {"format": _FORMAT, "key": key, "corpus": corpus, "model": model_kw, "training": kw,
              "chars": list(data.chars), "tokenizer": data.tokenizer}

    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:  # the cache entry appears complete or not at all
        # contiguous copies: safetensors refuses views that share storage
        atomic_save_safetensors({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                                tmp / "model.safetensors")
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2))
        atomic_write_text(tmp / "train_log.json", json.dumps(log, indent=2))
    checkpoint.unlink(missing_ok=True)
    return PretrainedLM(model=model, config=config, log=log, path=folder, trained=True)
