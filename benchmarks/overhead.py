"""Training-step overhead of each method relative to the dense step, next to torch's pruning utilities.

For each model (LeNet-300-100 and the small CNN, one fixed Fashion-MNIST-shaped batch of 128)
and each method at the same sparsity, time full training steps (zero_grad, forward, loss,
backward, optimizer step with the method's hooks) in interleaved rounds of 100 steps, so
methods that update masks every N steps are measured amortized: RigL and SET every 100
steps (SET's official interval is one epoch, 469 steps here, so this overstates its cost), GMP
every 10 steps (the TF default) and also every 100 steps, its cubic ramp (begin 0, end = every
step GMP takes in the run) spanning the whole measurement so that each update prunes a real
increment; RigL's drop fraction stays at its initial 0.3 (``end`` far away), its most
expensive regime. Ratios are medians over rounds, all measured in one process.
Each setup, dense included, is built ``--instances`` times (separately allocated models and
optimizers, all interleaved): on a ~3 ms LeNet step, two identical setups differ by 5-8 %
between instances (cause not established), more than the effects measured; the reported time is
the median over instances of each instance's median over rounds. A second copy of the dense
setup (``dense (control)``) shows that noise floor in every run, and the time spent inside the
optimizer step hooks, gradient hooks and end-of-backward callbacks (:class:`HookClock`) measures each method's own work directly.
Last, every setup whose machinery can be switched off is timed again on the very same tensors
with it on and off (``same instance on / off``), which removes the differences between
instances; what remains is round-to-round noise, shown by the dense row, whose switch does nothing.
Baselines: ``torch.nn.utils.prune.l1_unstructured`` (mask applied by a forward pre-hook) and
``torch.ao.pruning.WeightNormSparsifier`` (parametrization), each at the same sparsity
(the latter on Linear layers only: it fails on Conv2d weights in torch 2.13). For reference,
SR-STE at 2:4 (50 %, not the same sparsity) shows the cost of recomputing N:M masks every forward.

    sparseforge bench overhead [--rounds 7] [--instances 5] [--sparsity 0.9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.bench import interleaved_medians, provenance, write_results
from sparseforge.methods import build_method
from sparseforge.models import build_model

PRUNABLE = (nn.Linear, nn.Conv2d)


class HookClock:
    """Wall time spent inside the hooks registered between construction and :meth:`close`.

    Those are the optimizer's step pre- and post-hooks, every parameter's
    post-accumulate-grad hooks, and the end-of-backward callbacks those hooks queue (where
    :class:`~sparseforge.masking.Masking` masks the gradients). The clock's opening hooks are
    registered first and its closing hooks last, and torch runs both kinds in registration
    order. In backward, the first opening hook queues an opening callback; callbacks run in
    queue order and one queued by a callback runs after all the others, so the opening callback
    queues the closing one and the span covers every callback queued during that backward pass.
    The measured span is exactly the method's own per-step work (gradient masking, mask
    updates), amortized over all steps.
    """

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._t = 0.0
        opt.register_step_pre_hook(self._open)
        opt.register_step_post_hook(self._open)
        self._params = [p for g in opt.param_groups for p in g["params"]]
        self._task: int | None = None
        for p in self._params:
            p.register_post_accumulate_grad_hook(self._open_grad)

    def _open(self, *_: object) -> None:
        self._t = time.perf_counter()

    def _close_pre(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._t

    def _close_post(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._t
        self.steps += 1

    def _open_grad(self, _: torch.Tensor) -> None:
        self._open()
        task = torch._C._current_graph_task_id()
        if task != self._task:
            self._task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._open_callbacks)

    def _open_callbacks(self) -> None:
        self._open()
        torch.autograd.Variable._execution_engine.queue_callback(self._close_pre)

    def close(self, opt: torch.optim.Optimizer) -> None:
        """Register the closing hooks (after the method's own)."""
        opt.register_step_pre_hook(self._close_pre)
        opt.register_step_post_hook(self._close_post)
        for p in self._params:
            p.register_post_accumulate_grad_hook(self._close_pre)

    def reset(self) -> None:
        """Forget what was measured so far (e.g. the warm-up)."""
        self.seconds, self.steps = 0.0, 0

    @property
    def per_step(self) -> float:
        """Mean seconds per optimizer step inside the hooks."""
        return self.seconds / max(self.steps, 1)


class PruneClock(HookClock):
    """The work of ``torch.nn.utils.prune`` per step: its forward pre-hooks and their backward.

    prune's forward pre-hook computes ``weight = weight_orig * mask`` before every forward;
    autograd then multiplies the weight's gradient by the mask on the way back to
    ``weight_orig``. Timers around the pre-hook (registered first and last) take the forward
    part; the backward part runs from the moment the gradient of the computed ``weight``
    exists (a tensor hook) until it has been accumulated into ``weight_orig.grad`` (a
    post-accumulate hook). Steps are counted by the optimizer.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._t = 0.0
        self._t_grad: dict[int, float] = {}
        for m in model.modules():
            if hasattr(m, "weight_orig"):
                m.register_forward_pre_hook(self._open, prepend=True)
                m.register_forward_pre_hook(self._close_forward)
                m.weight_orig.register_post_accumulate_grad_hook(self._close_backward)
        opt.register_step_post_hook(self._count)

    def _close_forward(self, module: nn.Module, _: object) -> None:
        now = time.perf_counter()
        self.seconds += now - self._t
        key = id(module.weight_orig)
        module.weight.register_hook(lambda g: self._t_grad.__setitem__(key, time.perf_counter()))

    def _close_backward(self, p: torch.Tensor) -> None:
        self.seconds += time.perf_counter() - self._t_grad.pop(id(p))

    def _count(self, *_: object) -> None:
        self.steps += 1


def _setup(model_name: str, kind: str, sparsity: float, batch: tuple[torch.Tensor, torch.Tensor], seed: int = 0,
           gmp_end: int = 10**7):
    """One timed setup: ``step()`` takes a training step; ``step.clock`` and ``step.toggle`` as above.

    ``gmp_end`` is GMP's ``end`` step: :func:`main` sets it to the number of steps GMP takes
    during the whole measurement, so every timed update lies on the cubic ramp and prunes a
    real increment, as it would in training.
    """
    torch.manual_seed(seed)
    model = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt0, clock = opt, HookClock(opt)
    keep = prune_clock = None
    if kind == "static":
        keep = build_method("static", model, opt, sparsity=sparsity)
    elif kind.startswith("gmp"):
        freq = 100 if "100" in kind else 10
        keep = build_method("gmp", model, opt, sparsity=sparsity, begin=0, end=gmp_end, frequency=freq)
    elif kind == "set":
        keep = build_method("set", model, opt, sparsity=sparsity, update_interval=100)  # official: once per epoch (469 steps); 100 is the worst case measured here
    elif kind == "rigl":
        keep = build_method("rigl", model, opt, sparsity=sparsity, update_interval=100, end=10**7)
    elif kind == "srste 2:4":
        # N:M training recomputes the mask from |W| in every forward pass (first conv: 1 input channel, dense)
        keep = build_method("srste", model, opt, sparsity="2:4", indivisible="skip")
    elif kind == "torch.nn.utils.prune":
        import torch.nn.utils.prune as prune

        for m in model.modules():
            if isinstance(m, PRUNABLE):
                prune.l1_unstructured(m, "weight", amount=sparsity)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        prune_clock = PruneClock(model, opt)
    elif kind == "torch.ao WeightNormSparsifier":
        from torch.ao.pruning import WeightNormSparsifier

        sp = WeightNormSparsifier(sparsity_level=sparsity, sparse_block_shape=(1, 1), zeros_per_block=1)
        # Linear layers only: in torch 2.13 its mask reshape fails on Conv2d weights
        # ("shape '[1, 1, 288]' is invalid for input of size 9"), so on the CNN it prunes fewer layers
        config = [{"tensor_fqn": f"{n}.weight"} for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        sp.prepare(model, config)
        sp.step()
        keep = sp
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    elif kind not in ("dense", "dense (control)"):
        raise ValueError(kind)
    clock.close(opt0)
    x, y = batch

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step.keep = (model, opt, keep)  # keep references alive
    step.toggle = _toggle(kind, model, opt, keep)
    # the torch baselines rebuild the optimizer after pruning and do their work in the forward and
    # backward passes: torch.nn.utils.prune has its own clock, the parametrization none
    step.clock = clock if opt is opt0 else prune_clock
    return step


def _toggle(kind: str, model: nn.Module, opt: torch.optim.Optimizer, keep: object):
    """``toggle(on)`` switching a setup's sparsity machinery on or off on the same tensors, or None.

    Off, the very same model and optimizer take plain dense steps, so ``on / off`` measures the
    machinery's cost free of the differences between separately built instances. Our methods
    detach from and re-attach to the optimizer (re-attaching re-masks weights and optimizer
    state); ``torch.nn.utils.prune`` loses its forward pre-hooks and reads ``weight_orig``
    directly. N:M methods and the ``torch.ao`` parametrization have no such switch.
    """
    if kind in ("dense", "dense (control)"):
        return lambda on: None
    if kind == "torch.nn.utils.prune":
        import torch.nn.utils.prune as prune

        saved = {m: {k: h for k, h in m._forward_pre_hooks.items() if isinstance(h, prune.BasePruningMethod)}
                 for m in model.modules() if hasattr(m, "weight_orig")}

        def prune_toggle(on: bool) -> None:
            for m, hooks in saved.items():
                for k, h in hooks.items():
                    if on:
                        m._forward_pre_hooks[k] = h
                    else:
                        m._forward_pre_hooks.pop(k, None)
                if not on:
                    m.__dict__["weight"] = m.weight_orig  # the forward reads the trained tensor itself
        return prune_toggle
    if hasattr(keep, "masking") and getattr(keep.masking, "enforce", False):
        def method_toggle(on: bool) -> None:
            if on:
                keep.attach(opt)
            else:
                keep.masking.detach()
        return method_toggle
    return None


def same_instance_ratios(fns: dict, *, rounds: int, calls: int) -> dict:
    """``{key: on / off}``: each toggleable setup timed with its machinery on and off, interleaved.

    Runs after the main measurement, since re-attaching puts a method's hooks after the
    :class:`HookClock`'s closing ones. The switch happens on the first call of a round, so its
    one-off cost (re-masking at attach) is charged to the ``on`` rounds.
    """
    def mode(step, on: bool):
        def f() -> None:
            if step.mode != on:
                step.toggle(on)
                step.mode = on
            step()
        return f

    keys = [key for key, step in fns.items() if step.toggle is not None]
    pairs = {}
    for key in keys:
        fns[key].mode = True
        pairs[(key, True)], pairs[(key, False)] = mode(fns[key], True), mode(fns[key], False)
    per = interleaved_medians(pairs, rounds=rounds, calls=calls, warmup=0)
    for key in keys:
        if not fns[key].mode:
            fns[key].toggle(True)
            fns[key].mode = True
    return {key: per[(key, True)] / per[(key, False)] for key in keys}


def main(argv: list[str]) -> None:
    """Measure and write benchmarks/results/NAME.{json,md} (`--name`, default overhead)."""
    p = argparse.ArgumentParser(prog="sparseforge bench overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet300100", "small-cnn"])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--instances", type=int, default=5, help="independently built copies of every setup")
    p.add_argument("--calls", type=int, default=100, help="steps per round (>= the longest update interval amortized)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None)
    p.add_argument("--name", default="overhead")
    a = p.parse_args(argv)
    if a.instances < 1 or a.rounds < 1:
        p.error(f"--instances and --rounds must be >= 1; got {a.instances} and {a.rounds}")
    prov = provenance(["overhead", *argv])
    kinds = ["dense", "dense (control)", "static", "gmp (every 10)", "gmp (every 100)", "set", "rigl",
             "torch.nn.utils.prune", "torch.ao WeightNormSparsifier", "srste 2:4"]
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(a.batch, 1, 28, 28, generator=g), torch.randint(0, 10, (a.batch,), generator=g))
    results = {}
    md = [f"Median time per training step (batch {a.batch}, SGD momentum, sparsity {a.sparsity}), "
          f"{a.rounds} interleaved rounds of {a.calls} steps, {a.instances} instances of every setup; "
          "ratio = method / dense (lower is better), with the range of the per-instance ratios "
          "(instance i of a method over instance i of dense). `dense (control)` is a second, separately "
          "built copy of the dense setup: its ratio is the noise floor between identical setups.\n",
          "`in hooks` is the method's own work per step (gradient masking, mask updates amortized), "
          "timed inside the optimizer step hooks, the gradient hooks in backward and the end-of-backward callbacks they queue, "
          "during the same steps (the `dense` row is the clock's own cost); `1 + hooks / dense` is the "
          "ratio that work alone would give, free of the instance-to-instance noise. For "
          "`torch.nn.utils.prune` the same columns time its work, which sits in the forward and "
          "backward passes: its forward pre-hooks (`weight = weight_orig * mask`) and the backward "
          "of that product, from the weight's gradient to its accumulation in `weight_orig.grad`. "
          "The parametrization of `WeightNormSparsifier` runs inside the module's forward, where "
          "nothing times it (`-`).\n",
          "`same instance on / off` switches each setup's machinery off and on again on the very "
          "same model and optimizer (our methods detach from the optimizer and re-attach; "
          "`torch.nn.utils.prune` loses its forward pre-hooks and reads `weight_orig` directly) in "
          f"another {a.rounds} interleaved rounds, and divides the median step time with it on by the "
          "median with it off: the machinery's cost without the differences between separately built "
          "instances (median over instances, range in brackets). N:M and the `torch.ao` "
          "parametrization have no such switch (`-`).\n",
          f"GMP's cubic ramp (begin 0, to sparsity {a.sparsity}) ends at the last step GMP takes in this "
          f"run (warm-up, main rounds and the `on` rounds: {a.calls * (1 + 2 * a.rounds)} steps), so every "
          "timed update prunes a real increment; RigL's drop fraction stays at its initial 0.3 (its "
          "`end` is far away), its costliest setting.\n"]
    for model_name in a.models:
        # warm-up, main rounds and the "on" rounds of same_instance_ratios (detached, GMP does not count steps)
        gmp_end = a.calls * (1 + 2 * a.rounds)  # as stated in the text above
        fns = {(k, i): _setup(model_name, k, a.sparsity, batch, seed=i, gmp_end=gmp_end)
               for i in range(a.instances) for k in kinds}
        for f in fns.values():
            for _ in range(a.calls):
                f()
            if f.clock is not None:
                f.clock.reset()
        per = interleaved_medians(fns, rounds=a.rounds, calls=a.calls, warmup=0)
        same = same_instance_ratios(fns, rounds=a.rounds, calls=a.calls)
        med = {k: statistics.median(per[(k, i)] for i in range(a.instances)) for k in kinds}
        base = med["dense"]
        res = results[model_name] = {}
        md.append(f"\n## {model_name}\n\n| method | ms / step | ratio to dense | per-instance ratios | "
                  "in hooks (ms / step) | 1 + hooks / dense | same instance on / off |\n|---|---|---|---|---|---|---|")
        for k, v in med.items():
            ratios = [per[(k, i)] / per[("dense", i)] for i in range(a.instances)]
            hooks = [fns[(k, i)].clock.per_step for i in range(a.instances) if fns[(k, i)].clock is not None]
            hook = statistics.median(hooks) if hooks else None
            on_off = [same[(k, i)] for i in range(a.instances) if (k, i) in same]
            toggled = statistics.median(on_off) if on_off else None
            res[k] = {"seconds_per_step": v, "ratio_to_dense": v / base, "instance_ratios": ratios,
                      "hook_seconds_per_step": hook, "hook_ratio": None if hook is None else 1 + hook / base,
                      "same_instance_ratio": toggled, "same_instance_ratios": on_off}
            hook_cells = "- | -" if hook is None else f"{1e3 * hook:.3f} | {1 + hook / base:.3f}"
            same_cell = "-" if toggled is None else f"{toggled:.3f} ({min(on_off):.3f}-{max(on_off):.3f})"
            md.append(f"| {k} | {1e3 * v:.3f} | {v / base:.3f} | {min(ratios):.3f}-{max(ratios):.3f} | {hook_cells} | {same_cell} |")
    data = {"provenance": prov, "config": vars(a), "results": results}
    jp, mp = write_results(a.name, data, "\n".join(md), Path(a.out) if a.out else None)
    print(mp.read_text())
