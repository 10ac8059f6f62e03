"""sparseforge.masking: targets, enforcement through optimizers/AMP/accumulation, state, finalize, checkpoints."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sparseforge.core.patterns import Unstructured
from sparseforge.errors import CheckpointError, ConfigError, LayerError
from sparseforge.masking import (
    MASK_SUFFIX,
    Masking,
    Targets,
    apply_masks,
    find_masked_layers,
    finalize,
    is_hf_conv1d,
    load_masked_state_dict,
    mask_to,
)


# ----------------------------------------------------------------------------- helpers
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def random_masks(masking: Masking, sparsity: float = 0.6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in masking:
        m = Unstructured().mask(torch.rand(layer.canonical_shape, generator=g), sparsity)
        masking.set_mask(layer, m, canonical=True)
        out.append(layer.mask.clone())
    return out


def data(seed: int = 1, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def names(layers) -> list[str]:
    return [l.name for l in layers]


# ============================================================================ Targets
def test_default_targets_select_linear_and_conv_in_module_order() -> None:
    layers = Targets().select(Net())
    assert names(layers) == ["conv1", "fc1", "fc2", "head"]
    assert all(l.param_name == "weight" and not l.transposed for l in layers)
    assert layers[0].canonical_shape == (4, 1, 3, 3)
    assert layers[1].qualname == "fc1.weight"


def test_targets_include_exclude_by_name_and_regex() -> None:
    assert names(Targets(include=["fc1"]).select(Net())) == ["fc1"]
    assert names(Targets(include="fc1").select(Net())) == ["fc1"]  # a bare string is one entry
    assert names(Targets(include=[r"fc\d"]).select(Net())) == ["fc1", "fc2"]
    assert names(Targets(exclude=["head", "conv.*"]).select(Net())) == ["fc1", "fc2"]
    # full match, not search: "fc" alone matches nothing -> error (see below); "f.*" matches
    assert names(Targets(include=["f.*"], exclude=["fc2"]).select(Net())) == ["fc1"]


def test_targets_type_filter() -> None:
    assert names(Targets(types=(nn.Conv2d,)).select(Net())) == ["conv1"]
    assert names(Targets(types=(nn.Linear,)).select(Net())) == ["fc1", "fc2", "head"]


def test_targets_first_and_last_layer_dense() -> None:
    assert names(Targets(first_layer="dense").select(Net())) == ["fc1", "fc2", "head"]
    assert names(Targets(last_layer="dense").select(Net())) == ["conv1", "fc1", "fc2"]
    assert names(Targets(first_layer="dense", last_layer="dense").select(Net())) == ["fc1", "fc2"]
    # first/last refer to the model's first/last candidate: excluding the conv does not make fc1 "first"
    assert names(Targets(exclude=["conv1"], first_layer="dense").select(Net())) == ["fc1", "fc2", "head"]


@pytest.mark.parametrize("field", ["include", "exclude"])
def test_targets_entry_matching_nothing_raises(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"targets\.{field} entry 'fc3'"):
        Targets(**{field: ["fc1", "fc3"]}).select(Net())
    with pytest.raises(ConfigError, match="'fc'"):
        Targets(**{field: ["fc"]}).select(Net())


def test_targets_non_strict_allows_unmatched_entries() -> None:
    assert names(Targets(exclude=["nope"], strict_patterns=False).select(Net())) == ["conv1", "fc1", "fc2", "head"]


def test_targets_bad_values() -> None:
    with pytest.raises(ConfigError, match="first_layer.*'first'"):
        Targets(first_layer="first")
    with pytest.raises(ConfigError, match="last_layer"):
        Targets(last_layer=None)
    with pytest.raises(ConfigError, match="regular expression"):
        Targets(include=["fc["])
    with pytest.raises(ConfigError, match="unknown targets key"):
        Targets.from_spec({"includes": ["fc1"]})
    with pytest.raises(ConfigError, match="mapping"):
        Targets.from_spec(["fc1"])
    assert Targets.from_spec({"exclude": ["head"]}).exclude == ["head"]


def test_model_without_prunable_layers_raises() -> None:
    with pytest.raises(ConfigError, match="no prunable layers"):
        Targets().select(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    with pytest.raises(ConfigError, match="no prunable layers"):
        Masking(nn.Sequential(nn.Embedding(10, 4)))
    with pytest.raises(ConfigError, match="no prunable layers"):
        Targets(first_layer="dense").select(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="no prunable layers"):
        Targets(exclude=["conv1", "fc.*", "head"]).select(Net())


def test_hf_conv1d_is_default_target_and_transposed() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 8), nn.ReLU(), nn.Linear(6, 2))  # Conv1D(nf=out, nx=in): weight [8, 6]
    assert is_hf_conv1d(model[0]) and not is_hf_conv1d(model[2])
    layers = Targets().select(model)
    assert names(layers) == ["0", "2"]
    conv = layers[0]
    assert conv.transposed and conv.weight.shape == (8, 6)
    assert conv.canonical_shape == (6, 8)  # [out, in]
    assert torch.equal(conv.canonical(conv.weight), conv.weight.t())
    assert names(Targets(types=(Conv1D,)).select(model)) == ["0"]
    # a canonical mask is stored transposed
    masking = Masking(model)
    cm = torch.zeros(6, 8, dtype=torch.bool)
    cm[:, :4] = True  # keep inputs 0..3 of every output
    masking.set_mask(masking.layer("0"), cm, canonical=True)
    assert torch.equal(model[0].weight_mask, cm.t())
    assert bool((model[0].weight[4:] == 0).all()) and bool((model[0].weight[:4] != 0).all())
    # find_masked_layers recovers the transposition from the module type
    assert find_masked_layers(model)[0].transposed


def test_hf_gpt2_conv1d_layers_are_default_targets() -> None:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8))
    layers = Targets().select(model)
    assert names(layers) == ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]
    assert all(l.transposed for l in layers)
    assert layers[0].canonical_shape == (48, 16)


# ============================================================================ masks
def test_masks_are_bool_buffers_in_state_dict() -> None:
    model = mlp()
    masking = Masking(model)
    assert len(masking) == 3
    sd = model.state_dict()
    for key in ("0.weight_mask", "2.weight_mask", "4.weight_mask"):
        assert sd[key].dtype == torch.bool and bool(sd[key].all())
    assert "0.bias_mask" not in sd
    assert masking.nonzeros() == {"0.weight": 128, "2.weight": 256, "4.weight": 64}


def test_set_mask_zeroes_weights_and_validates_shape() -> None:
    model = mlp()
    masking = Masking(model)
    layer = masking.layer("2")
    m = torch.rand(16, 16) > 0.5
    masking.set_mask(layer, m)
    assert torch.equal(layer.mask, m)
    assert bool((model[2].weight[~m] == 0).all())
    assert masking.nonzeros()["2.weight"] == int(m.sum())
    with pytest.raises(LayerError, match=r"2\.weight.*\(16, 8\)"):
        masking.set_mask(layer, torch.ones(16, 8, dtype=torch.bool))
    with pytest.raises(ConfigError, match="'7'"):
        masking.layer("7")


def test_set_masks_from_zeros_adopts_existing_sparsity() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].weight[:, :3] = 0
    masking = Masking(model)
    masking.set_masks_from_zeros()
    assert int((~model[0].weight_mask).sum()) == 16 * 3
    assert bool(model[2].weight_mask.all())


def test_apply_masks_function() -> None:
    model = mlp()
    masks = random_masks(Masking(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    apply_masks(model)
    assert bool((model[0].weight[~masks[0]] == 0).all())


# ============================================================================ enforcement
def _make_opt(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    if name == "amsgrad":
        return torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    raise AssertionError(name)


STATE_KEYS = {"sgd": {"momentum_buffer"}, "adamw": {"exp_avg", "exp_avg_sq"}, "amsgrad": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}}


def _train(model, opt, mode: str, steps: int = 100) -> int:
    x, y = data()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if mode == "gradscaler" else None
    n_steps = 0
    for i in range(steps):
        if mode == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
        elif mode == "accum":
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                (F.cross_entropy(model(xb), yb) / 4).backward()
            opt.step()
        elif mode == "skip":
            F.cross_entropy(model(x), y).backward()
            if i % 3 == 0:  # e.g. GradScaler found inf: no step at all
                opt.step()
                n_steps += 1
            opt.zero_grad()
            continue
        elif mode == "gradscaler":
            loss = F.cross_entropy(model(x), y)
            if i % 4 == 1:
                loss = loss * float("inf")  # overflow: GradScaler skips optimizer.step()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            F.cross_entropy(model(x), y).backward()
            opt.step()
        n_steps += 1
        opt.zero_grad()
    return n_steps


CASES = [(o, "plain") for o in ("sgd", "adamw", "amsgrad")] + [
    ("adamw", "bf16"), ("sgd", "bf16"), ("sgd", "accum"), ("adamw", "accum"), ("sgd", "skip"), ("sgd", "gradscaler"),
]


@pytest.mark.parametrize("opt_name, mode", CASES)
def test_pruned_entries_stay_exactly_zero(opt_name: str, mode: str) -> None:
    model = mlp()
    masking = Masking(model)
    masks = random_masks(masking, 0.6)
    before = [l.weight.detach().clone() for l in masking]
    opt = _make_opt(opt_name, model)
    masking.attach(opt)
    _train(model, opt, mode)
    for layer, m, w0 in zip(masking, masks, before):
        w = layer.weight.detach()
        assert torch.equal(layer.mask, m)  # masks unchanged
        assert int((w[~m] != 0).sum()) == 0, f"{layer.qualname}: pruned weights came back"
        assert not torch.equal(w[m], w0[m]), "kept weights did not train"
        state = opt.state[layer.weight]
        keys = {k for k, v in state.items() if torch.is_tensor(v) and v.shape == w.shape}
        assert keys == STATE_KEYS[opt_name]
        for k in keys:
            assert int((state[k][~m] != 0).sum()) == 0, f"{layer.qualname}: optimizer state {k} at pruned positions"
            assert bool((state[k][m] != 0).any())


def test_gradscaler_really_skipped_steps() -> None:
    model = mlp()
    masking = Masking(model)
    random_masks(masking)
    opt = _make_opt("sgd", model)
    masking.attach(opt)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    _train(model, opt, "gradscaler", steps=20)
    assert len(calls) == 15  # 5 of 20 steps overflowed


def test_masks_set_after_dense_training_clear_weights_and_state() -> None:
    model = mlp()
    masking = Masking(model)
    opt = _make_opt("sgd", model)
    masking.attach(opt)
    _train(model, opt, "plain", steps=5)
    layer = masking.layer("0")
    assert bool((opt.state[layer.weight]["momentum_buffer"] != 0).all())
    m = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    masking.set_mask(layer, m)
    assert bool((opt.state[layer.weight]["momentum_buffer"][~m] == 0).all())
    assert bool((layer.weight[~m] == 0).all())
    _train(model, opt, "plain", steps=20)
    assert bool((layer.weight[~m] == 0).all())


def test_reset_state_zeroes_given_positions() -> None:
    model = mlp()
    masking = Masking(model)
    opt = _make_opt("amsgrad", model)
    masking.attach(opt)
    _train(model, opt, "plain", steps=3)
    layer = masking.layer("2")
    pos = torch.zeros(16, 16, dtype=torch.bool)
    pos[0] = True
    masking.reset_state(layer, pos)
    for k in STATE_KEYS["amsgrad"]:
        v = opt.state[layer.weight][k]
        assert bool((v[0] == 0).all()) and bool((v[1:] != 0).any())


def test_attach_errors_and_detach() -> None:
    model = mlp()
    masking = Masking(model)
    m = random_masks(masking)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masking.attach(opt)
    with pytest.raises(ConfigError, match="already attached"):
        masking.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    masking.detach()
    assert masking.optimizer is None
    # after detach the optimizer no longer enforces masks: pruned weights may move
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert bool((model[0].weight[~m[0]] != 0).any())
    other = Masking(mlp(1))
    with pytest.raises(ConfigError, match="does not hold the masked parameter"):
        other.attach(torch.optim.SGD(model.parameters(), lr=0.1))


def test_masking_constructor_attaches_optimizer() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masking = Masking(model, optimizer=opt)
    assert masking.optimizer is opt
    m = random_masks(masking)
    _train(model, opt, "plain", steps=3)
    assert bool((model[0].weight[~m[0]] == 0).all())


def test_weights_cast_to_another_dtype_keep_masks() -> None:
    model = mlp()
    masking = Masking(model)
    masks = random_masks(masking)
    opt = _make_opt("sgd", model)
    masking.attach(opt)
    _train(model, opt, "plain", steps=3)
    model.to(torch.float64)  # parameters change dtype in place; masks stay bool
    assert model[0].weight_mask.dtype == torch.bool
    x, y = data()
    F.cross_entropy(model(x.double()), y).backward()
    opt.step()
    assert bool((model[0].weight[~masks[0]] == 0).all())


# ============================================================================ finalize
def test_finalize_leaves_plain_model_with_exact_zeros() -> None:
    model = mlp()
    masking = Masking(model)
    masks = random_masks(masking)
    opt = _make_opt("adamw", model)
    masking.attach(opt)
    _train(model, opt, "plain", steps=10)
    x, _ = data(5)
    ref = model(x).detach()
    out_model = masking.finalize()
    assert out_model is model
    assert not [k for k in model.state_dict() if k.endswith(MASK_SUFFIX)]
    assert not [n for n, _ in model.named_buffers()]
    assert find_masked_layers(model) == []
    assert set(model.state_dict()) == set(mlp().state_dict())
    for i, m in zip((0, 2, 4), masks):
        assert bool((model[i].weight[~m] == 0).all())
    assert torch.equal(model(x), ref)
    # the optimizer hooks are gone: stepping no longer touches masks (and does not crash)
    _train(model, opt, "plain", steps=2)


def test_finalize_function_on_a_model() -> None:
    model = mlp()
    masks = random_masks(Masking(model))
    with torch.no_grad():
        model[0].weight.add_(1.0)  # violate the mask; finalize folds it
    finalize(model)
    assert not hasattr(model[0], "weight_mask")
    assert bool((model[0].weight[~masks[0]] == 0).all())


# ============================================================================ checkpoints
def _trained_masked(seed: int = 0):
    model = mlp(seed)
    masking = Masking(model)
    masks = random_masks(masking, 0.7, seed=seed + 10)
    opt = _make_opt("sgd", model)
    masking.attach(opt)
    _train(model, opt, "plain", steps=10)
    return model, masking, masks, opt


def test_state_dict_round_trip_into_fresh_model() -> None:
    model, _, masks, _ = _trained_masked()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    fresh = mlp(seed=123)
    layers = load_masked_state_dict(fresh, sd)
    assert names(layers) == ["0", "2", "4"]
    x, _ = data(7)
    assert torch.equal(fresh(x), model(x))
    for i, m in zip((0, 2, 4), masks):
        assert torch.equal(fresh[i].weight_mask, m)
    # a Masking on the loaded model reuses the checkpoint's masks; targets that leave some out are refused
    with pytest.raises(ConfigError, match=r"leave out 2 layer\(s\).*'2\.weight', '4\.weight'"):
        Masking(fresh, Targets(include=["0"]))
    assert names(find_masked_layers(fresh)) == ["0", "2", "4"]
    again = Masking(fresh, Targets(include=["0", "2", "4"]))
    assert names(again.layers) == ["0", "2", "4"]
    assert [int(l.mask.sum()) for l in again] == [int(m.sum()) for m in masks]
    opt = _make_opt("sgd", fresh)
    again.attach(opt)
    _train(fresh, opt, "plain", steps=5)
    assert bool((fresh[2].weight[~masks[1]] == 0).all())


def test_load_state_dict_into_model_that_already_has_masks() -> None:
    model, _, masks, _ = _trained_masked()
    other = mlp(9)
    Masking(other)  # all-True masks
    load_masked_state_dict(other, model.state_dict())
    assert torch.equal(other[0].weight_mask, masks[0])


def test_loading_new_masks_into_a_training_model_enforces_the_new_masks() -> None:
    """A checkpoint loaded mid-run (e.g. after a failure) replaces masks in place: the
    enforcement must follow the new masks, not a stale copy of the old ones."""
    model, masking, old_masks, opt = _trained_masked(0)
    donor, _, new_masks, _ = _trained_masked(1)
    assert not torch.equal(old_masks[0], new_masks[0])
    load_masked_state_dict(model, donor.state_dict())
    _train(model, opt, "plain", steps=10)
    for i, m in zip((0, 2, 4), new_masks):
        assert int((model[i].weight[~m] != 0).sum()) == 0
    model.load_state_dict(copy.deepcopy(donor.state_dict()))  # plain torch API, same contract
    _train(model, opt, "plain", steps=10)
    for i, m in zip((0, 2, 4), new_masks):
        assert int((model[i].weight[~m] != 0).sum()) == 0


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert torch.equal(now[k], v), k


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda sd: sd.__setitem__("2.weight_mask", torch.ones(16, 8, dtype=torch.bool)), r"'2\.weight_mask'.*\(16, 8\)"),
        (lambda sd: sd.__setitem__("2.weight_mask", torch.ones(16, 16)), "must be bool"),
        (lambda sd: sd.__setitem__("9.weight_mask", torch.ones(2, 2, dtype=torch.bool)), "no parameter"),
        (lambda sd: sd.pop("4.bias"), "missing"),
        (lambda sd: sd.__setitem__("4.bias", torch.zeros(5)), "does not match"),
        (lambda sd: sd.__setitem__("4.weight", torch.zeros(4, 15)), "does not match"),
    ],
)
def test_bad_checkpoint_raises_and_leaves_model_unchanged(corrupt, needle) -> None:
    model, _, _, _ = _trained_masked()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    corrupt(sd)
    fresh = mlp(5)
    snap = _snapshot(fresh)
    with pytest.raises(CheckpointError, match=needle):
        load_masked_state_dict(fresh, sd)
    _assert_unchanged(fresh, snap)
    assert find_masked_layers(fresh) == []


def test_bad_checkpoint_leaves_masked_model_unchanged() -> None:
    model, _, _, _ = _trained_masked(0)
    target, _, _, _ = _trained_masked(1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.weight_mask"] = torch.ones(3, 3, dtype=torch.bool)
    snap = _snapshot(target)
    with pytest.raises(CheckpointError, match="0.weight_mask"):
        load_masked_state_dict(target, sd)
    _assert_unchanged(target, snap)
    assert isinstance(CheckpointError("x"), ValueError)


def test_non_strict_load_tolerates_missing_keys() -> None:
    model, _, masks, _ = _trained_masked()
    sd = {k: v for k, v in model.state_dict().items() if k != "4.bias"}
    fresh = mlp(3)
    bias = fresh[4].bias.detach().clone()
    load_masked_state_dict(fresh, sd, strict=False)
    assert torch.equal(fresh[0].weight_mask, masks[0])
    assert torch.equal(fresh[4].bias, bias)


# ============================================================================ copy / pickle
def test_deepcopy_of_masked_model() -> None:
    model, masking, masks, opt = _trained_masked()
    clone = copy.deepcopy(model)
    x, _ = data(3)
    assert torch.equal(clone(x), model(x))
    assert torch.equal(clone[0].weight_mask, masks[0])
    clone[0].weight_mask.fill_(False)  # independent storage
    assert torch.equal(model[0].weight_mask, masks[0])
    # the original keeps training with enforcement
    _train(model, opt, "plain", steps=3)
    assert bool((model[0].weight[~masks[0]] == 0).all())


def test_pickle_of_masked_model_and_masking() -> None:
    model, masking, masks, opt = _trained_masked()
    x, _ = data(3)
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), model(x))
    assert torch.equal(clone[2].weight_mask, masks[1])
    m2 = pickle.loads(pickle.dumps(masking))
    assert m2.optimizer is None and len(m2) == 3
    assert torch.equal(m2.model[0].weight_mask, masks[0])
    # the unpickled masking works on its own copy of the model
    opt2 = _make_opt("sgd", m2.model)
    m2.attach(opt2)
    _train(m2.model, opt2, "plain", steps=3)
    assert bool((m2.model[0].weight[~masks[0]] == 0).all())
    m3 = copy.deepcopy(masking)
    assert m3.optimizer is None and m3.model is not model
    # whole-model torch.save (pickle based)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), model(x)) and hasattr(loaded[0], "weight_mask")


class _NoisySGD(torch.optim.SGD):
    """An optimizer outside EXACT_OPTIMIZERS that moves every weight, zero or not."""

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(1e-3)
        return out


def test_unknown_optimizers_get_weights_remasked_after_each_step() -> None:
    from sparseforge.masking import EXACT_OPTIMIZERS

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    masking = Masking(model)
    for layer in masking:
        masking.set_mask(layer, torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.3)
    opt = _NoisySGD(model.parameters(), lr=0.1)
    assert type(opt) not in EXACT_OPTIMIZERS
    masking.attach(opt)
    assert masking.remask_weights
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
    for layer in masking:
        assert not layer.weight[~layer.mask].any()
    masking.detach()
    masking.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    assert not masking.remask_weights  # exact optimizer: the post-step pass is skipped
    with pytest.raises(ConfigError, match="remask_weights"):
        masking.detach() or masking.attach(opt, remask_weights="sometimes")


def test_tied_weights_are_skipped_with_a_reason() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight  # GPT-2 style tying

    model = Tied()
    masking = Masking(model)
    assert [l.name for l in masking] == ["body"]
    assert masking.skipped and masking.skipped[0][0] == "head" and "tied to emb" in masking.skipped[0][1]


def test_gpt2_lm_head_tied_to_embedding_is_left_dense() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    masking = Masking(model)
    names = [l.name for l in masking]
    assert "lm_head" not in names and any(n.endswith("c_attn") for n in names)
    assert any(n == "lm_head" for n, _ in masking.skipped)
    assert all(l.transposed for l in masking if is_hf_conv1d(l.module))


# ----------------------------------------------------------------------------- gradients in backward
def test_gradients_are_masked_in_backward_so_clipping_sees_the_sparse_gradient() -> None:
    # clip_grad_norm_ runs between backward and step: its norm must be the sparse network's,
    # exactly as with torch.nn.utils.prune (whose autograd multiplies the gradient by the mask)
    import torch.nn.utils.prune as prune

    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masking = Masking(model, optimizer=opt)
    masks = random_masks(masking, 0.7)
    reference = mlp(0)
    for i, m in zip((0, 2, 4), masks):
        prune.custom_from_mask(reference[i], "weight", m)
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    for i, m in zip((0, 2, 4), masks):
        g = model[i].weight.grad
        assert int((g[~m] != 0).sum()) == 0, "pruned gradient left in place after backward"
        assert torch.allclose(g, reference[i].weight_orig.grad, atol=1e-7)
    ours = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    theirs = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # gradient accumulation: the second backward adds a dense gradient, masked again
    F.cross_entropy(model(x), y).backward()
    assert all(int((model[i].weight.grad[~m] != 0).sum()) == 0 for i, m in zip((0, 2, 4), masks))


def test_gradient_changed_after_backward_is_masked_again_at_the_step() -> None:
    # noise added to the gradients after backward (as DP-SGD does) must not revive pruned weights
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masking = Masking(model, optimizer=opt)
    masks = random_masks(masking, 0.7)
    x, y = data()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for i in (0, 2, 4):
            model[i].weight.grad.add_(torch.randn_like(model[i].weight))
        model[2].weight.grad = torch.randn_like(model[2].weight)  # a new tensor, never seen in backward
        opt.step()
    for i, m in zip((0, 2, 4), masks):
        assert int((model[i].weight[~m] != 0).sum()) == 0
        assert int((opt.state[model[i].weight]["momentum_buffer"][~m] != 0).sum()) == 0


def test_masks_changed_before_backward_are_the_ones_applied_to_the_gradient() -> None:
    # the backward hook must not use a cached float copy of an old mask
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masking = Masking(model, optimizer=opt)
    random_masks(masking, 0.7, seed=0)
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    new = torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(5)) < 0.5
    model[0].weight_mask.copy_(new)  # in place, behind the Masking's back
    F.cross_entropy(model(x), y).backward()
    dense = model[0].weight.grad.clone()
    opt.step()
    assert int((model[0].weight[~new] != 0).sum()) == 0
    # kept positions got their full gradient (not zeroed by the old mask)
    assert int((dense[new] != 0).sum()) > 0


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_mask_set_between_backward_and_step_is_enforced_at_that_step(opt_name: str) -> None:
    # set_mask refreshes the cached float mask in place; the gradient masked in backward with the
    # old mask must still be masked again, or the step moves (revives) the newly pruned weights
    model = mlp(0)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2))
    masking = Masking(model, optimizer=opt)
    random_masks(masking, 0.5, seed=0)
    x, y = data()
    new = torch.rand(model[2].weight.shape, generator=torch.Generator().manual_seed(3)) < 0.3
    for step in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if step == 1:
            masking.set_mask(masking.layer("2"), new)
        opt.step()
    assert int((model[2].weight[~new] != 0).sum()) == 0
    assert all(int((v[~new] != 0).sum()) == 0 for v in opt.state[model[2].weight].values() if v.shape == new.shape)


def _sgd_masked_mlp():
    """An MLP at 70 % random masks under plain SGD, with a batch: (model, opt, masking, masks, x, y)."""
    model = mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masking = Masking(model, optimizer=opt)
    masks = random_masks(masking, 0.7)
    x, y = data()
    return model, opt, masking, masks, x, y


def test_backward_masking_is_off_when_detached_and_on_steps_that_want_dense_gradients() -> None:
    model, opt, masking, masks, x, y = _sgd_masked_mlp()
    wants = [True]
    masking.want_dense_grads = lambda: wants[0]
    F.cross_entropy(model(x), y).backward()
    assert int((model[0].weight.grad[~masks[0]] != 0).sum()) > 0  # dense until the step
    opt.step()
    assert int((model[0].weight.grad[~masks[0]] != 0).sum()) == 0  # masked at the step
    wants[0] = False
    masking.detach()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert int((model[0].weight.grad[~masks[0]] != 0).sum()) > 0  # detached: no hooks left


def _pruned_grad_entries(model: nn.Sequential, masks: list[torch.Tensor]) -> int:
    return sum(int((model[i].weight.grad[~m] != 0).sum()) for i, m in zip((0, 2, 4), masks))


def test_backward_masking_recovers_after_a_backward_that_raised() -> None:
    # the end-of-backward callback is queued once per backward pass; a pass that died halfway
    # (its callback never ran) must not stop the next pass from masking
    model, opt, masking, masks, x, y = _sgd_masked_mlp()

    def boom(_: torch.Tensor) -> None:
        raise RuntimeError("boom")

    h = model[0](x)  # the first layer's output: its gradient comes after the last layers' weights
    h.register_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        F.cross_entropy(model[1:](h), y).backward()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert _pruned_grad_entries(model, masks) == 0


def test_backward_masking_under_reentrant_activation_checkpointing() -> None:
    # reentrant checkpointing accumulates the weights' gradients inside a nested backward pass
    from torch.utils.checkpoint import checkpoint

    model, opt, masking, masks, x, y = _sgd_masked_mlp()
    x.requires_grad_(True)
    out = checkpoint(model[:3], x, use_reentrant=True)
    F.cross_entropy(model[3:](out), y).backward()
    assert _pruned_grad_entries(model, masks) == 0
    reference = mlp(0)
    reference.load_state_dict(model.state_dict(), strict=False)
    F.cross_entropy(reference(x), y).backward()
    for i, m in zip((0, 2, 4), masks):  # kept positions got the plain gradient
        assert torch.allclose(model[i].weight.grad[m], reference[i].weight.grad[m], atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_mask_to_gives_the_same_values_as_a_plain_cast(dtype):
    g = torch.Generator().manual_seed(0)
    m = torch.rand(37, 11, generator=g) < 0.3
    for mask in (m, m.t(), m[:, ::2]):  # contiguous, transposed and strided views
        out = mask_to(mask, dtype)
        assert out.dtype == dtype and out.shape == mask.shape
        assert torch.equal(out, mask.to(dtype))
    assert mask_to(m, torch.float32).data_ptr() != m.data_ptr()  # a new tensor, not a view


# ----------------------------------------------------------------------------- float-mask cache
def test_float_mask_cache_follows_dtype_identity_and_version() -> None:
    from sparseforge.masking.cache import FloatMaskCache

    w = [torch.zeros(2, 3), torch.zeros(4)]
    m = [torch.tensor([[True, False, True], [False, True, True]]), torch.tensor([True, False, False, True])]
    cache = FloatMaskCache()
    first, rebuilt = cache.get(w, m)
    assert rebuilt and torch.equal(first[0], m[0].float()) and first[1].dtype == torch.float32
    again, rebuilt = cache.get(w, m)
    assert not rebuilt and again[0] is first[0]
    m[1][0] = False  # changed in place behind the cache's back: its version moves
    fresh, rebuilt = cache.get(w, m)
    assert rebuilt and torch.equal(fresh[1], m[1].float())
    w[0] = w[0].double()  # a weight in another dtype needs a copy in that dtype
    fresh, rebuilt = cache.get(w, m)
    assert rebuilt and fresh[0].dtype == torch.float64


def test_float_mask_cache_updates_one_layer_without_rebuilding_the_others() -> None:
    from sparseforge.masking.cache import FloatMaskCache

    w = [torch.zeros(4), torch.zeros(4)]
    m = [torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)]
    cache = FloatMaskCache()
    masks, _ = cache.get(w, m)
    other = masks[1]
    version = m[0]._version
    m[0][torch.tensor([1, 2])] = False
    cache.set_positions(0, m[0], version, torch.tensor([1, 2]), False)
    masks, rebuilt = cache.get(w, m)
    assert not rebuilt and masks[1] is other and masks[0].tolist() == [1.0, 0.0, 0.0, 1.0]
    m[1].copy_(torch.tensor([True, True, False, False]))
    cache.replace(1, w[1], m[1], m[1].float())
    masks, rebuilt = cache.get(w, m)
    assert not rebuilt and masks[1].tolist() == [1.0, 1.0, 0.0, 0.0]
    m[0][0] = False  # a change the cache is not told about ...
    version = m[0]._version
    m[0][3] = False  # ... then one it is told about: the copy was out of date before it, so it is rebuilt
    cache.set_positions(0, m[0], version, torch.tensor([3]), False)
    masks, rebuilt = cache.get(w, m)
    assert rebuilt and masks[0].tolist() == [0.0, 0.0, 0.0, 0.0]
