"""The cached pretrained Austen GPT: train a tiny one into a temporary cache, reload it, determinism, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from sparseforge.errors import ConfigError
from sparseforge.lm import evaluate_lm
from sparseforge.oneshot.pretrained import AUSTEN_GPT_DEFAULTS, CACHE_ENV_VAR, cached_austen_gpt, unigram_perplexity
from sparseforge.pretrained import austen_gpt
from sparseforge.text import load_text_corpus

TINY = dict(d_model=16, n_layer=1, n_head=2, block_size=16, steps=30, batch_size=4, lr=3e-3)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = random.Random(0)
    words = "the a of and to in she he was her it that not be with as had for".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(600)) for _ in range(3))
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(text)
    return path


def test_trains_once_then_loads_identical_model(tmp_path, corpus_file):
    spec = f"text:{corpus_file}"
    first = austen_gpt(cache_dir=tmp_path, corpus=spec, **TINY)
    assert first.trained
    assert sorted(p.name for p in first.path.iterdir()) == ["config.json", "model.safetensors", "train_log.json"]
    assert first.path.parent == tmp_path / "austen-gpt"
    second = austen_gpt(cache_dir=tmp_path, corpus=spec, **TINY)
    assert not second.trained and second.path == first.path
    x = torch.randint(0, first.config["model"]["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(first.model(x), second.model(x))
    assert not second.model.training
    # the log's perplexity is the whole validation split's, recomputable from the cached weights
    data = load_text_corpus(spec)
    ev = evaluate_lm(second.model, data.val, 16)
    assert math.isclose(ev["ppl"], second.log["val_ppl"], rel_tol=1e-9)
    assert second.log["steps"] == 30 and second.log["tokens"] == 30 * 4 * 16
    assert second.config["chars"] == list(data.chars)
    # 30 steps on 19 random words already beat letter frequencies
    assert second.log["val_ppl"] < second.log["unigram_val_ppl"]
    json.loads((first.path / "train_log.json").read_text())
    # the one-shot loader reads the same cache without any training code
    cached = cached_austen_gpt(cache_dir=tmp_path, corpus=spec, **TINY)
    assert not cached.trained and cached.path == first.path and torch.equal(cached.model(x), first.model(x))


def test_cached_austen_gpt_never_trains(tmp_path, corpus_file):
    with pytest.raises(ConfigError, match="no cached Austen GPT.*sparseforge.pretrained.austen_gpt"):
        cached_austen_gpt(cache_dir=tmp_path, corpus=f"text:{corpus_file}", **TINY)
    assert not (tmp_path / "austen-gpt").exists()
    with pytest.raises(ConfigError, match="unknown argument.*width"):
        cached_austen_gpt(cache_dir=tmp_path, width=3)


def test_same_seed_same_weights_other_seed_other_folder(tmp_path, corpus_file):
    spec = f"text:{corpus_file}"
    a = austen_gpt(cache_dir=tmp_path / "a", corpus=spec, **TINY)
    b = austen_gpt(cache_dir=tmp_path / "b", corpus=spec, **TINY)
    assert a.path.name == b.path.name
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = austen_gpt(cache_dir=tmp_path / "a", corpus=spec, **{**TINY, "seed": 1})
    assert c.path != a.path and c.trained
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_retrain_replaces_and_env_var_sets_root(tmp_path, corpus_file, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    spec = f"text:{corpus_file}"
    a = austen_gpt(corpus=spec, **TINY)
    assert a.path.parent.parent == tmp_path
    b = austen_gpt(corpus=spec, retrain=True, **TINY)
    assert b.trained and b.path == a.path
    assert not any(p.name.startswith(".") for p in a.path.parent.iterdir())  # no temporary folder left


def test_interrupted_training_resumes_on_the_same_trajectory(tmp_path, corpus_file, monkeypatch):
    import sparseforge.lm as lm

    spec = f"text:{corpus_file}"
    fresh = austen_gpt(cache_dir=tmp_path / "fresh", corpus=spec, **TINY)
    real = lm.train_lm

    def interrupted(*args, **kwargs):  # 12 of the 30 steps, then Ctrl-C
        real(*args, max_steps=12, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(lm, "train_lm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        austen_gpt(cache_dir=tmp_path / "cut", corpus=spec, **TINY)
    partial = list((tmp_path / "cut" / "austen-gpt").iterdir())
    assert [p.name for p in partial] == [f".{fresh.path.name}-training.pt"]  # no model folder yet
    monkeypatch.setattr(lm, "train_lm", real)
    resumed = austen_gpt(cache_dir=tmp_path / "cut", corpus=spec, **TINY)
    assert resumed.trained and resumed.log["resumed_from"] == 12 and fresh.log["resumed_from"] is None
    for (ka, va), (kb, vb) in zip(fresh.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert resumed.log["val_ppl"] == fresh.log["val_ppl"]
    assert [p.name for p in (tmp_path / "cut" / "austen-gpt").iterdir()] == [resumed.path.name]  # checkpoint gone
    # retrain=True discards a checkpoint instead of resuming it
    monkeypatch.setattr(lm, "train_lm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        austen_gpt(cache_dir=tmp_path / "cut", corpus=spec, retrain=True, **TINY)
    monkeypatch.setattr(lm, "train_lm", real)
    again = austen_gpt(cache_dir=tmp_path / "cut", corpus=spec, retrain=True, **TINY)
    assert again.log["resumed_from"] is None


def test_unigram_perplexity_hand_computed():
    train = torch.tensor([0, 0, 1])  # counts + 1: [3, 2, 1] of 6
    val = torch.tensor([0, 2])
    expected = math.exp(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    assert math.isclose(unigram_perplexity(train, val, 3), expected, rel_tol=1e-12)


def test_bad_input(tmp_path, corpus_file):
    spec = f"text:{corpus_file}"
    with pytest.raises(ConfigError, match="unknown argument.*width"):
        austen_gpt(cache_dir=tmp_path, width=3)
    with pytest.raises(ConfigError, match="steps must be >= 1; got 0"):
        austen_gpt(cache_dir=tmp_path, corpus=spec, steps=0)
    with pytest.raises(ConfigError, match="lr must be > 0; got -1.0"):
        austen_gpt(cache_dir=tmp_path, corpus=spec, lr=-1.0)
    with pytest.raises(ConfigError, match="divisible by n_head"):
        austen_gpt(cache_dir=tmp_path, corpus=spec, d_model=10, n_head=3)
    with pytest.raises(ConfigError, match="train_if_missing=False"):
        austen_gpt(cache_dir=tmp_path, corpus=spec, train_if_missing=False, **TINY)
    assert set(TINY) <= set(AUSTEN_GPT_DEFAULTS)
