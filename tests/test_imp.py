"""IMP protocols (issue 32): level schedules with exact counts, the random controls, the
round_end / topology events in a plain loop, resume, bad input."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sparseforge.core.patterns import num_pruned
from sparseforge.core.schedules import LinearLevels
from sparseforge.errors import CheckpointError, ConfigError
from sparseforge.masking import MASK_SUFFIX, find_masked_layers, load_masked_state_dict
from sparseforge.methods import IMP, SET, RigL, build_method
from sparseforge.methods.base import EVENTS

# ----------------------------------------------------------------------------- helpers
SIZES = [8 * 16, 16 * 16, 16 * 4]  # the weights of mlp()'s three Linear layers
TOTAL = sum(SIZES)  # 448


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(i: int, n: int = 16):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0, on_step=None) -> None:
    for i in range(start, start + steps):
        x, y = batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if on_step is not None:
            on_step(i + 1)


def zeros_of(method) -> list[int]:
    return [int((~l.mask).sum()) for l in method.layers]


def masks_of(method) -> list[torch.Tensor]:
    return [l.mask.clone() for l in method.layers]


def loss_on(model: nn.Module) -> float:
    x, y = batch(-1, n=64)
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def run_rounds(method: IMP, model: nn.Module, opt) -> list[list[int]]:
    """Train the whole procedure; per-layer zero counts after each pruning."""
    ends = {method.round_end(r) for r in range(method.rounds)}
    out: list[list[int]] = []
    train(model, opt, method.total_steps, on_step=lambda done: out.append(zeros_of(method)) if done in ends else None)
    return out


# ============================================================================ schedules: exact counts
def test_linear_schedule_global_exact_counts_by_hand() -> None:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.6, steps_per_round=4, schedule="linear", fraction=0.25)
    assert method.rounds == 3 and method.total_steps == 4 * 4
    assert [method.round_sparsity(r) for r in range(4)] == [0.0, 0.25, 0.5, 0.6]
    # 25 % and 50 % of the original 448, then the cap at 60 %: 268.8 rounds to 269
    assert [sum(z) for z in run_rounds(method, model, opt)] == [112, 224, 269]


def test_level_list_uniform_exact_counts_by_hand() -> None:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, steps_per_round=3, schedule=[0.1, 0.5, 0.75], allocation="uniform")
    assert method.sparsity == 0.75 and method.rounds == 3 and method.fraction is None
    # per layer round(s * n) half up: 0.1 * (128, 256, 64) = 12.8, 25.6, 6.4
    assert run_rounds(method, model, opt) == [[13, 26, 6], [64, 128, 32], [96, 192, 48]]


def test_geometric_is_still_the_default_and_matches_open_lth_levels() -> None:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.5, steps_per_round=3)
    assert method.rounds == 4 and method.fraction == 0.2
    # 1 - 0.8**r of 448: 89.6, 161.28, 218.62, then the cap 224
    assert [sum(z) for z in run_rounds(method, model, opt)] == [90, 161, 219, 224]


def test_a_level_schedule_object_and_a_matching_sparsity_are_accepted() -> None:
    method = IMP(mlp(), sparsity=0.5, steps_per_round=3, schedule=LinearLevels(0.5, 0.2))
    assert method.levels.values == pytest.approx((0.2, 0.4, 0.5))
    assert IMP(mlp(), sparsity=0.8, steps_per_round=3, schedule=(0.4, 0.8)).rounds == 2


def test_recipe_accepts_the_new_imp_options_and_a_level_list_without_sparsity() -> None:
    from sparseforge.recipes import Recipe, method_parameters

    assert {"schedule", "score", "reinit", "fraction", "rewind_step"} <= method_parameters("imp")
    r = Recipe.from_dict({"method": {"name": "imp", "schedule": [0.3, 0.6], "score": "random", "reinit": "random"}})
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError, match="needs 'sparsity'"):
        Recipe.from_dict({"method": {"name": "imp", "schedule": "linear"}})


# ============================================================================ random pruning control
def _first_mask(**kw) -> list[torch.Tensor]:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.5, steps_per_round=5, **kw)
    train(model, opt, 5)
    assert method.round == 1
    return masks_of(method)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_random_score_exact_counts_seeded_and_not_magnitude(allocation: str) -> None:
    model = mlp()
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.6, steps_per_round=3, score="random", seed=7, allocation=allocation)
    prev = masks_of(method)
    counts = []

    def check(done: int) -> None:
        if done in {method.round_end(r) for r in range(method.rounds)}:
            now = masks_of(method)
            assert all(not bool((m & ~p).any()) for m, p in zip(now, prev))  # masks only shrink
            prev[:] = now
            counts.append(zeros_of(method))

    train(model, opt, method.total_steps, on_step=check)
    levels = [method.round_sparsity(r) for r in range(1, method.rounds + 1)]
    if allocation == "global":
        assert [sum(c) for c in counts] == [num_pruned(s, TOTAL) for s in levels]
    else:
        assert counts == [[num_pruned(s, n) for n in SIZES] for s in levels]
    rand_a = _first_mask(score="random", seed=7, allocation=allocation)
    rand_b = _first_mask(score="random", seed=7, allocation=allocation)
    rand_c = _first_mask(score="random", seed=8, allocation=allocation)
    magn = _first_mask(allocation=allocation)
    assert all(torch.equal(a, b) for a, b in zip(rand_a, rand_b))  # seeded
    assert not all(torch.equal(a, c) for a, c in zip(rand_a, rand_c))
    assert not all(torch.equal(a, m) for a, m in zip(rand_a, magn))
    assert sum(int((~a).sum()) for a in rand_a) == sum(int((~m).sum()) for m in magn)


# ============================================================================ random reinit control
def test_reinit_trains_the_same_mask_from_a_fresh_initialisation() -> None:
    init = mlp().state_dict()
    runs = {}
    for reinit in (None, "random"):
        model = mlp()
        opt = sgd(model)
        method = IMP(model, opt, sparsity=0.2, steps_per_round=5, reinit=reinit, seed=3)
        rng = torch.get_rng_state()
        train(model, opt, 5)  # round 0, then the pruning
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
        runs[reinit] = (masks_of(method), {k: v.clone() for k, v in model.state_dict().items()})
    (m_rew, sd_rew), (m_new, sd_new) = runs[None], runs["random"]
    assert all(torch.equal(a, b) for a, b in zip(m_rew, m_new))  # same training, same mask
    for key in ("0.weight", "2.weight", "4.weight"):
        mask = sd_new[key + MASK_SUFFIX]
        assert torch.equal(sd_rew[key], init[key] * mask)  # rewound to theta_0
        w = sd_new[key]
        assert not bool(w[~mask].any())  # pruned positions stay zero
        assert not torch.equal(w, init[key] * mask)  # a fresh draw, not theta_0
        fan_in = w.shape[1]
        assert float(w.abs().max()) <= fan_in**-0.5 and float(w[mask].std()) > 0.25 * fan_in**-0.5  # nn.Linear's init
    assert not torch.equal(sd_new["0.bias"], init["0.bias"])  # biases are re-drawn too
    # seeded: the same seed draws the same initialisation, another seed another one
    again = mlp()
    opt = sgd(again)
    IMP(again, opt, sparsity=0.2, steps_per_round=5, reinit="random", seed=3)
    train(again, opt, 5)
    assert torch.equal(again.state_dict()["2.weight"], sd_new["2.weight"])
    other = mlp()
    opt = sgd(other)
    IMP(other, opt, sparsity=0.2, steps_per_round=5, reinit="random", seed=4)
    train(other, opt, 5)
    assert not torch.equal(other.state_dict()["2.weight"], sd_new["2.weight"])


def test_reinit_callable_runs_under_the_method_seed() -> None:
    calls = []

    def normal_init(model: nn.Module) -> None:
        calls.append(1)
        for p in model.parameters():
            nn.init.normal_(p, std=0.01)

    out = []
    for _ in range(2):
        model = mlp()
        opt = sgd(model)
        method = IMP(model, opt, sparsity=0.36, steps_per_round=4, reinit=normal_init, seed=1)
        train(model, opt, 4)
        out.append(model.state_dict()["2.weight"].clone())
        assert float(out[-1].abs().max()) < 0.1 and not bool(out[-1][~method.layers[1].mask].any())
    assert len(calls) == 2 and torch.equal(out[0], out[1])


# ============================================================================ events in a plain loop
def test_round_end_event_gives_the_trained_network_before_pruning_and_rewinding() -> None:
    model = mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = sgd(model)
    method = IMP(model, opt, sparsity=0.36, steps_per_round=6)
    assert method.emits == ("round_end",) and "round_end" in EVENTS
    seen = []

    def on_round(e) -> None:
        assert not torch.is_grad_enabled()
        seen.append({"round": e.info["round"], "step": e.step, "sparsity": e.info["sparsity"], "last": e.info["last"],
                     "loss": loss_on(model), "model": copy.deepcopy(model), "mask0": method.layers[0].mask.clone()})

    handle = method.on("round_end", on_round)
    after = []
    train(model, opt, method.total_steps, on_step=lambda done: after.append(loss_on(model)) if done % 6 == 0 else None)
    assert [(s["round"], s["step"], s["last"]) for s in seen] == [(0, 6, False), (1, 12, False), (2, 18, True)]
    assert [s["sparsity"] for s in seen] == pytest.approx([0.0, 90 / TOTAL, 161 / TOTAL], abs=1e-12)
    for s, rewound_loss in zip(seen, after):
        assert s["loss"] == loss_on(s["model"])  # what the listener measured is the trained network
        if not s["last"]:
            assert s["loss"] != rewound_loss  # and not the rewound one a loop sees after the step
    # the network at the event is trained (not theta_0); after the step it is rewound to theta_0
    w_event = seen[0]["model"].state_dict()["0.weight"]
    assert not torch.equal(w_event, init["0.weight"]) and bool(seen[0]["mask0"].all())
    handle.remove()
    handle.remove()  # a second remove is harmless
    train(model, opt, 6, start=18)
    assert len(seen) == 3


def test_events_survive_neither_pickling_nor_deepcopy_and_unknown_names_fail() -> None:
    model = mlp()
    method = IMP(model, sparsity=0.2, steps_per_round=3)
    method.on("round_end", lambda e: None)
    clone = pickle.loads(pickle.dumps(method))
    assert clone._listeners == {} and copy.deepcopy(method)._listeners == {}
    with pytest.raises(ConfigError, match=r"unknown event 'round_ends'.*'round_end'"):
        method.on("round_ends", print)
    with pytest.raises(ConfigError, match="must be callable"):
        method.on("round_end", 3)


@pytest.mark.parametrize("cls", [SET, RigL])
def test_topology_events_fire_before_and_after_each_update(cls) -> None:
    model = mlp()
    opt = sgd(model)
    method = cls(model, opt, sparsity=0.7, update_interval=5, total_steps=30)
    log = []
    method.on("before_topology_update", lambda e: log.append(("before", e.step, masks_of(method))))
    method.on("after_topology_update", lambda e: log.append(("after", e.step, masks_of(method), e.info["layers"])))
    method.on("round_end", lambda e: log.append("never"))  # a known event this method does not emit
    train(model, opt, 30)
    befores = [x for x in log if x[0] == "before"]
    afters = [x for x in log if x[0] == "after"]
    assert "never" not in log and len(befores) == len(afters) > 2
    assert [b[1] for b in befores] == [a[1] for a in afters]
    assert afters[-1][1] == method.last_update["step"] and afters[-1][3] == method.last_update["layers"]
    # the masks changed in between (RigL's cosine-decayed fraction drops nothing at its last updates)
    assert not all(torch.equal(x, y) for x, y in zip(befores[0][2], afters[0][2]))
    for b, a in zip(befores[1:], afters):
        assert all(torch.equal(x, y) for x, y in zip(b[2], a[2]))  # and only at updates


# ============================================================================ resume
FACTORIES = {
    "linear": lambda m, o: IMP(m, o, sparsity=0.6, steps_per_round=20, schedule="linear", fraction=0.25),
    "random-score": lambda m, o: IMP(m, o, sparsity=0.6, steps_per_round=20, score="random", seed=5),
    "reinit": lambda m, o: IMP(m, o, schedule=[0.3, 0.5, 0.6], steps_per_round=20, reinit="random", seed=5),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_mid_round_is_identical(name: str) -> None:
    model = mlp(0)
    opt = sgd(model)
    method = FACTORIES[name](model, opt)
    train(model, opt, 30)  # mid round 1
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}, buf)
    train(model, opt, 50, start=30)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    fresh = mlp(42)
    opt2 = sgd(fresh)
    method2 = FACTORIES[name](fresh, opt2)
    load_masked_state_dict(fresh, ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    method2.load_state_dict(ckpt["method"])
    train(fresh, opt2, 50, start=30)
    assert method2.round == method.round >= 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_checkpoint_of_another_schedule_is_refused() -> None:
    a = IMP(mlp(), sparsity=0.6, steps_per_round=5, schedule="linear", fraction=0.25)
    b = IMP(mlp(), sparsity=0.6, steps_per_round=5)
    with pytest.raises(CheckpointError, match=r"levels \[0\.25, 0\.5, 0\.6\] differ"):
        b.load_state_dict(a.state_dict())
    assert b.round == 0


# ============================================================================ bad input
@pytest.mark.parametrize("kw, needle", [
    ({"schedule": [0.5, 0.4]}, r"schedule=\[0\.5, 0\.4\].*strictly increasing.*0\.4 after 0\.5"),
    ({"schedule": [0.5, 0.5]}, r"strictly increasing"),
    ({"schedule": [0.5, 1.0]}, r"schedule=\[0\.5, 1\.0\].*\[0, 1\).*1\.0"),
    ({"schedule": [-0.1, 0.5]}, r"\[0, 1\).*-0\.1"),
    ({"schedule": []}, r"non-empty"),
    ({"schedule": [0.3, 0.6], "sparsity": 0.5}, r"sparsity=0\.5 differs from the schedule's last level 0\.6"),
    ({"schedule": [0.3, 0.6], "fraction": 0.1}, r"fraction=0\.1 applies to schedule='geometric' or 'linear'"),
    ({"schedule": "cubic", "sparsity": 0.5}, r"schedule must be 'geometric', 'linear' or a list.*'cubic'"),
    ({"schedule": "linear"}, r"schedule='linear' needs the target sparsity"),
    ({"sparsity": 0.5, "reinit": "random", "rewind_step": 2}, r"reinit='random'.*rewind_step=2"),
    ({"sparsity": 0.5, "reinit": "fresh"}, r"reinit must be.*'fresh'"),
    ({"sparsity": 0.5, "score": "gradient"}, r"score must be one of \['magnitude', 'random'\]; got 'gradient'"),
    ({"sparsity": 0.5, "schedule": "linear", "fraction": 1.0}, r"fraction.*\(0, 1\).*1\.0"),
])
def test_bad_imp_arguments_name_the_value_and_leave_the_model_clean(kw, needle) -> None:
    model = mlp()
    with pytest.raises(ConfigError, match=needle):
        build_method("imp", model, steps_per_round=10, **kw)
    assert find_masked_layers(model) == []


def test_reinit_random_refuses_a_module_without_reset_parameters() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.gain

    model = nn.Sequential(nn.Linear(8, 4), Scale())
    with pytest.raises(ConfigError, match=r"module '1' \(Scale\).*no reset_parameters"):
        IMP(model, sparsity=0.5, steps_per_round=4, reinit="random")
    assert find_masked_layers(model) == []
    IMP(model, sparsity=0.5, steps_per_round=4, reinit=lambda m: None)  # a callable is the way out
