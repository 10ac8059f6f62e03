"""All-or-nothing operations (issue 27.2): every in-place operation of the public API, given
inputs that fail at its *last* layer, leaves the model's state_dict, hooks and the optimizer
(state and hooks) bit-identical, and a valid retry then works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import sparseforge as sf
from sparseforge.errors import CheckpointError, ConfigError, LayerError, SparseforgeError
from sparseforge.masking import find_masked_layers
from sparseforge.soups import average_models, greedy_soup, uniform_soup
from sparseforge.transaction import Transaction, transaction

PROPERTY = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mlp(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _trained_opt(model: nn.Module, kind: str = "adam") -> torch.optim.Optimizer:
    """An optimizer with state (one step taken), so a rollback has moments to restore."""
    opt = torch.optim.Adam(model.parameters(), 1e-3) if kind == "adam" else torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    model(torch.randn(4, model[0].in_features)).square().sum().backward()
    opt.step()
    return opt


def _hook_keys(obj) -> dict[str, list]:
    return {k: list(v.keys()) for k, v in vars(obj).items() if "hook" in k and isinstance(v, dict)}


def fingerprint(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Everything the contract promises to restore, cloned."""
    out = {"sd": {k: v.detach().clone() for k, v in model.state_dict().items()}, "modules": [], "params": []}
    for name, m in model.named_modules():
        out["modules"].append((name, type(m).__name__, m.training, _hook_keys(m), sorted(m._buffers), sorted(m._parameters)))
    for name, p in model.named_parameters():
        out["params"].append((name, p.requires_grad, None if p.grad is None else p.grad.clone(),
                              [list((getattr(p, h, None) or {}).keys()) for h in ("_backward_hooks", "_post_accumulate_grad_hooks")]))
    if opt is not None:
        sd = opt.state_dict()
        out["opt"] = ({k: {kk: (vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in v.items()} for k, v in sd["state"].items()},
                      [dict(g) for g in sd["param_groups"]], _hook_keys(opt))
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a["sd"].keys() == b["sd"].keys()
    for k in a["sd"]:
        x, y = a["sd"][k], b["sd"][k]
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k
    assert [m[:3] + m[3:] for m in a["modules"]] == [m[:3] + m[3:] for m in b["modules"]]
    for (n1, r1, g1, h1), (n2, r2, g2, h2) in zip(a["params"], b["params"], strict=True):
        assert (n1, r1, h1) == (n2, r2, h2)
        assert (g1 is None) == (g2 is None) and (g1 is None or torch.equal(g1, g2)), n1
    if "opt" in a:
        (s1, g1, h1), (s2, g2, h2) = a["opt"], b["opt"]
        assert s1.keys() == s2.keys() and g1 == g2 and h1 == h2
        for k in s1:
            assert s1[k].keys() == s2[k].keys()
            for kk in s1[k]:
                v1, v2 = s1[k][kk], s2[k][kk]
                assert torch.equal(v1, v2) if torch.is_tensor(v1) else v1 == v2


def _fails(fn, exc=SparseforgeError):
    with pytest.raises(exc):
        fn()


# ------------------------------------------------------------------ the mechanism itself
def test_transaction_restores_values_structure_hooks_and_optimizer() -> None:
    model = _mlp([6, 5, 4], 0)
    opt = _trained_opt(model, "sgd")
    model[0].register_forward_hook(lambda *a: None)
    before, rng = fingerprint(model, opt), torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"):
        with transaction(model, opt):
            model[0].weight.data.mul_(0)
            model[2].register_buffer("extra", torch.ones(1))
            model[2].register_forward_pre_hook(lambda *a: None)
            model[0].weight.register_post_accumulate_grad_hook(lambda p: None)
            opt.register_step_pre_hook(lambda *a: None)
            for s in opt.state.values():
                s["momentum_buffer"].add_(1)
            opt.param_groups[0]["lr"] = 5.0
            torch.nn.utils.parametrize.register_parametrization(model[2], "weight", _Double())
            model[1] = nn.Tanh()
            torch.rand(3)
            raise RuntimeError("boom")
    assert_same(before, fingerprint(model, opt))
    assert torch.equal(rng, torch.get_rng_state())
    assert type(model[1]) is nn.ReLU and not torch.nn.utils.parametrize.is_parametrized(model[2])


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_transaction_restores_method_state_and_generator() -> None:
    model = _mlp([8, 8, 4], 1)
    m = sf.RigL(model, sparsity=0.5, total_steps=10)
    step, gen, explored = m.step, m.generator.get_state(), [e.clone() for e in m.explored]
    with pytest.raises(KeyError):
        with transaction(model, None, m):
            m.step = 7
            torch.rand(4, generator=m.generator)
            m.explored[0].fill_(True)
            m.masking.layers.pop()
            raise KeyError("x")
    assert m.step == step and torch.equal(m.generator.get_state(), gen)
    assert all(torch.equal(a, b) for a, b in zip(m.explored, explored)) and len(m.masking.layers) == 2


def test_journal_mode_warns_about_an_unsaved_change() -> None:
    model = _mlp([4, 3], 0)
    with pytest.raises(RuntimeError), pytest.warns(RuntimeWarning, match="could not restore 1 tensor"):
        with transaction(model, tensors="journal"), torch.no_grad():
            model[0].weight.add_(1)
            raise RuntimeError("x")


def test_transaction_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="tensors must be"):
        Transaction(nn.Linear(2, 2), tensors="lazy")
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        Transaction(object())
    with pytest.raises(ConfigError, match="optimizer must be a torch.optim.Optimizer"):
        Transaction(nn.Linear(2, 2), object())


# ------------------------------------------------------------------ one-shot pruning
@PROPERTY
@given(hidden=st.integers(8, 24), last_in=st.integers(2, 6), seed=st.integers(0, 3),
       method=st.sampled_from(["magnitude", "sparsegpt", "wanda"]))
def test_prune_oneshot_fails_at_last_layer_changes_nothing(hidden, last_in, seed, method) -> None:
    # the last layer (last_in x 2 <= 12 weights) cannot take 0.99 sparsity; the others can
    model = _mlp([64, hidden * 4, last_in, 2], seed)
    before = fingerprint(model)
    calib = torch.randn(16, 64)
    _fails(lambda: sf.prune_oneshot(model, method, 0.99, calibration=calib))
    assert_same(before, fingerprint(model))
    assert not find_masked_layers(model)
    result = sf.prune_oneshot(model, method, 0.5, calibration=calib)  # a valid retry is accepted
    assert len(result.layers) == 3


@PROPERTY
@given(last_in=st.sampled_from([3, 5, 6, 7]), seed=st.integers(0, 3))
def test_prune_nm_fails_at_last_layer_changes_nothing(last_in, seed) -> None:
    model = _mlp([8, 8, last_in, 2], seed)
    before = fingerprint(model)
    _fails(lambda: sf.prune_nm(model, "2:4"))
    assert_same(before, fingerprint(model))
    masking = sf.prune_nm(model, "2:4", indivisible="skip").masking
    assert [l.name for l in masking.layers] == ["0", "2"]


# ------------------------------------------------------------------ quantization
@PROPERTY
@given(last_in=st.sampled_from([8, 24, 40]), seed=st.integers(0, 3))
def test_quantize_weights_fails_at_last_layer_changes_nothing(last_in, seed) -> None:
    model = _mlp([32, 16, last_in, 2], seed)  # group_size 16 does not divide the last layer's input
    before = fingerprint(model)
    _fails(lambda: sf.quantize_weights(model, bits=4, group_size=16), LayerError)
    assert_same(before, fingerprint(model))
    assert len(sf.quantize_weights(model, bits=4, group_size=8).layers) == 3


# ------------------------------------------------------------------ Masking and methods
def test_masking_with_a_foreign_optimizer_changes_nothing_and_retry_honours_targets() -> None:
    model, other = _mlp([8, 8, 8, 4], 0), _mlp([8, 8, 8, 4], 1)
    opt = torch.optim.SGD(other.parameters(), 0.1)
    before = fingerprint(model)
    _fails(lambda: sf.Masking(model, optimizer=opt), ConfigError)
    assert_same(before, fingerprint(model))
    masking = sf.Masking(model, targets={"exclude": ["4"]})
    assert [l.name for l in masking.layers] == ["0", "2"]


@PROPERTY
@given(last_in=st.integers(2, 4), seed=st.integers(0, 3),
       name=st.sampled_from(["rigl", "set", "gmp", "static", "snip"]))
def test_method_construction_fails_at_last_layer_changes_nothing(last_in, seed, name) -> None:
    # uniform 0.9 sparsity removes every weight of the last layer (last_in x 2 weights)
    model = _mlp([16, 16, last_in, 2], seed)
    opt = _trained_opt(model)
    before = fingerprint(model, opt)
    kw = {"rigl": {"total_steps": 10}, "set": {"total_steps": 10, "update_interval": 2},
          "gmp": {"begin": 0, "end": 5}}.get(name, {})
    cls = {"rigl": sf.RigL, "set": sf.SET, "gmp": sf.GMP, "static": sf.StaticSparse, "snip": sf.StaticSparse}[name]
    extra = {"init": "snip", "data": (torch.randn(4, 16), torch.randint(0, 2, (4,)))} if name == "snip" else {}
    try:
        cls(model, opt, sparsity=0.95, allocation="uniform", **kw, **_static_kw(name, extra))
    except LayerError:
        pass
    else:  # pragma: no cover - the inputs are chosen to fail
        pytest.fail("expected a LayerError")
    assert_same(before, fingerprint(model, opt))
    method = cls(model, opt, sparsity=0.5, allocation="uniform", **kw, **_static_kw(name, extra))
    assert len(method.layers) == 3


def _static_kw(name: str, extra: dict) -> dict:
    import inspect

    if name not in ("static", "snip"):
        return {}
    params = inspect.signature(sf.StaticSparse.__init__).parameters
    return {k: v for k, v in extra.items() if k in params}


def test_nm_method_construction_fails_at_last_layer_changes_nothing() -> None:
    model = _mlp([8, 8, 6, 2], 0)
    opt = _trained_opt(model)
    before = fingerprint(model, opt)
    _fails(lambda: sf.STE(model, opt, sparsity="2:4"), LayerError)
    assert_same(before, fingerprint(model, opt))
    assert len(sf.STE(model, opt, sparsity="2:4", indivisible="skip").layers) == 2


def test_method_attach_to_a_foreign_optimizer_changes_nothing() -> None:
    model, other = _mlp([8, 8, 4], 0), _mlp([8, 8, 4], 1)
    method = sf.StaticSparse(model, sparsity=0.5)
    opt = _trained_opt(other)
    before, mstate = fingerprint(model), method.state_dict()
    _fails(lambda: method.attach(opt), ConfigError)
    assert_same(before, fingerprint(model))
    assert method.optimizer is None and method.state_dict()["step"] == mstate["step"]
    method.attach(torch.optim.SGD(model.parameters(), 0.1))
    assert method.optimizer is not None


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(4, model[0].in_features)).square().sum().backward()
        opt.step()


def _method_state(m) -> dict:
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in m.state_dict().items()}


def _same_method_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if torch.is_tensor(x):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, dict):
            if x.keys() != y.keys() or not all(
                    torch.equal(x[j], y[j]) if torch.is_tensor(x[j]) else x[j] == y[j] for j in x):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("cls,kw", [(sf.RigL, {"total_steps": 20, "update_interval": 2}),
                                    (sf.SET, {"total_steps": 20, "update_interval": 2}),
                                    (sf.GMP, {"begin": 0, "end": 6, "frequency": 2})])
def test_method_load_state_dict_of_another_model_changes_nothing(cls, kw) -> None:
    model, other = _mlp([8, 16, 4], 0), _mlp([8, 16, 16, 4], 1)
    opt, opt2 = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9), torch.optim.SGD(other.parameters(), 0.1)
    a, b = cls(model, opt, sparsity=0.5, **kw), cls(other, opt2, sparsity=0.7, **kw)
    _steps(model, opt, 3)
    _steps(other, opt2, 5)
    before, mstate = fingerprint(model, opt), _method_state(a)
    _fails(lambda: a.load_state_dict(b.state_dict()), CheckpointError)
    assert_same(before, fingerprint(model, opt))
    assert _same_method_state(mstate, _method_state(a))
    a.load_state_dict(mstate)  # a valid state still loads
    _steps(model, opt, 2)


def test_rigl_load_state_dict_refused_by_its_last_layer_changes_nothing() -> None:
    # the common fields fit; the explored positions of the last layer do not: the subclass
    # refuses after the step, sparsities and generator were set, and all of it is put back
    model = _mlp([8, 16, 4], 0)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    m = sf.RigL(model, opt, sparsity=0.5, total_steps=20, update_interval=2)
    _steps(model, opt, 3)
    state = _method_state(m)
    bad = {**state, "step": 11, "generator": torch.Generator().manual_seed(5).get_state(),
           "explored": {**state["explored"], "2.weight": torch.ones(3, 3, dtype=torch.bool)}}
    _fails(lambda: m.load_state_dict(bad), CheckpointError)
    assert _same_method_state(state, _method_state(m))


def test_gmp_load_state_dict_refuses_another_layer_count() -> None:
    model = _mlp([8, 16, 4], 0)
    g = sf.GMP(model, sparsity=0.5, begin=0, end=6)
    state = g.state_dict()
    state["final_layer_sparsity"] = state["final_layer_sparsity"] + [0.5]
    with pytest.raises(CheckpointError, match="final_layer_sparsity for 3 layer"):
        g.load_state_dict(state)
    state["layer_sparsity"] = state["layer_sparsity"] + [0.5]
    with pytest.raises(CheckpointError, match="layer_sparsity for 3 layer"):
        g.load_state_dict(state)


@pytest.mark.parametrize("bad,match", [("x", "must be a dict"), ({"name": "gmp"}, "lacks"),
                                       ({"name": "gmp", "step": -1, "generator": None, "layer_sparsity": []}, "step")])
def test_method_load_state_dict_refuses_malformed_states(bad, match) -> None:
    g = sf.GMP(_mlp([8, 16, 4], 0), sparsity=0.5, begin=0, end=6)
    with pytest.raises(CheckpointError, match=match):
        g.load_state_dict(bad)


# ------------------------------------------------------------------ finalize, state dicts
def test_finalize_failing_at_last_layer_changes_nothing() -> None:
    model = _mlp([8, 8, 4], 0)
    sf.prune_nm(model, "2:4")
    model[2].weight_mask = torch.ones(3, 8, dtype=torch.bool)  # a corrupt last mask: folding it fails
    before = fingerprint(model)
    with pytest.raises(RuntimeError):
        sf.finalize(model)
    assert_same(before, fingerprint(model))
    model[2].weight_mask = model[2].weight != 0
    sf.finalize(model)
    assert not find_masked_layers(model)


def test_method_finalize_failing_keeps_hooks_and_masks() -> None:
    model = _mlp([8, 8, 4], 0)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    method = sf.STE(model, opt, sparsity="2:4")
    before = fingerprint(model, opt)
    model[2].weight_mask.data = torch.ones(3, 8, dtype=torch.bool)  # corrupt: the fold must fail
    before = fingerprint(model, opt)
    with pytest.raises(RuntimeError):
        method.finalize()
    assert_same(before, fingerprint(model, opt))
    assert method.optimizer is opt


def test_load_masked_state_dict_failing_at_last_module_changes_nothing() -> None:
    src, model = _mlp([8, 8, 4], 0), _mlp([8, 8, 4], 1)
    sf.prune_nm(src, "2:4")
    sd = src.state_dict()

    def refuse(*args, **kwargs):
        raise RuntimeError("refused by the last module")

    handle = model[2]._register_load_state_dict_pre_hook(refuse)
    before = fingerprint(model)
    with pytest.raises(CheckpointError, match="refused by the last module"):
        sf.load_masked_state_dict(model, sd)
    assert_same(before, fingerprint(model))
    handle.remove()
    assert len(sf.load_masked_state_dict(model, sd)) == 2


# ------------------------------------------------------------------ other in-place operations
def test_add_lora_and_merge_lora_are_all_or_nothing(monkeypatch) -> None:
    from torch.nn.utils import parametrize

    model = _mlp([8, 8, 4, 2], 0)
    before = fingerprint(model)
    _fails(lambda: sf.add_lora(model, rank=3), LayerError)  # the last layer has min(2, 4) = 2 < 3
    assert_same(before, fingerprint(model))
    real = parametrize.register_parametrization
    calls = []

    def flaky(module, name, p, **kw):
        calls.append(module)
        if len(calls) == 3:
            raise RuntimeError("injected at the last layer")
        return real(module, name, p, **kw)

    monkeypatch.setattr(parametrize, "register_parametrization", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        sf.add_lora(model, rank=2)
    monkeypatch.setattr(parametrize, "register_parametrization", real)
    assert_same(before, fingerprint(model))
    sf.add_lora(model, rank=2)
    for p in sf.lora_parameters(model):
        p.data.normal_()
    adapted = fingerprint(model)
    real_remove = parametrize.remove_parametrizations
    removed = []

    def flaky_remove(module, name, **kw):
        removed.append(module)
        if len(removed) == 3:
            raise RuntimeError("injected at the last layer")
        return real_remove(module, name, **kw)

    monkeypatch.setattr(parametrize, "remove_parametrizations", flaky_remove)
    with pytest.raises(RuntimeError, match="injected"):
        sf.merge_lora(model)
    monkeypatch.setattr(parametrize, "remove_parametrizations", real_remove)
    assert_same(adapted, fingerprint(model))
    sf.merge_lora(model)
    assert not sf.lora.lora_layers(model)


def test_sparse_ift_in_place_failing_changes_nothing() -> None:
    model = _mlp([8, 16, 16, 4], 0)
    before = fingerprint(model)
    with pytest.raises(LayerError, match="does not run on example_inputs"):
        sf.sparse_ift(model, "wide", 0.5, example_inputs=torch.randn(2, 9), inplace=True)
    assert_same(before, fingerprint(model))
    out = sf.sparse_ift(model, "wide", 0.5, example_inputs=torch.randn(2, 8), inplace=True).model
    assert out is model


def test_recalibrate_bn_failing_midway_changes_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2), nn.BatchNorm1d(2))
    model.train()
    model(torch.randn(8, 4))
    model.eval()
    seen = []

    def second_batch_fails(module, args):
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("injected in the second batch")

    handle = model[4].register_forward_pre_hook(second_batch_fails)
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="injected"):
        sf.recalibrate_bn(model, torch.randn(40, 4), batch_size=8, fraction=1.0)
    assert_same(before, fingerprint(model))
    handle.remove()
    assert sf.recalibrate_bn(model, torch.randn(40, 4), batch_size=8, fraction=1.0) == 5


def test_structured_pruner_leaves_the_model_alone_when_strict_refuses() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    before = fingerprint(model)
    with pytest.raises(LayerError, match="removes nothing"):
        sf.prune_structured(model, torch.randn(2, 8), 0.5, strict=True)
    assert_same(before, fingerprint(model))


# ------------------------------------------------------------------ silent surprises (27.5)
def test_second_method_with_other_targets_on_a_masked_model_is_refused() -> None:
    model = _mlp([8, 8, 8, 4], 0)
    sf.prune_nm(model, "2:4")
    before = fingerprint(model)
    with pytest.raises(ConfigError, match=r"leave out 1 layer\(s\).*'4\.weight'"):
        sf.StaticSparse(model, sparsity=0.5, targets={"exclude": ["4"]})
    with pytest.raises(ConfigError, match="leave out"):
        sf.prune_nm(model, "2:4", targets={"exclude": ["4"]})
    assert_same(before, fingerprint(model))
    assert len(sf.StaticSparse(model, sparsity=0.5).layers) == 3  # no targets: the masks are reused


def test_soup_of_finalized_ingredients_with_different_zeros() -> None:
    a, b = _mlp([8, 8, 4], 0), _mlp([8, 8, 4], 0)
    sf.finalize(sf.prune_nm(a, "2:4").model)
    with torch.no_grad():
        b[0].weight.copy_(a[0].weight)
        b[2].weight.copy_(a[2].weight)
        row = a[2].weight[0]
        b[2].weight[0] = torch.where(row == 0, torch.ones_like(row), torch.zeros_like(row))  # row 0's zeros flipped
    with pytest.raises(LayerError, match=r"different zero patterns in 2\.weight"):
        uniform_soup([a, b])
    with pytest.raises(LayerError, match="zero patterns"):
        greedy_soup([a, b], score=lambda m: 0.0)
    inter = average_models([a, b], zeros="intersect")
    assert torch.equal(inter[2].weight == 0, (a[2].weight == 0) | (b[2].weight == 0))
    union = uniform_soup([a, b], zeros="union").model
    assert int((union[2].weight[0] == 0).sum()) == 0  # the plain average: row 0 is dense
    with pytest.raises(ConfigError, match="zeros must be one of"):
        average_models([a, b], zeros="any")
    same = uniform_soup([a, a]).model  # equal zero patterns average as before
    assert torch.equal(same[2].weight, a[2].weight)


@pytest.mark.parametrize("value", [float("nan"), "0.5", True, torch.tensor([0.5])])
def test_ste_refuses_nan_string_and_non_scalar_sparsity(value) -> None:
    with pytest.raises(ConfigError, match="sparsity must be"):
        sf.STE(_mlp([8, 8, 4], 0), sparsity=value)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)])
def test_numpy_and_0d_tensor_sparsities_are_accepted(value) -> None:
    assert sf.StaticSparse(_mlp([8, 8, 4], 0), sparsity=value).sparsity == 0.5
    with pytest.warns(DeprecationWarning, match="sparsity='2:4'"):  # the old spelling still works
        assert sf.STE(_mlp([8, 8, 4], 0), pattern="2:4", sparsity=value).sparsity == 0.5


def test_structured_pruner_that_removes_nothing_warns_with_the_reason() -> None:
    with pytest.warns(RuntimeWarning, match="removes nothing: the model has no removable channel group; skipped 0.weight"):
        sf.prune_structured(nn.Sequential(nn.Linear(8, 4)), torch.randn(2, 8), 0.5)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(RuntimeWarning, match=r"sparsity 0.1 removes no group"):
        sf.prune_structured(model, torch.randn(2, 8), 0.1)
    with pytest.raises(LayerError, match="strict=True"):
        sf.prune_structured(model, torch.randn(2, 8), 0.1, strict=True)
