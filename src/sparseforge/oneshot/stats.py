"""Calibration statistics of one layer's inputs, and the layer-wise reconstruction error.

One-shot pruning methods look at the inputs ``X`` (``[in, tokens]``) a layer received on the
calibration data. :class:`LayerStats` accumulates everything the methods of this package need
in a single pass, without keeping ``X``:

* ``sum`` = ``sum_t x_tj`` and ``sq_sum`` = ``sum_t x_tj^2`` per input feature ``j`` (float64:
  the variance is formed as a difference of the two);
* ``dev_sq`` = ``sum_g sum_{t in g} (x_tj - mean_g(x_j))^2``, the squared deviations of every
  token from the mean of its own group ``g`` (a sequence of a ``[..., seq, in]`` input, or a whole
  2-D call), for DSnoT's within-sequence variance :attr:`LayerStats.seq_var`;
* optionally ``gram`` = ``sum_t x_t x_t^T`` (float32, ``[in, in]``), from which SparseGPT's
  Hessian ``H = 2 X X^T / n`` and the exact reconstruction error are derived.

The Gram matrix is symmetric, so :meth:`LayerStats.update` computes only its block upper
triangle: the features are cut into tiles of about :data:`GRAM_TILE` columns and tile row ``i``
is ``X_i^T [X_i, X_{i+1}, ...]``. Each entry is still one dot product over the same tokens, and
with this torch build's BLAS (MKL) the values are bit for bit those of the full ``X^T X`` product
(a test checks it; another BLAS could differ in the last bit); the strictly lower tiles are copied from the upper ones when :attr:`LayerStats.gram` is
read. With ``k`` tiles this needs ``(k + 1) / 2k`` of the multiply-adds (3/4 for ``in = 384``, 7/12 for ``in = 1536``,
the largest MiniLM layer), which was 40 % of a Wanda run on MiniLM when errors are measured.

Counting: a ``[..., seq, in]`` input (three or more dims) adds ``prod(shape[:-2])`` sequences of
``shape[-2]`` tokens; a ``[rows, in]`` input adds ``rows`` sequences of one token each; a
``[in]`` vector one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import LayerError

__all__ = ["GRAM_TILE", "LayerStats", "reconstruction_error"]

#: feature columns per tile of the block-triangular Gram product (inputs of at most this many
#: features use one full product)
GRAM_TILE = 256


@dataclass
class LayerStats:
    """Running statistics of the inputs of one linear layer (see the module docstring).

    Attributes:
        in_features: input dimension ``in``.
        track_gram: also accumulate ``gram`` (needed by SparseGPT and by the reconstruction error).
        n_tokens: tokens seen (rows of ``X^T``).
        n_seqs: sequences seen (Wanda and DSnoT normalise per sequence, as their code does).
        sum, sq_sum: ``[in]`` float64 sums of ``x`` and ``x^2`` over all tokens.
        dev_sq: ``[in]`` float64 squared deviations from each group's own mean (see :attr:`seq_var`).
        gram: ``[in, in]`` float32 ``sum_t x_t x_t^T``, or None (a property; see the module docstring).
    """

    in_features: int
    track_gram: bool = True
    n_tokens: int = 0
    n_seqs: int = 0
    sum: torch.Tensor | None = field(default=None, repr=False)
    sq_sum: torch.Tensor | None = field(default=None, repr=False)
    dev_sq: torch.Tensor | None = field(default=None, repr=False)
    # block upper triangle while accumulating; _lower_stale until the lower tiles are mirrored
    _gram: torch.Tensor | None = field(default=None, init=False, repr=False)
    _lower_stale: bool = field(default=False, init=False, repr=False)

    def _tiles(self) -> list[tuple[int, int]]:
        n = self.in_features
        k = max(1, math.ceil(n / GRAM_TILE))
        edges = [round(i * n / k) for i in range(k + 1)]
        return list(zip(edges[:-1], edges[1:]))

    @property
    def gram(self) -> torch.Tensor | None:
        """``[in, in]`` float32 ``sum_t x_t x_t^T`` (symmetric), or None without ``track_gram``."""
        if self._gram is not None and self._lower_stale:
            tiles = self._tiles()
            for i, (a, b) in enumerate(tiles):
                for c, d in tiles[i + 1:]:
                    self._gram[c:d, a:b] = self._gram[a:b, c:d].t()
            self._lower_stale = False
        return self._gram

    @torch.no_grad()
    def update(self, x: torch.Tensor, name: str = "layer") -> None:
        """Add the inputs ``x`` (``[..., in]``) of one forward call."""
        if x.shape[-1] != self.in_features:
            raise LayerError(f"{name}: input has {x.shape[-1]} features; the layer expects {self.in_features}")
        if x.dim() >= 3:
            seqs = math.prod(x.shape[:-2])
        elif x.dim() == 2:
            seqs = x.shape[0]
        else:
            seqs = 1
        flat = x.detach().reshape(-1, self.in_features).float()
        if self.sum is None:
            self.sum = torch.zeros(self.in_features, dtype=torch.float64, device=flat.device)
            self.sq_sum = torch.zeros_like(self.sum)
            self.dev_sq = torch.zeros_like(self.sum)
            if self.track_gram:
                self._gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=flat.device)
        # per-call sums in float32, accumulated across calls in float64; a matrix-vector product
        # reduces over tokens several times faster than .sum(0) here (measured 1.3 vs 3.3 ms for 4096 x 1536)
        ones = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
        call_sum = torch.mv(flat.t(), ones).double()
        call_sq = torch.mv((flat * flat).t(), ones).double()
        self.sum += call_sum
        self.sq_sum += call_sq
        # DSnoT's variance is the mean of per-call variances, one call = one sequence in its code:
        # each sequence about its own mean, sum x^2 - (sum x)^2 / L per sequence, in float64 like
        # `var` (torch.var per sequence measured 30x slower than these sums: 32 vs 1 ms, 16x128x1536)
        if x.dim() >= 3 and x.shape[-2] > 1:
            length = x.shape[-2]
            groups = flat.reshape(seqs, length, self.in_features)
            seq_sums = torch.bmm(torch.ones(seqs, 1, length, dtype=flat.dtype, device=flat.device), groups)
            self.dev_sq += call_sq - seq_sums.squeeze(1).double().square().sum(0) / length
        elif x.dim() == 2 and flat.shape[0] > 1:
            self.dev_sq += call_sq - call_sum.square() / flat.shape[0]
        if self._gram is not None:
            tiles = self._tiles()
            for a, b in tiles:
                self._gram[a:b, a:].addmm_(flat[:, a:b].t(), flat[:, a:])
            self._lower_stale = len(tiles) > 1
        self.n_tokens += flat.shape[0]
        self.n_seqs += seqs

    @classmethod
    def from_inputs(cls, x: torch.Tensor, *, track_gram: bool = True) -> "LayerStats":
        """Statistics of a single input tensor ``x`` (``[..., in]``); handy in tests and notebooks."""
        stats = cls(x.shape[-1], track_gram)
        stats.update(x)
        return stats

    def _need_data(self, what: str) -> None:
        if self.n_tokens == 0 or self.sum is None:
            raise LayerError(f"{what} needs calibration inputs; this layer received none")

    @property
    def col_norm(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature (float32), Wanda's activation norm."""
        self._need_data("the column norm")
        return self.sq_sum.sqrt().float()

    @property
    def mean(self) -> torch.Tensor:
        """Mean of each input feature over all tokens (float32)."""
        self._need_data("the mean")
        return (self.sum / self.n_tokens).float()

    @property
    def var(self) -> torch.Tensor:
        """Population variance of each input feature over all tokens (float32, >= 0)."""
        self._need_data("the variance")
        mean = self.sum / self.n_tokens
        return (self.sq_sum / self.n_tokens - mean.square()).clamp_min(0).float()

    @property
    def seq_var(self) -> torch.Tensor:
        """DSnoT's ``var``: the token-weighted mean of each sequence's own population variance (float32).

        zyxxmu/DSnoT ``WrappedGPT.add_batch`` takes ``torch.var(inp, unbiased=False)`` per forward
        call, one calibration sequence per call, and averages these weighted by token counts; the
        spread of the sequence means around the global mean is not part of it (unlike :attr:`var`).
        A sequence is one ``[seq, in]`` slice of a ``[..., seq, in]`` input; a 2-D ``[rows, in]``
        input counts as one group here (the reference's ``unsqueeze(0)``), a 1-D input adds 0.
        """
        self._need_data("the within-sequence variance")
        return (self.dev_sq / self.n_tokens).clamp_min(0).float()

    @property
    def seq_sum(self) -> torch.Tensor:
        """DSnoT's ``sum_metric_row``: ``sum_t x_tj / n_seqs``, the expected sum of a feature over one sequence."""
        self._need_data("the per-sequence sum")
        return (self.sum / self.n_seqs).float()

    def hessian(self) -> torch.Tensor:
        """SparseGPT's ``H = 2 X X^T / n_tokens`` (float32, a new tensor).

        The reference code divides by the number of sequences instead; SparseGPT is invariant to
        a positive scale of ``H`` (damping is relative to its mean diagonal), so the choice only
        fixes units.
        """
        if self.gram is None:
            raise LayerError("the Hessian needs the Gram matrix; build LayerStats with track_gram=True")
        self._need_data("the Hessian")
        return self.gram * (2.0 / self.n_tokens)


@torch.no_grad()
def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor) -> float:
    """Relative output error of a pruned layer on its calibration inputs: ``||W X - W' X||_F / ||W X||_F``.

    Computed exactly from the Gram matrix ``G = X X^T`` as
    ``sqrt(tr((W - W') G (W - W')^T) / tr(W G W^T))`` (bias excluded: pruning leaves it unchanged),
    so ``X`` never has to be stored. ``weight`` and ``new_weight`` are canonical ``[out, in]``.
    Returns 0.0 when the layer's output is zero and unchanged, ``inf`` if only the output of the
    dense layer is zero.
    """
    w = weight.detach().float()
    delta = w - new_weight.detach().float()
    g = gram.float()
    num = float(((delta @ g) * delta).double().sum().clamp_min(0))
    den = float(((w @ g) * w).double().sum().clamp_min(0))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)
