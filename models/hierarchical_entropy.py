"""Index entropy model of a fine level conditioned on the decoded coarse level (discrete, exact).

The fine level's indices are coded as :class:`~dqcodec.models.entropy.ContextIndexModel` codes
them (codebook by codebook, checkerboard phases, contexts only from what is already decoded),
with contexts made for a deep stack of codebooks:

- a predicted codebook (the first few, which carry the block means) takes the code nearest to
  the mean of its decoded neighbours as its context, as in the base class;
- every other codebook m reads *activity*: the class (0..3, how far a code lies from its
  codebook's most used code) of codebook m-1 at the same position; the summed classes of the
  ``ACTIVITY_WINDOW`` codebooks before m-1 there (how busy this block has been so far); and the
  summed activity of the 4 neighbours over those codebooks (phase 0) or the summed classes of
  codebook m's 4 decoded anchor neighbours (phase 1). The two sums fall into
  ``ACTIVITY_BUCKETS`` buckets each, with integer edges that are quantiles of the training data
  for that codebook and phase (``activity_edges``).

Each context is split further by a *coarse activity bucket*: at fine position (r, c), the
activity classes of all coarse codebooks at the parent position (r // f, c // f) are summed,
and the sum falls into one of ``side_buckets`` buckets whose integer edges are quantiles of the
training data (set by :meth:`CoarseConditionedIndexModel.fit`). The coarse level says how busy a
region is, the role a hyperprior's scales play in a scalar codec. Every quantity is an integer
stored in the model, so encoder and decoder choose the same table on any machine.

Measured on Kodak with hdq-q3's indices, tables counted over 1 536 training crops: 0.4123 fine
bpp against 0.4158 for the base class's contexts (contexts seen fewer than 256 times backed off;
0.4123 and 0.4156 at 64): its m-2 and m-3 alone say less about how busy a block is than the 16
codebooks before m-1.
"""

from collections.abc import Iterable

import numpy as np
import torch

from dqcodec.models.context_tables import NUM_CLASSES, NUM_PHASES, _bucket, _neighbour_sum, anchor_mask
from dqcodec.models.entropy import ContextIndexModel, activity_classes
from dqcodec.models.interface import Side

ACTIVITY_WINDOW = 16  # codebooks before m - 1 whose classes sum to a position's activity
ACTIVITY_BUCKETS = 4  # buckets of each activity sum: NUM_CLASSES * 4 * 4 = 64 contexts per phase


class CoarseConditionedIndexModel(ContextIndexModel):
    """Context tables of a fine level whose contexts also read the coarse level ``coarse_name``.

    Extra buffers (integers, saved with the model):
        coarse_class: (M_c, K_c) activity class of every coarse code.
        coarse_edges: (side_buckets - 1,) upper edges of the summed coarse classes per bucket.
        activity_edges: (M, 2, 2, ACTIVITY_BUCKETS - 1) upper edges of the buckets of the two
            activity sums (own position, neighbours) of each codebook and phase.
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        coarse_name: str,
        coarse_codebooks: int,
        coarse_codebook_size: int,
        factor: int,
        side_buckets: int = 3,
        num_predicted: int = 0,
    ):
        super().__init__(num_codebooks, codebook_size, num_predicted, side_buckets)
        self.coarse_name = coarse_name
        self.factor = factor
        self.register_buffer("coarse_class", torch.zeros(coarse_codebooks, coarse_codebook_size, dtype=torch.int32))
        self.register_buffer("coarse_edges", torch.arange(1, side_buckets, dtype=torch.int32))
        self.register_buffer("activity_edges", torch.arange(1, ACTIVITY_BUCKETS, dtype=torch.int32).repeat(
            num_codebooks, NUM_PHASES, 2, 1))

    def _level_contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """Context ids in [0, 64), (B, N): the predicted codebooks' as the base class makes them,
        the others' from the activity sums (module docstring)."""
        if m < self.num_predicted:
            return self._predicted_contexts(indices, m, phase, mask)
        previous, own, neighbours = self._activity(indices, m, phase)
        edges = self.activity_edges[m, phase].numpy()
        context = (previous * ACTIVITY_BUCKETS + _bucket(own, edges[0])) * ACTIVITY_BUCKETS + _bucket(neighbours, edges[1])
        return context[:, mask]

    def _activity(self, indices: np.ndarray, m: int, phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, H, W) int64 each: the class of codebook m-1, the summed classes of the
        ``ACTIVITY_WINDOW`` codebooks before it, and the neighbours' sum of the phase (module
        docstring); zeros where there is no such codebook."""
        code_class = self.code_class.numpy()
        b, _, h, w = indices.shape
        if m == 0:
            previous = own = np.zeros((b, h, w), dtype=np.int64)
        else:
            first = max(0, m - 1 - ACTIVITY_WINDOW)
            # One flat gather for the whole window, (B, m - first, H, W) classes: 2-d fancy
            # indexing took 2 ms per coding step, about 20 times as long.
            offsets = (np.arange(first, m) * code_class.shape[1])[:, None, None]
            window = np.take(code_class, indices[:, first:m] + offsets).astype(np.int64)
            previous, own = window[:, -1], window[:, :-1].sum(axis=1)
        if phase == 0:
            neighbours = _neighbour_sum(own + previous)
        else:
            neighbours = _neighbour_sum(code_class[m][indices[:, m]].astype(np.int64) * anchor_mask(h, w))
        return previous, own, neighbours

    def coarse_activity(self, coarse: np.ndarray) -> np.ndarray:
        """(B, M_c, h, w) coarse indices -> (B, h, w) int64 sum of their activity classes."""
        classes = self.coarse_class.numpy().astype(np.int64)
        return sum(classes[m][coarse[:, m]] for m in range(coarse.shape[1]))

    def side_contexts(self, side: Side, shape: tuple[int, ...]) -> np.ndarray:
        """(B, H, W) coarse bucket of every fine position (its parent's summed classes)."""
        activity = self.coarse_activity(side[self.coarse_name])
        buckets = _bucket(activity, tuple(int(edge) for edge in self.coarse_edges))
        height, width = shape[2:]
        return buckets.repeat(self.factor, axis=1).repeat(self.factor, axis=2)[:, :height, :width]

    @torch.no_grad()
    def set_coarse_codes(self, codebooks: torch.Tensor, usage: torch.Tensor) -> None:
        """Activity classes of the coarse codes from their (M_c, K_c, D) codewords and (M_c, K_c) usage."""
        self.coarse_class.copy_(activity_classes(codebooks, usage))

    @torch.no_grad()
    def fit(self, index_batches: Iterable[tuple[np.ndarray, Side]], prior_count: float = 0.05, backoff: int = 0) -> None:
        """Set the bucket edges of the coarse activity and of the activity sums to quantiles of
        the training data, then count the tables (as :meth:`ContextIndexModel.fit`)."""
        batches = list(index_batches)
        activity = np.concatenate([self.coarse_activity(side[self.coarse_name]).ravel() for _, side in batches])
        quantiles = np.quantile(activity, np.arange(1, self.side_buckets) / self.side_buckets)
        edges = np.floor(quantiles).astype(np.int64) + 1
        for i in range(1, len(edges)):  # strictly rising: every bucket spans at least one value
            edges[i] = max(edges[i], edges[i - 1] + 1)
        self.coarse_edges.copy_(torch.from_numpy(edges).int())
        self._fit_activity_edges([indices for indices, _ in batches])
        super().fit(batches, prior_count, backoff)

    def _fit_activity_edges(self, batches: list[np.ndarray]) -> None:
        """``activity_edges`` at the quartiles of each activity sum over the positions each
        codebook and phase codes in ``batches`` ((B, M, H, W) indices each), counted in histograms
        (the sums are small integers: at most 4 * (NUM_CLASSES - 1) * (ACTIVITY_WINDOW + 1))."""
        largest = 4 * (NUM_CLASSES - 1) * (ACTIVITY_WINDOW + 1) + 1
        histograms = np.zeros((self.num_codebooks, NUM_PHASES, 2, largest))
        for indices in batches:
            anchors = anchor_mask(*indices.shape[2:])
            for m in range(self.num_predicted, self.num_codebooks):
                for phase, mask in enumerate((anchors, ~anchors)):
                    _, own, neighbours = self._activity(indices, m, phase)
                    histograms[m, phase, 0] += np.bincount(own[:, mask].ravel(), minlength=largest)
                    histograms[m, phase, 1] += np.bincount(neighbours[:, mask].ravel(), minlength=largest)
        cumulative = histograms.cumsum(axis=-1)
        share = cumulative / np.maximum(cumulative[..., -1:], 1)
        for bucket in range(1, ACTIVITY_BUCKETS):
            # The quantile value v (the first with at least that share at or below it) + 1.
            edge = (share < bucket / ACTIVITY_BUCKETS).sum(axis=-1) + 1
            self.activity_edges[..., bucket - 1] = torch.from_numpy(edge).int()
