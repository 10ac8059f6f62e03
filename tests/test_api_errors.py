"""Fuzz the public API with wrong types and out-of-range values: every failure is a package error
(a :class:`~sparseforge.errors.SparseforgeError`, never a bare TypeError, AttributeError, KeyError,
IndexError or RuntimeError) whose one-line message names the argument."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparseforge as sf
from sparseforge.errors import SparseforgeError


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


#: what a user passes by mistake where a model belongs
NOT_A_MODULE = st.one_of(
    st.text(max_size=5), st.none(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3), st.just(torch.ones(3, 3)), st.just(_mlp().state_dict()),
)
#: what a user passes by mistake where a file path belongs
NOT_A_PATH = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.just(""),
                       st.lists(st.text(max_size=2), max_size=2), st.just(torch.ones(2)))


def _refused(call, *names: str) -> None:
    with pytest.raises(SparseforgeError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and any(n in msg for n in names), msg


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("c") / "good.safetensors"
    sf.save_compressed(_mlp(), p)
    return p


MODEL_CALLS = {
    "sparsity_report": lambda m: sf.sparsity_report(m),
    "quantize_weights": lambda m: sf.quantize_weights(m),
    "add_lora": lambda m: sf.add_lora(m),
    "merge_lora": lambda m: sf.merge_lora(m),
    "lora_parameters": lambda m: sf.lora_parameters(m),
    "save_materialized": lambda m: sf.save_materialized(m, "/nonexistent/never-written"),
}


@pytest.mark.parametrize("name", sorted(MODEL_CALLS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=NOT_A_MODULE)
def test_a_model_argument_that_is_not_a_module(name: str, bad) -> None:
    _refused(lambda: MODEL_CALLS[name](bad), "model")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=NOT_A_MODULE)
def test_compressed_io_refuses_a_non_module(good_file: Path, tmp_path_factory, bad) -> None:
    _refused(lambda: sf.save_compressed(bad, tmp_path_factory.getbasetemp() / "x.safetensors"), "model")
    _refused(lambda: sf.load_compressed(bad, good_file), "model")
    if bad is not None:  # None means "the file alone"
        _refused(lambda: sf.compressed_size_report(bad, good_file), "model")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=NOT_A_PATH)
def test_compressed_io_refuses_a_non_path(good_file: Path, bad) -> None:
    _refused(lambda: sf.save_compressed(_mlp(), bad), "path")
    _refused(lambda: sf.load_compressed(_mlp(), bad), "path")
    _refused(lambda: sf.compressed_size_report(None, bad), "path")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.one_of(st.text(max_size=3), st.none(), st.integers(), st.floats(allow_nan=True), st.just(torch.ones(2))))
def test_load_compressed_strict_must_be_a_bool(good_file: Path, bad) -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _refused(lambda: sf.load_compressed(model, good_file, strict=bad), "strict")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@settings(max_examples=15, deadline=None)
@given(bad=st.one_of(st.text(max_size=3).filter(lambda s: s not in ("bitmask", "csr")), st.none(), st.integers()))
def test_save_compressed_format(tmp_path_factory, bad) -> None:
    _refused(lambda: sf.save_compressed(_mlp(), tmp_path_factory.getbasetemp() / "f.safetensors", format=bad), "format")


class _NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@pytest.mark.parametrize("call", [
    lambda m: sf.quantize_weights(m), lambda m: sf.add_lora(m), lambda m: sf.merge_lora(m),
    lambda m: sf.prune_oneshot(m, "magnitude", 0.5, calibration=torch.randn(2, 3)),
])
def test_a_model_with_no_linear_layer_is_named(call) -> None:
    _refused(lambda: call(_NoLinear()), "_NoLinear")
