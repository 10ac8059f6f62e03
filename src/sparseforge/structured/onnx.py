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
        args: tuple = ()
        kwargs = dict(example_inputs)  # non-tensor options (use_cache=False ...) are passed too
        feeds = {k: kwargs[k] for k in names}
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
        torch.onnx.export(model, args, str(path), kwargs=kwargs or None, input_names=names,
                          opset_version=opset, dynamo=False)
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
