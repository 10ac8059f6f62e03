"""Attach masks to any ``nn.Module`` and keep them enforced through training.

Design (see DESIGN.md, "Contracts"):

* A mask is a bool buffer ``<param>_mask`` (``True`` = kept) registered on the module that
  owns the parameter, so it lives in ``state_dict``, survives ``deepcopy``/pickling and moves
  with ``.to(device)``. No parametrization, no forward hooks: the forward pass runs on the
  plain weight, which holds exact zeros at pruned positions, so ``torch.compile`` sees an
  ordinary module and inference costs nothing extra.
* Enforcement uses hooks, never a patched ``step``: each masked weight's gradient is zeroed at
  pruned positions at the end of the backward pass that accumulated it, so gradient clipping
  and gradient-norm logging see the gradient of the sparse network, as they do with
  ``torch.nn.utils.prune``. A post-accumulate-grad hook on each weight only queues one
  end-of-backward callback per backward pass (the autograd engine's ``queue_callback``, which
  DDP uses too); that callback masks every fresh gradient with one foreach multiply. Python run
  from inside backward finds the CPU caches cold after the backward kernels (about 30 us per
  hook call on LeNet-300-100, ten times its warm cost), hence one call per backward rather than
  one per layer. Before each optimizer step (``register_step_pre_hook``)
  every gradient that was not masked that way, or changed since, is masked (so SGD momentum and
  Adam moments never accumulate there and weight decay acts on a zero weight). Under
  ``torch.distributed`` the end-of-backward callback queues the masking once more, so that it
  runs after every callback already queued in that pass: DDP's (which waits for the all-reduce
  and writes the averaged gradients) and FSDP2's (reduce-scatter) included, so the final
  gradients are the ones masked. On steps where the method wants the dense gradient (RigL's
  grow criterion) the masking waits for the step. After each step (``register_step_post_hook``) the weights are multiplied by their
  masks, unless the optimizer is one of :data:`EXACT_OPTIMIZERS`, for which that pass is
  provably a no-op and is skipped to save a pass over the weights. Gradient accumulation (several
  ``backward`` per step) and ``GradScaler`` skipped steps (no ``step`` call at all) need
  nothing special.
* Whenever a mask changes, optimizer state tensors shaped like the parameter are zeroed at
  every position that is not kept, so a weight that is regrown later starts with fresh state.
* FSDP2 (``torch.distributed.fsdp.fully_shard``): a sharded weight is a ``DTensor``, and its
  mask is a ``DTensor`` with the same mesh and placements, so each rank stores and applies
  only its shard's mask (gradient, weight and optimizer-state masking stay local, with no
  communication). Methods see whole layers: :meth:`MaskedLayer.canonical` gathers a shard to
  the full tensor, every rank ranks the same full scores, and :meth:`Masking.set_mask`
  scatters rank 0's new mask back to the shards. FSDP1 (``FullyShardedDataParallel``, flat
  parameters) is rejected with an error.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError, LayerError
from ..utils import check_module
from ..transaction import transaction
from .distributed import _reject_fsdp1, is_sharded, shard_like
from .cache import FloatMaskCache
from .layers import MASK_SUFFIX, MaskedLayer, find_masked_layers, mask_to
from .state import finalize
from .targets import Targets, check_targets_match

__all__ = ["Masking", "EXACT_OPTIMIZERS"]

# the autograd engine: its queue_callback runs a function once the current backward pass ends
_ENGINE = torch.autograd.Variable._execution_engine


#: Optimizers whose update of a position with zero weight, zero gradient and zero state is
#: exactly zero (momentum, Adam moments, L2 and decoupled weight decay all act on zeros), so
#: masking the gradients before the step keeps pruned weights at exactly 0.
EXACT_OPTIMIZERS: frozenset[type] = frozenset({
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
})


def _check_optimizer_holds(optimizer: Any, layers: Sequence[MaskedLayer]) -> None:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    params = {id(p) for g in groups for p in g["params"]}
    missing = [l.qualname for l in layers if id(l.weight) not in params]
    if missing:
        raise ConfigError(f"optimizer does not hold the masked parameter(s) {missing[:5]}; build it from model.parameters()")


class Masking:
    """Runtime that owns the masks of one model and enforces them on one optimizer.

    Args:
        model: any ``nn.Module``.
        targets: which parameters to mask (:class:`Targets` or a dict of its fields; default
            :class:`Targets`). When the model already carries masks (e.g. loaded from a
            checkpoint) those are reused, and targets given explicitly must select every masked
            layer (:class:`ConfigError` otherwise).
        optimizer: if given, :meth:`attach` is called.

    Typical use without a sparsity method (keep an existing sparsity fixed while fine-tuning)::

        masking = Masking(model)           # masks start all-True
        masking.set_masks_from_zeros()     # or set_mask(layer, mask)
        masking.attach(optimizer)          # enforced after every step from now on
    """

    #: True between the step hooks of an optimizer-state initialization step (see _state_init_step)
    _init_step = False

    def __init__(self, model: nn.Module, targets: Targets | None = None, optimizer: torch.optim.Optimizer | None = None):
        check_module(model)
        _reject_fsdp1(model)
        self.model = model
        self._cache = FloatMaskCache()  # before _shard_masks, which clears it
        existing = find_masked_layers(model)
        #: True if this object registered the mask buffers (False: reused from the model)
        self.registered_masks = not existing
        #: layers that matched the targets but were left dense, with the reason
        self.skipped: list[tuple[str, str]] = []
        #: score each module's masked parameters together (Targets.joint)
        self.joint = bool(targets is not None and Targets.from_spec(targets).joint)
        if existing:
            if targets is not None:
                check_targets_match(model, existing, targets)
            layers = existing
        else:
            targets = Targets.from_spec(targets)
            layers = targets.select(model)
            self.skipped = list(targets.skipped)
        if optimizer is not None:
            # validated before any buffer is registered: a refused optimizer leaves the model as it was
            _check_optimizer_holds(optimizer, layers)
        self.layers = layers
        if existing:
            self._shard_masks()
        else:
            for layer in self.layers:
                layer.module.register_buffer(
                    layer.param_name + MASK_SUFFIX, torch.ones_like(layer.weight, dtype=torch.bool)
                )
        self._handles: list[Any] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.remask_weights = True
        self.enforce = True
        self._stale = True
        self._before: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._grad_handles: list[Any] = []
        #: per layer index: (weak reference to the gradient masked in backward, its version then)
        self._masked: dict[int, tuple[weakref.ref, int]] = {}
        #: layers whose gradients are masked in backward (leaf weights), and the autograd graph
        #: task whose end-of-backward callback is already queued
        self._hooked: list[int] = []
        self._queued_task: int | None = None
        #: asked in backward: if it returns True, this step's gradients stay dense until the step
        #: (set by a sparsity method whose update reads the dense gradient)
        self.want_dense_grads: Callable[[], bool] | None = None
        if optimizer is not None:
            self.attach(optimizer)

    # ----------------------------------------------------------------------------- access
    def __iter__(self) -> Iterator[MaskedLayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> MaskedLayer:
        """The masked layer with module name ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"no masked layer named {name!r}; masked layers: {[l.name for l in self.layers]}")

    # ----------------------------------------------------------------------------- masks
    @torch.no_grad()
    def set_mask(self, layer: MaskedLayer, mask: torch.Tensor, *, canonical: bool = False) -> None:
        """Replace ``layer``'s mask, zero the newly pruned weights and their optimizer state.

        ``mask`` is in the stored layout unless ``canonical`` is True.
        """
        if canonical:
            mask = layer.from_canonical(mask)
        if tuple(mask.shape) != tuple(layer.weight.shape):
            raise LayerError(f"{layer.qualname}: mask shape {tuple(mask.shape)} != weight shape {tuple(layer.weight.shape)}")
        buf = layer.mask
        buf.copy_(shard_like(mask.to(device=buf.device, dtype=torch.bool), buf))
        w = layer.weight
        keep = mask_to(buf, w.dtype)
        w.mul_(keep)
        self._zero_state(layer, keep)
        # weights and state now follow the new mask: refresh this layer's cached float mask
        # instead of dropping the cache, which would make the next step redo both for every layer
        i = next((j for j, l in enumerate(self.layers) if l is layer), None)
        self._cache.replace(i, w, buf, keep)
        # a gradient masked in backward with the old mask must be masked again before the next
        # step (a mask set between backward and step would otherwise let the step move, and
        # revive, the newly pruned weights)
        self._masked.pop(i, None)

    def prune_positions(self, layer: MaskedLayer, positions: torch.Tensor) -> None:
        """Prune the kept ``positions`` (int64 flat indices, canonical layout) of ``layer``.

        The same as :meth:`set_mask` with those positions cleared, at a cost proportional to
        their number rather than to the layer's size: a gradual schedule prunes a small
        increment at every update. Sharded, parametrized or non-contiguous weights take
        :meth:`set_mask`.
        """
        self.change_positions(layer, prune=positions)

    def grow_positions(self, layer: MaskedLayer, positions: torch.Tensor) -> None:
        """Activate the pruned ``positions`` (int64 flat indices, canonical layout) of ``layer``.

        Regrowth as in RigL and SET: the weights at ``positions`` start at zero and their
        optimizer state is reset to zero (RigL's ``grow_init='zeros'``,
        ``initial_acc_scale=0``), at a cost proportional to their number. Sharded,
        parametrized or non-contiguous weights take :meth:`set_mask`; there the positions'
        weights and state are zero already, as at every pruned position.
        """
        self.change_positions(layer, grow=positions)

    @torch.no_grad()
    def change_positions(self, layer: MaskedLayer, prune: torch.Tensor | None = None,
                         grow: torch.Tensor | None = None) -> None:
        """:meth:`prune_positions` of ``prune``, then :meth:`grow_positions` of ``grow``, in one call.

        A prune-and-regrow update (SET, RigL) changes both at once: where the weights take
        :meth:`set_mask` (FSDP2 shards among them) that is one gather and one scatter of the
        layer's mask instead of one of each per list.
        """
        changes = [(p, keep) for p, keep in ((prune, False), (grow, True)) if p is not None and p.numel()]
        if not changes:
            return
        w, buf = layer.module._parameters.get(layer.param_name), layer.mask
        if w is None or is_sharded(w) or is_sharded(buf) or not (w.is_contiguous() and buf.is_contiguous()):
            full = torch.clone(layer.canonical(buf), memory_format=torch.contiguous_format)
            for positions, keep in changes:
                full.view(-1)[positions] = keep
            self.set_mask(layer, full, canonical=True)
            return
        for positions, keep in changes:
            self._set_positions(layer, w, buf, positions, keep)

    def _set_positions(self, layer: MaskedLayer, w: torch.Tensor, buf: torch.Tensor, positions: torch.Tensor,
                       keep: bool) -> None:
        # mask[positions] = keep in place, with the weights and optimizer state there zeroed
        # either way (a plain contiguous weight; change_positions routes the others to set_mask)
        pos = layer.stored_index(positions).to(buf.device)
        version = buf._version
        buf.view(-1)[pos] = keep
        w.view(-1)[pos] = 0
        state = self.optimizer.state.get(w) if self.optimizer is not None else None
        for v in (state or {}).values():
            if torch.is_tensor(v) and v.shape == w.shape:
                if v.is_contiguous():
                    v.view(-1)[pos] = 0
                else:
                    hit = torch.zeros(w.numel(), dtype=torch.bool, device=v.device)
                    hit[pos.to(v.device)] = True
                    v.masked_fill_(hit.view(w.shape), 0)
        i = next((j for j, l in enumerate(self.layers) if l is layer), None)
        self._cache.set_positions(i, buf, version, pos, keep)
        # a gradient masked in backward with the old mask must be masked again (see set_mask)
        self._masked.pop(i, None)

    @torch.no_grad()
    def set_masks_from_zeros(self) -> None:
        """Mask exactly the positions whose weight is zero (adopt an already-sparse model)."""
        for layer in self.layers:
            self.set_mask(layer, layer.weight != 0)

    @torch.no_grad()
    def _zero_state(self, layer: MaskedLayer, keep: torch.Tensor | None = None) -> None:
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(layer.weight)
        if not state:
            return
        keep = layer.mask if keep is None else keep
        for v in state.values():
            if torch.is_tensor(v) and v.shape == layer.weight.shape:
                v.mul_(keep if keep.dtype == v.dtype else mask_to(keep, v.dtype))

    @torch.no_grad()
    def reset_state(self, layer: MaskedLayer, positions: torch.Tensor) -> None:
        """Zero optimizer state at ``positions`` (bool, stored layout), e.g. for regrown weights."""
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(layer.weight)
        for v in (state or {}).values():
            if torch.is_tensor(v) and v.shape == layer.weight.shape:
                v.masked_fill_(positions, 0)

    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # the weights and the float copies of their masks (self._cache: FloatMaskCache says when
        # a copy is out of date). This runs on every optimizer step, so it reads the parameter and
        # buffer dicts directly (nn.Module.__getattr__ costs about a microsecond per lookup).
        weights: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        for l in self.layers:
            mod = l.module
            w = mod._parameters.get(l.param_name)
            if w is None:  # e.g. a parametrized weight: take the slow, general path
                w = l.weight
            m = mod._buffers.get(l.param_name + MASK_SUFFIX)
            if m is None:
                m = l.mask
            weights.append(w)
            bufs.append(m)
        masks, rebuilt = self._cache.get(weights, bufs)
        if rebuilt:
            self._stale = True
            self._masked.clear()  # masked with the old masks: redo
        return weights, masks

    @torch.no_grad()
    def apply(self) -> None:
        """Multiply every masked weight by its mask (what runs after each optimizer step)."""
        weights, masks = self._tensors()
        torch._foreach_mul_(weights, masks)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned positions (what runs before each optimizer step)."""
        self._mask_grads(*self._tensors())

    def _mask_grads(self, weights: list[torch.Tensor], masks: list[torch.Tensor], skip_masked: bool = False,
                    layers: Iterable[int] | None = None, record: bool = False) -> None:
        # one foreach multiply over the gradients of `layers` (default all); `skip_masked` leaves
        # out those masked in backward and untouched since; `record` remembers what was masked
        # (in backward) instead of forgetting it (at the step)
        grads, ms, idx = [], [], []
        done = self._masked if skip_masked else {}
        for i in range(len(weights)) if layers is None else layers:
            g = weights[i].grad
            rec = done.get(i)
            if rec is not None and rec[0]() is g and rec[1] == g._version:
                continue  # masked in backward and untouched since
            if g is not None:
                m = masks[i]
                grads.append(g)
                # gradients may differ in dtype from their weight (e.g. a bf16 grad on an fp32 weight)
                ms.append(m if m.dtype == g.dtype else m.to(g.dtype))
                idx.append(i)
        if grads:
            torch._foreach_mul_(grads, ms)
        if record:
            for i, g in zip(idx, grads):
                self._masked[i] = (weakref.ref(g), g._version)
        else:
            self._masked.clear()

    def _on_grad(self, p: torch.Tensor) -> None:
        # post-accumulate-grad hook of every masked leaf weight: queue the end-of-backward
        # masking once per backward pass (graph task), whichever weight's gradient comes first
        task = torch._C._current_graph_task_id()
        if task != self._queued_task:
            self._queued_task = task
            _ENGINE.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        # runs once the backward pass has accumulated every gradient: mask the fresh ones
        if self.optimizer is None or (self.want_dense_grads is not None and self.want_dense_grads()):
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP's reducer queues its own end-of-backward callback (wait for the all-reduce,
            # write the averaged gradients) during this pass, after ours; a callback queued
            # now runs after every callback already queued, so it masks the final gradients
            _ENGINE.queue_callback(self._mask_fresh_grads)
            return
        self._mask_fresh_grads()

    def _mask_fresh_grads(self) -> None:
        # _tensors() rebuilds the float masks if a mask changed since: the new masks apply
        self._mask_grads(*self._tensors(), layers=self._hooked, record=True)

    def _shard_masks(self) -> None:
        # masks made before the model was sharded by FSDP2 (prune, or build the method, then
        # fully_shard and fine-tune): lay each out like its weight's shards
        for layer in self.layers:
            w, m = layer.weight, layer.mask
            if is_sharded(w) and not is_sharded(m):
                setattr(layer.module, layer.param_name + MASK_SUFFIX, shard_like(m, w))
                self._cache.clear()

    # ----------------------------------------------------------------------------- optimizer
    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise :class:`ConfigError` unless ``optimizer`` holds every masked parameter."""
        _check_optimizer_holds(optimizer, self.layers)

    def attach(self, optimizer: torch.optim.Optimizer, *, remask_weights: bool | str = "auto", enforce: bool = True) -> None:
        """Enforce the masks on every ``optimizer.step()`` from now on.

        Gradients of pruned positions are always zeroed before the step. Re-masking the
        weights after the step (``remask_weights``) is redundant for the optimizers listed in
        :data:`EXACT_OPTIMIZERS`: with a zero weight, zero gradient and zero state their update
        is exactly zero, so ``"auto"`` (default) skips it for them (one pass over the weights
        less per step) and keeps it for any other optimizer, including subclasses.
        ``True``/``False`` force it on or off. ``enforce=False`` only runs the callbacks: for
        methods that train dense weights through a mask applied in the forward pass (N:M STE).
        """
        if self.optimizer is not None:
            raise ConfigError("this Masking is already attached to an optimizer; call detach() first")
        if remask_weights not in ("auto", True, False):
            raise ConfigError(f"remask_weights must be 'auto', True or False; got {remask_weights!r}")
        self.check_optimizer(optimizer)
        self._shard_masks()
        self.optimizer = optimizer
        self.remask_weights = type(optimizer) not in EXACT_OPTIMIZERS if remask_weights == "auto" else bool(remask_weights)
        self.enforce = enforce
        if not enforce:
            self._handles = [
                optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._run_before()),
                optimizer.register_step_post_hook(lambda opt, args, kwargs: self._run_after()),
            ]
            return
        self.apply()
        self._handles = [
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._pre_step()),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self._post_step()),
        ]
        self._hooked = []
        for i, layer in enumerate(self.layers):
            w = layer.weight
            if w.is_leaf and w.requires_grad:  # a parametrized (computed) weight: masked at the step only
                self._hooked.append(i)
                self._grad_handles.append(w.register_post_accumulate_grad_hook(self._on_grad))
        for layer in self.layers:
            self._zero_state(layer)

    def detach(self) -> None:
        """Stop enforcing masks on the optimizer (the masks stay on the model)."""
        for h in self._handles + self._grad_handles:
            h.remove()
        self._handles, self._grad_handles = [], []
        self._masked.clear()
        self._hooked, self._queued_task = [], None
        self.optimizer = None

    def add_callbacks(self, before: Callable[[], None] | None = None, after: Callable[[], None] | None = None) -> None:
        """Run ``before`` ahead of the gradient masking and ``after`` after the weight masking of every step.

        A callback that is already registered is not added again, so detaching and re-attaching
        a method (or attaching an unpickled copy) still runs it once per step.
        """
        if before is not None and before not in self._before:
            self._before.append(before)
        if after is not None and after not in self._after:
            self._after.append(after)

    def _state_init_step(self) -> bool:
        # torch.distributed.checkpoint's get_state_dict / get_optimizer_state_dict create an
        # empty optimizer's state by one step() with all-zero gradients and every lr set to 0
        # (state_dict._init_optim_state). That step is not training: a method must not count
        # it, and RigL must not turn it into a skipped step (SGD would then create no momentum
        # buffers, and loading the checkpoint would silently drop them).
        # (called by _run_before only while the optimizer has no state)
        opt = self.optimizer
        if any(float(g.get("lr", 0.0)) != 0.0 for g in opt.param_groups):
            return False
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.requires_grad]
        return bool(grads) and all(g is not None and not bool(g.any()) for g in grads)

    def _run_before(self) -> None:
        # (an optimizer with state skips the check at the cost of one dict test per step)
        self._init_step = not self.optimizer.state and self._state_init_step()
        if not self._init_step:
            for cb in self._before:
                cb()

    def _run_after(self) -> None:
        if self._init_step:
            self._init_step = False
            return
        for cb in self._after:
            cb()

    @torch.no_grad()
    def _pre_step(self) -> None:
        self._run_before()
        weights, masks = self._tensors()
        if self._stale:
            # masks changed since the last step (possibly in place, e.g. load_state_dict):
            # zero the weights and optimizer state they now prune before this step runs
            torch._foreach_mul_(weights, masks)
            for layer in self.layers:
                self._zero_state(layer)
            self._stale = False
        self._mask_grads(weights, masks, skip_masked=True)

    def _post_step(self) -> None:
        if self.remask_weights:
            self.apply()
        self._run_after()

    # ----------------------------------------------------------------------------- misc
    def broadcast(self, src: int = 0) -> None:
        """Copy rank ``src``'s masks to every rank (no-op without ``torch.distributed``)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        with torch.no_grad():
            for layer in self.layers:
                if is_sharded(layer.mask):
                    continue  # set_mask scattered rank 0's mask to the shards already
                m = layer.mask.to(torch.uint8)
                torch.distributed.broadcast(m, src)
                layer.mask.copy_(m.bool())
                layer.weight.mul_(layer.mask)
                self._zero_state(layer)
        self._cache.clear()

    def unregister(self) -> None:
        """Remove the mask buffers this object registered (used when a method's construction fails)."""
        self.detach()
        if self.registered_masks:
            for layer in self.layers:
                name = layer.param_name + MASK_SUFFIX
                if name in layer.module._buffers:
                    delattr(layer.module, name)
        self._cache.clear()

    def finalize(self) -> nn.Module:
        """Detach from the optimizer, fold masks into weights and remove them (all or nothing)."""
        with transaction(self.model, self.optimizer, self, tensors="journal") as txn:
            txn.save(*(l.weight for l in self.layers))
            self.detach()
            return finalize(self.model)

    def nonzeros(self) -> dict[str, int]:
        """Kept positions per masked parameter (computed from the masks)."""
        return {l.qualname: int(l.mask.sum()) for l in self.layers}

    def __getstate__(self) -> dict:
        # hook handles and the optimizer are process-local; the masks themselves live on the model
        state = self.__dict__.copy()
        state["_handles"] = []
        state["_grad_handles"] = []
        state["_masked"] = {}
        state["_hooked"], state["_queued_task"] = [], None
        state["optimizer"] = None
        state["_cache"] = FloatMaskCache()
        return state
