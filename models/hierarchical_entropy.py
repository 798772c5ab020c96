"""Index entropy model of a fine level conditioned on the decoded coarse level (discrete, exact).

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
"""

from collections.abc import Iterable

import numpy as np
import torch

from dqcodec.models.context_tables import (
    CONTEXTS_PER_PHASE, NUM_CLASSES, NUM_PHASES, TABLE_PRECISION, _bucket, _neighbour_sum, anchor_mask, quantize_table,
)
from dqcodec.models.entropy import ContextIndexModel, activity_classes
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


class CoarseConditionedIndexModel(ContextIndexModel):
    """Context tables of a fine level whose contexts also read the coarse level ``coarse_name``.

    Extra buffers (integers, saved with the model):
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
        self.register_buffer("predicted_bins", torch.zeros(num_predicted, codebook_size, dtype=torch.int32))
        self.register_buffer("predicted_spread_edges", torch.arange(1, PREDICTED_SPREADS, dtype=torch.int32).repeat(
            num_predicted, NUM_PHASES, 1))
        self.register_buffer("marginal", torch.ones(num_codebooks, codebook_size, dtype=torch.int32))
        self._side_cache: tuple[tuple, np.ndarray] | None = None  # (key, buckets) of side_contexts

    def _level_contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """Context ids in [0, 64), (B, N): the predicted codebooks' from the level bin of their
        predicted code and the spread of the neighbours it was predicted from, the others' from
        the activity sums (module docstring)."""
        if m < self.num_predicted:
            neighbours = self._decoded_neighbours(indices, m, phase, mask)  # gathered once for both
            nearest = self._nearest_to_mean(m, *neighbours)
            level_bin = self.predicted_bins[m].numpy()[np.maximum(nearest, 0)]
            spread = _bucket(level_spread(*neighbours), self.predicted_spread_edges[m, phase].numpy())
            return np.where(nearest >= 0, 1 + level_bin * PREDICTED_SPREADS + spread, 0)
        previous, own, neighbours = self._activity(indices, m, phase)
        edges = self.activity_edges[m, phase].numpy()
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
        marginal = self.marginal[m, :size].numpy().astype(np.int64)
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
        coarse = side[self.coarse_name]
        # Every coding step of a level reads the same buckets: they are kept for the last coarse
        # indices seen (checked by value, with the classes and edges they were made from), which
        # took 26 of the 250 ms of choosing hdq-q5's fine indices for a Kodak image.
        key = (tuple(shape), coarse.shape, coarse.tobytes(), self.coarse_class.numpy().tobytes(),
               self.coarse_edges.numpy().tobytes())
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

    @torch.no_grad()
    def set_coarse_codes(self, codebooks: torch.Tensor, usage: torch.Tensor) -> None:
        """Activity classes of the coarse codes from their (M_c, K_c, D) codewords and (M_c, K_c) usage."""
        self.coarse_class.copy_(activity_classes(codebooks, usage))

    @torch.no_grad()
    def fit(self, index_batches: Iterable[tuple[np.ndarray, Side]], prior_count: float = 0.05, backoff: int = 0) -> None:
        """Set the bucket edges of the coarse activity, of the activity sums and of the predicted
        codebooks' neighbour spread to quantiles of the training data, and the predicted
        codebooks' level bins to its code use, then count
        the tables (as :meth:`ContextIndexModel.fit`)."""
        batches = list(index_batches)
        activity = np.concatenate([self.coarse_activity(side[self.coarse_name]).ravel() for _, side in batches])
        quantiles = np.quantile(activity, np.arange(1, self.side_buckets) / self.side_buckets)
        edges = np.floor(quantiles).astype(np.int64) + 1
        for i in range(1, len(edges)):  # strictly rising: every bucket spans at least one value
            edges[i] = max(edges[i], edges[i - 1] + 1)
        self.coarse_edges.copy_(torch.from_numpy(edges).int())
        self._fit_activity_edges([indices for indices, _ in batches])
        # (M, K) how often each code occurs: the predicted codebooks' bins and every marginal.
        offsets = (np.arange(self.num_codebooks) * self.codebook_size)[:, None, None]
        symbols = sum(np.bincount((indices + offsets).ravel(), minlength=self.num_codebooks * self.codebook_size)
                      for indices, _ in batches).reshape(self.num_codebooks, self.codebook_size)
        self._fit_predicted_bins(symbols)
        self._fit_spread_edges([indices for indices, _ in batches])
        self.marginal.copy_(torch.from_numpy(quantize_table(symbols + prior_count)))
        super().fit(batches, prior_count, backoff)

    def _fit_predicted_bins(self, symbols: np.ndarray) -> None:
        """``predicted_bins``: each predicted codebook's used codes, sorted by level, cut into
        ``PREDICTED_BINS`` runs of about equal use in the training data ((M, K) code counts
        ``symbols``); a code's bin is where the middle of its share of the use falls."""
        for m in range(min(self.num_predicted, self.num_codebooks)):
            size = int(self.alphabet_sizes[m])
            # +1: a code unused in the training data still takes a sliver of its bin's range.
            usage = symbols[m, :size] + 1.0
            order = np.argsort(self.code_level[m, :size].numpy(), kind="stable")
            middle = (np.cumsum(usage[order]) - usage[order] / 2) / usage.sum()
            bins = np.zeros(self.codebook_size, dtype=np.int64)
            bins[order] = np.minimum(np.floor(middle * PREDICTED_BINS), PREDICTED_BINS - 1)
            self.predicted_bins[m] = torch.from_numpy(bins).int()

    def _fit_spread_edges(self, batches: list[np.ndarray]) -> None:
        """``predicted_spread_edges`` at the terciles of the neighbour spread over the positions
        each predicted codebook and phase codes in ``batches`` ((B, M, H, W) indices each)."""
        for m in range(min(self.num_predicted, self.num_codebooks)):
            for phase in range(NUM_PHASES):
                # A phase's whole mask at once: from complete indices, a position's decoded
                # neighbours are the same whether its step codes one row or all of them.
                spreads = np.concatenate([
                    self._neighbour_spread(indices, m, phase, anchor_mask(*indices.shape[2:]) == (phase == 0)).ravel()
                    for indices in batches])
                quantiles = np.quantile(spreads, np.arange(1, PREDICTED_SPREADS) / PREDICTED_SPREADS)
                edges = np.floor(quantiles).astype(np.int64) + 1
                for i in range(1, len(edges)):  # strictly rising: every bucket spans at least one value
                    edges[i] = max(edges[i], edges[i - 1] + 1)
                self.predicted_spread_edges[m, phase] = torch.from_numpy(edges).int()

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
