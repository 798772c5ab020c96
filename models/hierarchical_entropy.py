"""Training half of the fine level's coarse-conditioned index entropy model: the torch buffers
and the fit of every integer it reads (bucket edges at quantiles of the training data, level bins,
marginals, tables). The contexts and the coding are
:class:`~dqcodec.models.hierarchical_tables.CoarseConditionedTables` (numpy), described there.
"""

from collections.abc import Iterable

import numpy as np
import torch

from dqcodec.models.context_tables import NUM_CLASSES, NUM_PHASES, anchor_mask, quantize_table
from dqcodec.models.entropy import ContextIndexModel, activity_classes
from dqcodec.models.hierarchical_tables import (
    ACTIVITY_BUCKETS, ACTIVITY_WINDOW, PREDICTED_BINS, PREDICTED_SPREADS, CoarseConditionedTables,
)
from dqcodec.models.interface import Side


class CoarseConditionedIndexModel(CoarseConditionedTables, ContextIndexModel):
    """Context tables of a fine level whose contexts also read the coarse level ``coarse_name``:
    :class:`CoarseConditionedTables`' integer arrays (described there) as torch buffers, saved with
    the model, and their fit."""

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
