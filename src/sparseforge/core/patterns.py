"""Sparsity patterns: turn a score tensor into a boolean mask (``True`` = kept).

Every pattern works on weights in the *canonical layout* ``[out, in, *kernel]`` (``nn.Linear``
and ``nn.ConvNd`` already use it; Hugging Face ``Conv1D`` stores ``[in, out]`` and is
transposed by :mod:`sparseforge.masking` before it reaches a pattern).

Counting rule, shared by all patterns: at sparsity ``s`` over ``n`` units (weights, blocks or
channels) exactly :func:`num_pruned` ``= floor(s * n + 1/2)`` units are zero. Ties in the
score are broken by position: among equal scores the unit with the lower flat index is
pruned first (so constant weights at ``s = 0.5`` give exactly half zeros, deterministically,
on every rank). A sparsity that would remove every unit of a layer is an error, never a
silent empty layer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..errors import ConfigError, LayerError, check_sparsity

__all__ = [
    "Pattern",
    "Unstructured",
    "NM",
    "INDIVISIBLE_POLICIES",
    "Block",
    "Channel",
    "num_pruned",
    "topk_mask",
    "kth_smallest",
    "random_mask",
    "nm_select",
    "is_valid_nm",
    "nm_groups_view",
]


def num_pruned(sparsity: float, n: int) -> int:
    """Number of zeros at ``sparsity`` over ``n`` units: ``floor(s * n + 1/2)``.

    Half-up rounding (not Python's banker's rounding) so the count is monotone in ``s``.
    A tiny epsilon absorbs binary noise such as ``0.9 * 10 = 9.000000000000002``.
    """
    return int(math.floor(sparsity * n + 0.5 + 1e-9))


def topk_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the ``k`` largest ``scores`` (restricted to ``eligible`` if given).

    Deterministic: among equal scores the *higher* flat index is kept, i.e. the lower flat
    index is pruned first (the module's counting rule), whatever the device or thread count.
    :func:`kth_smallest` finds the threshold score; the remaining slots at the threshold go
    to the highest-index ties. ``k`` may be 0.
    """
    flat = scores.detach().reshape(-1).float()
    n = flat.numel()
    if not 0 <= k <= n:
        raise LayerError(f"k must be in [0, {n}]; got {k}")
    el = None if eligible is None else eligible.reshape(-1).to(device=flat.device, dtype=torch.bool)
    m = n if el is None else int(torch.count_nonzero(el))
    if k > m:
        raise LayerError(f"cannot select k={k} of only {m} eligible positions")
    idx = None
    if el is not None and m < _COMPACT_BELOW * n:
        # few eligible positions: rank a compact copy of their scores (gather, then scatter back)
        idx = el.nonzero().squeeze(1)
        flat, el = flat[idx], None
    # only the ranked scores need to be numbers (a NaN outside ``eligible`` is never compared);
    # max() propagates NaN, so one reduction rules them out in the common case
    if flat.numel() and bool(torch.isnan(flat.max())) and bool(
            (torch.isnan(flat) if el is None else torch.isnan(flat) & el).any()):
        raise LayerError("scores contain NaN; cannot rank weights (check the weights or gradients)")

    def among(t: torch.Tensor) -> torch.Tensor:
        return t if el is None else t & el

    size = flat.numel()
    few = None
    if 0 < k < m and size >= _SELECT_MIN and min(k, m - k) <= _FEW_BELOW * size:
        few = _select_few(flat, el, m, min(k, m - k), largest=k <= m - k)
    if few is not None:
        keep = few if k <= m - k else among(~few)
    elif k == m:
        keep = torch.ones(size, dtype=torch.bool, device=flat.device) if el is None else el.clone()
    elif k == 0:
        keep = torch.zeros(size, dtype=torch.bool, device=flat.device)
    elif m - k <= k:
        # few to drop (the common case: 30 % of the active weights, a GMP increment): find the
        # (m-k)-th smallest eligible score, drop everything below it and the lowest-index ties
        p = m - k
        thr = _kth_smallest(flat, p, el, m)
        drop = among(flat < thr)
        need = p - int(torch.count_nonzero(drop))
        if need:
            drop |= _first_ties(among(flat == thr), need, last=False)
        keep = among(~drop)
    else:
        thr = _kth_smallest(flat, m - k + 1, el, m)  # the k-th largest eligible score
        keep = among(flat > thr)
        need = k - int(torch.count_nonzero(keep))
        if need:
            keep |= _first_ties(among(flat == thr), need, last=True)
    if idx is None:
        return keep.reshape(scores.shape)
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    mask[idx[keep]] = True
    return mask.reshape(scores.shape)


#: sample size and minimum tensor size of :func:`kth_smallest`'s banded selection
_SELECT_SAMPLE = 2048
_SELECT_MIN = 16384


def kth_smallest(x: torch.Tensor, r: int, among: torch.Tensor | None = None) -> torch.Tensor:
    """The ``r``-th smallest entry (1-based, exact) of a 1-D float tensor without NaN.

    ``among`` (bool, same shape) restricts the ranking to those entries. ``torch.topk`` with a
    large ``r`` costs several full sorts' worth of work on CPU (2.4 ms for 10 % of a
    235k-entry layer, the size of a SET or GMP update). Instead, a regular sample of about
    :data:`_SELECT_SAMPLE` entries is sorted and two sample values ``lo <= hi`` that bracket
    rank ``r`` with a margin of ~4 binomial standard deviations are taken; one pass counts the
    entries below ``lo`` and gathers those in ``[lo, hi]``, and the answer is selected exactly
    among those few. If the bracket misses (an unlucky sample), a full ``topk`` runs, so the
    result never depends on the sample, only the time does.
    """
    if among is not None and (among.shape != x.shape or among.dtype != torch.bool):
        raise LayerError(f"among must be a bool tensor of shape {tuple(x.shape)}; got {among.dtype} {tuple(among.shape)}")
    flat = x.reshape(-1)
    el = None if among is None else among.reshape(-1)
    m = flat.numel() if el is None else int(torch.count_nonzero(el))
    if not 1 <= r <= m:
        raise LayerError(f"rank r must be in [1, {m}]; got {r}")
    return _kth_smallest(flat, r, el, m)


def _first_ties(tie: torch.Tensor, need: int, *, last: bool) -> torch.Tensor:
    """The ``need`` lowest-index (or, if ``last``, highest-index) positions of the bool mask ``tie``.

    Usually every tie is needed (one entry equals a continuous threshold): counting them is a
    cheap pass, where listing their indices (``nonzero``) costs ~0.3 ms on a 235k-entry layer.
    """
    if int(torch.count_nonzero(tie)) == need:
        return tie
    idx = tie.nonzero().squeeze(1)
    out = torch.zeros_like(tie)
    out[idx[idx.numel() - need:] if last else idx[:need]] = True
    return out


#: :func:`topk_mask` takes :func:`_select_few` when it keeps or drops at most this fraction of
#: the tensor (a GMP increment, most of RigL's regrowths). Measured on a 235k-entry layer with all,
#: half or a fifth of it eligible: 0.3 % of it 0.65-0.9x the time of the threshold path, 1 %
#: 0.7-0.9x, 1.5 % about 0.9x, 3 % 1.2x (the candidates' nonzero and sort grow with the count)
_FEW_BELOW = 0.015


def _select_few(x: torch.Tensor, el: torch.Tensor | None, m: int, count: int, *,
                largest: bool) -> torch.Tensor | None:
    """Bool mask of the ``count`` largest (or smallest) ranked entries of ``x``, or None.

    For a ``count`` that is a small part of the ``m`` ranked entries: a sorted regular sample
    gives a bound that, with a margin of ~4 binomial standard deviations, lies beyond the
    ``count``-th entry; one pass gathers the candidates beyond the bound, and a stable sort of
    those few picks the answer with the module's tie rule (the higher index kept first, the
    lower index dropped first). That is two passes over the tensor and one ``nonzero`` of a
    sparse mask, where finding the threshold and then the ties at it takes several: on a
    235k-weight layer the ``nonzero`` calls alone cost ~1.2 ms when the mask is half full.
    None when the sample's bound holds fewer than ``count`` candidates, or too many to sort
    cheaply (ties at the bound); the caller then takes the exact threshold path, so the result
    never depends on the sample, only the time does.
    """
    n = x.numel()
    stride = max(1, n // _SELECT_SAMPLE)
    sample = x[::stride] if el is None else x[::stride][el[::stride]]
    ns = sample.numel()
    if ns == 0:
        return None
    sample = sample.sort().values
    q = count / m
    i = int(q * ns + 4.0 * math.sqrt(ns * q * (1.0 - q)) + 8.0)
    if i >= ns:
        return None
    cand = x >= sample[ns - 1 - i] if largest else x <= sample[i]
    if el is not None:
        cand &= el
    c = int(torch.count_nonzero(cand))
    if not count <= c <= 4 * count + 4 * _SELECT_SAMPLE:
        return None
    idx = cand.nonzero().squeeze(1)
    vals = x[idx]
    if largest:  # a stable sort keeps the first of equal entries: put the higher index first
        idx, vals = idx.flip(0), vals.flip(0)
    order = torch.sort(vals, descending=largest, stable=True).indices[:count]
    out = torch.zeros(n, dtype=torch.bool, device=x.device)
    out[idx[order]] = True
    return out


def _kth_smallest(x: torch.Tensor, r: int, el: torch.Tensor | None, m: int) -> torch.Tensor:
    # x: flat scores; el: flat bool (or None); m: number of ranked entries (checked by callers)
    n = x.numel()
    if n >= _SELECT_MIN:
        stride = max(1, n // _SELECT_SAMPLE)
        sample = x[::stride] if el is None else x[::stride][el[::stride]]
        sample = sample.sort().values
        ns = sample.numel()
        q = r / m
        center = q * ns
        margin = 4.0 * math.sqrt(ns * q * (1.0 - q)) + 8.0
        i_lo, i_hi = int(center - margin), int(center + margin)
        if ns and (i_lo >= 0 or i_hi < ns):
            inside = el
            if i_hi < ns:
                inside = x <= sample[i_hi] if inside is None else inside & (x <= sample[i_hi])
            below = 0
            if i_lo >= 0:
                low = x < sample[i_lo]
                if el is not None:
                    low &= el
                below = int(torch.count_nonzero(low))
                inside = ~low if inside is None else inside & ~low
            band = x[inside]
            if below < r <= below + band.numel():
                x, el, r = band, None, r - below
    if el is not None:
        x = x[el]
    if r <= x.numel() - r + 1:
        return torch.topk(x, r, largest=False, sorted=False).values.max()
    return torch.topk(x, x.numel() - r + 1, sorted=False).values.min()


#: eligible fraction below which :func:`topk_mask` ranks a compact copy of the eligible scores;
#: above it, ranking in place restricted by the eligible mask is cheaper (measured on a
#: 235k-weight layer, dropping 6 or 30 % of the eligible: a twentieth 1.0/1.2 ms in place vs
#: 0.5/0.6 ms compact, a tenth 0.9/1.1 vs 1.1/0.9, a fifth 0.9/1.2 vs 1.3/1.1, all 0.7/1.3 vs 3.4/2.9)
_COMPACT_BELOW = 0.15


def random_mask(eligible: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of ``k`` positions drawn uniformly without replacement from ``eligible``.

    Every ``k``-subset of the eligible positions is equally likely, as with ranking uniform
    random scores, but the cost grows with ``k``, not with the tensor: SET regrows a few
    thousand weights of a layer with hundreds of thousands of empty positions at every update.
    Rejection sampling: draw positions uniformly, keep the distinct ones that are still
    free; if a round yields more than needed, a random subset of them is taken. Each round's
    distinct draws are an exchangeable subset of the free positions, so the result is uniform.
    Deterministic for a given ``generator`` state (draws happen on the CPU).
    """
    flat = eligible.reshape(-1).to(torch.bool)
    n = flat.numel()
    free = flat.cpu().clone()
    n_free = int(torch.count_nonzero(free))
    if not 0 <= k <= n_free:
        raise LayerError(f"cannot draw k={k} of {n_free} eligible positions")
    if 2 * k > n_free:
        # most eligible positions are taken: ranking random scores beats rejection here
        chosen = topk_mask(torch.rand(n, generator=generator), k, eligible=free)
    else:
        chosen = torch.zeros(n, dtype=torch.bool)
        need = k
        while need:
            draws = int(1.25 * need * n / n_free) + 16  # expected hits about 1.25 x need
            cand = torch.randint(n, (draws,), generator=generator)
            cand = torch.unique(cand[free[cand]])
            if cand.numel() > need:
                cand = cand[torch.randperm(cand.numel(), generator=generator)[:need]]
            chosen[cand] = True
            free[cand] = False
            need -= cand.numel()
            n_free -= cand.numel()
    return chosen.to(eligible.device).reshape(eligible.shape)


def nm_select(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask keeping the ``n`` highest scores in each row of ``groups`` (``[G, m]``).

    Among ties the lower index is pruned first (the order a stable ascending sort gives).
    ``min(n, m - n)`` passes of ``argmax``/``argmin`` replace a sort of every group: several
    times cheaper for 1:M and (M-1):M, and N:M training runs this in every forward pass.
    ``argmax``/``argmin`` return the first extreme, so keeping runs on the reversed rows (ties
    go to the higher index) and pruning on the rows as they are. Scores must not be NaN.
    """
    m = groups.shape[1]
    if not 0 <= n <= m:
        raise LayerError(f"N:M selection: n must be in [0, {m}]; got {n}")
    # order-preserving int64 keys leave room for sentinels outside every score, -inf included
    # (``+ 0.0`` turns -0.0 into +0.0 so that the two tie, as they do in a sort)
    bits = (groups.float() + 0.0).view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    slots = torch.arange(m, device=groups.device)
    if n <= m - n:
        h = keys.flip(1)
        keep = torch.zeros_like(h, dtype=torch.bool)
        for _ in range(n):
            chosen = h.argmax(1, keepdim=True) == slots
            keep |= chosen
            h = h.masked_fill(chosen, torch.iinfo(torch.int64).min)
        return keep.flip(1)
    h = keys
    drop = torch.zeros_like(h, dtype=torch.bool)
    for _ in range(m - n):
        chosen = h.argmin(1, keepdim=True) == slots
        drop |= chosen
        h = h.masked_fill(chosen, torch.iinfo(torch.int64).max)
    return ~drop


def _check_not_empty(n_prune: int, n: int, sparsity: float, unit: str, layer: str) -> None:
    if n_prune >= n:
        raise LayerError(
            f"sparsity {sparsity} would remove all {n} {unit} of {layer}; "
            f"the largest sparsity that keeps one is {(n - 1) / n:.6g} (allowed: < {(n - 0.5) / n:.6g})"
        )


class Pattern(ABC):
    """A rule that turns scores into a mask with an exact number of zeros.

    Subclasses implement :meth:`mask`; :meth:`check` raises early for weights the pattern
    cannot handle (e.g. a reduction dimension not divisible by M).
    """

    #: Name used in reports, recipes and the CLI.
    name: str = "pattern"

    def check(self, shape: tuple[int, ...], layer: str = "weight") -> None:
        """Raise :class:`LayerError` if a weight of this canonical ``shape`` is unsupported."""
        if len(shape) < 2:
            raise LayerError(f"{layer}: pattern {self.name} needs a weight with >= 2 dims; got shape {tuple(shape)}")

    @abstractmethod
    def mask(self, scores: torch.Tensor, sparsity: float, layer: str = "weight") -> torch.Tensor:
        """Boolean mask (``True`` = kept) of the same shape as ``scores``."""

    def units(self, shape: tuple[int, ...]) -> int:
        """Number of units the pattern counts (weights, blocks or channels)."""
        return math.prod(shape)


@dataclass(frozen=True)
class Unstructured(Pattern):
    """Element-wise sparsity: the ``round(s * n)`` lowest-scoring weights are zero."""

    name: str = "unstructured"

    def check(self, shape: tuple[int, ...], layer: str = "weight") -> None:
        """Any shape with at least one element is supported."""
        if math.prod(shape) == 0:
            raise LayerError(f"{layer}: weight is empty (shape {tuple(shape)})")

    def mask(self, scores: torch.Tensor, sparsity: float, layer: str = "weight") -> torch.Tensor:
        """Keep the ``n - round(s * n)`` highest scores."""
        sparsity = check_sparsity(sparsity)
        n = scores.numel()
        k_prune = num_pruned(sparsity, n)
        _check_not_empty(k_prune, n, sparsity, "weights", layer)
        return topk_mask(scores, n - k_prune)


def nm_groups_view(t: torch.Tensor, m: int) -> torch.Tensor:
    """View a canonical ``[out, in, *kernel]`` tensor as ``[groups, m]`` N:M groups.

    Groups run over ``m`` consecutive input channels at each (output, kernel position), the
    convention of NVIDIA's sparse tensor cores and of the SR-STE code (which permutes conv
    weights to ``[out, *kernel, in]``). Returns a copy in that order; invert with
    :func:`_nm_groups_unview`.
    """
    if t.dim() == 2:
        return t.reshape(-1, m)
    perm = [0, *range(2, t.dim()), 1]
    return t.permute(perm).reshape(-1, m)


def _nm_groups_unview(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 2:
        return g.reshape(shape)
    out, cin, *kernel = shape
    inv = [0, len(shape) - 1, *range(1, len(shape) - 1)]
    return g.reshape(out, *kernel, cin).permute(inv).contiguous()


def is_valid_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of ``m`` consecutive inputs of canonical ``mask`` keeps at most ``n``."""
    if mask.dim() < 2 or mask.shape[1] % m:
        return False
    return bool((nm_groups_view(mask.to(torch.int32), m).sum(dim=1) <= n).all())


#: what to do with a layer whose input dimension is not a multiple of M: raise, leave it dense
#: (listed as skipped) or pad the tail group (:meth:`NM.mask` with ``pad=True``)
INDIVISIBLE_POLICIES: tuple[str, ...] = ("error", "skip", "pad")


@dataclass(frozen=True)
class NM(Pattern):
    """N:M semi-structured sparsity: keep ``n`` of every ``m`` consecutive input weights.

    NVIDIA's convention (``NM(2, 4)`` keeps 2 of 4 = 50 % sparse; ``NM(1, 8)`` = 87.5 %).
    Wanda/SparseGPT name patterns by the number *pruned*; convert at the boundary.
    The sparsity is fixed by ``n/m``; :meth:`mask` ignores its ``sparsity`` argument
    unless it disagrees with ``1 - n/m``, which is an error.
    """

    n: int = 2
    m: int = 4
    name: str = "nm"

    def __post_init__(self) -> None:
        for field, v in (("n", self.n), ("m", self.m)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"N:M pattern: {field} must be an integer >= 1; got {v!r}")
        if self.n > self.m:
            raise ConfigError(f"N:M pattern: N (kept) must be <= M; got N={self.n}, M={self.m}")

    @property
    def sparsity(self) -> float:
        """Fraction of zeros implied by the pattern: ``1 - n/m``."""
        return 1.0 - self.n / self.m

    def check(self, shape: tuple[int, ...], layer: str = "weight") -> None:
        """The reduction (input) dimension must be divisible by ``m``."""
        super().check(shape, layer)
        if shape[1] % self.m:
            raise LayerError(
                f"{layer}: input dimension {shape[1]} (shape {tuple(shape)}) is not divisible by M={self.m} "
                f"for N:M {self.n}:{self.m}; choose an M that divides it or exclude the layer"
            )

    def mask(self, scores: torch.Tensor, sparsity: float | None = None, layer: str = "weight", *,
             pad: bool = False) -> torch.Tensor:
        """Keep the ``n`` highest scores in every group (among ties the lower index is pruned first).

        ``pad=True`` accepts an input dimension that is not a multiple of ``m`` (the ``"pad"``
        policy of :data:`INDIVISIBLE_POLICIES`): the scores are padded with ``-inf`` to the next
        multiple, so the tail group of ``r < m`` weights keeps ``min(n, r)`` of them, and the
        padding is cut off the mask again.
        """
        if sparsity is not None and abs(sparsity - self.sparsity) > 1e-9:
            raise ConfigError(
                f"{layer}: N:M {self.n}:{self.m} fixes sparsity at {self.sparsity}; got sparsity={sparsity}"
            )
        s = scores.detach().float()
        cin = s.shape[1] if s.dim() >= 2 else 0
        if pad and cin % self.m:
            tail = list(s.shape)
            tail[1] = self.m - cin % self.m
            s = torch.cat([s, s.new_full(tail, -math.inf)], dim=1)
        self.check(tuple(s.shape), layer)
        g = nm_groups_view(s, self.m)
        if torch.isnan(g).any():
            raise LayerError(f"{layer}: scores contain NaN")
        keep = _nm_groups_unview(nm_select(g, self.n), tuple(s.shape))
        return keep[:, :cin].contiguous() if s.shape[1] != cin else keep

    def units(self, shape: tuple[int, ...]) -> int:
        """Weights are the unit of an N:M pattern."""
        return math.prod(shape)


@dataclass(frozen=True)
class Block(Pattern):
    """Block sparsity: whole ``rows x cols`` tiles of the 2-D weight are kept or zeroed.

    A block's score is the sum of its element scores (the L1 norm for magnitude scores).
    Weights with more than two dims are viewed as ``[out, in * prod(kernel)]``. Both dims
    must be divisible by the block shape. Exactly ``round(s * n_blocks)`` blocks are zero.
    """

    rows: int = 1
    cols: int = 4
    name: str = "block"

    def __post_init__(self) -> None:
        for field, v in (("rows", self.rows), ("cols", self.cols)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"Block pattern: {field} must be an integer >= 1; got {v!r}")

    def _2d(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return shape[0], math.prod(shape[1:])

    def check(self, shape: tuple[int, ...], layer: str = "weight") -> None:
        """Both dims of the 2-D view must be divisible by the block shape."""
        super().check(shape, layer)
        r, c = self._2d(shape)
        if r % self.rows or c % self.cols:
            raise LayerError(
                f"{layer}: 2-D view {r}x{c} of shape {tuple(shape)} is not divisible by block "
                f"{self.rows}x{self.cols}; pick a block shape that divides it or exclude the layer"
            )

    def units(self, shape: tuple[int, ...]) -> int:
        """Number of blocks."""
        r, c = self._2d(shape)
        return (r // self.rows) * (c // self.cols)

    def mask(self, scores: torch.Tensor, sparsity: float, layer: str = "weight") -> torch.Tensor:
        """Zero the ``round(s * n_blocks)`` blocks with the lowest summed score."""
        sparsity = check_sparsity(sparsity)
        shape = tuple(scores.shape)
        self.check(shape, layer)
        r, c = self._2d(shape)
        br, bc = r // self.rows, c // self.cols
        s2 = scores.detach().float().reshape(br, self.rows, bc, self.cols)
        block_scores = s2.sum(dim=(1, 3))
        n = block_scores.numel()
        k_prune = num_pruned(sparsity, n)
        _check_not_empty(k_prune, n, sparsity, f"{self.rows}x{self.cols} blocks", layer)
        keep = topk_mask(block_scores, n - k_prune)
        full = keep[:, None, :, None].expand(br, self.rows, bc, self.cols)
        return full.reshape(shape)


@dataclass(frozen=True)
class Channel(Pattern):
    """Channel (row) sparsity: whole output channels (``dim=0``) or input channels (``dim=1``).

    A channel's score is the sum of its element scores. Exactly ``round(s * channels)``
    channels are zero. This is a mask-level pattern (simulated); physically removing the
    channels and their dependants is the job of :mod:`sparseforge.structured`.
    """

    dim: int = 0
    name: str = "channel"

    def __post_init__(self) -> None:
        if self.dim not in (0, 1):
            raise ConfigError(f"Channel pattern: dim must be 0 (output) or 1 (input); got {self.dim!r}")

    def units(self, shape: tuple[int, ...]) -> int:
        """Number of channels along ``dim``."""
        return shape[self.dim]

    def mask(self, scores: torch.Tensor, sparsity: float, layer: str = "weight") -> torch.Tensor:
        """Zero the ``round(s * channels)`` channels with the lowest summed score."""
        sparsity = check_sparsity(sparsity)
        self.check(tuple(scores.shape), layer)
        s = scores.detach().float().transpose(0, self.dim)
        ch = s.reshape(s.shape[0], -1).sum(dim=1)
        n = ch.numel()
        k_prune = num_pruned(sparsity, n)
        _check_not_empty(k_prune, n, sparsity, "channels", layer)
        keep = topk_mask(ch, n - k_prune)
        view = [1] * scores.dim()
        view[self.dim] = n
        return keep.reshape(view).expand(scores.shape).clone()


def pattern_from_spec(spec: str | Pattern | dict | None) -> Pattern:
    """Build a pattern from a recipe value: ``"unstructured"``, ``"2:4"``, ``"block:1x4"``,
    ``"channel"``, a dict ``{"type": "nm", "n": 2, "m": 4}``, or a :class:`Pattern`."""
    if spec is None:
        return Unstructured()
    if isinstance(spec, Pattern):
        return spec
    if isinstance(spec, dict):
        d = dict(spec)
        kind = d.pop("type", None)
        table = {"unstructured": Unstructured, "nm": NM, "block": Block, "channel": Channel}
        if kind not in table:
            raise ConfigError(f"pattern.type must be one of {sorted(table)}; got {kind!r}")
        try:
            return table[kind](**d)
        except TypeError as e:
            raise ConfigError(f"pattern {kind}: {e}") from None
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "unstructured":
            return Unstructured()
        if s == "channel":
            return Channel()
        parts = s.split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return NM(int(parts[0]), int(parts[1]))
        if s.startswith("block:"):
            dims = s[6:].split("x")
            if len(dims) == 2 and all(d.isdigit() for d in dims):
                return Block(int(dims[0]), int(dims[1]))
    raise ConfigError(
        f"pattern must be 'unstructured', 'N:M' (e.g. '2:4'), 'block:RxC' (e.g. 'block:1x4') or 'channel'; got {spec!r}"
    )
