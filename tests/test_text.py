"""Text corpora (sparseforge.text) and the TinyGPT language model.

Everything runs on tiny made-up text in tmp_path; the R data reader is exercised on small R
files serialized by hand here. Only ``test_real_austen_corpus`` reads the Debian package, and
it is skipped when the package has not been fetched (it never downloads).
"""

from __future__ import annotations

import copy
import gzip
import lzma
import math
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparseforge.errors import ConfigError
from sparseforge.models import MODELS, TinyGPT, build_model, example_input
from sparseforge.text import (
    AUSTEN_NOVELS,
    TextCorpus,
    austen_available,
    ensure_austen,
    lm_batches,
    lm_eval_batches,
    load_text_corpus,
    read_austen_novels,
)

TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen.\n"
    "The hall smelt of boiled cabbage and old rag mats. At one end of it a coloured\n"
    "poster, too large for indoor display, had been tacked to the wall.\n\n"
    "Outside, even through the shut window-pane, the world looked cold.\n"
    "Down in the street little eddies of wind were whirling dust and torn paper.\n"
    "Zebras quickly jumped over the lazy fox; naïve café owners waved. £5 only!\n"
)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def corpus(text_file: Path) -> TextCorpus:
    return load_text_corpus(f"text:{text_file}", val_fraction=0.25, tokenizer="char")


# --- tokenizers and splits ------------------------------------------------------------------


def test_char_tokenizer_vocabulary_and_round_trip(corpus: TextCorpus) -> None:
    n_val = round(len(TEXT) * 0.25)
    head, tail = TEXT[:-n_val], TEXT[-n_val:]
    assert corpus.tokenizer == "char" and corpus.chars == tuple(sorted(set(head)))
    assert corpus.vocab_size == len(set(head)) + 1 and corpus.unk_id == corpus.vocab_size - 1
    assert corpus.decode(corpus.train) == head
    assert corpus.train.dtype == torch.int64 and corpus.train.dim() == 1
    assert corpus.encode(head).equal(corpus.train)
    # "ï", "é" and "£" occur only in the held-out tail: unknown ids, decoded as U+FFFD
    assert not {"ï", "é", "£"} & set(corpus.chars)
    assert corpus.decode(corpus.encode("café£")) == "caf\ufffd\ufffd"
    assert corpus.decode(corpus.val) == "".join(c if c in corpus.chars else "\ufffd" for c in tail)
    assert int(corpus.val.max()) < corpus.vocab_size and int(corpus.train.min()) >= 0
    assert corpus.decode([]) == "" and corpus.encode("").numel() == 0


def test_byte_tokenizer_round_trip(text_file: Path) -> None:
    c = load_text_corpus(f"text:{text_file}", val_fraction=0.25, tokenizer="byte")
    assert c.vocab_size == 256 and c.chars == () and c.unk_id is None
    n_val = round(len(TEXT) * 0.25)
    assert c.decode(c.train) == TEXT[:-n_val] and c.decode(c.val) == TEXT[-n_val:]
    assert c.train.numel() + c.val.numel() == len(TEXT.encode("utf-8"))
    assert c.decode(c.encode("naïve £")) == "naïve £"
    assert c.encode("é").tolist() == list("é".encode("utf-8"))


@pytest.mark.parametrize("val_fraction", [0.1, 0.5, 0.9])
def test_split_is_contiguous_tail_without_overlap(text_file: Path, val_fraction: float) -> None:
    c = load_text_corpus(f"text:{text_file}", val_fraction=val_fraction, tokenizer="byte")
    n_val = round(len(TEXT) * val_fraction)
    # byte tokens: sizes in bytes of the character split; train + val is exactly the text
    assert c.val.numel() == len(TEXT[-n_val:].encode("utf-8"))
    assert c.decode(torch.cat([c.train, c.val])) == TEXT
    assert c.documents == ("tiny.txt",) and c.name == f"text:{text_file}"


def test_corpus_is_deterministic(text_file: Path) -> None:
    a = load_text_corpus(f"text:{text_file}", val_fraction=0.2)
    b = load_text_corpus(f"text:{text_file}", val_fraction=0.2)
    assert a.train.equal(b.train) and a.val.equal(b.val) and a.chars == b.chars
    assert "vocab_size" in repr(a) and "tensor" not in repr(a)
    for c in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert c.train.equal(a.train) and c.encode("clocks").equal(a.encode("clocks"))


# --- batches --------------------------------------------------------------------------------


def test_lm_batches_shapes_targets_and_windows(corpus: TextCorpus) -> None:
    tokens = corpus.train
    batches = list(lm_batches(tokens, 16, 5, seed=3, steps=4))
    assert len(batches) == 4
    text = corpus.decode(tokens)
    for x, y in batches:
        assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert x[:, 1:].equal(y[:, :-1])
        for row_x, row_y in zip(x, y):
            window = corpus.decode(torch.cat([row_x, row_y[-1:]]))
            assert window in text  # a contiguous piece of the split


def test_lm_batches_deterministic_per_seed_and_independent_of_global_rng(corpus: TextCorpus) -> None:
    torch.manual_seed(0)
    a = list(lm_batches(corpus.train, 8, 4, seed=7, steps=3))
    torch.manual_seed(123)
    torch.rand(10)
    b = list(lm_batches(corpus.train, 8, 4, seed=7, steps=3))
    c = list(lm_batches(corpus.train, 8, 4, seed=8, steps=3))
    assert all(xa.equal(xb) and ya.equal(yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(xa.equal(xc) for (xa, _), (xc, _) in zip(a, c))
    endless = lm_batches(corpus.train, 8, 4, seed=7, steps=None)
    assert next(endless)[0].equal(a[0][0])


def test_lm_batches_start_continues_the_stream(corpus: TextCorpus) -> None:
    full = list(lm_batches(corpus.train, 8, 4, seed=7, steps=5))
    tail = list(lm_batches(corpus.train, 8, 4, seed=7, steps=5, start=2))
    assert len(tail) == 3
    assert all(xa.equal(xb) and ya.equal(yb) for (xa, ya), (xb, yb) in zip(full[2:], tail))
    assert list(lm_batches(corpus.train, 8, 4, seed=7, steps=5, start=5)) == []
    with pytest.raises(ConfigError, match=r"start must be in \[0, steps=5\]; got 6"):
        lm_batches(corpus.train, 8, 4, seed=7, steps=5, start=6)
    with pytest.raises(ConfigError, match="start must be >= 0; got -1"):
        lm_batches(corpus.train, 8, 4, seed=7, steps=5, start=-1)


def test_lm_batches_reach_both_ends(corpus: TextCorpus) -> None:
    tokens = torch.arange(12)
    seen = torch.cat([x.reshape(-1) for x, _ in lm_batches(tokens, 10, 8, seed=0, steps=20)])
    ys = torch.cat([y.reshape(-1) for _, y in lm_batches(tokens, 10, 8, seed=0, steps=20)])
    assert int(seen.min()) == 0 and int(ys.max()) == 11  # first and last token both used


def test_lm_eval_batches_cover_split_in_order(corpus: TextCorpus) -> None:
    tokens = corpus.val
    block = 7
    batches = list(lm_eval_batches(tokens, block, 3))
    n_windows = (tokens.numel() - 1) // block
    assert sum(x.shape[0] for x, _ in batches) == n_windows
    assert torch.cat([x.reshape(-1) for x, _ in batches]).equal(tokens[: n_windows * block])
    assert torch.cat([y.reshape(-1) for _, y in batches]).equal(tokens[1 : n_windows * block + 1])


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, 1.5, -0.1])
def test_val_fraction_outside_open_interval(text_file: Path, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"val_fraction must be in \(0, 1\).*got {float(bad)}"):
        load_text_corpus(f"text:{text_file}", val_fraction=bad)


def test_bad_corpus_arguments(text_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="val_fraction must be a number.*got '0.1'"):
        load_text_corpus(f"text:{text_file}", val_fraction="0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="val_fraction must be a number.*got True"):
        load_text_corpus(f"text:{text_file}", val_fraction=True)
    with pytest.raises(ConfigError, match="unknown text corpus name 'shakespeare'; allowed: 'austen' or 'text:PATH'"):
        load_text_corpus("shakespeare")
    with pytest.raises(ConfigError, match="tokenizer must be one of \\['char', 'byte'\\]; got 'bpe'"):
        load_text_corpus(f"text:{text_file}", tokenizer="bpe")
    with pytest.raises(ConfigError, match="must point to an existing text file.*missing.txt"):
        load_text_corpus(f"text:{tmp_path / 'missing.txt'}")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_text_corpus(f"text:{tmp_path / 'bin.txt'}")
    (tmp_path / "short.txt").write_text("ab")
    with pytest.raises(ConfigError, match="'short.txt' has 2 characters, too few.*val_fraction=0.1"):
        load_text_corpus(f"text:{tmp_path / 'short.txt'}")


def test_bad_batch_arguments(corpus: TextCorpus) -> None:
    n = corpus.val.numel()
    with pytest.raises(ConfigError, match=rf"block_size must be at most {n - 1} for a split of {n} tokens.*got {n}"):
        lm_batches(corpus.val, n, 2, seed=0, steps=1)  # raised at the call, not at next()
    with pytest.raises(ConfigError, match="block_size must be at most"):
        lm_eval_batches(corpus.val, 10_000, 2)
    with pytest.raises(ConfigError, match="block_size must be >= 1; got 0"):
        lm_batches(corpus.train, 0, 2, seed=0, steps=1)
    with pytest.raises(ConfigError, match="batch_size must be >= 1; got 0"):
        lm_batches(corpus.train, 4, 0, seed=0, steps=1)
    with pytest.raises(ConfigError, match="steps must be >= 1; got 0"):
        lm_batches(corpus.train, 4, 2, seed=0, steps=0)
    with pytest.raises(ConfigError, match="tokens must be a 1-D integer tensor.*2-D"):
        lm_batches(corpus.train.view(1, -1), 4, 2, seed=0, steps=1)
    with pytest.raises(ConfigError, match="tokens must be a 1-D integer tensor.*float"):
        lm_batches(corpus.train.float(), 4, 2, seed=0, steps=1)
    v = corpus.vocab_size
    with pytest.raises(ConfigError, match=rf"tokens must be ids in \[0, {v}\); got {v}"):
        corpus.decode([0, v])


def test_ensure_austen_without_download_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found in .*apt-get download r-cran-janeaustenr && dpkg -x"):
        ensure_austen(tmp_path / "nothing", download=False)
    assert not austen_available(tmp_path / "nothing")


# --- the R data reader, on files serialized here --------------------------------------------


def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _chars(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _i(9 | (8 << 12)) + _i(len(raw)) + raw  # CHARSXP flagged UTF-8


def _sym(name: str) -> bytes:
    return _i(1) + _chars(name)


def _strs(values: list[str]) -> bytes:
    return _i(16) + _i(len(values)) + b"".join(_chars(v) for v in values)


def _ints(values: list[int]) -> bytes:
    return _i(13) + _i(len(values)) + b"".join(_i(v) for v in values)


def _named_list(items: dict[str, bytes]) -> bytes:
    # VECSXP with an attribute pairlist holding names
    return (_i(19 | (1 << 9)) + _i(len(items)) + b"".join(items.values())
            + _i(2 | (1 << 10)) + _sym("names") + _strs(list(items)) + _i(254))


def _serialize(body: bytes) -> bytes:
    return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8" + body


def _fake_novels() -> dict[str, list[str]]:
    return {key: [title.upper(), "", f"Chapter 1 of {key}.", "It was a truth, universally", "acknowledged."]
            for key, title in AUSTEN_NOVELS.items()}


def _write_lazyload_db(data_dir: Path, novels: dict[str, list[str]]) -> None:
    blobs, index = b"", {}
    for key, lines in novels.items():
        raw = _serialize(_strs(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[key] = _ints([len(blobs), len(blob)])
        blobs += blob
    data_dir.mkdir(parents=True)
    (data_dir / "Rdata.rdb").write_bytes(blobs)
    rdx = _named_list({"variables": _named_list(index), "references": _named_list({}), "compressed": _ints([1])})
    (data_dir / "Rdata.rdx").write_bytes(gzip.compress(_serialize(rdx)))


def test_reads_lazyload_database_in_dpkg_layout(tmp_path: Path) -> None:
    novels = _fake_novels()
    _write_lazyload_db(tmp_path / "usr/lib/R/site-library/janeaustenr/data", novels)
    assert ensure_austen(tmp_path, download=False) == tmp_path / "usr/lib/R/site-library/janeaustenr"
    texts = read_austen_novels(tmp_path, download=False)
    assert list(texts) == list(AUSTEN_NOVELS.values())
    assert texts["Emma"] == "\n".join(novels["emma"]) + "\n"
    c = load_text_corpus("austen", root=tmp_path, val_fraction=0.2, download=False, tokenizer="byte")
    assert c.documents == tuple(AUSTEN_NOVELS.values())
    # every novel keeps its own held-out tail; parts are joined by a blank line
    heads, tails = zip(*((t[: -round(len(t) * 0.2)], t[-round(len(t) * 0.2):]) for t in texts.values()))
    assert c.decode(c.train) == "\n\n".join(heads) and c.decode(c.val) == "\n\n".join(tails)


def test_reads_xz_rda_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for key, lines in _fake_novels().items():
        # a save()d .rda: header, then a pairlist of tagged objects
        body = _i(2 | (1 << 10)) + _sym(key) + _strs(lines) + _i(254)
        (data_dir / f"{key}.rda").write_bytes(lzma.compress(b"RDX3\n" + _serialize(body)))
    texts = read_austen_novels(tmp_path, download=False)
    assert texts["Persuasion"].startswith("PERSUASION\n\nChapter 1 of persuasion.")


def test_corrupt_r_data_is_a_config_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _write_lazyload_db(data_dir, _fake_novels())
    blob = (data_dir / "Rdata.rdb").read_bytes()
    (data_dir / "Rdata.rdb").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ConfigError, match="cannot parse R data"):
        read_austen_novels(tmp_path, download=False)
    (data_dir / "Rdata.rdx").write_bytes(b"\x1f\x8b" + b"junk")
    with pytest.raises(ConfigError, match="Rdata.rdx: it does not decompress"):
        read_austen_novels(tmp_path, download=False)


def test_real_austen_corpus() -> None:
    if not austen_available():
        pytest.skip("Jane Austen corpus not fetched (sparseforge.text.ensure_austen() fetches it)")
    texts = read_austen_novels(download=False)
    assert list(texts) == list(AUSTEN_NOVELS.values())
    assert 3_900_000 < sum(map(len, texts.values())) < 4_200_000
    assert texts["Pride & Prejudice"].startswith("PRIDE AND PREJUDICE")
    c = load_text_corpus("austen", download=False)
    total = c.train.numel() + c.val.numel()
    assert 0.09 < c.val.numel() / total < 0.11
    assert 60 < c.vocab_size < 120 and c.decode(c.encode("Mr. Darcy")) == "Mr. Darcy"


# --- TinyGPT --------------------------------------------------------------------------------


def _gpt_params(v: int, t: int, d: int, n_layer: int, *, bias: bool = True, tied: bool = False) -> int:
    per_block = 12 * d * d + (13 * d if bias else 2 * d)
    return (1 if tied else 2) * v * d + t * d + n_layer * per_block + (2 * d if bias else d)


def test_tinygpt_shape_and_names() -> None:
    m = TinyGPT(vocab_size=50, block_size=16, d_model=32, n_layer=2, n_head=4).eval()
    idx = torch.randint(50, (3, 16))
    assert m(idx).shape == (3, 16, 50) and m(idx[:, :5]).shape == (3, 5, 50)
    linears = {n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    per_block = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    assert linears == {f"blocks.{i}.{s}" for i in range(2) for s in per_block} | {"head"}
    assert m.blocks[0].mlp.fc.out_features == 4 * 32 and m.head.bias is None


def test_tinygpt_is_causal() -> None:
    torch.manual_seed(0)
    m = TinyGPT(vocab_size=20, block_size=12, d_model=16, n_layer=2, n_head=2).eval()
    idx = torch.randint(20, (2, 12))
    changed = idx.clone()
    t = 6
    changed[:, t] = (idx[:, t] + 1) % 20
    with torch.no_grad():
        a, b = m(idx), m(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("bias, tied", [(True, False), (False, False), (True, True), (False, True)])
def test_tinygpt_parameter_count(bias: bool, tied: bool) -> None:
    m = TinyGPT(vocab_size=37, block_size=9, d_model=24, n_layer=3, n_head=3, bias=bias, tie_weights=tied)
    assert sum(p.numel() for p in m.parameters()) == _gpt_params(37, 9, 24, 3, bias=bias, tied=tied)
    assert (m.head.weight is m.tok_emb.weight) == tied


def test_tinygpt_defaults() -> None:
    m = TinyGPT()
    assert sum(p.numel() for p in m.parameters()) == _gpt_params(256, 128, 256, 4) == 3_323_392
    assert len(m.blocks) == 4 and m.block_size == 128 and m.blocks[0].attn.n_head == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"d_model": 30, "n_head": 4}, r"d_model must be divisible by n_head \(4\); got d_model=30"),
    ({"n_layer": 0}, "n_layer must be >= 1; got 0"),
    ({"vocab_size": 0}, "vocab_size must be >= 1; got 0"),
    ({"block_size": 2.0}, "block_size must be an integer >= 1; got 2.0"),
    ({"n_head": 0}, "n_head must be >= 1; got 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\); got 1.0"),
    ({"tie_weights": "yes"}, "tie_weights must be True or False; got 'yes'"),
])
def test_tinygpt_bad_args(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TinyGPT(**kwargs)


def test_tinygpt_bad_inputs() -> None:
    m = TinyGPT(vocab_size=10, block_size=4, d_model=8, n_layer=1, n_head=2)
    with pytest.raises(ConfigError, match="has 5 tokens per sequence; block_size allows at most 4"):
        m(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer token ids; got a 2-D torch.float32"):
        m(torch.zeros(1, 4))


def test_build_model_tinygpt_from_corpus(corpus: TextCorpus) -> None:
    assert "tiny-gpt" in MODELS
    m = build_model("tiny_gpt", corpus, d_model=16, n_layer=1, n_head=2, block_size=8)
    assert isinstance(m, TinyGPT) and m.head.out_features == corpus.vocab_size
    assert build_model("tiny-gpt", corpus, vocab_size=300, d_model=8, n_head=2).tok_emb.num_embeddings == 300
    x = example_input("tiny-gpt", corpus, batch=2)
    assert x.shape == (2, 128) and x.dtype == torch.int64
    assert build_model("tiny-gpt").eval()(example_input("tiny-gpt", batch=1)).shape == (1, 128, 256)
    with pytest.raises(ConfigError, match="model 'mlp1d' needs a dataset of inputs and classes.*text corpus.*tiny-gpt"):
        build_model("mlp1d", corpus)
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['num_classes'\]"):
        build_model("tiny-gpt", num_classes=3)


def test_build_model_tinygpt_rejects_classification_data() -> None:
    from sparseforge.data import Dataset

    x, y = torch.zeros(4, 40), torch.zeros(4, dtype=torch.long)
    data = Dataset("toy", x, y, x, y, 2, (40,))
    with pytest.raises(ConfigError, match="'tiny-gpt' needs a text corpus.*'toy'"):
        build_model("tiny-gpt", data)


def test_tinygpt_learns_tiny_text(corpus: TextCorpus) -> None:
    torch.manual_seed(0)
    m = TinyGPT(vocab_size=corpus.vocab_size, block_size=16, d_model=32, n_layer=1, n_head=2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for x, y in lm_batches(corpus.train, 16, 8, seed=0, steps=60):
        loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(corpus.vocab_size), rel=0.1)  # GPT-2 init: near uniform
    assert sum(losses[-10:]) / 10 < losses[0] - 1.0
