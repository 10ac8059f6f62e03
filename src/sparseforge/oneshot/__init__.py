"""One-shot (post-training) pruning without retraining.

* :func:`prune_oneshot` -- layer-sequential calibration and pruning of a whole model with
  magnitude, Wanda, SparseGPT or DSnoT, unstructured or N:M (N kept of M)::

      from sparseforge.oneshot import prune_oneshot, load_minilm
      model, tok = load_minilm()
      result = prune_oneshot(model, "sparsegpt", 0.5, calibration="austen", tokenizer=tok, seqlen=128)
      print(result.table())          # per-layer sparsity, reconstruction error, seconds; peak memory
      result.masking.finalize()      # or keep the masks for fine-tuning

* the pure rules ``(weight, stats, sparsity) -> (mask, new_weight)``, one module each with its
  method object: :func:`magnitude_prune` / :class:`Magnitude` (``magnitude``), :func:`wanda_prune` /
  :class:`Wanda` (``wanda``), :func:`sparsegpt_prune` / :class:`SparseGPT` (``sparsegpt``),
  :func:`dsnot_prune` / :class:`DSnoT` (``dsnot``); what they share, :class:`OneShotMethod` and
  :func:`oneshot_target`, in ``base``; :func:`method_from_spec` in ``registry`` (``methods`` still
  re-exports them all);
* calibration data (:func:`load_calibration`: Austen, the King James Bible, a text file or
  tokens) and evaluation (:func:`perplexity`, :func:`sentence_embeddings`,
  :func:`embedding_agreement`);
* :func:`prune_nm` -- N:M magnitude pruning of any model, no data (Conv layers included).
* :func:`cached_austen_gpt` -- the small character-level GPT that
  :func:`sparseforge.pretrained.austen_gpt` trains on Jane Austen once and caches
  (``~/.cache/sparseforge``); :func:`load_model` / :func:`save_pruned` -- the model I/O of
  ``sparseforge prune`` (MiniLM, the Austen GPT, Hugging Face and sparseforge model folders).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

#: re-exported name -> the submodule that defines it (imported on first use: ``sparseforge prune --help``
#: and ``sparseforge --help`` build this package's parser without importing torch)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["TEXT_SOURCES", "calibration_text", "calibration_windows", "heldout_text",
                     "load_calibration", "tokenize_text"], "calibration"),
    **dict.fromkeys(["MINILM", "EmbeddingAgreement", "embedding_agreement", "heldout_sentences", "load_minilm",
                     "perplexity", "sentence_embeddings"], "evaluate"),
    **dict.fromkeys(["OneShotMethod", "oneshot_target", "resolve_target"], "base"),
    **dict.fromkeys(["Magnitude", "magnitude_prune"], "magnitude"),
    **dict.fromkeys(["Wanda", "wanda_prune", "wanda_scores"], "wanda"),
    **dict.fromkeys(["SparseGPT", "sparsegpt_prune", "sparsegpt_scores"], "sparsegpt"),
    **dict.fromkeys(["MLP_LAYERS", "DSnoT", "dsnot_prune"], "dsnot"),
    **dict.fromkeys(["METHOD_NAMES", "method_from_spec"], "registry"),
    **dict.fromkeys(["LoadedModel", "load_model", "save_pruned"], "io"),
    **dict.fromkeys(["NMPruneResult", "prune_nm"], "nm"),
    **dict.fromkeys(["PretrainedLM", "cached_austen_gpt"], "pretrained"),
    **dict.fromkeys(["LayerResult", "OneShotResult", "find_blocks", "peak_memory", "prune_oneshot"], "sequential"),
    **dict.fromkeys(["LayerStats", "reconstruction_error"], "stats"),
}
_SUBMODULES = frozenset({"base", "calibration", "dsnot", "evaluate", "io", "magnitude", "methods", "nm", "pretrained",
                         "registry", "sequential", "sparsegpt", "stats", "wanda"})
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), _SUBMODULES)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .calibration import TEXT_SOURCES, calibration_text, calibration_windows, heldout_text, load_calibration, tokenize_text
    from .evaluate import (
        MINILM,
        EmbeddingAgreement,
        embedding_agreement,
        heldout_sentences,
        load_minilm,
        perplexity,
        sentence_embeddings,
    )
    from .base import OneShotMethod, oneshot_target, resolve_target
    from .dsnot import MLP_LAYERS, DSnoT, dsnot_prune
    from .magnitude import Magnitude, magnitude_prune
    from .registry import METHOD_NAMES, method_from_spec
    from .sparsegpt import SparseGPT, sparsegpt_prune, sparsegpt_scores
    from .wanda import Wanda, wanda_prune, wanda_scores
    from .io import LoadedModel, load_model, save_pruned
    from .nm import NMPruneResult, prune_nm
    from .pretrained import PretrainedLM, cached_austen_gpt
    from .sequential import LayerResult, OneShotResult, find_blocks, peak_memory, prune_oneshot
    from .stats import LayerStats, reconstruction_error

__all__ = [
    "prune_nm", "NMPruneResult", "cached_austen_gpt", "PretrainedLM", "load_model", "save_pruned", "LoadedModel",
    "prune_oneshot", "find_blocks", "OneShotResult", "LayerResult", "peak_memory",
    "LayerStats", "reconstruction_error",
    "OneShotMethod", "Magnitude", "Wanda", "SparseGPT", "DSnoT", "method_from_spec", "METHOD_NAMES", "MLP_LAYERS",
    "oneshot_target", "resolve_target", "magnitude_prune", "wanda_scores", "wanda_prune", "sparsegpt_scores", "sparsegpt_prune",
    "dsnot_prune",
    "TEXT_SOURCES", "calibration_text", "heldout_text", "tokenize_text", "calibration_windows", "load_calibration",
    "MINILM", "perplexity", "load_minilm", "sentence_embeddings", "EmbeddingAgreement", "embedding_agreement",
    "heldout_sentences",
]
