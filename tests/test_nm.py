"""N:M training with dense weights: masks, gradients, schedules, phases, checkpoints, bad input."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sparseforge.core.patterns import is_valid_nm
from sparseforge.errors import ConfigError, LayerError
from sparseforge.methods import BDWP, MDGF, SDGF, SRSTE, STE, build_method
from sparseforge.methods.nm import nm_mask, sdgf_patterns
from sparseforge.report import sparsity_report


def b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def linear(w) -> nn.Linear:
    w = torch.tensor(w, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


# ----------------------------------------------------------------------------- masks
def test_nm_mask_by_hand_with_ties() -> None:
    w = torch.tensor([[1.0, -3.0, 2.0, 0.5], [4.0, 4.0, 1.0, -4.0]])
    # row 1: three |4| tie for two places; the lowest index is pruned first
    assert torch.equal(nm_mask(w, 2, 4), b([[0, 1, 1, 0], [0, 1, 0, 1]]))


def test_nm_mask_conv_groups_run_over_input_channels() -> None:
    # [out=1, in=4, kernel 1x2]: at kernel position 0 the inputs are 1, 5, -6, 2; at 1: 8, 0, 3, -1
    w = torch.tensor([[1.0, 8.0], [5.0, 0.0], [-6.0, 3.0], [2.0, -1.0]]).reshape(1, 4, 1, 2)
    expected = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]], dtype=torch.bool).reshape(1, 4, 1, 2)
    assert torch.equal(nm_mask(w, 2, 4), expected)


def test_nm_mask_pad_policy_keeps_min_n_r_in_the_tail() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, -5.0, 0.1]])
    assert torch.equal(nm_mask(w, 2, 4, pad=True), b([[0, 0, 1, 1, 1, 1]]))
    assert torch.equal(nm_mask(w, 1, 4, pad=True), b([[0, 0, 0, 1, 1, 0]]))
    with pytest.raises(LayerError, match="not divisible by M=4"):
        nm_mask(w, 2, 4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.sampled_from([4, 8]), st.integers(1, 5), st.integers(1, 3), st.integers(0, 10_000))
def test_nm_mask_keeps_exactly_n_per_group(n, m, rows, groups, seed) -> None:
    w = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, n, m)
    assert torch.equal(mask.reshape(-1, m).sum(1), torch.full((rows * groups,), n))
    # every kept magnitude is >= every pruned magnitude of its group
    g, k = w.abs().reshape(-1, m), mask.reshape(-1, m)
    assert bool((g.masked_fill(~k, float("inf")).min(1).values >= g.masked_fill(k, -1).max(1).values).all())


def _nm_oracle(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per-group Python oracle: keep the n largest |w|; among ties the higher index is kept."""
    cw = w.movedim(1, -1).abs()  # [..., in]
    cin = cw.shape[-1]
    keep = torch.zeros_like(cw, dtype=torch.bool)
    for pos in itertools.product(*(range(d) for d in cw.shape[:-1])):
        for start in range(0, cin, m):
            idx = list(range(start, min(start + m, cin)))
            ranked = sorted(idx, key=lambda j: (float(cw[pos][j]), j), reverse=True)
            for j in ranked[:n]:
                keep[pos + (j,)] = True
    return keep.movedim(-1, 1)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([2, 3, 4, 8, 16]), st.integers(1, 15), st.integers(1, 3), st.integers(1, 37),
       st.booleans(), st.integers(0, 10_000))
def test_nm_mask_equals_a_per_group_oracle_with_ties_pad_and_conv(m, n, rows, cin, conv, seed) -> None:
    # integer weights in [-3, 3] make ties common; both selection paths (keep n <= m/2, prune otherwise) run
    n = 1 + (n - 1) % (m - 1)
    shape = (rows, cin, 2, 3) if conv else (rows, cin)
    w = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()
    assert torch.equal(nm_mask(w, n, m, pad=cin % m != 0), _nm_oracle(w, n, m))


def test_sdgf_patterns_documented_values() -> None:
    assert sdgf_patterns(1, 8, "sparsify") == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert sdgf_patterns(2, 4, "sparsify") == [(3, 4), (2, 4)]
    assert sdgf_patterns(1, 4, "sparsify") == [(3, 4), (2, 4), (1, 4)]
    assert sdgf_patterns(1, 16, "sparsify") == [(15, 16), (8, 16), (4, 16), (2, 16), (1, 16)]
    assert sdgf_patterns(1, 8, "fine") == [(8, 64), (4, 32), (2, 16), (1, 8)]
    with pytest.raises(ConfigError, match="sparsify"):
        sdgf_patterns(1, 8, "densest")


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cls, lam", [(STE, 0.0), (SRSTE, 2e-4)])
def test_ste_and_srste_gradient_by_hand(cls, lam) -> None:
    layer = linear([[1.0, -3.0, 2.0, 0.5]])
    method = cls(nn.Sequential(layer))
    y = layer(torch.ones(1, 4))
    assert y.item() == pytest.approx(-1.0)  # -3 + 2: only the two largest magnitudes
    y.sum().backward()
    # dL/dW~ = x = 1 everywhere, plus lambda * (1 - m) * W on the pruned entries (1 and 0.5)
    expected = torch.tensor([[1 + lam * 1.0, 1.0, 1.0, 1 + lam * 0.5]])
    assert torch.allclose(layer.weight.grad, expected, rtol=0, atol=1e-7)
    assert method.lambda_w == lam


def test_bdwp_input_gradient_uses_the_transposed_mask_by_hand() -> None:
    w = [[1.0, 2.0, 3.0, 4.0], [8.0, 7.0, 6.0, 5.0], [9.0, -1.0, 0.5, 3.0], [2.0, 2.5, -7.0, 1.0]]
    layer = linear(w)
    BDWP(nn.Sequential(layer), lambda_w=0.0)
    x = torch.ones(1, 4, requires_grad=True)
    y = layer(x)
    # forward mask per row (2 of 4 inputs): {3,4}, {8,7}, {9,3}, {2.5,-7}
    assert torch.allclose(y, torch.tensor([[7.0, 15.0, 12.0, -4.5]]))
    y.sum().backward()
    # backward mask per column (2 of 4 outputs): {8,9}, {7,2.5}, {6,-7}, {4,5}
    assert torch.allclose(x.grad, torch.tensor([[17.0, 9.5, -1.0, 9.0]]))
    assert torch.allclose(layer.weight.grad, torch.ones(4, 4))  # dense weight gradient


def test_bdwp_rejects_conv_and_indivisible_output() -> None:
    with pytest.raises(LayerError, match="BDWP supports Linear"):
        BDWP(nn.Sequential(nn.Conv2d(4, 8, 3)))
    with pytest.raises(LayerError, match="output dimension; 6"):
        BDWP(nn.Sequential(nn.Linear(8, 6)))


# ----------------------------------------------------------------------------- schedules
def test_mdgf_decay_values() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    lin = MDGF(model, decay="linear", decay_coef=0.01, total_steps=100, dense_fraction=0.1, finetune_fraction=0.2)
    assert [lin.beta(t) for t in (0, 9, 10, 20, 60, 79, 80, 99)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.9, 0.5, 0.31, 0.0, 0.0])
    model = nn.Sequential(nn.Linear(8, 8))
    exp = MDGF(model, decay="exp", decay_coef=0.05, total_steps=100, dense_fraction=0.1)
    assert exp.beta(10) == 1.0 and exp.beta(30) == pytest.approx(torch.exp(torch.tensor(-1.0)).item())
    assert MDGF(nn.Sequential(nn.Linear(8, 8))).decay_coef == 2e-4


def test_sdgf_switches_patterns_at_documented_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = SDGF(model, opt, sparsity="1:8", total_steps=100, dense_fraction=0.1, finetune_fraction=0.1)
    assert method.frame_starts() == [10, 30, 50, 70]
    seen = {}
    x = torch.randn(4, 16)
    for t in range(100):
        opt.zero_grad()
        model(x).sum().backward()
        seen[t] = (method.current_pattern(t), int(model[0].weight_mask.sum()))
        opt.step()
    assert seen[9] == ((1, 8), 256)  # dense phase: all kept
    assert seen[10][0] == (7, 8) and seen[10][1] == 7 * 32
    assert seen[29][0] == (7, 8) and seen[30] == ((4, 8), 4 * 32)
    assert seen[50] == ((2, 8), 2 * 32) and seen[70] == ((1, 8), 32) and seen[95] == ((1, 8), 32)


def test_sdgf_fine_needs_divisible_8m() -> None:
    with pytest.raises(LayerError, match="8:64"):
        SDGF(nn.Sequential(nn.Linear(32, 8)), sparsity="1:8", kind="fine", total_steps=10)
    SDGF(nn.Sequential(nn.Linear(64, 8)), sparsity="1:8", kind="fine", total_steps=10)


# ----------------------------------------------------------------------------- training
def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                         nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("name, kw", [("ste", {}), ("srste", {}), ("mdgf", {"decay": "linear", "decay_coef": 0.05}),
                                      ("sdgf", {"pattern": "1:4"}), ("mdgf", {"finetune_fraction": 0.3})])
def test_masks_valid_every_step_and_finalize_leaves_exact_nm(name, kw) -> None:
    model = conv_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pattern = kw.get("pattern", "2:4")
    n, m = map(int, pattern.split(":"))
    method = build_method(name, model, opt, total_steps=30, **kw)
    x, y = torch.randn(16, 8, 4, 4), torch.randint(0, 4, (16,))
    sad = []
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        used = method.current_pattern(method.step - 1)  # the pattern of the forward pass just made
        assert all(is_valid_nm(l.canonical(l.mask), *used) for l in method.layers)
        sad.append(method.sad_history[-1]["sad"])
    assert any(s > 0 for s in sad)  # the mask follows the dense weights
    assert any((l.weight != 0).float().mean() > n / m + 0.05 for l in method.layers)  # weights stay dense
    method.finalize()
    for mod in (model[0], model[3], model[5]):
        assert not hasattr(mod, "weight_mask")
        w = mod.weight if mod.weight.dim() == 2 else mod.weight
        assert is_valid_nm(w != 0, n, m)


def test_same_init_gives_same_masks_and_weights() -> None:
    runs = []
    for _ in range(2):
        model = conv_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        SRSTE(model, opt, seed=3)
        x, y = torch.randn(16, 8, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 4
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_indivisible_policies_error_skip_pad_and_report() -> None:
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))

    with pytest.raises(LayerError, match=r"0.weight: input dimension 6 .* indivisible='skip' or 'pad'"):
        STE(model())
    skip = STE(model(), indivisible="skip")
    assert [l.qualname for l in skip.layers] == ["2.weight"]
    assert skip.masking.skipped[0][0] == "0.weight" and "not divisible" in skip.masking.skipped[0][1]
    table = sparsity_report(skip.model, **skip.report_kwargs()).table()
    assert "skipped 0.weight: input dimension 6 not divisible by M" in table and "WARNING" not in table
    pad = STE(model(), indivisible="pad")
    assert int(pad.layers[0].mask.sum()) == 8 * (2 + 2)  # one full group keeps 2, the tail of 2 keeps both
    assert "note: 0.weight: input dimension padded" in sparsity_report(pad.model, **pad.report_kwargs()).table()
    with pytest.raises(ConfigError, match="indivisible must be one of"):
        STE(model(), indivisible="trim")


@pytest.mark.parametrize("spec, needle", [("2:2", "N < M"), ("4:4", "N < M"), ("1:1", "N < M"), ("3:2", "N \\(kept\\) must be <= M"),
                                          ("0:4", "n must be an integer >= 1")])
def test_bad_patterns(spec, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        STE(nn.Sequential(nn.Linear(8, 8)), sparsity=spec)


def test_other_bad_arguments() -> None:
    m = lambda: nn.Sequential(nn.Linear(8, 8))  # noqa: E731
    with pytest.raises(ConfigError, match="lambda_w"):
        SRSTE(m(), lambda_w=-1)
    with pytest.raises(ConfigError, match="decay must be"):
        MDGF(m(), decay="cosine")
    with pytest.raises(ConfigError, match="decay_coef"):
        MDGF(m(), decay_coef=0)
    with pytest.raises(ConfigError, match="SDGF needs total_steps"):
        SDGF(m())
    with pytest.raises(ConfigError, match="need total_steps"):
        STE(m(), dense_fraction=0.1)
    with pytest.raises(ConfigError, match="dense_fraction \\+ finetune_fraction"):
        STE(m(), total_steps=10, dense_fraction=0.6, finetune_fraction=0.6)
    with pytest.raises(ConfigError, match="allocation"):
        STE(m(), allocation="erk")


def test_save_and_reload_in_a_fresh_process(tmp_path) -> None:
    model = conv_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = SRSTE(model, opt)
    x, y = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    torch.save({"model": model.state_dict(), "method": method.state_dict(), "x": x, "out": out}, tmp_path / "ck.pt")
    code = textwrap.dedent(f"""
        import torch
        from torch import nn
        from sparseforge.methods import SRSTE
        ck = torch.load({str(tmp_path / 'ck.pt')!r})
        model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 16),
                              nn.ReLU(), nn.Linear(16, 4))
        method = SRSTE(model)
        model.load_state_dict(ck["model"])
        method.load_state_dict(ck["method"])
        model.eval()
        with torch.no_grad():
            out = model(ck["x"])
        assert torch.equal(out, ck["out"]), (out - ck["out"]).abs().max()
        masks = {{k: v for k, v in model.state_dict().items() if k.endswith("_mask")}}
        assert all(torch.equal(v, ck["model"][k]) for k, v in masks.items()) and len(masks) == 3
        assert method.step == 5
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
