"""All-or-nothing operations: restore a model, its optimizer and a method when an operation fails.

DESIGN.md's contract "an operation that fails leaves the model, the method and the files
exactly as they were" is kept in one place: every in-place operation of the public API runs
inside :func:`transaction`, which records the state it may change and puts it back if the
body raises::

    before = [p.detach().clone() for p in model.parameters()]
    try:
        with transaction(model, optimizer):
            for p in model.parameters():
                p.data.zero_()                   # change weights (or masks, hooks, optimizer state)
            raise RuntimeError("refused by the last layer")
    except RuntimeError:
        pass
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # as they were

What is recorded:

* every module reachable from ``model``: its attribute dictionary (``_parameters``,
  ``_buffers``, ``_modules``, every hook dictionary, ``training``...) and its class (a
  parametrization swaps the class); dictionaries are restored *in place*, so hook handles
  the user holds keep working;
* every parameter and buffer: its values (see ``tensors`` below), ``requires_grad``, its
  gradient and its tensor hooks (``register_hook``, ``register_post_accumulate_grad_hook``);
* the optimizer: its attribute dictionary (hooks included), ``param_groups`` (each group's
  settings and parameter list) and ``state`` (tensors cloned);
* plain objects (a sparsity method and its :class:`~sparseforge.masking.Masking`): their
  attribute dictionaries, with containers and tensors copied and ``torch.Generator`` states
  saved (model tensors and other objects are kept by reference);
* the CPU random number generator of torch.

``tensors`` chooses how parameter and buffer values are kept: ``"copy"`` (default) clones them
all up front (twice the model's memory while the body runs); ``"journal"`` clones only those
passed to :meth:`Transaction.save` before the body changes them, for operations that touch one
layer at a time on models too large to copy (one-shot pruning, quantization). In journal mode a
tensor that changed without being saved cannot be restored; the version counters tell, and the
rollback warns (a bug of the operation, which the property tests look for). Changes made through
``tensor.data`` do not move the version counter: journal mode cannot see them unless saved.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["Transaction", "transaction"]

_TENSOR_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")


def _copy_container(v: Any) -> Any:
    # a shallow copy of a dict / list / set (contents kept by reference), or None if not one
    if isinstance(v, dict):
        return dict(v)
    if isinstance(v, (list, set)):
        return type(v)(v) if type(v) in (list, set) else list(v)
    return None


def _restore_container(orig: Any, content: Any) -> None:
    # put `content` back into the very object `orig` (handles keep pointing at it)
    if isinstance(orig, dict):
        orig.clear()
        orig.update(content)
    elif isinstance(orig, list):
        orig[:] = content
    else:
        orig.clear()
        orig.update(content)


class _DictSnapshot:
    """An object's ``__dict__`` and class, with its container values copied one level deep."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.cls = obj.__class__
        self.items = {k: (v, _copy_container(v)) for k, v in vars(obj).items()}
        # a parametrized module's class is generated for it alone and holds one property per
        # parametrized tensor; remove_parametrizations deletes that property from the class
        self.properties = ({k: v for k, v in vars(self.cls).items() if isinstance(v, property)}
                           if "parametrizations" in getattr(obj, "_modules", {}) else {})

    def restore(self) -> None:
        d = vars(self.obj)
        for k in [k for k in d if k not in self.items]:
            del d[k]
        for k, (orig, content) in self.items.items():
            if content is not None:
                _restore_container(orig, content)
            d[k] = orig
        if self.obj.__class__ is not self.cls:
            self.obj.__class__ = self.cls
        for k, v in self.properties.items():
            if vars(self.cls).get(k) is not v:
                setattr(self.cls, k, v)


class _Frozen:
    """A deep-enough copy of a plain object's state value (see :func:`_freeze`)."""

    __slots__ = ("kind", "payload")

    def __init__(self, kind: str, payload: Any) -> None:
        self.kind, self.payload = kind, payload


def _freeze(v: Any, keep: set[int]) -> Any:
    # containers are rebuilt, tensors cloned (unless they belong to the model: `keep`),
    # generators keep their identity and state; any other object is kept by reference
    if isinstance(v, torch.Tensor):
        if id(v) in keep:
            return v
        return _Frozen("tensor", v.detach().clone())
    if isinstance(v, torch.Generator):
        return _Frozen("generator", (v, v.get_state()))
    if type(v) in (list, tuple):
        return _Frozen(type(v).__name__, [_freeze(x, keep) for x in v])
    if isinstance(v, dict):
        return _Frozen("dict", (type(v), [(k, _freeze(x, keep)) for k, x in v.items()], getattr(v, "default_factory", None)))
    if type(v) is set:
        return _Frozen("set", set(v))
    return v


def _thaw(v: Any) -> Any:
    if not isinstance(v, _Frozen):
        return v
    kind, p = v.kind, v.payload
    if kind == "tensor":
        return p.clone()
    if kind == "generator":
        gen, state = p
        gen.set_state(state)
        return gen
    if kind == "list":
        return [_thaw(x) for x in p]
    if kind == "tuple":
        return tuple(_thaw(x) for x in p)
    if kind == "set":
        return set(p)
    cls, items, factory = p
    if factory is not None:
        out = cls(factory)
    else:
        try:
            out = cls()
        except TypeError:
            out = {}
    out.update((k, _thaw(x)) for k, x in items)
    return out


class _ObjectSnapshot:
    """A method's (or a Masking's) attributes, restored as they were."""

    def __init__(self, obj: Any, keep: set[int]) -> None:
        self.obj = obj
        self.cls = obj.__class__
        self.items = {k: _freeze(v, keep) for k, v in vars(obj).items()}

    def restore(self) -> None:
        d = vars(self.obj)
        d.clear()
        d.update({k: _thaw(v) for k, v in self.items.items()})
        if self.obj.__class__ is not self.cls:
            self.obj.__class__ = self.cls


class _TensorRecord:
    """One parameter or buffer: values (when copied), grad, requires_grad, tensor hooks, version."""

    def __init__(self, t: torch.Tensor, copy: bool) -> None:
        self.t = t
        self.version = t._version
        self.value: torch.Tensor | None = t.detach().clone() if copy else None
        self.requires_grad = t.requires_grad
        self.grad = t.grad if t.is_leaf else None
        self.grad_version = self.grad._version if self.grad is not None else None
        self.grad_value = self.grad.detach().clone() if copy and self.grad is not None else None
        self.hooks = {}
        for name in _TENSOR_HOOKS:
            d = getattr(t, name, None)
            self.hooks[name] = (d, None if d is None else dict(d))

    def save(self) -> None:
        if self.value is None:
            self.value = self.t.detach().clone()
        if self.grad is not None and self.grad_value is None:
            self.grad_value = self.grad.detach().clone()

    @torch.no_grad()
    def restore(self) -> str | None:
        """Put the tensor back; return a description if its values could not be restored."""
        t, problem = self.t, None
        if self.value is not None:
            v = self.value
            # compared, not trusted to the version counter: a change through ``.data`` bypasses it
            if t.shape == v.shape and t.dtype == v.dtype and t.device == v.device:
                if not torch.equal(t, v):
                    t.copy_(v)
            elif t.shape != v.shape or t.dtype != v.dtype or t.device != v.device:
                t.data = v
        elif t._version != self.version:
            problem = "values changed but were not saved"
        if t.is_leaf and t.requires_grad != self.requires_grad:
            t.requires_grad_(self.requires_grad)
        if t.is_leaf:
            if t.grad is not self.grad:
                t.grad = self.grad
            if self.grad is not None and self.grad._version != self.grad_version:
                if self.grad_value is not None:
                    self.grad.copy_(self.grad_value)
                else:
                    problem = "gradient changed but was not saved"
        for name, (orig, content) in self.hooks.items():
            now = getattr(t, name, None)
            if orig is not None:
                _restore_container(orig, content)
            if now is not None and now is not orig:
                now.clear()  # hooks added during the operation: an empty dict runs none of them
        return problem


class Transaction:
    """The recorded state of a model, an optimizer and plain objects; see :func:`transaction`."""

    def __init__(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                 *objects: Any, tensors: str = "copy") -> None:
        if tensors not in ("copy", "journal"):
            raise ConfigError(f"tensors must be 'copy' or 'journal'; got {tensors!r}")
        if optimizer is not None and not (isinstance(getattr(optimizer, "param_groups", None), list)
                                          and isinstance(getattr(optimizer, "state", None), dict)):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        copy = tensors == "copy"
        self._modules: list[_DictSnapshot] = []
        self._tensors: dict[int, _TensorRecord] = {}
        if model is not None:
            for m in model.modules():
                self._modules.append(_DictSnapshot(m))
                for t in list(m._parameters.values()) + list(m._buffers.values()):
                    if t is not None and id(t) not in self._tensors:
                        self._tensors[id(t)] = _TensorRecord(t, copy)
        self._optimizer = optimizer
        self._state_tensors: dict[int, list] = {}
        if optimizer is not None:
            self._opt_dict = _DictSnapshot(optimizer)
            self._groups = [(g, dict(g), list(g["params"])) for g in optimizer.param_groups]
            # per parameter: its state dict and, per entry, the value (a tensor: [tensor, copy or None, version])
            self._state = {p: (s, {k: ([v, v.detach().clone() if copy else None, v._version] if torch.is_tensor(v) else v)
                                   for k, v in s.items()})
                           for p, s in optimizer.state.items()}
            self._state_tensors = {id(e[0]): e for _, content in self._state.values()
                                   for e in content.values() if isinstance(e, list)}
        keep = set(self._tensors)
        self._objects = [_ObjectSnapshot(o, keep) for o in objects if o is not None]
        self._rng = torch.get_rng_state()

    def save(self, *tensors: torch.Tensor) -> None:
        """Journal mode: keep the current values of ``tensors`` (model parameters or buffers) before changing them."""
        for t in tensors:
            rec = self._tensors.get(id(t))
            if rec is not None:
                rec.save()
            entry = self._state_tensors.get(id(t)) if self._optimizer is not None else None
            if entry is not None and entry[1] is None:
                entry[1] = t.detach().clone()

    def rollback(self) -> list[str]:
        """Restore everything recorded; return the tensors whose values could not be restored."""
        problems = []
        for snap in self._modules:
            snap.restore()
        for rec in self._tensors.values():
            p = rec.restore()
            if p is not None:
                problems.append(p)
        opt = self._optimizer
        if opt is not None:
            self._opt_dict.restore()
            opt.param_groups[:] = [g for g, _, _ in self._groups]
            for g, content, params in self._groups:
                g.clear()
                g.update(content)
                g["params"] = params
            opt.state.clear()
            for p, (s, content) in self._state.items():
                s.clear()
                for k, v in content.items():
                    if isinstance(v, list):
                        t, value, version = v
                        if value is not None:
                            t = value.clone()
                        elif t._version != version:
                            problems.append("optimizer state changed but was not saved")
                        v = t
                    s[k] = v
                opt.state[p] = s
        for snap in self._objects:
            snap.restore()
        torch.set_rng_state(self._rng)
        return problems


@contextlib.contextmanager
def transaction(model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                method: Any = None, *, tensors: str = "copy", objects: tuple = ()) -> Iterator[Transaction]:
    """Run the ``with`` body all-or-nothing: on an exception, restore what it changed, then re-raise.

    Args:
        model: the module whose parameters, buffers, gradients, submodules, hooks and
            parametrizations are restored.
        optimizer: restored too: state, param groups, step hooks.
        method: a sparsity method (or any plain object); its ``masking`` attribute, if any, is
            restored as well.
        tensors: ``"copy"`` (clone every parameter and buffer now) or ``"journal"`` (only those
            given to :meth:`Transaction.save`); see the module docstring.
        objects: more plain objects to restore.
    """
    objs = list(objects)
    if method is not None:
        objs.append(method)
        masking = getattr(method, "masking", None)
        if masking is not None and masking not in objs:
            objs.append(masking)
        if optimizer is None:
            optimizer = getattr(method, "optimizer", None)
    txn = Transaction(model, optimizer, *objs, tensors=tensors)
    try:
        yield txn
    except BaseException:
        problems = txn.rollback()
        if problems:
            warnings.warn(f"the failed operation could not restore {len(problems)} tensor(s): {problems[:3]}",
                          RuntimeWarning, stacklevel=3)
        raise
