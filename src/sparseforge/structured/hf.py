"""Rules for Hugging Face attention modules, and the config update after shrinking.

Matched layers: any module with ``nn.Linear`` children ``q_proj/k_proj/v_proj`` (optional
``o_proj``; Llama, Mistral, Qwen2, ViT in transformers 5 ...) or ``query/key/value`` (BERT's
self-attention, whose output projection lives in the next module), and an integer
``head_dim`` or ``attention_head_size``. The module's forward must infer the number of heads
(``view(..., -1, head_dim)``), as these models do, because the rule does not trace inside it.

The unit is a key/value group: key/value head ``j`` and the ``num_heads / num_kv_heads``
query heads that read it, with their output-projection columns. Heads are never split
(``head_dim`` and the softmax scale stay), key/value heads are kept whole, and the
grouped-query ratio is unchanged. Plain multi-head attention is the case of one query head
per group.

GPT-2's attention (one fused ``c_attn`` Conv1D split by ``split_size``) has its own rule with
whole heads as units; ``split_size``, ``num_heads`` and ``embed_dim`` (its inner width) are
updated.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .rules import register_rule

__all__ = ["is_hf_attention", "update_hf_config"]

_NAMES = (("q_proj", "k_proj", "v_proj", "o_proj"), ("query", "key", "value", None))


def _parts(m: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear | None, int] | None:
    hd = getattr(m, "head_dim", None)
    if not isinstance(hd, int):
        hd = getattr(m, "attention_head_size", None)
    if not isinstance(hd, int) or hd < 1:
        return None
    for q, k, v, o in _NAMES:
        mods = [getattr(m, n, None) for n in (q, k, v)]
        if all(type(x) is nn.Linear for x in mods):
            out = getattr(m, o, None) if o else None
            return mods[0], mods[1], mods[2], out if type(out) is nn.Linear else None, hd
    return None


def is_hf_attention(m: nn.Module) -> bool:
    """Whether ``m`` is an attention module this rule handles (see the module docstring).

    Modules with tensors of their own besides the projections (Swin's relative position
    bias per head, for instance) are left to the generic tracer: the rule would not slice them.
    """
    if not type(m).__module__.startswith("transformers"):
        return False
    parts = _parts(m)
    if parts is None:
        return False
    mine = {id(t) for lin in parts[:4] if lin is not None for t in lin.parameters()}
    return all(id(t) in mine for t in m.parameters()) and not any(True for _ in m.buffers())


def _trace(ctx, m, name, args, kwargs, out):
    q, k, v, o, hd = _parts(m)  # type: ignore[misc]
    x = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
    enc = kwargs.get("encoder_hidden_states")
    kv_in = enc if torch.is_tensor(enc) else x
    H, KV = q.out_features // hd, k.out_features // hd
    if q.out_features % hd or k.out_features % hd or H % KV or v.out_features != k.out_features:
        ctx.unknown_module(m, name, (args, kwargs), out, f"projection sizes do not match head_dim={hd}")
        return
    ctx.couple(x, -1, ctx.slots(q.weight, 1), f"{name} query input")
    ctx.couple(kv_in, -1, ctx.slots(k.weight, 1), f"{name} key input")
    ctx.couple(kv_in, -1, ctx.slots(v.weight, 1), f"{name} value input")
    rows = {}
    for lin in (q, k, v):
        r = ctx.slots(lin.weight, 0)
        if lin.bias is not None:
            ctx.union(r, ctx.slots(lin.bias, 0), f"{name} projection bias")
        rows[id(lin)] = r
    qr, kr, vr = rows[id(q)], rows[id(k)], rows[id(v)]
    ocols = ctx.slots(o.weight, 1) if o is not None else None
    G = H // KV
    for j in range(KV):
        qs = slice(j * G * hd, (j + 1) * G * hd)
        ks = slice(j * hd, (j + 1) * hd)
        parts = [qr[qs], kr[ks], vr[ks]] + ([ocols[qs]] if ocols is not None else [])
        ctx.union_all(torch.cat(parts), f"{name} key/value head group")
    ctx.head_keys.update((ctx.tensor_names[id(t)], 0) for t in (q.weight, k.weight, v.weight))
    ctx.mark_source(qr)  # the units are the query heads' output channels
    first = out[0] if isinstance(out, tuple) else out
    if o is not None:
        orows = ctx.slots(o.weight, 0)
        if o.bias is not None:
            ctx.union(orows, ctx.slots(o.bias, 0), f"{name} output bias")
        ctx.mark_source(orows)
        if torch.is_tensor(first):
            ctx.channel_output(first, -1, orows)
    else:
        # the context's feature f comes from value head f // head_dim, in the same unit as query row f
        if torch.is_tensor(first) and first.size(-1) == q.out_features:
            ctx.channel_output(first, -1, qr)
        elif torch.is_tensor(first):
            ctx.pin(first, f"{name}: unexpected output width")


def _update(m, sizes):
    q, k, v, o, hd = _parts(m)  # type: ignore[misc]
    for lin in (q, k, v) + ((o,) if o is not None else ()):
        lin.out_features, lin.in_features = lin.weight.shape
    H, KV = q.out_features // hd, k.out_features // hd
    for attr, val in (("num_heads", H), ("num_attention_heads", H), ("num_key_value_heads", KV),
                      ("all_head_size", H * hd)):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, val)


register_rule(is_hf_attention, _trace, _update, name="HF attention")



# ------------------------------------------------------------------------------ GPT-2
def _is_gpt2_attention(m: nn.Module) -> bool:
    # GPT-2 fuses q, k, v into one Conv1D (weight [in, 3 * inner]) and splits it by split_size
    return (type(m).__name__ == "GPT2Attention" and type(m).__module__.startswith("transformers")
            and not getattr(m, "is_cross_attention", False) and isinstance(getattr(m, "head_dim", None), int))


def _gpt2_trace(ctx, m, name, args, kwargs, out):
    x = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
    if torch.is_tensor(kwargs.get("encoder_hidden_states")):
        ctx.unknown_module(m, name, (args, kwargs), out, "cross-attention is not supported")
        return
    hd, H = m.head_dim, m.num_heads
    inner = m.c_attn.weight.shape[1] // 3
    ctx.couple(x, -1, ctx.slots(m.c_attn.weight, 0), f"{name} input features")
    cols = ctx.slots(m.c_attn.weight, 1)
    if m.c_attn.bias is not None:
        ctx.union(cols, ctx.slots(m.c_attn.bias, 0), f"{name} c_attn bias")
    prow = ctx.slots(m.c_proj.weight, 0)
    for h in range(H):
        b = slice(h * hd, (h + 1) * hd)
        ctx.union_all(torch.cat([cols[:inner][b], cols[inner:2 * inner][b], cols[2 * inner:][b], prow[b]]), f"{name} attention head")
    ctx.head_keys.add((ctx.tensor_names[id(m.c_attn.weight)], 1))
    ctx.mark_source(cols[:inner])
    o = ctx.slots(m.c_proj.weight, 1)
    if m.c_proj.bias is not None:
        ctx.union(o, ctx.slots(m.c_proj.bias, 0), f"{name} c_proj bias")
    ctx.mark_source(o)
    first = out[0] if isinstance(out, tuple) else out
    if torch.is_tensor(first):
        ctx.channel_output(first, -1, o)


def _gpt2_update(m, sizes):
    inner = m.c_attn.weight.shape[1] // 3
    m.split_size = m.embed_dim = inner
    m.num_heads = inner // m.head_dim


register_rule(_is_gpt2_attention, _gpt2_trace, _gpt2_update, name="GPT2Attention")

def update_hf_config(model: nn.Module) -> dict[str, Any]:
    """Write the new sizes of a shrunk Hugging Face model into ``model.config``.

    Only sizes that are the same in every layer can be expressed in a config:
    ``num_attention_heads``, ``num_key_value_heads`` (with ``head_dim`` written explicitly so
    that it does not get recomputed from ``hidden_size``) and ``intermediate_size`` (from the
    MLP's ``up_proj``/``intermediate.dense``/``fc1``) and ``hidden_size`` (from the input
    embeddings). The result is checked by rebuilding the model from the new config on the
    meta device and comparing every tensor shape; the config is changed only if they all
    match. Returns the fields written. Raises :class:`ConfigError` naming the field or tensor
    when layers differ or the config cannot express the change.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ConfigError(f"{type(model).__name__} has no .config: use save_structured/load_structured instead")
    heads, kvs, inter = set(), set(), set()
    hds = set()
    for name, m in model.named_modules():
        p = _parts(m) if is_hf_attention(m) else None
        if p is not None:
            q, k, _, _, hd = p
            heads.add(q.out_features // hd)
            kvs.add(k.out_features // hd)
            hds.add(hd)
        for child in ("up_proj", "fc1", "c_fc"):
            lin = getattr(m, child, None)
            if isinstance(lin, nn.Linear) and name.endswith("mlp"):
                inter.add(lin.out_features)
        if name.endswith("intermediate") and isinstance(getattr(m, "dense", None), nn.Linear):
            inter.add(m.dense.out_features)
    written: dict[str, Any] = {}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(emb, nn.Embedding) and hasattr(cfg, "hidden_size") and emb.embedding_dim != cfg.hidden_size:
        written["hidden_size"] = emb.embedding_dim
    for field_name, values in (("num_attention_heads", heads), ("num_key_value_heads", kvs), ("intermediate_size", inter)):
        if not values or not hasattr(cfg, field_name):
            continue
        if len(values) > 1:
            raise ConfigError(f"config.{field_name} cannot express different sizes per layer: {sorted(values)}")
        (val,) = values
        if getattr(cfg, field_name) != val:
            written[field_name] = val
    if hds and ("num_attention_heads" in written or "hidden_size" in written) and hasattr(cfg, "head_dim"):
        (written["head_dim"],) = hds  # keep the head size instead of recomputing it from hidden_size
    new_cfg = copy.deepcopy(cfg)
    for k_, v_ in written.items():
        setattr(new_cfg, k_, v_)
    # the config is right only if it rebuilds exactly these shapes (built on the meta device: no memory)
    with torch.device("meta"):
        fresh = type(model)(new_cfg)
    want = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    got = {n: tuple(t.shape) for n, t in fresh.state_dict().items()}
    bad = [n for n in want if got.get(n) != want[n]]
    if bad:
        raise ConfigError(f"{type(cfg).__name__} cannot express the shrunk shapes: {bad[0]} is {want[bad[0]]} in the model "
                          f"but {got.get(bad[0])} when rebuilt from the config (fields {written}); "
                          "use save_structured/load_structured instead")
    for k_, v_ in written.items():
        setattr(cfg, k_, v_)
    return written
