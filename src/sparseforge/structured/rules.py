"""One structured-pruning rule per layer type, and the API to register your own.

A :class:`Rule` has two functions:

* ``trace(ctx, module, name, args, kwargs, output)`` runs after the layer's forward during
  tracing. It couples the input's labels with the weight's input slots (``ctx.couple``),
  unites the slots that must go together (``ctx.union``), declares the output channels
  (``ctx.mark_source``) and labels the output (``ctx.channel_output``).
* ``update(module, sizes)`` runs after shrinking, when the layer's tensors have already been
  sliced; it fixes the attributes that encode sizes (``in_features``, ``num_heads`` ...).
  ``sizes`` maps the names of the layer's virtual spaces (``ctx.virtual``) to their new sizes.

``stats_dim`` is set for layers that normalise over the channel dimension (LayerNorm,
RMSNorm): removing channels changes their statistics, so the group-zeroed reference model
(:func:`sparseforge.structured.zero_groups`) computes them over the kept channels only.

Register a rule for your own layer with :func:`register_rule`::

    def trace(ctx, m, name, args, kwargs, out):
        x = args[0]
        ctx.couple(x, -1, ctx.slots(m.weight, 1), f"{name} input")
        out_ids = ctx.slots(m.weight, 0)
        ctx.mark_source(out_ids)
        ctx.channel_output(out, -1, out_ids)

    def update(m, sizes):
        m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]

    sf.structured.register_rule(MyLinear, trace, update)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..core.layout import is_hf_conv1d
from .trace import TraceContext

__all__ = ["Rule", "register_rule", "find_rule", "unregister_rule", "RULES"]

TraceFn = Callable[[TraceContext, nn.Module, str, tuple, dict, Any], None]
UpdateFn = Callable[[nn.Module, dict[str, int]], None]


@dataclass(frozen=True)
class Rule:
    """How one layer type couples channels (``trace``) and how it is resized (``update``).

    Attributes:
        name: short name for reports.
        trace: see the module docstring.
        update: see the module docstring.
        stats_dim: the dimension a normalisation layer computes statistics over (``-1`` for
            LayerNorm/RMSNorm; a function of the module when it depends on it), or ``None``.
    """

    name: str
    trace: TraceFn
    update: UpdateFn
    stats_dim: int | Callable[[nn.Module], int] | None = None

    def stats_dim_of(self, module: nn.Module) -> int | None:
        """``stats_dim`` for this module (it may depend on the module, e.g. its data format)."""
        return self.stats_dim(module) if callable(self.stats_dim) else self.stats_dim


#: Rules by exact layer type (subclasses are not matched: their forward may differ).
RULES: dict[type, Rule] = {}
_PREDICATES: list[tuple[Callable[[nn.Module], bool], Rule]] = []


def register_rule(layer: type | Callable[[nn.Module], bool], trace: TraceFn, update: UpdateFn, *,
                  name: str | None = None, stats_dim: int | Callable[[nn.Module], int] | None = None) -> Rule:
    """Register how ``layer`` (a class, or a predicate on modules) is traced and resized.

    A class matches its exact type; a predicate is tried, in registration order, for modules
    whose exact type has no rule. Returns the :class:`Rule`.
    """
    if not callable(trace) or not callable(update):
        raise ConfigError(f"register_rule needs callables for trace and update; got {trace!r}, {update!r}")
    rule = Rule(name or getattr(layer, "__name__", "custom"), trace, update, stats_dim)
    if isinstance(layer, type):
        if not issubclass(layer, nn.Module):
            raise ConfigError(f"register_rule: layer must be an nn.Module subclass or a predicate; got {layer!r}")
        RULES[layer] = rule
    elif callable(layer):
        _PREDICATES.append((layer, rule))
    else:
        raise ConfigError(f"register_rule: layer must be an nn.Module subclass or a predicate; got {layer!r}")
    return rule


def unregister_rule(layer: type | Callable[[nn.Module], bool]) -> None:
    """Remove a rule registered with :func:`register_rule` (for tests and experiments)."""
    RULES.pop(layer, None)  # type: ignore[arg-type]
    _PREDICATES[:] = [(p, r) for p, r in _PREDICATES if p is not layer]


def find_rule(module: nn.Module) -> Rule | None:
    """The rule for ``module``, or ``None`` (the layer is then handled conservatively)."""
    rule = RULES.get(type(module))
    if rule is not None:
        return rule
    for pred, r in _PREDICATES:
        if pred(module):
            return r
    return None


# ---------------------------------------------------------------------------- helpers
def _first_input(args: tuple, kwargs: dict, *names: str) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    for n in names:
        if torch.is_tensor(kwargs.get(n)):
            return kwargs[n]
    raise ConfigError(f"structured tracing: a layer was called without a tensor input (kwargs {sorted(kwargs)})")


def _out_tensor(output: Any) -> torch.Tensor | None:
    return output if torch.is_tensor(output) else None


def _tensor_or_virtual(ctx: TraceContext, module: nn.Module, names: tuple[str, ...], dim: int, size: int) -> torch.Tensor:
    """Slots of the first existing tensor in ``names`` along ``dim``, united with the others; virtual if none."""
    tensors = [getattr(module, n, None) for n in names]
    tensors = [t for t in tensors if torch.is_tensor(t) and t.dim() > 0]
    if not tensors:
        return ctx.virtual(module, "channels", size)
    ids = ctx.slots(tensors[0], dim)
    for t in tensors[1:]:
        ctx.union(ids, ctx.slots(t, dim), f"{ctx.module_names[id(module)]} per-channel tensors")
    return ids


# ---------------------------------------------------------------------------- Linear
def _linear_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input")
    ctx.couple(x, -1, ctx.slots(m.weight, 1), f"{name} input features")
    o = ctx.slots(m.weight, 0)
    if m.bias is not None:
        ctx.union(o, ctx.slots(m.bias, 0), f"{name} bias")
    ctx.mark_source(o)
    if _out_tensor(out) is not None:
        ctx.channel_output(out, -1, o)


def _linear_update(m, sizes):
    m.out_features, m.in_features = m.weight.shape


register_rule(nn.Linear, _linear_trace, _linear_update, name="Linear")
register_rule(nn.modules.linear.NonDynamicallyQuantizableLinear, _linear_trace, _linear_update, name="Linear")


# ------------------------------------------------------------------------- HF Conv1D
def _conv1d_hf_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "x")
    ctx.couple(x, -1, ctx.slots(m.weight, 0), f"{name} input features")
    o = ctx.slots(m.weight, 1)
    if getattr(m, "bias", None) is not None:
        ctx.union(o, ctx.slots(m.bias, 0), f"{name} bias")
    ctx.mark_source(o)
    if _out_tensor(out) is not None:
        ctx.channel_output(out, -1, o)


def _conv1d_hf_update(m, sizes):
    m.nf = m.weight.shape[1]
    if hasattr(m, "nx"):
        m.nx = m.weight.shape[0]


register_rule(is_hf_conv1d, _conv1d_hf_trace, _conv1d_hf_update, name="Conv1D (HF)")


# ---------------------------------------------------------------------- Conv / ConvT
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVTS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input")
    nd = m.weight.dim() - 2
    cdim = x.dim() - nd - 1  # 1 when batched, 0 when not
    transposed = isinstance(m, _CONVTS)
    w_in, w_out = (0, 1) if transposed else (1, 0)
    g = m.groups
    if g == 1:
        ctx.couple(x, cdim, ctx.slots(m.weight, w_in), f"{name} input channels")
        o = ctx.slots(m.weight, w_out)
        if m.bias is not None:
            ctx.union(o, ctx.slots(m.bias, 0), f"{name} bias")
    else:
        # grouped / depthwise: a whole convolution group (its input and output channels)
        # is the unit, so every group keeps the same shape and `groups` just decreases
        ipg, opg = m.in_channels // g, m.out_channels // g
        if transposed:
            in_ids = ctx.slots(m.weight, 0)
            o = ctx.slots(m.bias, 0) if m.bias is not None else ctx.virtual(m, "out_channels", m.out_channels)
        else:
            in_ids = ctx.virtual(m, "in_channels", m.in_channels)
            o = ctx.slots(m.weight, 0)
            if m.bias is not None:
                ctx.union(o, ctx.slots(m.bias, 0), f"{name} bias")
        ctx.couple(x, cdim, in_ids, f"{name} input channels")
        for k in range(g):
            ctx.union_all(torch.cat([in_ids[k * ipg:(k + 1) * ipg], o[k * opg:(k + 1) * opg]]), f"{name} convolution group")
    ctx.mark_source(o)
    if _out_tensor(out) is not None:
        ctx.channel_output(out, cdim, o)


def _conv_update(m, sizes):
    transposed = isinstance(m, _CONVTS)
    if m.groups == 1:
        a, b = m.weight.shape[:2]
        m.in_channels, m.out_channels = (a, b) if transposed else (b, a)
        return
    ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
    g = (m.weight.shape[0] // ipg) if transposed else (m.weight.shape[0] // opg)
    m.groups, m.in_channels, m.out_channels = g, g * ipg, g * opg


for _t in _CONVS + _CONVTS:
    register_rule(_t, _conv_trace, _conv_update, name=_t.__name__)


# ---------------------------------------------------------------------------- norms
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _bn_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input")
    inst = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}.get(type(m))
    cdim = x.dim() - inst - 1 if inst else 1  # instance norms also take unbatched input
    ids = _tensor_or_virtual(ctx, m, ("weight", "bias", "running_mean", "running_var"), 0, x.size(cdim))
    ctx.couple(x, cdim, ids, f"{name} channels")
    if _out_tensor(out) is not None:
        ctx.channel_output(out, cdim, ids)


def _bn_update(m, sizes):
    for n in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, n, None)
        if torch.is_tensor(t) and t.dim() > 0:
            m.num_features = t.shape[0]
            return
    if "channels" in sizes:
        m.num_features = sizes["channels"]


for _t in _BNS:
    register_rule(_t, _bn_trace, _bn_update, name=_t.__name__)


def _lastdim_norm_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input", "hidden_states", "x")
    shape = getattr(m, "normalized_shape", None)
    if shape is not None and len(tuple(shape)) != 1:
        ctx.unknown_module(m, name, (args, kwargs), out, "normalises over more than one dimension")
        return
    ids = _tensor_or_virtual(ctx, m, ("weight", "bias"), 0, x.size(-1))
    ctx.couple(x, -1, ids, f"{name} normalised features")
    if _out_tensor(out) is not None:
        ctx.channel_output(out, -1, ids)


def _lastdim_norm_update(m, sizes):
    w = getattr(m, "weight", None)
    n = w.shape[0] if torch.is_tensor(w) and w.dim() == 1 else sizes.get("channels")
    if n is None:
        return
    if hasattr(m, "normalized_shape"):
        m.normalized_shape = (n,)
    if hasattr(m, "hidden_size"):
        m.hidden_size = n


register_rule(nn.LayerNorm, _lastdim_norm_trace, _lastdim_norm_update, name="LayerNorm", stats_dim=-1)
if hasattr(nn, "RMSNorm"):
    register_rule(nn.RMSNorm, _lastdim_norm_trace, _lastdim_norm_update, name="RMSNorm", stats_dim=-1)


def _is_hf_rmsnorm(m: nn.Module) -> bool:
    # LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm ...: one 1-D weight over the last dimension
    w = getattr(m, "weight", None)
    return (type(m).__name__.endswith("RMSNorm") and isinstance(w, nn.Parameter) and w.dim() == 1
            and not any(True for _ in m.children()))


register_rule(_is_hf_rmsnorm, _lastdim_norm_trace, _lastdim_norm_update, name="RMSNorm (HF)", stats_dim=-1)



def _is_format_layernorm(m: nn.Module) -> bool:
    # LayerNorm subclasses with a data_format (ConvNeXt and its relatives in transformers)
    return isinstance(m, nn.LayerNorm) and getattr(m, "data_format", None) in ("channels_last", "channels_first")


def _format_dim(m: nn.Module) -> int:
    return 1 if m.data_format == "channels_first" else -1


def _format_ln_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input", "features", "x")
    if len(tuple(m.normalized_shape)) != 1:
        ctx.unknown_module(m, name, (args, kwargs), out, "normalises over more than one dimension")
        return
    d = _format_dim(m)
    ids = _tensor_or_virtual(ctx, m, ("weight", "bias"), 0, x.size(d))
    ctx.couple(x, d, ids, f"{name} normalised channels")
    if _out_tensor(out) is not None:
        ctx.channel_output(out, d, ids)


register_rule(_is_format_layernorm, _format_ln_trace, _lastdim_norm_update, name="LayerNorm (data_format)",
              stats_dim=_format_dim)

def _gn_trace(ctx, m, name, args, kwargs, out):
    x = _first_input(args, kwargs, "input")
    cdim = 1 if x.dim() > 1 else 0
    ids = _tensor_or_virtual(ctx, m, ("weight", "bias"), 0, m.num_channels)
    ctx.couple(x, cdim, ids, f"{name} channels")
    cpg = m.num_channels // m.num_groups
    # a whole normalisation group is the unit: the statistics of the others stay the same
    for k in range(m.num_groups):
        ctx.union_all(ids[k * cpg:(k + 1) * cpg], f"{name} normalisation group")
    if _out_tensor(out) is not None:
        ctx.channel_output(out, cdim, ids)


def _gn_update(m, sizes):
    cpg = m.num_channels // m.num_groups
    n = m.weight.shape[0] if m.weight is not None else sizes.get("channels", m.num_channels)
    m.num_channels, m.num_groups = n, n // cpg


register_rule(nn.GroupNorm, _gn_trace, _gn_update, name="GroupNorm")


# ------------------------------------------------------------------------- Embedding
def _emb_trace(ctx, m, name, args, kwargs, out):
    o = ctx.slots(m.weight, 1)
    ctx.mark_source(o)
    if _out_tensor(out) is not None:
        ctx.channel_output(out, -1, o)


def _emb_update(m, sizes):
    m.num_embeddings, m.embedding_dim = m.weight.shape


register_rule(nn.Embedding, _emb_trace, _emb_update, name="Embedding")


# ------------------------------------------------------------- nn.MultiheadAttention
def _mha_trace(ctx, m, name, args, kwargs, out):
    names = ("query", "key", "value")
    q, k, v = [args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names)]
    E, H = m.embed_dim, m.num_heads
    hd = E // H
    why = f"{name} attention head"
    if m._qkv_same_embed_dim:
        cols = ctx.slots(m.in_proj_weight, 1)
        for t in (q, k, v):
            ctx.couple(t, -1, cols, f"{name} input features")
        rows = ctx.slots(m.in_proj_weight, 0)
        q_cols = cols
    else:
        q_cols = ctx.slots(m.q_proj_weight, 1)
        ctx.couple(q, -1, q_cols, f"{name} query features")
        ctx.couple(k, -1, ctx.slots(m.k_proj_weight, 1), f"{name} key features")
        ctx.couple(v, -1, ctx.slots(m.v_proj_weight, 1), f"{name} value features")
        rows = torch.cat([ctx.slots(m.q_proj_weight, 0), ctx.slots(m.k_proj_weight, 0), ctx.slots(m.v_proj_weight, 0)])
    if m.in_proj_bias is not None:
        ctx.union(rows, ctx.slots(m.in_proj_bias, 0), f"{name} in_proj bias")
    if m.bias_k is not None:
        ctx.union(rows[E:2 * E], ctx.slots(m.bias_k, 2), f"{name} bias_k")
        ctx.union(rows[2 * E:], ctx.slots(m.bias_v, 2), f"{name} bias_v")
    o_rows = ctx.slots(m.out_proj.weight, 0)
    o_cols = ctx.slots(m.out_proj.weight, 1)
    if m.out_proj.bias is not None:
        ctx.union(o_rows, ctx.slots(m.out_proj.bias, 0), f"{name} out_proj bias")
    # nn.MultiheadAttention ties the query width, its inner width (num_heads * head_dim) and its
    # output width to one embed_dim: removing head h therefore also removes the head_dim
    # embedding features h*head_dim ... (h+1)*head_dim of the query and of the output
    for h in range(H):
        b = slice(h * hd, (h + 1) * hd)
        ctx.union_all(torch.cat([rows[b], rows[E:][b], rows[2 * E:][b], o_cols[b], o_rows[b], q_cols[b]]), why)
    ctx.head_keys.add((ctx.tensor_names[id(m.in_proj_weight if m._qkv_same_embed_dim else m.q_proj_weight)], 0))
    ctx.mark_source(o_rows)
    outs = out if isinstance(out, tuple) else (out,)
    if outs and torch.is_tensor(outs[0]):
        ctx.channel_output(outs[0], -1, o_rows)


def _mha_update(m, sizes):
    hd = m.head_dim
    E = m.out_proj.weight.shape[0]
    m.embed_dim, m.num_heads = E, E // hd
    m.out_proj.out_features, m.out_proj.in_features = m.out_proj.weight.shape
    if m._qkv_same_embed_dim:
        m.kdim = m.vdim = E
    else:
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]


register_rule(nn.MultiheadAttention, _mha_trace, _mha_update, name="MultiheadAttention")
