"""sparseforge.methods: Dense, StaticSparse (magnitude, random, SNIP), GMP, IMP, SET, RigL.

Masks computed by hand on tiny models, schedules followed step by step, the DST invariants over
many updates, seeds, resuming from checkpoints, and bad input.
"""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sparseforge.core.patterns import NM, is_valid_nm, num_pruned
from sparseforge.core.schedules import Cubic
from sparseforge.errors import ConfigError, LayerError
from sparseforge.masking import MASK_SUFFIX, find_masked_layers, load_masked_state_dict
from sparseforge.methods import GMP, IMP, METHODS, SET, Dense, RigL, StaticSparse, build_method

T, F_ = True, False


# ----------------------------------------------------------------------------- helpers
def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(i: int, n: int = 16):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0, on_step=None) -> None:
    for i in range(start, start + steps):
        x, y = batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if on_step is not None:
            on_step(i)


def masks_of(method) -> list[torch.Tensor]:
    return [l.mask.clone() for l in method.layers]


def zeros_of(method) -> list[int]:
    return [int((~l.mask).sum()) for l in method.layers]


def set_layer(method, layer, mask: torch.Tensor, weight: torch.Tensor) -> None:
    """Install a hand-made mask and weight on ``layer`` (stored layout)."""
    method.masking.set_mask(layer, mask)
    with torch.no_grad():
        layer.weight.copy_(weight * mask)


def b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# ============================================================================ Dense
def test_dense_keeps_everything() -> None:
    model = mlp()
    opt = sgd(model)
    method = Dense(model, opt)
    assert all(bool(m.all()) for m in masks_of(method))
    train(model, opt, 5)
    assert all(bool(l.weight.ne(0).all()) for l in method.layers)
    assert method.state_dict()["name"] == "dense"
    with pytest.raises(ConfigError, match="sparsity 0; got 0.5"):
        Dense(mlp(), sparsity=0.5)


# ============================================================================ StaticSparse
W1 = torch.tensor([[0.1, -0.5, 0.3, 0.8], [-0.2, 0.05, -0.9, 0.4]])
W2 = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.5, -6.0]])


def two_layer() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[1].weight.copy_(W2)
    return model


def test_static_magnitude_uniform_by_hand() -> None:
    model = two_layer()
    method = StaticSparse(model, sparsity=0.5, score="magnitude", allocation="uniform")
    # layer 1: prune the 4 smallest of |W1| = 0.05, 0.1, 0.2, 0.3; layer 2: 0.5, 1, 2
    assert torch.equal(model[0].weight_mask, b([[F_, T, F_, T], [F_, F_, T, T]]))
    assert torch.equal(model[1].weight_mask, b([[F_, F_], [T, T], [F_, T]]))
    assert torch.equal(model[0].weight, W1 * model[0].weight_mask)
    assert method.layer_sparsity == [0.5, 0.5]


def test_static_magnitude_global_by_hand() -> None:
    model = two_layer()
    StaticSparse(model, sparsity=0.5, score="magnitude", allocation="global")
    # pooled: prune 7 of 14 = 0.05 0.1 0.2 0.3 0.4 0.5(layer 1) 0.5(layer 2)
    assert torch.equal(model[0].weight_mask, b([[F_, F_, F_, T], [F_, F_, T, F_]]))
    assert torch.equal(model[1].weight_mask, b([[T, T], [T, T], [F_, T]]))


def test_static_random_erk_exact_counts_and_seeds() -> None:
    m1, m2, m3 = mlp(), mlp(), mlp()
    a = StaticSparse(m1, sparsity=0.8, seed=7)
    b_ = StaticSparse(m2, sparsity=0.8, seed=7)
    c = StaticSparse(m3, sparsity=0.8, seed=8)
    assert a.allocation.name == "erk"
    for layer, s in zip(a.layers, a.layer_sparsity):
        n = layer.weight.numel()
        assert int((~layer.mask).sum()) == num_pruned(s, n)
    total = sum(l.weight.numel() for l in a.layers)
    kept = sum(int(l.mask.sum()) for l in a.layers)
    assert abs(kept - 0.2 * total) <= len(a.layers)
    assert a.layer_sparsity[0] != a.layer_sparsity[1]  # ERK is not uniform here
    assert all(torch.equal(x, y) for x, y in zip(masks_of(a), masks_of(b_)))
    assert not all(torch.equal(x, y) for x, y in zip(masks_of(a), masks_of(c)))


@pytest.mark.parametrize("cls", [StaticSparse, SET, RigL])
def test_random_mask_is_independent_of_init_drawn_with_the_same_seed(cls) -> None:
    # Regression: the mask generator was seeded with the same integer as torch.manual_seed
    # before the model was built, so the "random" noise equalled the uniform draws of the
    # weight init and the mask kept only the largest positive weights.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 300, bias=False), nn.ReLU(), nn.Linear(300, 10, bias=False))
    kw = {"total_steps": 100} if cls is RigL else {"update_interval": 10} if cls is SET else {}
    method = cls(model, sparsity=0.9, allocation="uniform", seed=0, **kw)
    w = model[0].weight.detach()[method.layers[0].mask]
    assert 0.45 < float((w > 0).float().mean()) < 0.55
    all_abs = model[0].weight.detach().abs()
    ratio = float(w.abs().mean() / (all_abs.sum() / all_abs.count_nonzero()))  # kept vs all, zeros excluded
    assert 0.95 < ratio < 1.05


def test_static_masks_fixed_through_training() -> None:
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    method = StaticSparse(model, opt, sparsity=0.75, allocation="uniform")
    before = masks_of(method)
    train(model, opt, 100)
    for layer, m in zip(method.layers, before):
        assert torch.equal(layer.mask, m)
        assert int((layer.weight[~m] != 0).sum()) == 0
    x, _ = batch(0)
    ref = model(x).detach()
    plain = method.finalize()
    assert not [k for k in plain.state_dict() if k.endswith(MASK_SUFFIX)]
    assert torch.equal(plain(x), ref)
    assert int((plain[0].weight == 0).sum()) == num_pruned(0.75, 128)


def test_snip_by_hand_one_linear_layer() -> None:
    w = torch.tensor([[0.5, -1.0, 0.2], [0.3, 0.8, -0.6]])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-1.5, 0.5, 1.0], [2.0, 1.0, 0.5]])
    y = torch.tensor([0, 1, 1, 0])
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    model.eval()
    # dL/dW of the mean cross-entropy of a linear layer: (softmax(x W^T) - onehot(y))^T x / B
    p = torch.softmax(x @ w.t(), dim=1)
    g = (p - F.one_hot(y, 2).float()).t() @ x / 4
    score = (w * g).abs().reshape(-1)
    keep = torch.zeros(6, dtype=torch.bool)
    keep[torch.topk(score, 3).indices] = True
    method = StaticSparse(model, sparsity=0.5, score="snip", data=(x, y))
    assert method.allocation.name == "global"
    assert torch.equal(model[0].weight_mask.reshape(-1), keep)
    assert torch.equal(model[0].weight, w * keep.reshape(2, 3))
    assert model[0].weight.grad is None  # scoring leaves no gradients behind
    assert not model.training  # and restores the mode
    # the 'snip' alias of build_method is the same thing
    model2 = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model2[0].weight.copy_(w)
    build_method("snip", model2, sparsity=0.5, data=(x, y))
    assert torch.equal(model2[0].weight_mask, model[0].weight_mask)


def test_snip_needs_data() -> None:
    with pytest.raises(ConfigError, match="data="):
        StaticSparse(mlp(), sparsity=0.5, score="snip")


def test_global_allocation_that_would_empty_a_layer_names_it() -> None:
    # a loss that does not depend on the weights: every SNIP score is 0, and the pooled ranking
    # (ties pruned by position) would remove the whole first layer
    x, y = batch(0)
    with pytest.raises(LayerError, match=r"0\.weight: global allocation at sparsity 0\.8 would prune all 128 weights"):
        StaticSparse(mlp(), sparsity=0.8, score="snip", data=(x, y), loss_fn=lambda out, t: out.sum() * 0)


def test_static_nm_on_conv_and_hf_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(4, 2, 3))
    w0 = conv[0].weight.detach().clone()
    StaticSparse(conv, sparsity="2:4", score="magnitude")
    m = conv[0].weight_mask
    assert is_valid_nm(m, 2, 4) and int(m.sum()) == m.numel() // 2
    assert torch.equal(m, NM(2, 4).mask(w0.abs()))  # kept = top-2 |w| of 4 input channels
    assert torch.equal(conv[0].weight, w0 * m)
    # GPT-2 Conv1D stores [in=8, out=6]; groups must run along the input dim (dim 0 as stored)
    model = nn.Sequential(Conv1D(6, 8))
    w = model[0].weight.detach().clone()
    method = StaticSparse(model, sparsity="2:4", score="magnitude")
    assert method.layer_sparsity == [0.5]
    stored = model[0].weight_mask
    assert stored.shape == (8, 6)
    assert is_valid_nm(stored.t(), 2, 4)
    assert torch.equal(stored, NM(2, 4).mask(w.abs().t()).t())


def test_static_block_and_channel_patterns_exact_units() -> None:
    model = mlp()
    method = StaticSparse(model, sparsity=0.5, pattern="block:1x4", allocation="uniform", score="magnitude")
    for layer in method.layers:
        out, inp = layer.weight.shape
        blocks = layer.mask.reshape(out, inp // 4, 4)
        assert bool((blocks.all(-1) | ~blocks.any(-1)).all())
        assert int((~blocks[..., 0]).sum()) == num_pruned(0.5, out * inp // 4)
    model = mlp()
    method = StaticSparse(model, sparsity=0.25, pattern="channel", allocation="uniform")
    for layer in method.layers:
        rows = layer.mask.all(dim=1)
        assert bool((rows | ~layer.mask.any(dim=1)).all())
        assert int((~rows).sum()) == num_pruned(0.25, layer.weight.shape[0])


def test_method_targets_first_and_last_layer_dense() -> None:
    model = mlp()
    method = StaticSparse(model, sparsity=0.5, targets={"first_layer": "dense", "last_layer": "dense"})
    assert [l.name for l in method.layers] == ["2"]
    assert not hasattr(model[0], "weight_mask") and not hasattr(model[4], "weight_mask")
    assert bool((model[0].weight != 0).all())
    with pytest.raises(ConfigError, match="'fc9'"):
        StaticSparse(mlp(), sparsity=0.5, targets={"exclude": ["fc9"]})


# ============================================================================ GMP
def _gmp_with_probe(model, opt, **kw):
    """GMP attached after a probe hook, so the probe sees the weights that GMP scores."""
    method = GMP(model, sparsity=0.8, **kw)
    seen: dict[str, list] = {"w": []}
    opt.register_step_post_hook(lambda *a: seen["w"].append([l.weight.detach().clone() for l in method.layers]))
    method.attach(opt)
    return method, seen


def test_gmp_follows_cubic_schedule_and_masks_only_shrink() -> None:
    model = mlp()
    opt = sgd(model)
    method, seen = _gmp_with_probe(model, opt, begin=10, end=50, frequency=10)
    sizes = [l.weight.numel() for l in method.layers]
    assert zeros_of(method) == [0, 0, 0]

    def expected_sparsity(t: int) -> float:
        last = max([p for p in range(10, 51, 10) if p <= t], default=None)
        if last is None:
            return 0.0
        return 0.8 + (0.0 - 0.8) * (1 - (last - 10) / 40) ** 3

    prev = masks_of(method)
    history = []

    def check(t: int) -> None:
        s = expected_sparsity(t)
        history.append(s)
        assert zeros_of(method) == [num_pruned(s, n) for n in sizes], f"step {t}"
        now = masks_of(method)
        for p, m, w_pre, layer in zip(prev, now, seen["w"][-1], method.layers):
            assert not bool((m & ~p).any()), "a pruned weight came back"
            newly = p & ~m
            if newly.any():
                assert float(w_pre[newly].abs().max()) <= float(w_pre[m].abs().min())
            assert int((layer.weight[~m] != 0).sum()) == 0
        prev[:] = now

    train(model, opt, 70, on_step=check)
    assert history[19] == 0.0 and history[20] == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert history[49] < 0.8 and history[50] == pytest.approx(0.8) and history[-1] == pytest.approx(0.8)
    assert zeros_of(method) == [num_pruned(0.8, n) for n in sizes]
    assert method.current_sparsity == pytest.approx(0.8)
    assert [method.is_pruning_step(t) for t in (9, 10, 11, 50, 60)] == [F_, T, F_, T, F_]


def test_gmp_reaches_final_sparsity_when_end_is_off_the_frequency_grid() -> None:
    model = mlp()
    opt = sgd(model)
    method = GMP(model, opt, sparsity=0.5, begin=0, end=25, frequency=10)
    train(model, opt, 40)
    assert zeros_of(method) == [num_pruned(0.5, l.weight.numel()) for l in method.layers]


def test_gmp_initial_sparsity_and_global_allocation() -> None:
    model = mlp()
    opt = sgd(model)
    method = GMP(model, opt, sparsity=0.9, begin=0, end=30, frequency=10, initial_sparsity=0.3, allocation="global")
    total = sum(l.weight.numel() for l in method.layers)
    assert sum(zeros_of(method)) == num_pruned(0.3, total)  # pruned at construction
    sched = Cubic(initial=0.3, final=0.9, begin=0, end=30, frequency=10)

    def check(t: int) -> None:
        last = max(p for p in (0, 10, 20, 30) if p <= t)
        assert sum(zeros_of(method)) == num_pruned(sched(last), total)

    train(model, opt, 35, on_step=check)


class _ReferenceGMP(GMP):
    """GMP through the general path (full-layer scores and ``set_mask``), the one sharded layers take."""

    def _shrink_layer(self, i, layer, sparsity):
        score = layer.canonical(self.score_fn(layer.weight, None, self.generator)).float()
        self.masking.set_mask(layer, self._shrink(layer, score, sparsity), canonical=True)


def _tie_model(seed: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), transformers.pytorch_utils.Conv1D(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 4) / 4)  # few distinct values: many ties at every threshold
    return model


@pytest.mark.parametrize("score", ["magnitude", "random"])
@pytest.mark.parametrize("adam", [False, True])
def test_gmp_incremental_path_equals_the_general_path(score, adam) -> None:
    """The kept-index fast path gives bit-identical masks, weights and optimizer state at every step."""
    runs = []
    for cls in (GMP, _ReferenceGMP):
        model = _tie_model(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2) if adam else sgd(model)
        method = cls(model, opt, sparsity=0.95, begin=2, end=40, frequency=3, score=score, seed=3)
        trace = []

        def record(t, method=method, opt=opt, trace=trace):
            if t == 20:  # a mask changed behind the method's back: its index lists must follow
                layer = method.layers[1]
                m = layer.mask.clone()
                m.view(-1)[: m.numel() // 2] = False
                method.masking.set_mask(layer, m)
            trace.append(([l.mask.clone() for l in method.layers], [l.weight.detach().clone() for l in method.layers],
                          [v.clone() for l in method.layers for v in opt.state[l.weight].values() if v.dim()]))

        train(model, opt, 45, on_step=record)
        runs.append(trace)
    for step, (fast, ref) in enumerate(zip(*runs)):
        for a, b_ in zip(fast, ref):
            assert all(torch.equal(x, y) for x, y in zip(a, b_)), step


def test_prune_positions_equals_set_mask_and_keeps_the_cached_masks_current() -> None:
    transformers = pytest.importorskip("transformers")
    for module in (nn.Linear(6, 4), transformers.pytorch_utils.Conv1D(4, 6)):  # canonical [4, 6] both
        model = nn.Sequential(module)
        opt = sgd(model)
        method = StaticSparse(model, opt, sparsity=0.25, seed=1)
        for _ in range(2):  # momentum buffers exist
            opt.zero_grad()
            model(torch.randn(5, 6)).square().sum().backward()
            opt.step()
        layer = method.layers[0]
        canon = layer.canonical(layer.mask)
        kept = canon.reshape(-1).nonzero().squeeze(1)
        drop = kept[[0, 3, 5]]
        expected = canon.clone().reshape(-1)
        expected[drop] = False
        expected = expected.reshape(canon.shape)
        method.masking._tensors()  # a current cache
        method.masking.prune_positions(layer, drop)
        assert torch.equal(layer.canonical(layer.mask), expected)
        assert not layer.weight[~layer.mask].any()
        assert not opt.state[layer.weight]["momentum_buffer"][~layer.mask].any()
        _, cached = method.masking._tensors()
        assert torch.equal(cached[0], layer.mask.float()) and not method.masking._stale


def test_grow_positions_activates_at_zero_with_reset_state_and_keeps_the_cache_current() -> None:
    transformers = pytest.importorskip("transformers")
    for module in (nn.Linear(6, 4), transformers.pytorch_utils.Conv1D(4, 6)):  # canonical [4, 6] both
        model = nn.Sequential(module)
        opt = sgd(model)
        method = StaticSparse(model, opt, sparsity=0.5, seed=1)
        layer = method.layers[0]
        canon = layer.canonical(layer.mask)
        empty = (~canon).reshape(-1).nonzero().squeeze(1)
        grow = empty[[0, 2, 7]]
        with torch.no_grad():  # pretend something left values there: growth must reset them
            layer.weight.view(-1)[layer.stored_index(grow)] = 5.0
        for _ in range(2):  # momentum buffers exist
            opt.zero_grad()
            model(torch.randn(5, 6)).square().sum().backward()
            opt.step()
        opt.state[layer.weight]["momentum_buffer"].view(-1)[layer.stored_index(grow)] = 3.0
        expected = canon.clone().reshape(-1)
        expected[grow] = True
        expected = expected.reshape(canon.shape)
        method.masking._tensors()  # a current cache
        method.masking.grow_positions(layer, grow)
        assert torch.equal(layer.canonical(layer.mask), expected)
        at = layer.stored_index(grow)
        assert not layer.weight.view(-1)[at].any()
        assert not opt.state[layer.weight]["momentum_buffer"].view(-1)[at].any()
        _, cached = method.masking._tensors()
        assert torch.equal(cached[0], layer.mask.float()) and not method.masking._stale
        opt.zero_grad()
        model(torch.randn(5, 6)).square().sum().backward()
        opt.step()  # the grown positions now train
        assert layer.weight.view(-1)[at].ne(0).all()


def test_gmp_layer_allocation_scales_schedule() -> None:
    model = mlp()
    opt = sgd(model)
    method = GMP(model, opt, sparsity=0.8, begin=0, end=20, frequency=10, allocation="erk")
    final = list(method.layer_sparsity)
    train(model, opt, 11)  # pruned at t=0 (0) and t=10 (half way)
    s10 = Cubic(initial=0.0, final=0.8, begin=0, end=20, frequency=10)(10)
    assert zeros_of(method) == [num_pruned(sl * s10 / 0.8, l.weight.numel()) for sl, l in zip(final, method.layers)]
    train(model, opt, 15, start=11)
    assert zeros_of(method) == [num_pruned(sl, l.weight.numel()) for sl, l in zip(final, method.layers)]


# ============================================================================ IMP
def test_imp_rounds_total_steps_and_round_sparsity() -> None:
    assert IMP.num_rounds(0.5, 0.2) == 4  # 1 - 0.8**3 = 0.488 < 0.5 <= 1 - 0.8**4
    assert IMP.num_rounds(0.2, 0.2) == 1
    assert IMP.num_rounds(0.36, 0.2) == 2
    assert IMP.num_rounds(0.9, 0.2) == 11
    assert IMP.num_rounds(0.0, 0.2) == 0
    method = IMP(mlp(), sparsity=0.5, steps_per_round=10, rewind_step=3)
    assert method.rounds == 4
    assert method.total_steps == 10 + 4 * 7
    assert [method.round_end(r) for r in range(5)] == [10, 17, 24, 31, 38]
    assert [method.round_sparsity(r) for r in (1, 2, 3, 4)] == pytest.approx([0.2, 0.36, 0.488, 0.5])


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_imp_prunes_rewinds_and_clears_optimizer_state(allocation: str) -> None:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.5, steps_per_round=10, rewind_step=3, allocation=allocation)
    sizes = [l.weight.numel() for l in method.layers]
    total = sum(sizes)
    snap: dict[str, torch.Tensor] = {}
    prev = masks_of(method)
    rounds_seen = []

    def check(t: int) -> None:
        done = t + 1
        if done == 3:
            snap.update({k: v.clone() for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)})
        if done in (10, 17, 24, 31):
            r = (10, 17, 24, 31).index(done) + 1
            rounds_seen.append(r)
            assert method.round == r
            s = min(1 - 0.8**r, 0.5)
            if allocation == "global":
                assert sum(zeros_of(method)) == num_pruned(s, total)
            else:
                assert zeros_of(method) == [num_pruned(s, n) for n in sizes]
            now = masks_of(method)
            assert all(not bool((m & ~p).any()) for m, p in zip(now, prev))  # only shrink
            prev[:] = now
            # surviving weights rewound exactly to theta_k (biases too), pruned ones zero
            for key, v in model.state_dict().items():
                if key.endswith(MASK_SUFFIX):
                    continue
                mask_key = key + MASK_SUFFIX
                expected = snap[key] * model.state_dict()[mask_key] if mask_key in model.state_dict() else snap[key]
                assert torch.equal(v, expected), key
            assert len(opt.state) == 0  # fresh optimizer state per round
        elif done > 3:
            assert len(opt.state) > 0

    train(model, opt, method.total_steps + 5, on_step=check)
    assert rounds_seen == [1, 2, 3, 4]
    assert method.round == 4
    final = sum(zeros_of(method)) if allocation == "global" else zeros_of(method)
    assert final == (num_pruned(0.5, total) if allocation == "global" else [num_pruned(0.5, n) for n in sizes])
    for layer in method.layers:
        assert int((layer.weight[~layer.mask] != 0).sum()) == 0


def test_imp_rewind_to_init_with_lr_schedule_replayed() -> None:
    model = mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    method = IMP(model, sparsity=0.36, steps_per_round=6, rewind_step=2, lr_scheduler=sched)
    method.attach(opt)
    lrs: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))  # after the method's hook
    for i in range(method.total_steps):
        x, y = batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert method.rounds == 2 and method.total_steps == 6 + 2 * 4
    # each later round replays the learning rates of steps k=2..5
    assert lrs[6:10] == pytest.approx(lrs[2:6])
    assert lrs[10:14] == pytest.approx(lrs[2:6])
    assert lrs[:6] == pytest.approx([0.1 / (1 + s) for s in range(6)])

    model0 = mlp()
    opt0 = sgd(model0)
    imp0 = IMP(model0, opt0, sparsity=0.2, steps_per_round=5, rewind_step=0)
    train(model0, opt0, 5)
    assert imp0.round == 1
    for key in ("0.weight", "2.weight", "4.bias"):
        m = model0.state_dict().get(key + MASK_SUFFIX)
        ref = init[key] if m is None else init[key] * m
        assert torch.equal(model0.state_dict()[key], ref)


# ============================================================================ SET
def _single_linear(out: int, inp: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inp, out, bias=False))


def test_set_drop_rule_by_hand() -> None:
    model = _single_linear(2, 10)
    method = SET(model, sparsity=0.45, update_interval=1, zeta=0.4, allocation="uniform")
    layer = method.layers[0]
    w = torch.zeros(20)
    w[[0, 2, 4, 6, 8]] = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7])
    w[[10, 12, 14, 16, 18]] = torch.tensor([-0.2, -0.8, -0.4, -0.6, -1.0])
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19]] = True  # 19 is active but exactly zero
    set_layer(method, layer, mask.reshape(2, 10), w.reshape(2, 10))
    kept = method.drop(layer, layer.mask, n_drop=0).reshape(-1)
    # zeta 0.4 of 5 positives: 0.1 and 0.3; of 5 negatives: -0.2 and -0.4; the active zero goes too
    expected = torch.zeros(20, dtype=torch.bool)
    expected[[2, 6, 8, 12, 16, 18]] = True
    assert torch.equal(kept, expected)


def test_set_drop_rule_asymmetric_signs() -> None:
    model = _single_linear(1, 12)
    method = SET(model, sparsity=0.25, update_interval=1, zeta=1 / 3, allocation="uniform")
    layer = method.layers[0]
    w = torch.tensor([0.6, 0.1, 0.5, 0.2, 0.4, 0.3, -0.3, -0.1, -0.2, 0.0, 0.0, 0.0])
    mask = torch.tensor([T] * 9 + [F_] * 3)
    set_layer(method, layer, mask.reshape(1, 12), w.reshape(1, 12))
    kept = method.drop(layer, layer.mask, n_drop=0).reshape(-1)
    # 2 of 6 positives (0.1, 0.2) and 1 of 3 negatives (-0.1)
    assert torch.equal(kept, torch.tensor([T, F_, T, F_, T, T, T, F_, T, F_, F_, F_]))


def test_set_drop_count_follows_the_official_keep_count() -> None:
    # 4 negatives at zeta 0.3: the official code keeps floor(0.7 * 4) = 2 and so drops 2
    # (rounding 0.3 * 4 = 1.2 would drop only 1)
    model = _single_linear(1, 8)
    method = SET(model, sparsity=0.0, update_interval=1, zeta=0.3, allocation="uniform")
    layer = method.layers[0]
    w = torch.tensor([-0.4, -0.1, -0.3, -0.2, 0.5, 0.6, 0.7, 0.8])
    set_layer(method, layer, torch.ones(1, 8, dtype=torch.bool), w.reshape(1, 8))
    kept = method.drop(layer, layer.mask, n_drop=0).reshape(-1)
    # negatives: -0.1 and -0.2 dropped; positives: keep floor(2.8) = 2 of 4 -> 0.5, 0.6 dropped
    assert torch.equal(kept, torch.tensor([T, F_, T, F_, F_, F_, T, T]))


def test_set_update_keeps_count_and_regrows_at_zero() -> None:
    model = _single_linear(2, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    method = SET(model, opt, sparsity=0.45, update_interval=1, zeta=0.4, allocation="uniform", seed=3)
    layer = method.layers[0]
    w = torch.tensor([0.1, 0.0, 0.5, 0.0, 0.3, 0.0, 0.9, 0.0, 0.7, 0.0,
                      -0.2, 0.0, -0.8, 0.0, -0.4, 0.0, -0.6, 0.0, -1.0, 0.0])
    mask = (w != 0).reshape(2, 10)
    set_layer(method, layer, mask, w.reshape(2, 10))
    x = torch.randn(4, 10)
    model(x).sum().backward()
    opt.step()  # lr 0: weights unchanged, then the SET update
    new = layer.mask.reshape(-1)
    assert int(new.sum()) == 10
    survivors = torch.zeros(20, dtype=torch.bool)
    survivors[[2, 6, 8, 12, 16, 18]] = True
    assert bool(new[survivors].all())
    flat_w = layer.weight.detach().reshape(-1)
    grown = new & ~mask.reshape(-1)
    assert int(grown.sum()) == method.last_update["layers"]["0.weight"]["grown"]
    assert bool((flat_w[grown] == 0).all())  # grown connections start at zero
    assert torch.equal(flat_w[survivors], w[survivors])
    stats = method.last_update["layers"]["0.weight"]
    assert stats["active"] == 10 and stats["dropped"] == stats["grown"]
    assert method.last_update["step"] == 1


@pytest.mark.parametrize("cls, kw", [(SET, {"update_interval": 10, "total_steps": 30}),
                                     (RigL, {"update_interval": 5, "total_steps": 11, "end": 10})])
def test_dst_never_updates_in_the_last_step(cls, kw) -> None:
    # regrown weights start at zero: an update in the last step would leave them dead in the
    # final model (the official SET code skips the last epoch's update)
    model = mlp()
    opt = sgd(model)
    method = cls(model, opt, sparsity=0.7, **kw)
    calls = []

    def rec(t: int) -> None:
        if method.last_update.get("step") == t + 1:
            calls.append(t)

    train(model, opt, kw["total_steps"], on_step=rec)
    assert calls == ([9, 19] if cls is SET else [0, 5])


def test_set_requires_update_interval() -> None:
    with pytest.raises(ConfigError, match="update_interval"):
        build_method("set", mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match="update_interval"):
        SET(mlp(), sparsity=0.5, update_interval=0)
    assert find_masked_layers(mlp()) == []


# ============================================================================ RigL
def _rigl_hand(drop_fraction: float = 0.5, lr: float = 0.1, momentum: float = 0.9, **kw):
    model = _single_linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    method = RigL(model, opt, sparsity=0.5, update_interval=2, end=10, drop_fraction=drop_fraction,
                  allocation="uniform", **kw)
    layer = method.layers[0]
    w = torch.tensor([[0.5, -0.1, 0.9, -0.3], [0.2, 0.8, -0.05, 0.7], [0.0] * 4, [0.0] * 4])
    set_layer(method, layer, w != 0, w)
    return model, opt, method, layer, w


def test_rigl_grows_top_gradient_drops_smallest_weight() -> None:
    model, opt, method, layer, w = _rigl_hand()
    g = torch.tensor([[0.0] * 4, [0.0] * 4, [0.1, -0.9, 0.3, 0.05], [-0.6, 0.2, 0.8, -0.4]])
    (layer.weight * g).sum().backward()  # custom loss: dL/dW = g exactly
    opt.step()
    # step 0 is an update step (the official last_update_step starts at -interval): f(0) = alpha
    assert method.last_update["drop_fraction"] == pytest.approx(0.5) and method.last_update["step"] == 1
    expected = torch.tensor(
        [
            [T, F_, T, F_],  # -0.1 and -0.3 dropped
            [F_, T, F_, T],  # 0.2 and -0.05 dropped
            [F_, T, F_, F_],  # |g| 0.9
            [T, F_, T, T],  # |g| 0.6, 0.8 and 0.4
        ]
    )
    assert torch.equal(layer.mask, expected)
    stats = method.last_update["layers"]["0.weight"]
    assert stats == {"active": 8, "dropped": 4, "grown": 4}
    grown = expected & (w == 0)
    assert bool((layer.weight[grown] == 0).all())  # grow_init = zeros
    assert bool((layer.weight[~expected] == 0).all())
    assert torch.equal(layer.weight[expected & (w != 0)], w[expected & (w != 0)])
    # the next step trains the grown weights, and their momentum starts from zero
    opt.zero_grad()
    (layer.weight * torch.ones(4, 4)).sum().backward()
    opt.step()
    assert torch.allclose(layer.weight[grown], torch.full((4,), -0.1))
    assert torch.equal(opt.state[layer.weight]["momentum_buffer"][grown], torch.ones(4))


def test_rigl_exploration_rate_by_hand() -> None:
    # Liu et al. 2021's R_s: positions ever active / all positions
    model, opt, method, layer, w = _rigl_hand()
    method.explored = [(w != 0).clone()]  # start at the hand-made mask, not the random initial one
    assert method.exploration_rate() == 0.5  # the 8 initial weights of 16
    g = torch.tensor([[0.0] * 4, [0.0] * 4, [0.1, -0.9, 0.3, 0.05], [-0.6, 0.2, 0.8, -0.4]])
    (layer.weight * g).sum().backward()
    opt.step()  # 4 dropped in rows 0-1, 4 grown in rows 2-3 (the update above)
    assert method.exploration_rate() == 12 / 16
    assert method.exploration_rate(per_layer=True) == {"0.weight": 0.75}
    assert method.metrics() == {"exploration_rate": 0.75, "regrown_dropped_next": None}  # one update so far
    assert torch.equal(method.explored[0], (w != 0) | layer.mask)


def test_rigl_skips_the_optimizer_step_on_update_steps() -> None:
    # official: cond(mask_update_step, mask_update, apply_gradients) -- the update step's batch
    # only ranks the regrown positions; weights, momentum and weight decay do not move
    model, opt, method, layer, w = _rigl_hand(drop_fraction=0.25)
    g = torch.full((4, 4), 0.5)
    g[3, 1] = 2.0
    (layer.weight * g).sum().backward()
    opt.step()  # t = 0: update, no SGD step
    assert method.last_update["step"] == 1
    kept = (w != 0) & (w.abs() > 0.1)  # int(8 * 0.25) = 2 dropped: -0.05 and -0.1
    assert torch.equal(layer.weight.detach()[kept], w[kept])  # no SGD step
    assert opt.state[layer.weight] == {}  # no momentum buffer either
    assert torch.equal(layer.weight.grad, g)  # the gradients are handed back untouched
    assert bool(layer.mask[3, 1]) and int(layer.mask.sum()) == 8
    opt.step()  # t = 1: a plain step (mask grads, then SGD)
    assert bool((layer.weight.detach()[kept] < w[kept]).all())


def test_rigl_without_skip_applies_the_step_then_updates() -> None:
    model, opt, method, layer, w = _rigl_hand(lr=0.01, momentum=0.0, skip_step=False)
    g = torch.tensor([[0.0] * 4, [5.0, 0.0, 0.0, 0.0], [0.1, -0.9, 0.3, 0.05], [-0.6, 0.2, 0.8, -0.4]])
    (layer.weight * g).sum().backward()
    opt.step()
    # (1,0): 0.2 - 0.01*5 = 0.15 is among the 4 smallest after the step and is dropped, but
    # its dense gradient is the largest, so it is regrown with its value; three fresh positions
    assert bool(layer.mask[1, 0])
    assert float(layer.weight[1, 0].detach()) == pytest.approx(0.15)
    assert bool(layer.mask[2, 1]) and bool(layer.mask[3, 2]) and bool(layer.mask[3, 0])
    assert method.last_update["layers"]["0.weight"] == {"active": 8, "dropped": 3, "grown": 3}
    assert int(layer.mask.sum()) == 8


def test_rigl_just_dropped_weight_can_be_regrown_and_keeps_its_value() -> None:
    model, opt, method, layer, w = _rigl_hand(lr=0.01, momentum=0.0)
    g = torch.tensor([[0.0] * 4, [5.0, 0.0, 0.0, 0.0], [0.1, -0.9, 0.3, 0.05], [-0.6, 0.2, 0.8, -0.4]])
    (layer.weight * g).sum().backward()
    opt.step()
    assert bool(layer.mask[1, 0]) and float(layer.weight[1, 0].detach()) == pytest.approx(0.2)
    assert method.last_update["layers"]["0.weight"] == {"active": 8, "dropped": 3, "grown": 3}


def test_rigl_drop_noise_breaks_exact_ties_by_seed_only() -> None:
    def dropped(seed: int, noise: float) -> torch.Tensor:
        model = _single_linear(1, 12)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        method = RigL(model, opt, sparsity=0.0, update_interval=1, end=5, drop_fraction=0.5,
                      allocation="uniform", seed=seed, drop_noise=noise)
        layer = method.layers[0]
        # eight tied magnitudes and four clearly larger ones (gap 1e-2 >> noise 1e-5)
        w = torch.tensor([[0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.31, -0.31, 0.31, -0.31]])
        set_layer(method, layer, torch.ones(1, 12, dtype=torch.bool), w)
        kept = method.drop(layer, layer.mask, n_drop=6).reshape(-1)
        return ~kept

    # without noise: ties by position, the lower index goes first
    assert torch.equal(dropped(0, 0.0), torch.tensor([T] * 6 + [F_] * 6))
    runs = [dropped(s, 1e-5) for s in range(6)]
    for d in runs:
        assert int(d.sum()) == 6 and not bool(d[8:].any())  # only the tied ones compete
    assert any(not torch.equal(runs[0], d) for d in runs[1:])  # which ones depends on the seed
    assert torch.equal(dropped(3, 1e-5), runs[3])  # and nothing else
    with pytest.raises(ConfigError, match=r"drop_noise.*-1"):
        RigL(mlp(), sparsity=0.5, end=10, drop_noise=-1)
    with pytest.raises(ConfigError, match=r"skip_step.*'yes'"):
        RigL(mlp(), sparsity=0.5, end=10, skip_step="yes")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), density=st.floats(0.2, 0.8), alpha=st.floats(0.05, 0.9))
def test_prop_rigl_update_step_is_the_official_rule_and_moves_no_weight(seed, density, alpha) -> None:
    g_ = torch.Generator().manual_seed(seed)
    model = _single_linear(3, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    method = RigL(model, opt, sparsity=0.0, update_interval=3, end=6, drop_fraction=alpha, decay="constant",
                  allocation="uniform", drop_noise=0.0)
    layer = method.layers[0]
    old = torch.rand(3, 5, generator=g_) < density
    old.view(-1)[0] = True  # at least one active weight
    w = torch.randn(3, 5, generator=g_)
    set_layer(method, layer, old, w)
    g = torch.randn(3, 5, generator=g_)
    (layer.weight * g).sum().backward()
    opt.step()  # t = 0: update step
    new = layer.mask
    assert int(new.sum()) == int(old.sum())
    assert torch.equal(new, _expected_rigl_mask(old, w * old, g, alpha))
    stay = new & old
    assert torch.equal(layer.weight.detach()[stay], (w * old)[stay])  # skipped step: no SGD, no decay
    assert bool((layer.weight.detach()[new & ~old] == 0).all())
    assert torch.equal(layer.weight.grad, g)


def test_rigl_drop_fraction_follows_cosine_schedule() -> None:
    model = mlp()
    opt = sgd(model)
    method = RigL(model, opt, sparsity=0.7, update_interval=10, total_steps=200, drop_fraction=0.3)
    assert method.end == 150
    fracs = {}

    def rec(t: int) -> None:
        if method.last_update.get("step") == t + 1:
            fracs[t] = method.last_update["drop_fraction"]

    train(model, opt, 200, on_step=rec)
    assert sorted(fracs) == list(range(0, 151, 10))  # from step 0 to end inclusive
    for step, f in fracs.items():
        assert f == pytest.approx(0.15 * (1 + math.cos(math.pi * step / 150)))


def _expected_rigl_mask(old: torch.Tensor, w: torch.Tensor, g: torch.Tensor, frac: float) -> torch.Tensor:
    """Independent rule: keep the top |w| of the active ones, grow the top |g| elsewhere.
    Ties: the lower flat index loses (stable ascending sort)."""
    shape = old.shape
    old, w, g = old.reshape(-1), w.reshape(-1).abs(), g.reshape(-1).abs()
    n_active = int(old.sum())
    n_drop = int(n_active * frac)
    act = torch.nonzero(old).reshape(-1)
    order = act[torch.sort(w[act], stable=True).indices]
    kept = torch.zeros_like(old)
    kept[order[n_drop:]] = True
    cand = torch.nonzero(~kept).reshape(-1)
    order = cand[torch.sort(g[cand], stable=True).indices]
    grown = torch.zeros_like(old)
    if n_drop:
        grown[order[-n_drop:]] = True
    return (kept | grown).reshape(shape)


@pytest.mark.parametrize("cls", [RigL, SET])
def test_dst_invariants_over_many_updates(cls) -> None:
    model = mlp()
    opt = sgd(model, lr=0.1)
    kw = dict(sparsity=0.8, update_interval=5)
    method = cls(model, **kw, total_steps=300, drop_noise=0.0) if cls is RigL else cls(model, **kw)
    probe: dict[str, list] = {}

    def pre(o, a, k):
        probe["old"] = masks_of(method)
        probe["g"] = [l.weight.grad.detach().clone() for l in method.layers]
        probe["w_pre"] = [l.weight.detach().clone() for l in method.layers]

    def post(o, a, k):
        probe["w"] = [l.weight.detach().clone() for l in method.layers]

    opt.register_step_pre_hook(pre)  # before the method's hooks: dense gradients, old masks
    opt.register_step_post_hook(post)  # post-step weights that the update scores
    method.attach(opt)
    counts = [int(l.mask.sum()) for l in method.layers]
    union = masks_of(method)
    rates = [method.exploration_rate()]
    prev_grown: list[torch.Tensor] = []
    regrowth = {"grown": 0, "dropped_next": 0}
    n_updates = 0

    def check(t: int) -> None:
        nonlocal n_updates
        assert [int(l.mask.sum()) for l in method.layers] == counts
        for u, layer, e in zip(union, method.layers, method.explored):
            u |= layer.mask
            assert torch.equal(e, u), layer.qualname  # explored = union of every mask so far
        rates.append(method.exploration_rate())
        for layer in method.layers:
            assert int((layer.weight[~layer.mask] != 0).sum()) == 0
        if method.last_update.get("step") != t + 1:
            for old, layer in zip(probe["old"], method.layers):
                assert torch.equal(old, layer.mask)
            return
        n_updates += 1
        grown_now = [l.mask & ~old for old, l in zip(probe["old"], method.layers)]
        for pg, old, layer in zip(prev_grown, probe["old"], method.layers):
            regrowth["grown"] += int(pg.sum())
            regrowth["dropped_next"] += int((pg & old & ~layer.mask).sum())
        prev_grown[:] = grown_now
        assert method.regrowth == regrowth
        frac = method.last_update["drop_fraction"]
        for old, g, w, layer in zip(probe["old"], probe["g"], probe["w"], method.layers):
            new = layer.mask
            grown, dropped = new & ~old, old & ~new
            stats = method.last_update["layers"][layer.qualname]
            assert stats["grown"] == int(grown.sum()) == int(dropped.sum()) == stats["dropped"]
            assert bool((w[grown] == 0).all())  # grown positions were inactive (zero) before
            assert bool((layer.weight[grown] == 0).all())  # and start at zero
            assert bool((layer.weight[dropped] == 0).all())
            buf = opt.state[layer.weight].get("momentum_buffer")
            assert (buf is None and t == 0 and cls is RigL) or bool((buf[grown] == 0).all())
            if cls is RigL:
                assert torch.equal(new, _expected_rigl_mask(old, w, g, frac)), layer.qualname
        if cls is RigL:  # the update step's optimizer step is skipped: no weight moved
            assert all(torch.equal(a, b_) for a, b_ in zip(probe["w_pre"], probe["w"]))
        if n_updates > 1:
            assert any(method.last_update["layers"][l.qualname]["grown"] > 0 for l in method.layers)

    train(model, opt, 120, on_step=check)
    assert n_updates == 24
    assert rates[0] == sum(counts) / sum(u.numel() for u in union)  # 1 - S before any update
    assert rates == sorted(rates) and rates[-1] > rates[0]
    assert 0 < method.regrown_dropped_next() == regrowth["dropped_next"] / regrowth["grown"] < 1


def test_rigl_requires_end_or_total_steps() -> None:
    model = mlp()
    with pytest.raises(ConfigError, match=r"end=.*total_steps="):
        RigL(model, sparsity=0.5)
    assert find_masked_layers(model) == []
    with pytest.raises(ConfigError, match=r"end.*got begin=10, end=5"):
        RigL(model, sparsity=0.5, begin=10, end=5)
    with pytest.raises(ConfigError, match="decay"):
        RigL(model, sparsity=0.5, end=10, decay="linear")
    with pytest.raises(ConfigError, match="drop_fraction"):
        RigL(model, sparsity=0.5, end=10, drop_fraction=1.5)
    # a constant drop fraction may run until training stops
    assert RigL(model, sparsity=0.5, decay="constant").end > 10**9


def test_rigl_does_not_support_nm() -> None:
    with pytest.raises(ConfigError, match="does not support pattern 'nm'"):
        RigL(mlp(), sparsity="2:4", end=10)


# ============================================================================ seeds
def _run_seeded(cls, seed: int, **kw):
    model = mlp()
    opt = sgd(model)
    method = cls(model, opt, sparsity=0.7, update_interval=5, seed=seed, **kw)
    train(model, opt, 30)
    return masks_of(method), [l.weight.detach().clone() for l in method.layers]


@pytest.mark.parametrize("cls, kw", [(SET, {}), (RigL, {"total_steps": 60})])
def test_same_seed_same_masks_different_seed_differs(cls, kw) -> None:
    m0, w0 = _run_seeded(cls, 0, **kw)
    m0b, w0b = _run_seeded(cls, 0, **kw)
    m1, _ = _run_seeded(cls, 1, **kw)
    assert all(torch.equal(a, b_) for a, b_ in zip(m0, m0b))
    assert all(torch.equal(a, b_) for a, b_ in zip(w0, w0b))
    assert not all(torch.equal(a, b_) for a, b_ in zip(m0, m1))


# ============================================================================ resume
FACTORIES = {
    "rigl": lambda m, o: RigL(m, o, sparsity=0.7, update_interval=10, total_steps=100),
    "set": lambda m, o: SET(m, o, sparsity=0.7, update_interval=10),
    "gmp": lambda m, o: GMP(m, o, sparsity=0.7, begin=10, end=80, frequency=10),
    "imp": lambda m, o: IMP(m, o, sparsity=0.6, steps_per_round=30, rewind_step=5),
    "static": lambda m, o: StaticSparse(m, o, sparsity=0.7, seed=3),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_from_checkpoint_is_identical(name: str) -> None:
    model = mlp(0)
    opt = sgd(model)
    method = FACTORIES[name](model, opt)
    train(model, opt, 50)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}, buf)
    train(model, opt, 50, start=50)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    fresh = mlp(42)  # different init: everything must come from the checkpoint
    opt2 = sgd(fresh)
    method2 = FACTORIES[name](fresh, opt2)
    load_masked_state_dict(fresh, ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    method2.load_state_dict(ckpt["method"])
    assert method2.step == 50
    train(fresh, opt2, 50, start=50)

    sd1, sd2 = model.state_dict(), fresh.state_dict()
    assert set(sd1) == set(sd2)
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert method2.step == method.step == 100
    if name in ("rigl", "set"):
        assert all(torch.equal(a, b_) for a, b_ in zip(method.explored, method2.explored))
        assert method2.exploration_rate() == method.exploration_rate() > 0.3
        assert method2.regrowth == method.regrowth and method.regrowth["grown"] > 0
        assert all(torch.equal(a, b_) for a, b_ in zip(method.last_grown, method2.last_grown))
    if name == "imp":
        assert method2.round == method.round >= 2


def test_dst_checkpoint_without_or_with_wrong_explored_positions() -> None:
    from sparseforge.errors import CheckpointError

    model = mlp(0)
    opt = sgd(model)
    method = SET(model, opt, sparsity=0.7, update_interval=10)
    train(model, opt, 30)
    state = method.state_dict()
    old = {k: v for k, v in state.items() if k != "explored"}  # written before R_s was tracked
    fresh = SET(mlp(1), sparsity=0.7, update_interval=10)
    fresh.load_state_dict(old)
    assert all(torch.equal(e, l.mask) for e, l in zip(fresh.explored, fresh.layers))  # restarts at the masks
    name = method.layers[0].qualname
    bad = {**state, "explored": {**state["explored"], name: torch.ones(3, 3, dtype=torch.bool)}}
    with pytest.raises(CheckpointError, match=rf"layer '{name}'.*shape \(3, 3\).*needs"):
        fresh.load_state_dict(bad)
    missing = {**state, "explored": {k: v for k, v in state["explored"].items() if k != name}}
    with pytest.raises(CheckpointError, match=rf"layer '{name}'.*no explored positions"):
        fresh.load_state_dict(missing)


def test_method_state_dict_rejects_other_method() -> None:
    a = StaticSparse(mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match="'static'"):
        RigL(mlp(), sparsity=0.5, end=10).load_state_dict(a.state_dict())


def test_pickled_or_reattached_method_counts_each_step_once() -> None:
    model = mlp()
    opt = sgd(model)
    method = RigL(model, opt, sparsity=0.7, update_interval=5, total_steps=100)
    train(model, opt, 7)
    clone = pickle.loads(pickle.dumps(method))
    assert clone.optimizer is None and clone.step == 7 and clone.model is not model
    opt_c = sgd(clone.model)
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch aliases loaded state tensors
    clone.attach(opt_c)
    train(model, opt, 13, start=7)
    train(clone.model, opt_c, 13, start=7)
    assert method.step == clone.step == 20
    assert clone.last_update["step"] == method.last_update["step"] == 16  # the update in call t = 15
    for a, b_ in zip(model.state_dict().values(), clone.model.state_dict().values()):
        assert torch.equal(a, b_)
    # a new optimizer (say, for a new phase): detach, attach, still one update per interval
    method.masking.detach()
    opt2 = sgd(model)
    method.attach(opt2)
    train(model, opt2, 5, start=20)
    assert method.step == 25 and method.last_update["step"] == 21  # call t = 20
    assert len(method.masking._after) == 1


def test_deepcopy_of_model_with_method_attached() -> None:
    model = mlp()
    opt = sgd(model)
    method = RigL(model, opt, sparsity=0.7, update_interval=5, total_steps=40)
    train(model, opt, 12)
    clone = copy.deepcopy(model)
    x, _ = batch(0)
    assert torch.equal(clone(x), model(x))
    assert [int(l.mask.sum()) for l in find_masked_layers(clone)] == [int(l.mask.sum()) for l in method.layers]


# ============================================================================ bad input
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a"])
@pytest.mark.parametrize("name", ["static", "gmp", "imp", "set", "rigl"])
def test_bad_sparsity_names_parameter_and_value(name: str, bad) -> None:
    extra = {"static": {}, "gmp": {"begin": 0, "end": 10}, "imp": {"steps_per_round": 10},
             "set": {"update_interval": 10}, "rigl": {"total_steps": 100}}[name]
    model = mlp()
    with pytest.raises(ConfigError) as exc:
        build_method(name, model, sparsity=bad, **extra)
    msg = str(exc.value)
    assert "sparsity" in msg and (repr(bad) in msg or str(bad) in msg), msg
    assert isinstance(exc.value, ValueError)
    assert find_masked_layers(model) == []


@pytest.mark.parametrize("spec, needle", [("5:4", "N=5"), ("0:4", "got 0"), ("4:4", "N < M")])
def test_bad_nm_pattern_in_method(spec, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        StaticSparse(mlp(), sparsity=spec)
    with pytest.raises(ConfigError, match="got 0"):
        StaticSparse(mlp(), sparsity=0.5, pattern={"type": "nm", "n": 1, "m": 0})


def test_nm_on_layer_with_indivisible_input_names_layer_and_leaves_model_clean() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with pytest.raises(LayerError, match=r"2\.weight.*input dimension 6.*M=4"):
        StaticSparse(model, sparsity="2:4")
    assert find_masked_layers(model) == []  # no half-built masks left behind
    # so the advice in the message (exclude the layer) works on the same model
    method = StaticSparse(model, sparsity="2:4", targets={"exclude": ["2"]})
    assert [l.name for l in method.layers] == ["0"]


def test_sparsity_that_empties_a_layer_names_layer() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 1))
    with pytest.raises(LayerError, match=r"1\.weight.*0\.97.*remove all 16"):
        StaticSparse(model, sparsity=0.97, allocation="uniform")
    assert find_masked_layers(model) == []


def test_failed_construction_does_not_touch_weights() -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = sgd(mlp(1))
    with pytest.raises(ConfigError, match="does not hold the masked parameter"):
        StaticSparse(model, other, sparsity=0.9)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_build_method_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'rigel'.*'rigl'"):
        build_method("rigel", mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match=r"'rigl'.*'bogus'"):
        build_method("rigl", mlp(), sparsity=0.5, total_steps=10, bogus=1)
    with pytest.raises(ConfigError, match="steps_per_round"):
        build_method("imp", mlp(), sparsity=0.5)
    with pytest.raises(ConfigError, match="begin"):
        build_method("gmp", mlp(), sparsity=0.5, end=10)
    with pytest.raises(ConfigError, match="score"):
        build_method("static", mlp(), sparsity=0.5, score="nope")
    # the built-in names (other tests and the README register plugins of their own)
    assert set(METHODS) >= {"dense", "static", "gmp", "imp", "set", "rigl", "ste", "srste", "mdgf", "sdgf", "bdwp"}
    assert isinstance(build_method("rigl", mlp(), sparsity=0.5, total_steps=10), RigL)


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, -0.2, 1.5])
def test_imp_fraction_must_be_strictly_between_0_and_1(fraction) -> None:
    model = mlp()
    with pytest.raises(ConfigError, match=rf"fraction.*{fraction}"):
        IMP(model, sparsity=0.5, steps_per_round=10, fraction=fraction)
    assert find_masked_layers(model) == []


def test_imp_and_gmp_other_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="rewind_step"):
        IMP(mlp(), sparsity=0.5, steps_per_round=10, rewind_step=10)
    with pytest.raises(ConfigError, match="steps_per_round"):
        IMP(mlp(), sparsity=0.5, steps_per_round=0)
    with pytest.raises(ConfigError, match="frequency"):
        GMP(mlp(), sparsity=0.5, begin=0, end=10, frequency=0)
    with pytest.raises(ConfigError, match="end must be > begin"):
        GMP(mlp(), sparsity=0.5, begin=10, end=10)
    model = mlp()
    with pytest.raises(ConfigError, match="N:M"):
        GMP(model, sparsity="2:4", begin=0, end=10)
    assert find_masked_layers(model) == []
    with pytest.raises(ConfigError, match="seed"):
        StaticSparse(mlp(), sparsity=0.5, seed="0")


# ============================================================================ checkpointing helpers of torch
def test_torch_distributed_checkpoint_state_init_step_is_not_a_training_step() -> None:
    # torch.distributed.checkpoint.state_dict.get_state_dict creates an empty optimizer's state
    # with one step() on all-zero gradients at lr 0. RigL must not count it, update on it, or
    # skip it (a skipped step creates no momentum buffers, which loading would then drop)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = mlp()
    opt = sgd(model)
    method = RigL(model, opt, sparsity=0.75, update_interval=5, total_steps=50)
    before = masks_of(method)
    _, osd = get_state_dict(model, opt)
    assert method.step == 0 and method.last_update == {}
    assert all(torch.equal(a, m) for a, m in zip(before, masks_of(method)))
    assert len(osd["state"]) == len(list(model.parameters()))  # every parameter got its momentum buffer
    assert all("momentum_buffer" in s for s in osd["state"].values())


def test_first_step_at_lr_zero_with_real_gradients_still_counts() -> None:
    # a warm-up that starts at lr 0 (Hugging Face's linear warm-up does) is a training step
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    method = RigL(model, opt, sparsity=0.75, update_interval=5, total_steps=50)
    train(model, opt, 1)
    assert method.step == 1 and method.last_update["step"] == 1
