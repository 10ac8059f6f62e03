"""ONNX export of a (shrunk) model, checked against onnxruntime.

Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which needs
only the ``onnx`` package; the check needs ``onnxruntime``. Both are optional dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, LayerError

__all__ = ["export_onnx"]


def _tensors(x: Any) -> list[torch.Tensor]:
    if torch.is_tensor(x):
        return [x]
    if hasattr(x, "to_tuple"):
        x = x.to_tuple()
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


class _KeywordCall(nn.Module):
    """Calls ``model(**dict(zip(names, tensors)), **options)`` from positional tensors."""

    def __init__(self, model: nn.Module, names: list[str], options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.options = options

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.model(**dict(zip(self.names, tensors)), **self.options)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, atol: float = 1e-4,
                opset: int = 17) -> float:
    """Export ``model`` to ``path`` and return the largest absolute output difference vs onnxruntime.

    ``example_inputs`` is a tensor, a tuple of positional tensors or a dict of keyword
    arguments (tensors become graph inputs; other values such as ``use_cache=False``, which
    causal language models need here, are passed as they are). Every output tensor is compared (in order). Raises :class:`LayerError` if the
    difference exceeds ``atol`` (default 1e-4) and :class:`ConfigError` if ``onnx`` or
    ``onnxruntime`` is missing.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("export_onnx needs onnx and onnxruntime: pip install onnx onnxruntime") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(example_inputs, Mapping):
        names = [k for k, v in example_inputs.items() if torch.is_tensor(v)]
        options = {k: v for k, v in example_inputs.items() if not torch.is_tensor(v)}
        # the graph's inputs are exactly the tensors given, in order: exporting the model with
        # keyword arguments would make every parameter before them in forward's signature
        # (e.g. an optional ``logits_to_keep``) a required input of the graph
        model = _KeywordCall(model, names, options)
        args: tuple = tuple(example_inputs[k] for k in names)
        kwargs: dict = {}
        feeds = dict(zip(names, args))
    else:
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if not all(torch.is_tensor(a) for a in args):
            raise ConfigError("export_onnx: example_inputs must be tensors (or a dict of tensors)")
        names = [f"input_{i}" for i in range(len(args))]
        kwargs = {}
        feeds = dict(zip(names, args))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = _tensors(model(*args, **kwargs))
        # not under no_grad: there nn.MultiheadAttention takes a fused fast path ONNX cannot export
        try:
            torch.onnx.export(model, args, str(path), kwargs=kwargs or None, input_names=names,
                              opset_version=opset, dynamo=False)
        except Exception as e:
            if "aten::diff" in str(e) and "attention_mask" not in names:
                # Hugging Face decoders look for packed sequences in position ids (torch.diff)
                # when no attention mask is given; ONNX has no such operator
                raise ConfigError("ONNX export failed on aten::diff; for a Hugging Face decoder pass an "
                                  "attention_mask (e.g. torch.ones_like(input_ids)) in example_inputs") from e
            raise
    finally:
        model.train(was_training)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items() if k in wanted})
    diff = 0.0
    for e, g in zip(expected, got):
        diff = max(diff, float((e.detach().cpu().float() - torch.from_numpy(g).float()).abs().max()))
    if diff > atol:
        raise LayerError(f"onnxruntime outputs differ from torch by {diff:.3g} (> atol {atol}) for {path}")
    return diff
