"""Random search over node-level sparse configurations, a neutral baseline for sparse architecture search.

Farahani, "Random Search as a Baseline for Sparse Neural Network Architecture Search"
(arXiv 2403.08265, 2024). The search space is the *node space* of an overparameterised
parent network: a configuration says which hidden neurons (or hidden conv channels) are kept.
Random Search samples configurations at a given node sparsity, scores each sub-network of the
*initialised* parent without training, keeps the best, and trains it; the comparison is with a
random configuration at the same sparsity and with the dense parent, on final accuracy and on
convergence speed. The paper finds the searched networks neither better nor faster than random ones.

Score (what "best at initialisation" means here): the cross-entropy loss of the untrained
sub-network on a scoring batch, lower is better (``metric="loss"``; ``"accuracy"`` ranks by
accuracy at initialisation instead). The paper's aim is sub-networks "positioned more
advantageously in the loss landscape" at initialisation; only its abstract could be read
here, so the exact metric, sample count and network sizes of the paper are not reproduced.

Node sparsity ``s``: with ``per_layer=True`` (default) every hidden layer of width ``n`` keeps
exactly ``n - round(s n)`` nodes; with ``per_layer=False`` exactly ``round(s N)`` of the ``N``
hidden nodes are removed across the network (at least one kept per layer). Removing a node
zeroes its row of the producing layer's weight and its column(s) of the consuming layer's weight
through ordinary weight masks (:class:`~sparseforge.masking.Masking`), so the masks stay
enforced during training and reports count them. Sampling is deterministic for a seed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .core.patterns import num_pruned
from .core.rng import stream_generator
from .utils import preserved_modes
from .errors import ConfigError, LayerError, check_int, check_sparsity
from .masking import Masking, Targets, find_masked_layers
from .results import Result

__all__ = ["NodeSpace", "node_space", "sample_node_masks", "apply_node_masks", "score_at_init", "SearchResult",
           "random_search", "convergence_step"]

_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class NodeSpace:
    """The hidden nodes of a chain of ``Linear`` / ``Conv2d`` layers.

    Attributes:
        layers: module names of the chain, in order (the last one produces the outputs).
        widths: hidden widths, ``widths[i]`` = outputs of ``layers[i]`` (``len(layers) - 1`` entries).
        spread: inputs of ``layers[i + 1]`` per node of ``layers[i]`` (1, or ``H * W`` after a
            flattened convolution).
    """

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    spread: tuple[int, ...]

    @property
    def total(self) -> int:
        """Hidden nodes in all."""
        return sum(self.widths)


def node_space(model: nn.Module) -> NodeSpace:
    """The node space of ``model``: its ``Linear`` / ``Conv2d`` layers in module order must feed each other."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    if len(layers) < 2:
        raise LayerError(f"{type(model).__name__} has {len(layers)} Linear/Conv2d layer(s); a node space needs a hidden "
                         "layer between two of them")
    widths, spread = [], []
    for (a, la), (b, lb) in zip(layers, layers[1:]):
        c = la.out_features if isinstance(la, nn.Linear) else la.out_channels
        n_in = lb.in_features if isinstance(lb, nn.Linear) else lb.in_channels
        if isinstance(la, nn.Conv2d) and isinstance(lb, nn.Linear) and n_in % c == 0:
            spread.append(n_in // c)
        elif n_in == c:
            spread.append(1)
        else:
            raise LayerError(f"{b} takes {n_in} inputs but {a} gives {c} outputs; node search needs a chain of layers "
                             "(an MLP or a plain CNN)")
        if isinstance(lb, nn.Conv2d) and lb.groups != 1:
            raise LayerError(f"{b}: grouped convolutions are not supported (groups={lb.groups})")
        widths.append(c)
    return NodeSpace(tuple(n for n, _ in layers), tuple(widths), tuple(spread))


def sample_node_masks(space: NodeSpace, sparsity: float, generator: torch.Generator, *,
                      per_layer: bool = True) -> list[torch.Tensor]:
    """One random configuration: a bool node mask per hidden layer at exactly the node budget.

    ``per_layer=True``: each layer keeps ``n - round(s n)`` nodes (at least one). ``False``:
    exactly ``round(s N)`` nodes are removed over the ``N`` hidden nodes, uniformly among the
    configurations that keep at least one node per layer.
    """
    s = check_sparsity(sparsity)
    if per_layer:
        out = []
        for i, n in enumerate(space.widths):
            k = n - num_pruned(s, n)
            if k < 1:
                raise LayerError(f"node sparsity {s} removes all {n} nodes of {space.layers[i]}")
            keep = torch.zeros(n, dtype=torch.bool)
            keep[torch.randperm(n, generator=generator)[:k]] = True
            out.append(keep)
        return out
    total = space.total
    remove = num_pruned(s, total)
    if remove > total - len(space.widths):
        raise LayerError(f"node sparsity {s} removes {remove} of {total} hidden nodes; at most {total - len(space.widths)} "
                         "can go (one node per layer must stay)")
    while True:  # rejection keeps the draw uniform over the valid configurations
        flat = torch.ones(total, dtype=torch.bool)
        flat[torch.randperm(total, generator=generator)[:remove]] = False
        parts = list(torch.split(flat, list(space.widths)))
        if all(bool(p.any()) for p in parts):
            return [p.clone() for p in parts]


def apply_node_masks(model: nn.Module, space: NodeSpace, node_masks: Sequence[torch.Tensor]) -> Masking:
    """Install weight masks that remove the nodes ``node_masks`` drop; returns the :class:`Masking`.

    The model must not carry masks yet. Weights of removed nodes are zeroed (rows of the
    producing layer, columns of the consuming layer), so the model computes the sub-network.
    """
    if len(node_masks) != len(space.widths):
        raise ConfigError(f"got {len(node_masks)} node masks for {len(space.widths)} hidden layers")
    for i, (m, n) in enumerate(zip(node_masks, space.widths)):
        if m.dtype != torch.bool or tuple(m.shape) != (n,):
            raise ConfigError(f"node mask {i} must be a bool tensor of shape ({n},); got {m.dtype} {tuple(m.shape)}")
    if find_masked_layers(model):
        raise ConfigError("the model already carries masks; apply node masks to a fresh copy")
    masking = Masking(model, Targets(types=_LAYERS, include=tuple(space.layers)))
    by_name = {l.name: l for l in masking.layers}
    for i, name in enumerate(space.layers):
        layer = by_name[name]
        w = layer.weight
        mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        if i < len(space.widths):  # rows of the nodes this layer produces
            rows = node_masks[i].to(w.device)
            mask &= rows.view(-1, *([1] * (w.dim() - 1)))
        if i > 0:  # columns of the nodes this layer consumes
            cols = node_masks[i - 1].to(w.device).repeat_interleave(space.spread[i - 1])
            mask &= cols.view(1, -1, *([1] * (w.dim() - 2)))
        masking.set_mask(layer, mask)
    return masking


@torch.no_grad()
def score_at_init(model: nn.Module, x: torch.Tensor, y: torch.Tensor, metric: str = "loss") -> float:
    """Score of an untrained (sub-)network on ``(x, y)`` in eval mode: cross-entropy or accuracy."""
    if metric not in ("loss", "accuracy"):
        raise ConfigError(f"metric must be 'loss' or 'accuracy'; got {metric!r}")
    with preserved_modes(model):
        out = model(x)
    if metric == "loss":
        return float(F.cross_entropy(out, y))
    return float((out.argmax(1) == y).float().mean())


@dataclass(frozen=True, kw_only=True)
class SearchResult(Result):
    """Outcome of :func:`random_search`.

    Attributes:
        model: a copy of the parent with the best configuration's masks installed (untrained).
        random_model: a copy of the parent with the random baseline configuration's masks.
        layers: the masked parameters of ``model`` (:class:`~sparseforge.masking.MaskedLayer`).
        space: the node space searched; ``sparsity`` the node sparsity.
        best: node masks of the best-scoring configuration.
        random: node masks of an independent random configuration at the same sparsity (baseline).
        scores: score of every sampled configuration, in sampling order.
        best_index: position of ``best`` in ``scores``.
        random_score: score of ``random``.
        metric: ``"loss"`` (lower is better) or ``"accuracy"`` (higher is better).
    """

    random_model: nn.Module
    space: NodeSpace
    sparsity: float
    best: list[torch.Tensor]
    random: list[torch.Tensor]
    scores: list[float]
    best_index: int
    random_score: float
    metric: str
    config: dict[str, Any] = field(default_factory=dict)

    def build(self, parent: nn.Module, which: str = "best") -> nn.Module:
        """A new copy of ``parent`` with the ``"best"`` or ``"random"`` configuration's masks installed."""
        if which not in ("best", "random"):
            raise ConfigError(f"which must be 'best' or 'random'; got {which!r}")
        m = copy.deepcopy(parent)
        apply_node_masks(m, self.space, self.best if which == "best" else self.random)
        return m


def random_search(parent: nn.Module, x: torch.Tensor, y: torch.Tensor, *, sparsity: float, samples: int = 100,
                  seed: int = 0, metric: str = "loss", per_layer: bool = True) -> SearchResult:
    """Random Search over node configurations of the initialised ``parent`` (left unchanged).

    Args:
        parent: the initialised, overparameterised network (a chain: :func:`node_space`).
        x, y: the scoring batch (e.g. some training samples).
        sparsity: node sparsity in ``[0, 1)``.
        samples: configurations sampled and scored (>= 1).
        seed: makes the whole search deterministic (configurations from stream ``"node-search"``,
            the random baseline from stream ``"node-random"``).
        metric: ``"loss"`` (default, lowest wins) or ``"accuracy"`` (highest wins); ties go to
            the earlier sample.
        per_layer: budget per hidden layer (default) or over the whole network.

    Returns:
        a :class:`SearchResult`: ``.model`` the parent's copy with the best configuration,
        ``.random_model`` the random baseline, the scores and the node masks.
    """
    s = check_sparsity(sparsity)
    check_int(samples, "samples", minimum=1)
    if metric not in ("loss", "accuracy"):
        raise ConfigError(f"metric must be 'loss' or 'accuracy'; got {metric!r}")
    space = node_space(parent)
    gen = stream_generator(seed, "node-search")
    configs, scores = [], []
    for _ in range(samples):
        masks = sample_node_masks(space, s, gen, per_layer=per_layer)
        cand = copy.deepcopy(parent)
        apply_node_masks(cand, space, masks)
        configs.append(masks)
        scores.append(score_at_init(cand, x, y, metric))
    sign = 1.0 if metric == "loss" else -1.0
    best = min(range(samples), key=lambda i: (sign * scores[i], i))
    rnd = sample_node_masks(space, s, stream_generator(seed, "node-random"), per_layer=per_layer)
    rnd_model = copy.deepcopy(parent)
    apply_node_masks(rnd_model, space, rnd)
    best_model = copy.deepcopy(parent)
    apply_node_masks(best_model, space, configs[best])
    return SearchResult(model=best_model, layers=find_masked_layers(best_model), random_model=rnd_model, space=space,
                        sparsity=s, best=configs[best], random=rnd, scores=scores, best_index=best,
                        random_score=score_at_init(rnd_model, x, y, metric), metric=metric,
                        config={"samples": samples, "seed": seed, "per_layer": per_layer})


def convergence_step(history: Sequence[dict[str, float]], fraction: float = 0.95) -> int | None:
    """First evaluated step whose accuracy reaches ``fraction`` of the run's final accuracy (None if no history)."""
    if not history:
        return None
    target = fraction * history[-1]["accuracy"]
    for h in history:
        if h["accuracy"] >= target - 1e-12:
            return int(h["step"])
    return int(history[-1]["step"])
