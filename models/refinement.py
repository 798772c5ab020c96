"""A refinement level for hdq's fine indices: a second, residual codebook per fine codebook.

The fine level quantizes each codebook's D-dim slice with K codes, and K = 256 codes in D = 4
bound the quality of the top levels whatever the rate: on 6 Kodak images, hdq-q5's network
gives 37.2 dB from its unquantized slices, 32.2 dB from their nearest codes and 32.0 dB from
the codes its encoder chooses. A refinement index j of codebook m adds the residual code
``codebooks[m, j]`` (D-dim) to the fine codeword, so the decoder's slice is c_m[i] + r_m[j].
Code 0 is the zero vector (no refinement), the choice of most positions; the encoder picks j
by the same rule as the fine indices (squared error + lambda * bits under the real tables,
:func:`~dqcodec.models.context_tables.choose_indices`, on the residual the fine code left).

The codes are fitted after training, by entropy-constrained Lloyd iterations on the residuals
of training crops (the hdq table step, :func:`~dqcodec.train.recipes._fit_hdq_tables`): the
networks are not retrained, and a model gains the level by ``dqcodec fit-tables
--refinement-size``.

Entropy model (:class:`RefinementIndexModel`): codebook by codebook, anchors then the rest, as
the fine level, with a context of three integers:

- the *cell bucket* of the fine code at the position (0..3): the fine codes of a codebook sorted
  by how large their residuals were in training, cut at the quartiles of use
  (``cell_bucket``), read from the decoded fine level: a rare code far out has a wide cell and
  a large residual;
- how many of the ``OWN_WINDOW`` codebooks before m were refined at the same position (0, 1, 2+);
- phase 0: how many of codebook m-1's 4 neighbours were refined; phase 1: how many of
  codebook m's 4 decoded anchor neighbours were (0, 1, 2+): refinement gathers in textured
  areas.

"Refined" means an index other than 0. All are integers stored in the model, so encoder and
decoder choose the same tables on any machine.
"""

import numpy as np
import torch
from torch import nn

from dqcodec.models.context_tables import _bucket, _neighbour_sum, anchor_mask
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.interface import Side
from dqcodec.models.quantizers import lookup_codes

REFINE = "refine"
CELL_BUCKETS = 4
OWN_WINDOW = 4  # codebooks before m whose refinement at the same position is counted
COUNT_EDGES = (1, 2)  # 0, 1, 2 or more refined: buckets 0, 1, 2


class RefinementIndexModel(ContextIndexModel):
    """Context tables of the refinement indices (B, M, h, w), reading the fine level
    ``fine_name`` (module docstring). Extra buffer: ``cell_bucket`` (M, K_fine), the bucket
    (0 .. CELL_BUCKETS - 1) of every fine code."""

    def __init__(self, num_codebooks: int, refinement_size: int, fine_codebook_size: int, fine_name: str):
        super().__init__(num_codebooks, refinement_size)
        self.fine_name = fine_name
        self.register_buffer("cell_bucket", torch.zeros(num_codebooks, fine_codebook_size, dtype=torch.int32))

    def contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray | None = None,
                 side: Side | None = None) -> np.ndarray:
        """Context ids in [0, 36) for codebook m in the given phase, (B, N) for the N positions
        of ``mask`` (all when None); reads the refinement indices decoded before that step and
        the fine level in ``side``."""
        b, _, h, w = indices.shape
        if mask is None:
            mask = np.ones((h, w), dtype=bool)
        cell = self.cell_bucket[m].numpy()[side[self.fine_name][:, m]].astype(np.int64)
        own = (indices[:, max(0, m - OWN_WINDOW):m] != 0).sum(axis=1)
        if phase == 0:
            refined = indices[:, m - 1] != 0 if m > 0 else np.zeros((b, h, w), dtype=bool)
        else:
            refined = (indices[:, m] != 0) & anchor_mask(h, w)
        neighbours = _neighbour_sum(refined.astype(np.int64))
        context = (cell * 3 + _bucket(own, COUNT_EDGES)) * 3 + _bucket(neighbours, COUNT_EDGES)
        return context[:, mask]

    @torch.no_grad()
    def set_cell_buckets(self, residual_power: torch.Tensor, usage: torch.Tensor) -> None:
        """``cell_bucket`` from the (M, K_fine) mean squared residual of each fine code and its
        (M, K_fine) use in training: codes sorted by residual, cut where the use reaches each
        quartile."""
        order = residual_power.argsort(dim=1, stable=True)
        share = usage.gather(1, order).double()
        middle = (share.cumsum(dim=1) - share / 2) / share.sum(dim=1, keepdim=True).clamp_min(1e-12)
        buckets = (middle * CELL_BUCKETS).floor().clamp(0, CELL_BUCKETS - 1).int()
        self.cell_bucket.scatter_(1, order, buckets)


class FineRefinement(nn.Module):
    """The refinement codes (buffer ``codebooks``, (M, K_r, D); code 0 is zero) and their
    entropy model (``entropy``)."""

    def __init__(self, num_codebooks: int, refinement_size: int, code_dim: int, fine_codebook_size: int, fine_name: str):
        super().__init__()
        self.register_buffer("codebooks", torch.zeros(num_codebooks, refinement_size, code_dim))
        self.entropy = RefinementIndexModel(num_codebooks, refinement_size, fine_codebook_size, fine_name)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) refinement indices -> (B, M, D, h, w) residual codes."""
        return lookup_codes(self.codebooks, indices)
