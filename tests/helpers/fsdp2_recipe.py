"""The training recipes of the FSDP2 test, shared by the sharded run (fsdp2_methods.py, under
torchrun) and the unsharded reference run (tests/test_distributed.py)."""

import hashlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.masking import Masking, full_tensor
from sparseforge.methods import build_method

STEPS = 30

#: case -> (method name, method kwargs, optimizer); "masked-then-sharded" masks the plain
#: model with a static method first and fine-tunes it sharded with the masks kept fixed;
#: "method-then-sharded" builds RigL on the plain model and attaches it once sharded
CASES = {
    "static": ("static", {"sparsity": 0.8, "allocation": "erk"}, "sgd"),
    "gmp": ("gmp", {"sparsity": 0.75, "begin": 0, "end": 20, "frequency": 4}, "adamw"),
    "gmp-global": ("gmp", {"sparsity": 0.8, "begin": 0, "end": 12, "frequency": 3, "allocation": "global"}, "sgd"),
    "snip": ("snip", {"sparsity": 0.8}, "sgd"),
    "set": ("set", {"sparsity": 0.8, "update_interval": 5}, "sgd"),
    "rigl": ("rigl", {"sparsity": 0.8, "update_interval": 5, "total_steps": STEPS}, "sgd"),
    "imp": ("imp", {"sparsity": 0.6, "steps_per_round": 6, "fraction": 0.3, "rewind_step": 2}, "sgd"),
    "masked-then-sharded": ("static", {"sparsity": 0.7}, "adamw"),
    "method-then-sharded": ("rigl", {"sparsity": 0.8, "update_interval": 5, "total_steps": STEPS}, "sgd"),
    # per-output-unit factors: each rank scales its own rows
    "rigl-sinit": ("rigl", {"sparsity": 0.8, "update_interval": 5, "total_steps": STEPS, "init_scale": "unit"}, "sgd"),
}


def model_for_test() -> nn.Module:
    """An MLP whose output sizes (37, 21, 5) do not split evenly over 2 ranks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 37), nn.ReLU(), nn.Linear(37, 21), nn.ReLU(), nn.Linear(21, 5))


def build(case: str):
    """``(model, make_method(model, optimizer), make_optimizer(model))`` for ``case``."""
    name, kwargs, opt_name = CASES[case]

    def make_opt(model: nn.Module) -> torch.optim.Optimizer:
        if opt_name == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)

    def make_method(model: nn.Module, opt):
        data = {"data": next(iter(batches()))} if name == "snip" else {}  # SNIP scores one batch
        return build_method(name, model, opt, seed=0, **kwargs, **data)

    return model_for_test(), make_method, make_opt


def batches():
    """The same ``STEPS`` batches on every rank and in the reference run."""
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        yield torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)


def mask_digest(layers) -> str:
    """sha256 of every layer's full mask, in order."""
    h = hashlib.sha256()
    for layer in layers:
        h.update(full_tensor(layer.mask).numpy().tobytes())
    return h.hexdigest()


def train_case(case: str, shard: Callable[[nn.Module], None] = lambda model: None):
    """Build and train ``case``: ``(model, method, mask digest after every step, pruned gradient entries)``.

    The last counts the nonzero gradient entries at pruned positions right after each backward
    (what gradient clipping would see), over the steps that do not keep dense gradients.

    ``shard`` runs on the model before the optimizer exists (FSDP2's ``fully_shard`` in the
    sharded run, nothing in the reference run); the "...-then-sharded" cases mask the model first.
    """
    model, make_method, make_opt = build(case)
    if case == "masked-then-sharded":
        make_method(model, None)
        shard(model)
        opt = make_opt(model)
        method = Masking(model, optimizer=opt)
    elif case == "method-then-sharded":
        method = make_method(model, None)
        shard(model)
        opt = make_opt(model)
        method.attach(opt)
    else:
        shard(model)
        opt = make_opt(model)
        method = make_method(model, opt)
    digests, pruned_grads = [], 0
    for x, y in batches():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if not (hasattr(method, "needs_grads") and method.needs_grads(method.step)):  # RigL's grow steps stay dense
            pruned_grads += sum(int((full_tensor(l.weight.grad)[~full_tensor(l.mask)] != 0).sum()) for l in method.layers)
        opt.step()
        digests.append(mask_digest(method.layers))
    return model, method, digests, pruned_grads
