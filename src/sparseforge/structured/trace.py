"""Trace a model with example inputs and record which channels are coupled.

How it works (our choice, stated because other tools trace differently): the model runs once
on the example inputs under a :class:`torch.overrides.TorchFunctionMode`, so every tensor
operation is seen with its real arguments, after Python control flow has been resolved (this
is why Hugging Face models trace where ``torch.fx`` fails). Every tensor carries a *shadow
label tensor*: an ``int64`` tensor broadcastable to it whose entries name, for each element,
the channel slot it came from. Slots are the indices of one dimension of one parameter or
buffer (``("fc1.weight", 0)`` has ``out_features`` slots), so tied parameters share slots
without extra rules. Label ``0`` means "unknown origin" (model inputs, constants, buffers,
outputs of unknown operations); coupling a slot with it pins the slot.

* Layers with a rule (:mod:`.rules`: Linear, ConvNd, ConvTransposeNd, norms, Embedding,
  ``nn.MultiheadAttention``, HF ``Conv1D`` ...) are not traced inside: their rule couples the
  input's labels with the weight's input slots and gives the output the weight's output slots.
* Data-movement operations (view, reshape, permute, cat, split, getitem, flatten ...) are
  replayed on the label tensors, so labels follow elements exactly, e.g. a channel flattened
  into ``H * W`` features of a ``Linear`` input keeps its label on all of them.
* Element-wise operations (add, mul, activations ...) unite the labels of operands that are
  not broadcast along the labelled dimensions (a residual add couples both branches; a gate
  of shape ``[B, 1, H, W]`` couples nothing).
* A parameter used directly in the forward (``x + self.pos_embed``, ``cat([cls_token, x])``,
  ``gamma * x``) gets one slot per element; it shrinks when the elements coupled to removed
  channels form whole slices of it.
* Whatever could break after shrinking is pinned conservatively and listed with its reason:
  reductions and softmax over labelled dimensions, reshapes or splits whose literal sizes
  equal a labelled dimension (the code would still use the old size; sizes read from a
  tensor's ``shape``/``size()`` during the run are tagged and do not count), indexing along
  labelled dimensions, matrix products between activations, unknown operations and layers
  without a rule, and everything that reaches the model's outputs.

A group is then the set of slots with one union-find root; it is prunable when it is not
pinned and contains at least one *source* slot (an output channel of a layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..utils import call_model, preserved_modes
from ..errors import ConfigError

__all__ = ["UNKNOWN", "ELEMENTS", "UnionFind", "Space", "TraceContext", "run_trace"]

#: Label of elements whose origin is unknown; coupling a slot with it pins the slot.
UNKNOWN = 0
#: ``Space.dim`` of the per-element slots of a parameter used outside any layer with a rule
#: (a position embedding, a class token, a layer-scale vector).
ELEMENTS = -1


class UnionFind:
    """Disjoint sets over slot ids with a *pinned* flag (and its reasons) per set."""

    def __init__(self) -> None:
        self.parent: list[int] = [UNKNOWN]
        self.reasons: dict[int, list[str]] = {}

    def make(self, n: int) -> int:
        """Allocate ``n`` new singleton ids and return the first."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        """Root of ``a`` (with path compression)."""
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def pin(self, a: int, why: str) -> None:
        """Mark the set of ``a`` as not prunable because of ``why``."""
        if a == UNKNOWN:
            return
        lst = self.reasons.setdefault(self.find(a), [])
        if why not in lst and len(lst) < 4:
            lst.append(why)

    def union(self, a: int, b: int, why: str) -> None:
        """Unite the sets of ``a`` and ``b``; coupling with :data:`UNKNOWN` pins the other."""
        if a == UNKNOWN or b == UNKNOWN:
            self.pin(b if a == UNKNOWN else a, f"{why} with an untracked tensor (an input, constant or pinned result)")
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.reasons:
            moved = self.reasons.pop(rb)
            lst = self.reasons.setdefault(ra, [])
            lst.extend(r for r in moved if r not in lst and len(lst) < 4)

    def pinned(self, a: int) -> bool:
        """Whether the set of ``a`` is pinned (``UNKNOWN`` is always pinned)."""
        return a == UNKNOWN or self.find(a) in self.reasons


@dataclass(frozen=True)
class Space:
    """The slots of one dimension of one tensor (or of a virtual size of a layer without tensors).

    ``key`` is the tensor's qualified name (``"features.0.weight"``) or
    ``"<module>::<name>"`` for a virtual space.
    """

    key: str
    dim: int
    size: int
    start: int
    virtual: bool = False

    def __str__(self) -> str:
        if self.virtual:
            return self.key
        return f"{self.key}[elements]" if self.dim == ELEMENTS else f"{self.key}[dim {self.dim}]"


def _flatten_tensors(x: Any) -> list[torch.Tensor]:
    if torch.is_tensor(x):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _flatten_tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flatten_tensors(v)]
    if hasattr(x, "to_tuple") and callable(x.to_tuple):  # HF ModelOutput
        return _flatten_tensors(x.to_tuple())
    return []


def _to_cpu(x: Any) -> Any:
    """Index tensors and other arguments replayed on the (CPU) label tensors."""
    if torch.is_tensor(x):
        return x.cpu()
    if isinstance(x, (tuple, list)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def _compress(lab: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which all label slices are equal to size 1."""
    for d in range(lab.dim()):
        if lab.size(d) > 1:
            first = lab.narrow(d, 0, 1)
            if bool((lab == first).all()):
                lab = first
    return lab.contiguous()


def _varying_dims(lab: torch.Tensor) -> list[int]:
    return [d for d in range(lab.dim()) if lab.size(d) > 1]


# ---------------------------------------------------------------------- operation tables
_POINTWISE = frozenset("""
add sub mul div true_divide floor_divide truediv floordiv pow neg negative abs relu relu6 gelu silu
sigmoid tanh exp exp2 expm1 log log1p log2 sqrt rsqrt sin cos leaky_relu elu selu celu mish hardswish
hardsigmoid hardtanh softplus softsign clamp clip clamp_min clamp_max where maximum minimum fmax fmin
masked_fill square reciprocal erf erfc sign logical_and logical_or logical_not eq ne gt lt ge le
and or xor invert addcmul addcdiv lerp threshold prelu rrelu tanhshrink hardshrink softshrink
logsigmoid quick_gelu nan_to_num mod remainder fmod round floor ceil trunc frac sgn copysign
""".split())
# Identity on the first tensor argument (other tensor arguments only give a dtype or device).
_IDENTITY = frozenset("""
to float half double bfloat16 type type_as contiguous clone detach cpu cuda requires_grad
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout pin_memory
""".split())
_MOVE_FIRST = frozenset("""
view reshape view_as reshape_as permute transpose t swapaxes swapdims movedim moveaxis flatten
unflatten squeeze unsqueeze expand expand_as repeat narrow select index_select flip roll T mT
split split_with_sizes tensor_split chunk unbind getitem
""".split())
_MOVE_LIST = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack"})
# Operations that reduce over `dim` (or all dims when it is None).
_REDUCE = frozenset("""
sum mean amax amin max min var std norm prod logsumexp argmax argmin any all nansum nanmean median
""".split())
# Normalise along `dim` but keep the shape.
_ALONG_DIM = frozenset({"softmax", "log_softmax", "cumsum", "cumprod", "softmin", "normalize"})
_POOL = frozenset("""
avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d adaptive_avg_pool1d
adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
lp_pool1d lp_pool2d interpolate upsample
""".split())
# No data dependence on the input's values: output gets unknown labels, nothing is pinned.
_NO_DATA = frozenset("""
zeros_like ones_like empty_like full_like rand_like randn_like randint_like new_zeros new_ones
new_empty new_full new_tensor size dim numel get stride element_size data_ptr is_floating_point
is_contiguous tolist item len bool
""".split())
_LITERAL_SIZE_OPS = frozenset({"view", "reshape", "unflatten", "expand", "split", "split_with_sizes",
                               "tensor_split", "narrow", "repeat"})


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    n = name.strip("_")
    if n in _POINTWISE or n in _IDENTITY or n in _MOVE_FIRST or n in _MOVE_LIST:
        return n
    if n.endswith("_") and n[:-1] in _POINTWISE | _IDENTITY:
        return n[:-1]
    if n[:1] in ("i", "r") and n[1:] in _POINTWISE:  # __iadd__, __radd__, __rsub__ ...
        return n[1:]
    return n


class _ShapeInt(int):
    """An int read from a tensor's shape during tracing: code that passes it on is not hard-coding it."""


def _ints_in(x: Any) -> set[int]:
    """Plain ints in ``x`` (sizes the code wrote literally; ints read from shapes are skipped)."""
    if isinstance(x, (bool, _ShapeInt)):
        return set()
    if isinstance(x, int):
        return {x}
    if isinstance(x, torch.Size) or isinstance(x, (tuple, list)):
        return {i for v in x for i in _ints_in(v)}
    return set()


def _dims_arg(args: tuple, kwargs: Mapping[str, Any], pos: int, ndim: int) -> list[int] | None:
    d = kwargs.get("dim", kwargs.get("axis", args[pos] if len(args) > pos else None))
    if d is None or isinstance(d, (str, torch.Tensor)):
        return None
    ds = list(d) if isinstance(d, (tuple, list)) else [d]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ds):
        return None
    return [v % ndim for v in ds] if ndim else []


# ------------------------------------------------------------------------------- context
@dataclass
class TraceContext:
    """State of one trace; :mod:`.rules` call its methods to couple and label tensors."""

    model: nn.Module
    uf: UnionFind = field(default_factory=UnionFind)
    tensor_names: dict[int, str] = field(default_factory=dict)
    module_names: dict[int, str] = field(default_factory=dict)
    spaces: dict[tuple[str, int], Space] = field(default_factory=dict)
    sources: set[int] = field(default_factory=set)
    unknown: dict[str, str] = field(default_factory=dict)  # op or layer -> reason
    traced_modules: dict[str, nn.Module] = field(default_factory=dict)  # layers handled by a rule
    head_keys: set[tuple[str, int]] = field(default_factory=set)  # (tensor, dim) whose units are attention heads
    _labels: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, p in self.model.named_parameters(remove_duplicate=False):
            self.tensor_names.setdefault(id(p), name)
        for name, b in self.model.named_buffers(remove_duplicate=False):
            self.tensor_names.setdefault(id(b), name)
        for name, m in self.model.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(m), name)

    # ---- slots
    def slots(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Slot ids of ``tensor`` (a parameter or buffer of the model) along ``dim``."""
        key = self.tensor_names.get(id(tensor))
        if key is None:
            raise ConfigError("a structured rule asked for slots of a tensor that is not a parameter or buffer of the model")
        dim = dim % tensor.dim()
        return self._space(key, dim, tensor.size(dim), virtual=False)

    def virtual(self, module: nn.Module, name: str, size: int) -> torch.Tensor:
        """Slot ids of a size of ``module`` that no tensor stores (e.g. a norm without affine)."""
        return self._space(f"{self.module_names[id(module)]}::{name}", 0, size, virtual=True)

    def _space(self, key: str, dim: int, size: int, *, virtual: bool) -> torch.Tensor:
        sp = self.spaces.get((key, dim))
        if sp is None:
            sp = Space(key, dim, size, self.uf.make(size), virtual)
            self.spaces[(key, dim)] = sp
        return torch.arange(sp.start, sp.start + sp.size)

    def mark_source(self, ids: torch.Tensor) -> None:
        """Declare ``ids`` output channels of a layer: a group needs one to be pruned."""
        self.sources.update(int(i) for i in ids)

    # ---- labels
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Compressed label tensor of ``x`` (all :data:`UNKNOWN` if ``x`` was not produced here)."""
        entry = self._labels.get(id(x))
        if entry is not None and entry[0] is x:
            lab = entry[1]
            if lab.numel() > 1:
                # name every set by its current root: labels that were united since (a class
                # token added to a position embedding) no longer count as different
                uniq, inv = lab.unique(return_inverse=True)
                roots = torch.tensor([self.uf.find(int(u)) for u in uniq], dtype=torch.long)
                lab = _compress(roots[inv])
                self._labels[id(x)] = (x, lab)
            return lab
        key = self.tensor_names.get(id(x))
        if key is not None and isinstance(x, nn.Parameter) and x.dim() > 0:
            # a parameter used directly in the forward: every element is its own slot; it can
            # shrink when the elements coupled to removed channels form whole slices
            lab = self._space(key, ELEMENTS, x.numel(), virtual=False).reshape(x.shape)
            self._labels[id(x)] = (x, lab)
            return lab
        return torch.zeros([1] * x.dim(), dtype=torch.long)

    def set_labels(self, x: torch.Tensor, lab: torch.Tensor) -> None:
        """Attach ``lab`` (broadcastable to ``x``) to ``x``."""
        if lab.dim() != x.dim():
            lab = lab.reshape([1] * (x.dim() - lab.dim()) + list(lab.shape)) if lab.dim() < x.dim() else _compress(lab.expand(x.shape).contiguous())
        self._labels[id(x)] = (x, _compress(lab))

    def channel_output(self, x: torch.Tensor, dim: int, ids: torch.Tensor) -> None:
        """Label ``x`` with ``ids`` along ``dim`` (constant along every other dimension)."""
        shape = [1] * x.dim()
        shape[dim % x.dim()] = len(ids)
        self.set_labels(x, ids.reshape(shape))

    def couple(self, x: torch.Tensor, dim: int, ids: torch.Tensor, why: str) -> None:
        """Unite slot ``ids[i]`` with every label found at index ``i`` of ``x`` along ``dim``."""
        dim = dim % x.dim()
        if x.size(dim) != len(ids):
            raise ConfigError(f"internal: coupling {len(ids)} slots with a dimension of size {x.size(dim)} ({why})")
        lab = self.labels(x)
        shape = list(lab.shape)
        shape[dim] = x.size(dim)
        rows = lab.expand(shape).movedim(dim, 0).reshape(len(ids), -1)
        pairs = torch.stack([ids.unsqueeze(1).expand_as(rows), rows], -1).reshape(-1, 2).unique(dim=0)
        for a, b in pairs.tolist():
            self.uf.union(a, b, why)

    def union(self, a: torch.Tensor, b: torch.Tensor, why: str) -> None:
        """Unite ``a[i]`` with ``b[i]`` (same-shaped id tensors)."""
        pairs = torch.stack([a.reshape(-1), b.reshape(-1)], -1).unique(dim=0)
        for x, y in pairs.tolist():
            self.uf.union(x, y, why)

    def union_all(self, ids: torch.Tensor, why: str) -> None:
        """Unite all of ``ids`` into one set."""
        flat = ids.reshape(-1).tolist()
        for y in flat[1:]:
            self.uf.union(flat[0], y, why)

    def pin_labels(self, lab: torch.Tensor, why: str) -> None:
        """Pin every slot named in ``lab``."""
        for a in lab.unique().tolist():
            self.uf.pin(a, why)

    def pin(self, x: Any, why: str) -> None:
        """Pin every slot that reaches any tensor in ``x``."""
        for t in _flatten_tensors(x):
            self.pin_labels(self.labels(t), why)

    def unknown_module(self, module: nn.Module, name: str, args: Any, output: Any, reason: str) -> None:
        """Conservative handling of a layer without a rule: pin its inputs, outputs unknown."""
        self.unknown[name or type(module).__name__] = reason
        self.pin(args, f"consumed by {name or 'model'} ({type(module).__name__}): {reason}")


# ----------------------------------------------------------------------------- the mode
class _Tracer(TorchFunctionMode):
    def __init__(self, ctx: TraceContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.depth = 0  # > 0 inside a layer handled by a rule
        self.busy = False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth or self.busy:
            return out
        # tag sizes read from tensors, so that view(b, c, 1, 1) with c = x.shape[1] is not
        # mistaken for a size written in the code (which shrinking would make wrong)
        if isinstance(out, torch.Size):
            return torch.Size([_ShapeInt(v) for v in out])
        if isinstance(out, int) and not isinstance(out, bool) and _op_name(func) == "size":
            return _ShapeInt(out)
        self.busy = True
        try:
            self._propagate(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    # -- rules per operation kind
    def _propagate(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outs = _flatten_tensors(out)
        if not outs:
            if _op_name(func) == "setitem":
                self.ctx.pin(args, "written in place by indexing (__setitem__)")
            return
        name = _op_name(func)
        ins = _flatten_tensors(args) + _flatten_tensors(kwargs)
        ctx = self.ctx
        if name in _NO_DATA or not ins:
            return
        first = next((a for a in args if torch.is_tensor(a)), None)
        if name in _IDENTITY and first is not None:
            for o in outs:
                if o.shape == first.shape:
                    ctx.set_labels(o, ctx.labels(first))
            return
        if name in _POINTWISE:
            self._pointwise(name, ins, outs)
            return
        if name in _MOVE_FIRST or name in _MOVE_LIST:
            self._move(func, name, args, kwargs, outs)
            return
        if name in _REDUCE or name in _ALONG_DIM:
            self._reduce(name, args, kwargs, outs, keep=name in _ALONG_DIM)
            return
        if name in _POOL and first is not None:
            lab = ctx.labels(first)
            nsp = max(first.dim() - 2, 1) if name not in ("interpolate", "upsample") else first.dim() - 2
            spatial = list(range(first.dim() - nsp, first.dim()))
            if any(lab.size(d) > 1 for d in spatial):
                ctx.pin_labels(lab, f"{name} mixes labelled positions")
                return
            for o in outs:
                if o.dim() == first.dim():
                    ctx.set_labels(o, lab)
            return
        if name == "pad" and first is not None:
            pad = args[1] if len(args) > 1 else kwargs.get("pad")
            lab = ctx.labels(first)
            padded = list(range(first.dim() - len(pad) // 2, first.dim())) if isinstance(pad, (tuple, list)) else []
            # padding only adds positions along the padded dimensions: labels elsewhere stay
            if padded and not any(lab.size(d) > 1 for d in padded):
                for o in outs:
                    if o.dim() == first.dim():
                        ctx.set_labels(o, lab)
                return
            ctx.pin_labels(lab, "pad along a labelled dimension")
            return
        why = f"used by operation {name!r}, which has no structured rule"
        if any(int(ctx.labels(t).abs().sum()) for t in ins):
            ctx.unknown.setdefault(f"op {name}", "no structured rule: its inputs' channels are kept")
        ctx.pin(ins, why)

    def _pointwise(self, name: str, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        ctx = self.ctx
        out = outs[0]
        shape = out.shape
        labs = []
        for t in ins:
            if t.dim() > len(shape):
                ctx.pin(ins, f"{name} with an operand of more dimensions than its output")
                return
            lab = ctx.labels(t)
            pad = len(shape) - t.dim()
            labs.append((t, lab.reshape([1] * pad + list(lab.shape)), [1] * pad + list(t.shape)))
        varying = {d for _, lab, _ in labs for d in _varying_dims(lab)}
        part = [lab for _, lab, tshape in labs if all(tshape[d] == shape[d] for d in varying)]
        for _, lab, tshape in labs:
            if not all(tshape[d] == shape[d] for d in varying) and _varying_dims(lab):
                ctx.pin_labels(lab, f"{name} broadcasts labelled channels against other labelled dimensions")
        if not part:
            for o in outs:
                ctx.set_labels(o, torch.zeros([1] * o.dim(), dtype=torch.long))
            return
        full = torch.broadcast_shapes(*[lab.shape for lab in part])
        base = part[0].expand(full)
        for lab in part[1:]:
            e = lab.expand(full)
            diff = base != e
            if bool(diff.any()):
                ctx.union(base[diff], e[diff], f"element-wise {name}")
        for o in outs:
            if o.dim() == len(full):
                ctx.set_labels(o, base)

    def _move(self, func: Any, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> None:
        ctx = self.ctx
        if name in _MOVE_LIST:
            seq = args[0] if args else kwargs.get("tensors")
            if not isinstance(seq, (list, tuple)) or not all(torch.is_tensor(t) for t in seq):
                ctx.pin(list(args) + list(kwargs.values()), f"{name} with unexpected arguments")
                return
            src = list(seq)
            labs = [ctx.labels(t).expand(t.shape).contiguous() for t in src]
            new_args = (type(seq)(labs),) + tuple(args[1:])
        else:
            src = [args[0]] if args and torch.is_tensor(args[0]) else []
            if not src:
                ctx.pin(list(args) + list(kwargs.values()), f"{name} with unexpected arguments")
                return
            x = src[0]
            lab = ctx.labels(x)
            if not _varying_dims(lab) and not int(lab.abs().sum()):
                return  # nothing labelled moves
            if name in ("getitem", "narrow", "select", "index_select") and self._indexes_labelled(name, x, lab, args, kwargs):
                ctx.pin_labels(lab, f"{name} indexes a labelled dimension with fixed indices")
                return
            new_args = (lab.expand(x.shape).contiguous(),) + tuple(_to_cpu(a) for a in args[1:])
        new_out = func(*new_args, **{k: _to_cpu(v) for k, v in kwargs.items()})
        lab_outs = _flatten_tensors(new_out)
        if len(lab_outs) != len(outs):
            ctx.pin(src, f"{name}: could not replay on labels")
            return
        if name in _LITERAL_SIZE_OPS:
            literal = _ints_in(args[1:]) | _ints_in(list(kwargs.values()))
            literal.discard(-1)
            literal.discard(1)
            for lo in lab_outs:
                # a labelled dimension whose size the code passes literally would get the old
                # size after shrinking
                if any(lo.size(d) in literal for d in _varying_dims(_compress(lo))):
                    for t in src:
                        ctx.pin_labels(ctx.labels(t), f"{name} passes the size of a labelled dimension literally")
                    return
        if name == "chunk" or (name == "unbind"):
            self._couple_pieces(name, src[0], args, kwargs, lab_outs)
            if name == "unbind":
                return
        for o, lo in zip(outs, lab_outs):
            ctx.set_labels(o, lo)

    def _couple_pieces(self, name: str, x: torch.Tensor, args: tuple, kwargs: dict, pieces: list[torch.Tensor]) -> None:
        ctx = self.ctx
        lab = ctx.labels(x)
        if name == "unbind":
            d = _dims_arg(args, kwargs, 1, x.dim())
            d0 = d[0] if d else 0
            if lab.size(d0) > 1:
                ctx.pin_labels(lab, "unbind along a labelled dimension")
            return
        d = _dims_arg(args, kwargs, 2, x.dim())
        d0 = d[0] if d else 0
        if lab.size(d0) <= 1:
            return
        sizes = {p.size(d0) for p in pieces}
        if len(sizes) != 1:
            ctx.pin_labels(lab, "chunk into unequal pieces along a labelled dimension")
            return
        # chunk(n) splits the shrunk tensor into n equal parts again: the same positions must
        # go from every piece
        for p in pieces[1:]:
            diff = pieces[0] != p
            if bool(diff.any()):
                ctx.union(pieces[0][diff], p[diff], "chunk pieces must shrink alike")

    def _indexes_labelled(self, name: str, x: torch.Tensor, lab: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        varying = set(_varying_dims(lab))
        if not varying:
            return False
        if name in ("narrow", "select", "index_select"):
            d = _dims_arg(args, kwargs, 1, x.dim())
            return d is None or d[0] in varying
        idx = args[1] if len(args) > 1 else None
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if any(torch.is_tensor(i) and i.dtype == torch.bool and i.dim() > 1 for i in items):
            return True
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        dim = 0
        for i in items:
            if i is Ellipsis:
                dim += x.dim() - n_real
                continue
            if i is None:
                continue
            trivial = isinstance(i, slice) and i == slice(None)
            if not trivial and dim in varying:
                return True
            dim += i.dim() if torch.is_tensor(i) and i.dtype == torch.bool else 1
        return False

    def _reduce(self, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor], *, keep: bool) -> None:
        ctx = self.ctx
        x = args[0] if args and torch.is_tensor(args[0]) else None
        if x is None:
            ctx.pin(list(args) + list(kwargs.values()), f"{name} with unexpected arguments")
            return
        lab = ctx.labels(x)
        dims = _dims_arg(args, kwargs, 1, x.dim())
        if dims is None:
            dims = list(range(x.dim()))
        if any(lab.size(d) > 1 for d in dims):
            ctx.pin_labels(lab, f"{name} over a labelled dimension")
            return
        for o in outs:
            if keep or o.dim() == x.dim():
                ctx.set_labels(o, lab)
            elif o.dim() == x.dim() - len(dims):
                ctx.set_labels(o, lab.reshape([s for d, s in enumerate(lab.shape) if d not in dims]))


def run_trace(model: nn.Module, example_inputs: Any, find_rule: Callable[[nn.Module], Any]) -> tuple[TraceContext, Any]:
    """Run ``model`` once on ``example_inputs`` and return the filled :class:`TraceContext` and the output.

    ``example_inputs`` is a tensor, a tuple/list (positional arguments) or a dict (keyword
    arguments). The run uses ``eval()`` and ``no_grad``; every module's mode is restored.
    """
    ctx = TraceContext(model)
    tracer = _Tracer(ctx)
    handles = []

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tracer.depth += 1

    def make_post(rule: Any, name: str) -> Callable:
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            tracer.depth -= 1
            if tracer.depth:
                return
            tracer.busy = True
            try:
                if rule is None:
                    ctx.unknown_module(module, name, (args, kwargs), output, "layer type without a structured rule")
                else:
                    ctx.traced_modules[name] = module
                    rule.trace(ctx, module, name, args, kwargs, output)
            finally:
                tracer.busy = False
        return post

    def visit(module: nn.Module, prefix: str) -> None:
        rule = find_rule(module)
        has_children = any(True for _ in module.children())
        own_params = any(True for _ in module.parameters(recurse=False))
        if rule is not None or (own_params and not has_children):
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(make_post(rule, prefix), with_kwargs=True))
            return
        for n, child in module.named_children():
            visit(child, f"{prefix}.{n}" if prefix else n)

    visit(model, "")
    try:
        with preserved_modes(model), torch.no_grad(), tracer:
            try:
                output = call_model(model, example_inputs)
            except ConfigError:
                raise
            except Exception as e:  # the user's inputs do not fit the model: say so clearly
                raise ConfigError(
                    f"example_inputs do not run the model ({type(model).__name__}): {type(e).__name__}: {e}. "
                    "Pass a tensor, a tuple of positional arguments or a dict of keyword arguments that model(...) accepts."
                ) from e
    finally:
        for h in handles:
            h.remove()
    ctx.pin(output, "reaches the model's output (its shape must be kept)")
    return ctx, output
