"""Calibration data for one-shot pruning: ``nsamples`` random windows of ``seqlen`` tokens.

The reference pipelines (Wanda, SparseGPT, DSnoT) draw 128 random 2048-token windows from C4
with seed 0. Offline here, the text comes from:

* ``"austen"`` -- Jane Austen's six novels (:func:`sparseforge.text.load_text_corpus`);
* ``"bible"`` -- the King James Bible from the Debian ``bible-kjv`` package
  (``apt-get install -y bible-kjv``; verse references are stripped);
* ``"text:PATH"`` -- any UTF-8 file;
* a token tensor, or a :class:`~sparseforge.text.TextCorpus` (its ``train`` tokens).

Only the *training* part of a text is used for calibration; the held-out part
(:func:`heldout_text`, the same split as :func:`~sparseforge.text.load_text_corpus` with
``val_fraction=0.1``; for the Bible its last 10 %) is left for evaluation.

Text is tokenized with a Hugging Face tokenizer (each window is wrapped in the tokenizer's
special tokens, e.g. ``[CLS] ... [SEP]`` for BERT, and the window counts them in ``seqlen``), a
:class:`~sparseforge.text.TextCorpus` (its ``encode``, so a model trained on that corpus sees
its own vocabulary) or ``"byte"`` (UTF-8 bytes). Windows are drawn uniformly from the token
stream by a generator derived from ``seed`` (stream ``"oneshot-calibration"``), independent of
``torch.manual_seed``.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..core.rng import stream_generator
from ..errors import ConfigError, check_int
from ..text import TextCorpus, load_text_corpus

__all__ = [
    "TEXT_SOURCES",
    "calibration_text",
    "heldout_text",
    "tokenize_text",
    "calibration_windows",
    "load_calibration",
]

#: Named offline text sources (plus ``"text:PATH"``).
TEXT_SOURCES = ("austen", "bible")
_BIBLE_RANGE = "gen1:1-rev22:21"
_VAL_FRACTION = 0.1
_VERSE_REF = re.compile(r"^\S*?\d+:\d+\s+", re.MULTILINE)


def _check_source_name(source: Any) -> str:
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"calibration source must be 'austen', 'bible' or 'text:PATH'; got {source!r}")
    key = source.strip()
    if key.lower() in TEXT_SOURCES:
        return key.lower()
    if key.lower().startswith("text:"):
        path = Path(key[5:]).expanduser()
        if not path.is_file():
            raise ConfigError(f"calibration source {key!r} must point to an existing text file; {str(path)!r} is not a file")
        return key
    raise ConfigError(f"unknown calibration source {source!r}; allowed: 'austen', 'bible', 'text:PATH' or a token tensor")


@functools.lru_cache(maxsize=2)
def _bible_text() -> str:
    exe = shutil.which("bible")
    if exe is None:
        raise ConfigError("calibration source 'bible' needs the King James Bible: apt-get install -y bible-kjv")
    out = subprocess.run([exe, "-f", _BIBLE_RANGE], capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise ConfigError(f"'bible -f {_BIBLE_RANGE}' failed (exit {out.returncode}): {out.stderr.strip()[:200]}")
    return _VERSE_REF.sub("", out.stdout)


@functools.lru_cache(maxsize=4)
def _split_text(key: str, stamp: float) -> tuple[str, str]:
    if key == "bible":
        text = _bible_text()
        cut = text.rfind("\n", 0, int(len(text) * (1 - _VAL_FRACTION))) + 1
        return text[:cut], text[cut:]
    corpus = load_text_corpus(key, tokenizer="byte", val_fraction=_VAL_FRACTION)
    return corpus.decode(corpus.train), corpus.decode(corpus.val)


def _texts(source: str) -> tuple[str, str]:
    key = _check_source_name(source)
    stamp = 0.0
    if key.startswith("text:"):
        path = Path(key[5:]).expanduser()
        stamp = path.stat().st_mtime if path.is_file() else -1.0  # a changed file is read again
    return _split_text(key, stamp)


def calibration_text(source: str) -> str:
    """The training text of ``source`` (``"austen"``, ``"bible"`` or ``"text:PATH"``), used for calibration."""
    return _texts(source)[0]


def heldout_text(source: str) -> str:
    """The held-out text of ``source`` (never used for calibration), for evaluation."""
    return _texts(source)[1]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a Hugging Face tokenizer puts before and after a text (e.g. ``[CLS]`` / ``[SEP]``)."""
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def tokenize_text(text: str, tokenizer: Any) -> torch.Tensor:
    """Token ids (1-D int64) of ``text`` without special tokens.

    ``tokenizer``: a Hugging Face tokenizer, a :class:`~sparseforge.text.TextCorpus` or ``"byte"``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str; got {type(text).__name__}")
    if isinstance(tokenizer, TextCorpus):
        return tokenizer.encode(text)
    if tokenizer == "byte":
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)
    if isinstance(tokenizer, str):
        raise ConfigError(
            f"tokenizer {tokenizer!r}: pass a Hugging Face tokenizer, 'byte', or the TextCorpus the model was "
            f"trained on (a 'char' vocabulary depends on its corpus)"
        )
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError(f"tokenizer must be a Hugging Face tokenizer, a TextCorpus or 'byte'; got {tokenizer!r}")
    # paragraph by paragraph: one call over millions of characters triggers length warnings and
    # paragraphs never straddle a window boundary in a way that matters for calibration
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        return torch.empty(0, dtype=torch.int64)
    from transformers.utils import logging as hf_logging  # transformers is present if the tokenizer is

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        ids = tokenizer(paragraphs, add_special_tokens=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(level)
    return torch.tensor([i for seq in ids for i in seq], dtype=torch.int64)


def calibration_windows(tokens: torch.Tensor, *, nsamples: int = 128, seqlen: int, seed: int = 0,
                        prefix: list[int] | None = None, suffix: list[int] | None = None) -> torch.Tensor:
    """``[nsamples, seqlen]`` int64 windows drawn uniformly (with replacement) from a 1-D token stream.

    ``prefix`` / ``suffix`` ids (special tokens) wrap every window and count in ``seqlen``.

    Raises:
        ConfigError: ``tokens`` empty or not a 1-D integer tensor, ``nsamples`` or ``seqlen`` below 1,
            or a stream shorter than one window.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point() \
            or tokens.is_complex() or tokens.dtype == torch.bool:
        shown = f"a {tokens.dim()}-D {tokens.dtype} tensor" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ConfigError(f"calibration tokens must be a 1-D integer tensor; got {shown}")
    check_int(nsamples, "nsamples", minimum=1)
    check_int(seqlen, "seqlen", minimum=1)
    check_int(seed, "seed")
    prefix, suffix = list(prefix or []), list(suffix or [])
    body = seqlen - len(prefix) - len(suffix)
    if body < 1:
        raise ConfigError(f"seqlen must exceed the {len(prefix) + len(suffix)} special tokens of the tokenizer; got {seqlen}")
    n = tokens.numel()
    if n == 0:
        raise ConfigError("calibration data is empty: no tokens to draw windows from")
    if n < body:
        raise ConfigError(
            f"calibration data too short: {n} tokens, but one window of seqlen={seqlen} needs {body} text tokens; "
            f"use more text or a smaller seqlen (at most {n + len(prefix) + len(suffix)})"
        )
    gen = stream_generator(seed, "oneshot-calibration")
    starts = torch.randint(n - body + 1, (nsamples, 1), generator=gen)
    windows = tokens.cpu()[starts + torch.arange(body)].to(torch.int64)
    if prefix or suffix:
        pre = torch.tensor(prefix, dtype=torch.int64).expand(nsamples, len(prefix))
        post = torch.tensor(suffix, dtype=torch.int64).expand(nsamples, len(suffix))
        windows = torch.cat([pre, windows, post], dim=1)
    return windows


def load_calibration(source: Any, *, tokenizer: Any = None, nsamples: int = 128, seqlen: int | None = None,
                     seed: int = 0) -> torch.Tensor:
    """Calibration inputs for :func:`~sparseforge.oneshot.prune_oneshot`.

    ``source``:

    * ``"austen"``, ``"bible"``, ``"text:PATH"``: training text, tokenized with ``tokenizer``,
      then :func:`calibration_windows` (default ``nsamples=128``, seed 0 as the references);
    * a :class:`~sparseforge.text.TextCorpus`: windows of its ``train`` tokens;
    * a 1-D integer tensor: windows of it;
    * a 2-D integer tensor ``[n, seqlen]`` or any floating tensor ``[n, ...]`` (inputs of a model
      that is not a language model): used as given; ``nsamples`` and ``seqlen`` are ignored.

    Raises :class:`ConfigError` for an unknown source, empty or too short data, or a missing
    ``seqlen`` / ``tokenizer`` where one is needed.
    """
    if isinstance(source, torch.Tensor):
        if source.numel() == 0:
            raise ConfigError(f"calibration data is empty (shape {tuple(source.shape)})")
        if source.is_floating_point():
            if source.dim() < 2:
                raise ConfigError(f"floating calibration inputs must be [n, ...] (a batch dim first); got shape {tuple(source.shape)}")
            return source
        if source.dim() == 2:
            return source.to(torch.int64)
        if source.dim() != 1:
            raise ConfigError(f"integer calibration data must be 1-D tokens or 2-D [n, seqlen]; got shape {tuple(source.shape)}")
        tokens, prefix, suffix = source, [], []
    elif isinstance(source, TextCorpus):
        tokens, prefix, suffix = source.train, [], []
    else:
        _check_source_name(source)
        if tokenizer is None:
            raise ConfigError(
                f"calibration source {source!r} is text: pass tokenizer= (a Hugging Face tokenizer, 'byte', or the "
                f"TextCorpus the model was trained on)"
            )
        tokens = tokenize_text(calibration_text(source), tokenizer)
        prefix, suffix = ([], []) if isinstance(tokenizer, (str, TextCorpus)) else _special_tokens(tokenizer)
    if seqlen is None:
        raise ConfigError("seqlen is required to cut calibration windows from a token stream")
    return calibration_windows(tokens, nsamples=nsamples, seqlen=seqlen, seed=seed, prefix=prefix, suffix=suffix)
