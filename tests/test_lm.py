"""Language-model training with sparsity methods (sparseforge.lm) on tiny text and tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.errors import CheckpointError, ConfigError, LayerError
from sparseforge.lm import DEFAULT_LM_TARGETS, evaluate_lm, lm_loss, lm_lr_factor, nm_violations, train_lm
from sparseforge.masking import find_masked_layers
from sparseforge.text import TextCorpus, load_text_corpus

SENTENCES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma Woodhouse, handsome, clever, and rich, seemed to unite some of the best blessings of existence.",
    "No one who had ever seen Catherine Morland in her infancy would have supposed her born to be a heroine.",
    "Sir Walter Elliot never took up any book but the Baronetage.",
]
TINY = {"d_model": 16, "n_layer": 2, "n_head": 2, "block_size": 16}
FAST = {"model_params": TINY, "steps": 6, "batch_size": 4, "val_windows": 12}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TextCorpus:
    g = torch.Generator().manual_seed(0)
    text = " ".join(SENTENCES[int(i)] for i in torch.randint(len(SENTENCES), (120,), generator=g))
    path = tmp_path_factory.mktemp("lm") / "prose.txt"
    path.write_text(text, encoding="utf-8")
    return load_text_corpus(f"text:{path}", val_fraction=0.2)


def _groups_ok(w: torch.Tensor, n: int, m: int) -> bool:
    # independent of the library: count nonzeros of every run of m consecutive inputs
    rows = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
    return bool((rows <= n).all())


# --- the finished model is truly N:M sparse and is what gets scored ----------------------------------


@pytest.mark.parametrize("method, pattern", [("ste", "2:4"), ("srste", "1:4"), ("mdgf", "1:8"), ("sdgf", "1:8"),
                                             ("bdwp", "2:4")])
def test_finalize_leaves_exact_nm_zeros(corpus: TextCorpus, method: str, pattern: str) -> None:
    n, m = (int(v) for v in pattern.split(":"))
    out = train_lm(corpus, method, method_params={"pattern": pattern}, return_model=True, **FAST)
    model = out["model_object"]
    assert find_masked_layers(model) == []  # finalize removed the masks: a plain model
    assert not model.blocks[0].attn.qkv._forward_pre_hooks  # and the forward hooks
    names = dict(model.named_parameters())
    assert sorted(out["masked_layers"]) == sorted(f"blocks.{i}.{l}.weight" for i in range(2)
                                                   for l in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    for q in out["masked_layers"]:
        w = names[q].detach()
        assert _groups_ok(w, n, m), q
        assert int((w == 0).sum()) >= w.numel() * (1 - n / m)
    assert (names["head.weight"] != 0).all()  # the head stays dense
    assert out["nm_violations"] == 0 and out["pattern"] == pattern
    assert out["sparsity"] == pytest.approx(1 - n / m)
    assert out["weight_sparsity"] >= 1 - n / m
    # the reported loss is the loss of exactly this finalized model
    again = evaluate_lm(model, corpus.val, 16, max_windows=12)
    assert again["loss"] == out["val_loss"]


def test_reported_loss_is_hard_mask_not_soft_training_state(corpus: TextCorpus) -> None:
    # with the official decay_coef 2e-4, MDGF's beta is still ~1 after 6 steps: the training-time
    # forward is nearly dense, so a soft-state evaluation would differ from the hard N:M model
    out = train_lm(corpus, "mdgf", method_params={"pattern": "1:8", "decay_coef": 2e-4}, return_model=True, **FAST)
    model = out["model_object"]
    for q in out["masked_layers"]:
        assert _groups_ok(dict(model.named_parameters())[q].detach(), 1, 8)
    assert evaluate_lm(model, corpus.val, 16, max_windows=12)["loss"] == out["val_loss"]


def test_perplexity_is_exp_of_mean_token_loss(corpus: TextCorpus) -> None:
    out = train_lm(corpus, "srste", method_params={"pattern": "2:4"}, return_model=True,
                   **{**FAST, "val_windows": None})
    assert out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]), rel=1e-12)
    # recompute by hand: every full window of 16 tokens, mean cross-entropy over all tokens
    model, val = out["model_object"].eval(), corpus.val
    n = (val.numel() - 1) // 16
    with torch.no_grad():
        losses = [F.cross_entropy(model(val[i * 16:(i + 1) * 16][None]).reshape(16, -1), val[i * 16 + 1:(i + 1) * 16 + 1],
                                  reduction="sum") for i in range(n)]
    assert out["val_windows"] == n and out["val_tokens"] == 16 * n
    assert out["val_loss"] == pytest.approx(float(sum(losses)) / (16 * n), rel=1e-5)


def test_same_seed_same_result_other_seed_differs(corpus: TextCorpus) -> None:
    kw = {"method_params": {"pattern": "2:4"}, **FAST}
    a, b = train_lm(corpus, "sdgf", seed=3, **kw), train_lm(corpus, "sdgf", seed=3, **kw)
    c = train_lm(corpus, "sdgf", seed=4, **kw)
    assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"] and a["sad"] == b["sad"]
    assert c["val_loss"] != a["val_loss"]


def test_result_fields_and_budget(corpus: TextCorpus) -> None:
    out = train_lm(corpus, "srste", method_params={"pattern": "2:4"}, eval_every=2, curve_val_windows=4, log_every=2,
                   **FAST)
    assert out["steps"] == 6 and out["tokens"] == 6 * 4 * 16
    assert [p["step"] for p in out["train_loss"]] == [2, 4, 6]
    assert [e["step"] for e in out["evals"]] == [2, 4]  # the last point is the final evaluation
    assert all(math.isfinite(p["loss"]) for p in out["train_loss"]) and out["nonfinite_steps"] == 0
    assert out["sad"] == sum(p["sad"] for p in out["sad_curve"]) and out["sad"] > 0
    assert out["seconds"] >= out["train_seconds"] > 0
    assert out["dense_flops"] > out["sparse_flops"] > 0
    assert any("forward pass applies the masks" in n for n in out["notes"])


def test_dense_and_unstructured_methods(corpus: TextCorpus) -> None:
    dense = train_lm(corpus, "dense", **FAST)
    assert dense["sparsity"] == 0.0 and dense["pattern"] is None and dense["sad"] is None
    gmp = train_lm(corpus, "gmp", method_params={"sparsity": 0.75, "frequency": 1}, **FAST)
    assert gmp["sparsity"] == pytest.approx(0.75, abs=1e-3) and gmp["weight_sparsity"] >= 0.75 - 1e-3
    snip = train_lm(corpus, "snip", method_params={"sparsity": 0.5}, **FAST)
    assert snip["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_targets_none_makes_the_head_sparse_too(corpus: TextCorpus) -> None:
    out = train_lm(corpus, "ste", method_params={"pattern": "2:4"}, targets=None, **FAST)
    assert "head.weight" in out["masked_layers"]
    assert DEFAULT_LM_TARGETS["include"]  # the default list is non-empty and blocks-only


def test_indivisible_layers_follow_the_policy(corpus: TextCorpus) -> None:
    # d_model 12 is not a multiple of 8: every block layer reading d_model inputs must be skipped
    params = {**TINY, "d_model": 12}
    with pytest.raises(LayerError, match="blocks.0.attn.qkv.weight: input dimension 12 .* not divisible"):
        train_lm(corpus, "ste", method_params={"pattern": "1:8"}, **{**FAST, "model_params": params})
    out = train_lm(corpus, "ste", method_params={"pattern": "1:8", "indivisible": "skip"},
                   **{**FAST, "model_params": params})
    assert out["skipped"] and all("not divisible" in s for s in out["skipped"])
    assert out["masked_layers"] == ["blocks.0.mlp.proj.weight", "blocks.1.mlp.proj.weight"]  # 48 inputs


# --- evaluation, learning rate, N:M count -----------------------------------------------------------


class _Bigram(nn.Module):
    """Logits depend on the current token only; records the windows it was called with."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1)))
        self.seen: list[torch.Tensor] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.seen.append(idx.clone())
        return self.table[idx]


def test_evaluate_lm_matches_hand_computation_and_samples_evenly() -> None:
    tokens = torch.arange(41) % 5
    model = _Bigram(5)
    ev = evaluate_lm(model, tokens, 4, batch_size=3)
    logp = torch.log_softmax(model.table.detach(), -1)
    want = -sum(float(logp[tokens[i], tokens[i + 1]]) for i in range(40)) / 40
    assert ev["windows"] == 10 and ev["tokens"] == 40
    assert ev["loss"] == pytest.approx(want, rel=1e-6) and ev["ppl"] == pytest.approx(math.exp(want))
    model.seen.clear()
    ev3 = evaluate_lm(model, tokens, 4, max_windows=3)
    starts = torch.cat(model.seen)[:, 0].tolist()
    assert ev3["windows"] == 3 and starts == [tokens[0].item(), tokens[12].item(), tokens[24].item()]
    assert model.training  # the training flag is restored


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    f = lambda t: lm_lr_factor(t, steps=100, warmup_steps=10, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert lm_lr_factor(0, steps=5, warmup_steps=0, min_lr_ratio=0.0) == pytest.approx(1.0)


def test_nm_violations_counts_groups_by_hand() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    assert nm_violations(w, 2, 4) == 1 and nm_violations(w, 3, 4) == 0
    assert nm_violations(torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]]), 1, 4) == 2  # padded tail group
    assert lm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(4))


# --- bad input fails early and names the parameter -------------------------------------------------


@pytest.mark.parametrize("kwargs, needle", [
    ({"steps": 0}, "steps must be >= 1; got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": -1.0}, r"lr must be > 0; got -1.0"),
    ({"lr": "fast"}, "lr must be a number > 0; got 'fast'"),
    ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\]; got 1.5"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\)"),
    ({"betas": 0.9}, "betas must be a pair"),
    ({"grad_clip": -1.0}, "grad_clip must be > 0"),
    ({"warmup_steps": 7}, r"warmup_steps must be in \[0, 6\]; got 7"),
    ({"val_windows": 0}, "val_windows must be >= 1"),
    ({"eval_every": -1}, "eval_every must be >= 0"),
    ({"block_size": 17}, "block_size must be <= the model's block_size 16; got 17"),
    ({"method": "rigel"}, "method must be one of .*'rigl'.*; got 'rigel'"),
    ({"method": "imp"}, "imp"),
    ({"method": "srste", "method_params": {"pattern": "2:4", "seed": 1}}, "must not set \\['seed'\\]"),
    ({"method": "srste", "method_params": {"pattern": "2:4", "lamda_w": 1}}, "lamda_w"),
    ({"method": "srste", "method_params": {"pattern": "2:4", "total_steps": "1ep"}}, "no epochs"),
    ({"targets": "all"}, "targets must be 'blocks'"),
    ({"model_params": {"width": 3}}, "unknown argument"),
])
def test_bad_input_is_named(corpus: TextCorpus, kwargs: dict, needle: str) -> None:
    args = {**FAST, **kwargs}
    method = args.pop("method", "dense")
    with pytest.raises(ConfigError, match=needle):
        train_lm(corpus, method, **args)


# --- checkpoints: an interrupted run resumes on the same trajectory --------------------------------

RESUME = {"model_params": {**TINY, "dropout": 0.1}, "steps": 12, "batch_size": 4, "val_windows": 12, "log_every": 2,
          "eval_every": 4, "curve_val_windows": 4, "return_model": True}


def _same_run(a: dict, b: dict) -> None:
    for key in ("val_loss", "train_loss", "evals", "sad", "sad_curve", "final_train_loss", "sparsity", "nonzeros"):
        assert a[key] == b[key], key
    sa, sb = a["model_object"].state_dict(), b["model_object"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("method, params", [
    ("dense", {}), ("srste", {"pattern": "2:4"}), ("mdgf", {"pattern": "1:8"}), ("sdgf", {"pattern": "2:4"}),
    ("rigl", {"sparsity": 0.5, "update_interval": 2}), ("set", {"sparsity": 0.5, "update_interval": 3}),
    ("gmp", {"sparsity": 0.5, "frequency": 2}),
])
def test_interrupted_train_lm_resumes_bit_identically(tmp_path: Path, corpus: TextCorpus, method: str,
                                                      params: dict) -> None:
    # dropout 0.1: the torch RNG is part of what a checkpoint must restore
    full = train_lm(corpus, method, method_params=params, **RESUME)
    ck = tmp_path / "lm.pt"
    first = train_lm(corpus, method, method_params=params, checkpoint=ck, max_steps=5, **RESUME)
    assert first == {"finished": False, "step": 5, "steps": 12, "checkpoint": str(ck)}
    second = train_lm(corpus, method, method_params=params, checkpoint=ck, max_steps=2, **RESUME)
    assert second["step"] == 7  # stopped mid-way between two log points and before an evaluation
    resumed = train_lm(corpus, method, method_params=params, checkpoint=ck, **RESUME)
    assert resumed["finished"] and resumed["resumed_from"] == 7 and full["resumed_from"] is None
    _same_run(full, resumed)
    # the checkpoint of the finished run is only scored again
    again = train_lm(corpus, method, method_params=params, checkpoint=ck, **RESUME)
    assert again["resumed_from"] == 12
    _same_run(full, again)


def test_ctrl_c_inside_or_between_steps_leaves_a_consistent_checkpoint(tmp_path: Path, corpus: TextCorpus,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sparseforge import text
    from sparseforge.models import build_model

    def gpt(interrupt_at: int = 0) -> nn.Module:
        # TinyGPT whose `interrupt_at`-th training forward raises KeyboardInterrupt (Ctrl-C inside a step)
        torch.manual_seed(0)
        net = build_model("tiny-gpt", corpus, **{**TINY, "dropout": 0.1})
        forward, calls = net.forward, [0]

        def interrupted(x: torch.Tensor) -> torch.Tensor:
            if net.training:
                calls[0] += 1
                if calls[0] == interrupt_at:
                    raise KeyboardInterrupt
            return forward(x)

        net.forward = interrupted
        return net

    kw = {**RESUME, "model_params": None, "method_params": {"sparsity": 0.5, "update_interval": 2}}
    full = train_lm(corpus, "rigl", model=gpt(), **kw)
    ck = tmp_path / "lm.pt"
    # inside step 7 (1-based): the step is half applied, so the checkpoint of step 4 stays
    with pytest.raises(KeyboardInterrupt):
        train_lm(corpus, "rigl", model=gpt(7), checkpoint=ck, checkpoint_every=4, **kw)
    assert torch.load(ck, weights_only=True)["step"] == 4
    # between steps 9 and 10 (the batch stream raises): steps 5-9 are saved
    real = text.lm_batches

    def batches(*args: object, **kwargs: object):
        for i, b in enumerate(real(*args, **kwargs), kwargs.get("start", 0)):
            if i == 9:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(text, "lm_batches", batches)
    with pytest.raises(KeyboardInterrupt):
        train_lm(corpus, "rigl", model=gpt(), checkpoint=ck, checkpoint_every=4, **kw)
    assert torch.load(ck, weights_only=True)["step"] == 9
    monkeypatch.setattr(text, "lm_batches", real)
    resumed = train_lm(corpus, "rigl", model=gpt(), checkpoint=ck, **kw)
    assert resumed["resumed_from"] == 9
    _same_run(full, resumed)


def test_checkpoint_of_another_run_or_unreadable_is_refused(tmp_path: Path, corpus: TextCorpus) -> None:
    ck = tmp_path / "lm.pt"
    train_lm(corpus, "srste", method_params={"pattern": "2:4"}, checkpoint=ck, max_steps=2, **FAST)
    with pytest.raises(CheckpointError, match=r"another run \(lr: 0.001 there, 0.002 here\)"):
        train_lm(corpus, "srste", method_params={"pattern": "2:4"}, checkpoint=ck, lr=2e-3, **FAST)
    with pytest.raises(CheckpointError, match=r"method: 'srste' there, 'ste' here"):
        train_lm(corpus, "ste", method_params={"pattern": "2:4"}, checkpoint=ck, **FAST)
    other = load_text_corpus(f"text:{tmp_path / 'other.txt'}", val_fraction=0.2) if (
        (tmp_path / "other.txt").write_text(" ".join(reversed(SENTENCES)) * 4, encoding="utf-8")) else None
    with pytest.raises(CheckpointError, match="corpus: "):
        train_lm(other, "srste", method_params={"pattern": "2:4"}, checkpoint=ck, **FAST)
    ck.write_bytes(ck.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="checkpoint: cannot read"):
        train_lm(corpus, "srste", method_params={"pattern": "2:4"}, checkpoint=ck, **FAST)
    torch.save({"format": "something else"}, ck)
    with pytest.raises(CheckpointError, match="is not a train_lm checkpoint"):
        train_lm(corpus, "srste", method_params={"pattern": "2:4"}, checkpoint=ck, **FAST)
    with pytest.raises(ConfigError, match="max_steps=3 stops the run early; pass checkpoint=PATH"):
        train_lm(corpus, max_steps=3, **FAST)
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 0; got -1"):
        train_lm(corpus, checkpoint=ck, checkpoint_every=-1, **FAST)
    with pytest.raises(ConfigError, match="max_steps must be >= 1; got 0"):
        train_lm(corpus, checkpoint=ck, max_steps=0, **FAST)


def test_bad_corpus_and_tokens(tmp_path: Path, corpus: TextCorpus) -> None:
    with pytest.raises(ConfigError, match="corpus must be a TextCorpus"):
        train_lm(123, **FAST)
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3, encoding="utf-8")
    with pytest.raises(ConfigError, match="too long for the corpus' val split"):
        train_lm(f"text:{short}", **FAST)
    with pytest.raises(ConfigError, match="tokens must be a 1-D tensor"):
        evaluate_lm(nn.Identity(), torch.zeros(30), 4)
    with pytest.raises(ConfigError, match="too few for one window"):
        evaluate_lm(nn.Identity(), torch.zeros(4, dtype=torch.long), 4)


# --- the recipe dataclass under train_lm ------------------------------------------------------------


def test_lm_recipe_is_validated_when_built_and_fills_its_defaults() -> None:
    from sparseforge.lm import LMRecipe

    r = LMRecipe("gmp", method_params={"sparsity": 0.5}, steps=200)
    assert (r.warmup_steps, r.log_every, r.betas, r.grad_clip) == (10, 2, (0.9, 0.95), 1.0)
    # the method's arguments for this run: its run defaults (GMP floors 75 % without epochs) and the seed
    assert r.method_arguments() == {"sparsity": 0.5, "seed": 0, "begin": 0, "end": 150}
    assert LMRecipe(grad_clip=0).grad_clip is None
    with pytest.raises(ConfigError, match=r"lr must be > 0; got -1.0"):
        LMRecipe(lr=-1.0)  # no corpus, no model: refused before anything is built
    with pytest.raises(ConfigError, match="method 'imp' trains several rounds"):
        LMRecipe("imp", method_params={"sparsity": 0.5})
    with pytest.raises(ConfigError, match="model_params must be a dict"):
        LMRecipe(model_params=[1])
    with pytest.raises(ConfigError, match="block_size must be >= 1; got 0"):
        LMRecipe(block_size=0)


def test_lm_trainer_runs_a_recipe_exactly_as_train_lm(corpus: TextCorpus) -> None:
    from sparseforge.lm import LMRecipe, LMTrainer

    kw = {**FAST, "method_params": {"pattern": "2:4"}, "eval_every": 3, "curve_val_windows": 4, "log_every": 2}
    a = train_lm(corpus, "srste", return_model=True, **kw)
    b = LMTrainer(corpus, LMRecipe("srste", **kw)).fit(return_model=True)
    for k in ("val_loss", "train_loss", "evals", "sad_curve", "final_train_loss"):
        assert a[k] == b[k], k
    sa, sb = a["model_object"].state_dict(), b["model_object"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ConfigError, match="recipe must be an LMRecipe; got dict"):
        LMTrainer(corpus, kw)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['stpes'\]"):
        train_lm(corpus, "dense", stpes=3)
