"""Index entropy model of a fine level conditioned on the decoded coarse level: the coding half (numpy only).

The fine level's indices are coded as :class:`~dqcodec.models.entropy.ContextIndexModel` codes
them (codebook by codebook, checkerboard phases, contexts only from what is already decoded),
with contexts made for a deep stack of codebooks:

- a predicted codebook (the first few, which carry the block means) finds the code nearest to
  the mean of its decoded neighbours, as in the base class, and takes that code's *level bin*
  as its context: the codes sorted by level (their first coordinate) fall into
  ``PREDICTED_BINS`` bins of equal training use (``predicted_bins``), so that the context says
  where the prediction lies, finely where the data is dense; each bin is split by the *spread*
  of the decoded neighbours' levels (largest minus smallest) into ``PREDICTED_SPREADS``
  buckets at terciles of the training data (``predicted_spread_edges``): neighbours that
  disagree (an edge) make a wide residual likely (context 0: no decoded neighbour). Measured
  with hdq-q3's indices of 1 536 crops on Kodak: 0.4053 -> 0.4038 fine bpp against 63 level
  bins alone (2, 4 and 6 spread buckets: 0.4040, 0.4039, 0.4043);
- every other codebook m reads *activity*: the class (0..3, how far a code lies from its
  codebook's most used code) of codebook m-1 at the same position; the summed classes of the
  ``ACTIVITY_WINDOW`` codebooks before m-1 there (how busy this block has been so far); and the
  summed activity of the 4 neighbours over those codebooks (phase 0) or the summed classes of
  codebook m's 4 decoded anchor neighbours (phase 1). The two sums fall into
  ``ACTIVITY_BUCKETS`` buckets each, with integer edges that are quantiles of the training data
  for that codebook and phase (``activity_edges``).

The second phase of every codebook also adapts to the image: the anchors of codebook m, decoded
in the first phase, give the image's own histogram h of that codebook, and each table of the
second phase is reweighted code by code by how much more (or less) the image uses a code than
the training data did: p'(k) ~ p(k) * (h_k + A * q_k) / ((n + A) * q_k), with q the codebook's
training marginal (``marginal``), n the number of anchors and A = ``ADAPT_STRENGTH`` * K_m
pseudo-counts of it, in integers (weights in 1/256, int64 products), then the row
requantized. Measured with hdq-q3's indices on Kodak, tables counted over 1 536 crops: 0.4098 ->
0.4068 fine bpp (-0.7 %). A = 4 K_m was the best of 1, 2, 4, 8 and 16 K_m in a probe whose
predicted codebooks had no context (-0.6, -1.0, -1.1, -1.0 and -0.7 %).

Each context is split further by a *coarse activity bucket*: at fine position (r, c), the
activity classes of all coarse codebooks at the parent position (r // f, c // f) are summed,
and the sum falls into one of ``side_buckets`` buckets whose integer edges are quantiles of the
training data (set by :meth:`CoarseConditionedIndexModel.fit`). The coarse level says how busy a
region is, the role a hyperprior's scales play in a scalar codec. Every quantity is an integer
stored in the model, so encoder and decoder choose the same table on any machine.

Measured on Kodak with hdq-q3's indices, tables counted over 1 536 training crops: 0.4123 fine
bpp against 0.4158 for the base class's contexts (contexts seen fewer than 256 times backed off;
0.4123 and 0.4156 at 64): its m-2 and m-3 alone say less about how busy a block is than the 16
codebooks before m-1. The level bins of the 3 predicted codebooks take their bits from 0.0512
to 0.0467 bpp, for 0.38 instead of 0.47 MB of their tables (the base class groups codes 4 by 4
in usage order, so codes of distant levels share a context; one context per code gave 0.0488
bpp for 0.70 MB).
This module is the coding half, plain numpy, shared by the light install's runtime
(:mod:`dqcodec.models.hdq_runtime`) and the training network
(:class:`~dqcodec.models.hierarchical_entropy.CoarseConditionedIndexModel`, which adds the torch
buffers and the fit).
"""

from dataclasses import dataclass

import numpy as np

from dqcodec.models.context_tables import (
    CONTEXTS_PER_PHASE, TABLE_PRECISION, ContextTables, _bucket, _neighbour_sum, anchor_mask,
)
from dqcodec.models.interface import CodingStep, Side

ACTIVITY_WINDOW = 16  # codebooks before m - 1 whose classes sum to a position's activity
ACTIVITY_BUCKETS = 4  # buckets of each activity sum: NUM_CLASSES * 4 * 4 = 64 contexts per phase
PREDICTED_SPREADS = 3  # buckets of the spread of a predicted codebook's decoded neighbour levels
PREDICTED_BINS = (CONTEXTS_PER_PHASE - 1) // PREDICTED_SPREADS  # level bins of a predicted codebook: 21
ADAPT_STRENGTH = 4  # pseudo-counts of the training marginal per code in the second phase's adaptation
WEIGHT_ONE = 1 << 8  # fixed-point unit of the adaptation's weights


def level_spread(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(B, N) largest minus smallest of the neighbour levels ``values`` (B, n, N) where ``inside``
    (n, N) (0 with fewer than two)."""
    highest = np.where(inside, values, np.iinfo(np.int64).min).max(axis=1)
    lowest = np.where(inside, values, np.iinfo(np.int64).max).min(axis=1)
    return np.where(inside.sum(axis=0) > 1, highest - lowest, 0)


class CoarseConditionedTables(ContextTables):
    """Context tables of a fine level whose contexts also read the coarse level ``coarse_name``.

    Reads the attributes of :class:`ContextTables` and these (numpy arrays in
    :class:`StoredCoarseConditionedTables`, torch buffers in the training network; integers):
        coarse_name: the name of the coarse level in ``side``; factor: its stride over this level's.
        coarse_class: (M_c, K_c) activity class of every coarse code.
        coarse_edges: (side_buckets - 1,) upper edges of the summed coarse classes per bucket.
        activity_edges: (M, 2, 2, ACTIVITY_BUCKETS - 1) upper edges of the buckets of the two
            activity sums (own position, neighbours) of each codebook and phase.
        predicted_bins: (num_predicted, K) level bin (0 .. PREDICTED_BINS - 1) of every code of
            the predicted codebooks.
        predicted_spread_edges: (num_predicted, 2, PREDICTED_SPREADS - 1) upper edges of the
            buckets of the decoded neighbours' level spread, per predicted codebook and phase.
        marginal: (M, K) each codebook's integer table over all its training symbols, which
            the second phase's adaptation compares the image's anchors with.
    """

    coarse_name: str
    factor: int
    _side_cache: tuple | None = None  # (key, buckets) of side_contexts

    def _level_contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """Context ids in [0, 64), (B, N): the predicted codebooks' from the level bin of their
        predicted code and the spread of the neighbours it was predicted from, the others' from
        the activity sums (module docstring)."""
        if m < self.num_predicted:
            neighbours = self._decoded_neighbours(indices, m, phase, mask)  # gathered once for both
            nearest = self._nearest_to_mean(m, *neighbours)
            level_bin = np.asarray(self.predicted_bins)[m][np.maximum(nearest, 0)]
            spread = _bucket(level_spread(*neighbours), np.asarray(self.predicted_spread_edges)[m, phase])
            return np.where(nearest >= 0, 1 + level_bin * PREDICTED_SPREADS + spread, 0)
        previous, own, neighbours = self._activity(indices, m, phase)
        edges = np.asarray(self.activity_edges)[m, phase]
        context = (previous * ACTIVITY_BUCKETS + _bucket(own, edges[0])) * ACTIVITY_BUCKETS + _bucket(neighbours, edges[1])
        return context[:, mask]

    def _neighbour_spread(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """(B, N) largest minus smallest level of predicted codebook m's decoded neighbours of each
        masked position (0 with fewer than two)."""
        return level_spread(*self._decoded_neighbours(indices, m, phase, mask))

    def step_tables(self, indices: np.ndarray, step: CodingStep, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ContextTables.step_tables`; in the second phase, one table per image and
        context, adapted to the image's anchors of the codebook (module docstring)."""
        if step.phase == 0:
            return super().step_tables(indices, step, side)
        m, size = step.codebook, int(self.alphabet_sizes[step.codebook])
        context = self.contexts(indices, m, 1, step.mask, side)  # (B, N per image)
        context_count = self.frequencies.shape[2]
        keys, rows = np.unique(context + np.arange(len(context))[:, None] * context_count, return_inverse=True)
        images, contexts = np.divmod(keys, context_count)
        static = self.context_tables(m, 1, contexts).astype(np.int64)  # (U, K_m)
        anchors = indices[:, m][:, ~step.mask]  # (B, n): decoded in the first phase
        counts = np.stack([np.bincount(image, minlength=size)[:size] for image in anchors]).astype(np.int64)
        marginal = np.asarray(self.marginal)[m, :size].astype(np.int64)
        prior = ADAPT_STRENGTH * size
        # weight_k = (h_k + A q_k / Q) / ((n + A) q_k / Q) in units of 1 / WEIGHT_ONE, Q = sum q:
        # at most Q * WEIGHT_ONE <= 2**24, so that table (< 2**16) * weight * 2**16 < 2**63.
        total = int(marginal.sum())
        weights = (counts * total + prior * marginal[None]) * WEIGHT_ONE // (
            (anchors.shape[1] + prior) * marginal[None])  # (B, K_m)
        adapted = static * weights[images]
        adapted = adapted * (TABLE_PRECISION - size) // adapted.sum(axis=1, keepdims=True) + 1
        return adapted.astype(np.int32), rows.reshape(-1)

    def _activity(self, indices: np.ndarray, m: int, phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, H, W) int64 each: the class of codebook m-1, the summed classes of the
        ``ACTIVITY_WINDOW`` codebooks before it, and the neighbours' sum of the phase (module
        docstring); zeros where there is no such codebook."""
        code_class = np.asarray(self.code_class)
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
        classes = np.asarray(self.coarse_class).astype(np.int64)
        return sum(classes[m][coarse[:, m]] for m in range(coarse.shape[1]))

    def side_contexts(self, side: Side, shape: tuple[int, ...]) -> np.ndarray:
        """(B, H, W) coarse bucket of every fine position (its parent's summed classes)."""
        coarse = side[self.coarse_name]
        # Every coding step of a level reads the same buckets: they are kept for the last coarse
        # indices seen (checked by value, with the classes and edges they were made from), which
        # took 26 of the 250 ms of choosing hdq-q5's fine indices for a Kodak image.
        key = (tuple(shape), coarse.shape, coarse.tobytes(), np.asarray(self.coarse_class).tobytes(),
               np.asarray(self.coarse_edges).tobytes())
        cached = self._side_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        activity = self.coarse_activity(coarse)
        buckets = _bucket(activity, tuple(int(edge) for edge in self.coarse_edges))
        height, width = shape[2:]
        buckets = buckets.repeat(self.factor, axis=1).repeat(self.factor, axis=2)[:, :height, :width]
        buckets.flags.writeable = False
        self._side_cache = (key, buckets)
        return buckets


@dataclass
class StoredCoarseConditionedTables(CoarseConditionedTables):
    """:class:`CoarseConditionedTables` over the arrays of a model file (tables unpacked)."""

    num_codebooks: int
    codebook_size: int
    num_predicted: int
    side_buckets: int
    coarse_name: str
    factor: int
    code_class: np.ndarray
    code_level: np.ndarray
    frequencies: np.ndarray
    alphabet_sizes: np.ndarray
    coarse_class: np.ndarray
    coarse_edges: np.ndarray
    activity_edges: np.ndarray
    predicted_bins: np.ndarray
    predicted_spread_edges: np.ndarray
    marginal: np.ndarray
