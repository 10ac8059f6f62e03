"""Text corpora split into training and validation token streams, and their tokenizers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, check_number
from .austen import read_austen_novels

__all__ = ["TOKENIZERS", "TextCorpus", "load_text_corpus"]

#: Tokenizers accepted by :func:`load_text_corpus`.
TOKENIZERS = ("char", "byte")

_DOC_SEPARATOR = "\n\n"
_UNKNOWN_CHAR = "\ufffd"


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """A tokenized text corpus split into a training and a validation token stream.

    Attributes:
        name: the corpus name it was loaded with (``"austen"`` or ``"text:PATH"``).
        train: 1-D int64 tensor of training tokens.
        val: 1-D int64 tensor of validation tokens (the held-out tails of the documents).
        vocab_size: number of token ids; every id in ``train`` and ``val`` is below it.
        tokenizer: ``"char"`` or ``"byte"``.
        chars: the character vocabulary of a ``"char"`` corpus, sorted; id ``i`` is ``chars[i]``
            and ``len(chars)`` is the unknown id. Empty for ``"byte"``.
        documents: titles of the documents, in the order their parts appear in both streams.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    tokenizer: str
    chars: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    _codepoints: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # sorted code points of the vocabulary: searchsorted encodes millions of chars at once
        object.__setattr__(self, "_codepoints", np.array([ord(c) for c in self.chars], dtype=np.uint32))

    @property
    def unk_id(self) -> int | None:
        """Id of characters outside the training vocabulary (``"char"`` only), else None."""
        return len(self.chars) if self.tokenizer == "char" else None

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` as a 1-D int64 tensor (unknown characters map to :attr:`unk_id`)."""
        if not isinstance(text, str):
            raise ConfigError(f"text must be a str; got {type(text).__name__}")
        if self.tokenizer == "byte":
            return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, points)
        inside = ids < len(self._codepoints)
        known = np.zeros(points.shape, dtype=bool)
        known[inside] = self._codepoints[ids[inside]] == points[inside]
        return torch.from_numpy(np.where(known, ids, len(self.chars)).astype(np.int64))

    def decode(self, tokens: torch.Tensor | Sequence[int]) -> str:
        """The text of a 1-D sequence of token ids (the unknown id decodes to U+FFFD)."""
        ids = torch.as_tensor(tokens).reshape(-1)
        if ids.numel() == 0:
            return ""  # an empty list becomes a float tensor; nothing to check
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ConfigError(f"tokens must be integer ids; got dtype {ids.dtype}")
        ids = ids.to(torch.int64).cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0].item()
            raise ConfigError(f"tokens must be ids in [0, {self.vocab_size}); got {bad}")
        if self.tokenizer == "byte":
            return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")
        table = [*self.chars, _UNKNOWN_CHAR]
        return "".join(table[i] for i in ids.tolist())

    def __repr__(self) -> str:
        return (
            f"TextCorpus(name={self.name!r}, tokenizer={self.tokenizer!r}, vocab_size={self.vocab_size}, "
            f"train={self.train.numel()}, val={self.val.numel()}, documents={len(self.documents)})"
        )


def _check_val_fraction(value: Any) -> float:
    return float(check_number(value, "val_fraction", minimum=0.0, maximum=1.0, min_open=True, max_open=True,
                              note=" (exclusive: both splits need text)"))


def _split_document(title: str, text: str, val_fraction: float) -> tuple[str, str]:
    n_val = round(len(text) * val_fraction)
    if n_val < 1 or n_val >= len(text):
        raise ConfigError(
            f"document {title!r} has {len(text)} characters, too few to hold out val_fraction={val_fraction} "
            f"of them (it gives {n_val} validation characters); use a longer text or another val_fraction"
        )
    return text[:-n_val], text[-n_val:]


def _read_text_file(spec: str) -> tuple[str, str]:
    path = Path(spec).expanduser()
    if not spec or not path.is_file():
        raise ConfigError(f"name 'text:{spec}' must point to an existing text file; {str(path)!r} is not a file")
    try:
        return path.name, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"name 'text:{spec}': {path} is not UTF-8 text ({e})") from e


def load_text_corpus(
    name: str = "austen",
    *,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    tokenizer: str = "char",
    download: bool = False,
) -> TextCorpus:
    """Load and tokenize a text corpus; deterministic (same arguments, same tensors).

    Each document (each novel, or the one file) contributes its first ``1 - val_fraction`` of
    characters to ``train`` and the contiguous rest to ``val``, so validation text is never
    trained on. Parts are joined by a blank line. The ``"char"`` vocabulary is built from the
    training text only; characters that occur only in validation text become the unknown id.

    Args:
        name: ``"austen"`` (Jane Austen's six novels, see :func:`ensure_austen`) or
            ``"text:PATH"`` for a local UTF-8 text file.
        root: where the Austen package lies or is fetched to (``"austen"`` only).
        val_fraction: fraction of each document's characters held out, in (0, 1).
        tokenizer: ``"char"`` (characters, vocabulary = training characters + 1 unknown) or
            ``"byte"`` (UTF-8 bytes, vocabulary 256).
        download: fetch the Debian package if it is missing (:func:`~sparseforge.fetch.fetch_austen`);
            by default a missing corpus is an error that says how to fetch it.

    Raises:
        ConfigError: unknown name or tokenizer, ``val_fraction`` outside (0, 1), a missing or
            non-UTF-8 file, a document too short to split, or Austen not available.

    Example (the corpus :func:`~sparseforge.lm.train_lm` takes, by object or by name)::

        corpus = load_text_corpus("austen", tokenizer="char", val_fraction=0.1)
        print(corpus.vocab_size, corpus.train.numel(), corpus.val.numel(), corpus.documents)
    """
    if not isinstance(name, str):
        raise ConfigError(f"name must be a string: 'austen' or 'text:PATH'; got {name!r}")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of {list(TOKENIZERS)}; got {tokenizer!r}")
    val_fraction = _check_val_fraction(val_fraction)
    key = name.strip()
    if key.lower() == "austen":
        documents = list(read_austen_novels(root, download=download).items())
    elif key.lower().startswith("text:"):
        documents = [_read_text_file(key[5:])]
    else:
        raise ConfigError(f"unknown text corpus name {name!r}; allowed: 'austen' or 'text:PATH' (a local UTF-8 file)")
    parts = [_split_document(title, text, val_fraction) for title, text in documents]
    train_text = _DOC_SEPARATOR.join(head for head, _ in parts)
    val_text = _DOC_SEPARATOR.join(tail for _, tail in parts)
    if tokenizer == "byte":
        chars: tuple[str, ...] = ()
        vocab_size = 256
    else:
        chars = tuple(sorted(set(train_text)))
        vocab_size = len(chars) + 1
    # encode with a vocabulary-only corpus first, so the stored corpus has its final tensors
    proto = TextCorpus(key, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), vocab_size,
                       tokenizer, chars, tuple(title for title, _ in documents))
    return TextCorpus(key, proto.encode(train_text), proto.encode(val_text), vocab_size, tokenizer, chars,
                      proto.documents)
