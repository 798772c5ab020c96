"""Index entropy model of a fine level conditioned on the decoded coarse level (discrete, exact).

The fine level's indices are coded as :class:`~dqcodec.models.entropy.ContextIndexModel` codes
them (codebook by codebook, checkerboard phases, contexts from already decoded neighbours and
earlier codebooks), and each of its 64 contexts is split further by a *coarse activity bucket*:
at fine position (r, c), the activity classes (0..3, how far a code lies from its codebook's
most used code) of all coarse codebooks at the parent position (r // f, c // f) are summed, and
the sum falls into one of ``side_buckets`` buckets whose integer edges are quantiles of the
training data (set by :meth:`CoarseConditionedIndexModel.fit`). The coarse level says how busy a
region is, the role a hyperprior's scales play in a scalar codec. Every quantity is an integer
stored in the model, so encoder and decoder choose the same table on any machine.
"""

from collections.abc import Iterable

import numpy as np
import torch

from dqcodec.models.context_tables import _bucket
from dqcodec.models.entropy import ContextIndexModel, activity_classes
from dqcodec.models.interface import Side


class CoarseConditionedIndexModel(ContextIndexModel):
    """Context tables of a fine level whose contexts also read the coarse level ``coarse_name``.

    Extra buffers (integers, saved with the model):
        coarse_class: (M_c, K_c) activity class of every coarse code.
        coarse_edges: (side_buckets - 1,) upper edges of the summed coarse classes per bucket.
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
        """Set the bucket edges to quantiles of the coarse activity, then count the tables (as
        :meth:`ContextIndexModel.fit`)."""
        batches = list(index_batches)
        activity = np.concatenate([self.coarse_activity(side[self.coarse_name]).ravel() for _, side in batches])
        quantiles = np.quantile(activity, np.arange(1, self.side_buckets) / self.side_buckets)
        edges = np.floor(quantiles).astype(np.int64) + 1
        for i in range(1, len(edges)):  # strictly rising: every bucket spans at least one value
            edges[i] = max(edges[i], edges[i - 1] + 1)
        self.coarse_edges.copy_(torch.from_numpy(edges).int())
        super().fit(batches, prior_count, backoff)
