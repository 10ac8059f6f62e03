"""preserved_modes, call_model and probe: probes leave every submodule's mode as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.utils import call_model, preserved_modes, probe


def _mixed() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    return model


def test_modes_come_back_per_submodule_even_after_an_error() -> None:
    model = _mixed()
    before = [m.training for m in model.modules()]
    with preserved_modes(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError, match="boom"):
        with preserved_modes(model, training=True):
            assert all(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before


class _Args(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return a if b is None else a - b


def test_call_model_dispatches_tensor_tuple_and_mapping() -> None:
    m, a, b = _Args(), torch.tensor([3.0]), torch.tensor([1.0])
    assert call_model(m, a).item() == 3.0
    assert call_model(m, (a, b)).item() == 2.0
    assert call_model(m, [a, b]).item() == 2.0
    assert call_model(m, {"a": a, "b": b}).item() == 2.0


def test_probe_runs_in_eval_without_grad_and_removes_hooks_even_on_failure() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    seen = []
    h = model[0].register_forward_hook(lambda m, a, o: seen.append((m.training, torch.is_grad_enabled())))
    out = probe(model, torch.ones(4, 3), [h])
    assert out.shape == (4, 2) and seen == [(False, False)] and model.training
    model(torch.ones(1, 3))
    assert len(seen) == 1  # the hook was removed
    h2 = model[0].register_forward_hook(lambda m, a, o: seen.append("again"))
    with pytest.raises(ConfigError, match="example_inputs does not run the model .*RuntimeError"):
        probe(model, torch.ones(4, 5), [h2])  # wrong width: the pass fails
    model(torch.ones(1, 3))
    assert "again" not in seen and model.training
