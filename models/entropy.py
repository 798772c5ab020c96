"""Index entropy model for training: the integer tables of :mod:`dqcodec.models.context_tables`
as torch buffers of an ``nn.Module`` (saved in the state dict), counted from training indices.

Coding (contexts, tables, the encoder's choice of indices) is
:class:`~dqcodec.models.context_tables.ContextTables`' job, in plain numpy, the same code that
the light install runs; this module adds what training needs: the buffers, the activity
classes of the codes and :meth:`ContextIndexModel.fit`.
"""

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from dqcodec.models.context_tables import (
    CLASS_RANK_EDGES,
    CONTEXTS_PER_PHASE,
    LEVEL_SCALE,
    NUM_PHASES,
    ContextTables,
    _bucket,
    quantize_table,
)
from dqcodec.models.interface import Side


def activity_classes(codebooks: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
    """(M, K) int32 activity class of every code: its distance rank from its codebook's most
    used code, bucketed by ``CLASS_RANK_EDGES``. codebooks: (M, K, D); usage: (M, K) counts."""
    mode = usage.argmax(dim=1)
    distance = ((codebooks - codebooks[torch.arange(usage.shape[0]), mode][:, None]) ** 2).sum(-1)
    rank = distance.argsort(dim=1).argsort(dim=1)
    return torch.from_numpy(_bucket(rank.numpy(), CLASS_RANK_EDGES)).int()


class ContextIndexModel(nn.Module, ContextTables):
    """Context-conditioned static tables for the indices of M codebooks of K codes, as torch
    buffers (all integer, saved with the model; see :class:`ContextTables` for their shapes)."""

    def __init__(self, num_codebooks: int, codebook_size: int, num_predicted: int = 0, side_buckets: int = 1):
        """``side_buckets``: how many classes a subclass derives from the coarser levels
        (:meth:`side_contexts`); each multiplies the 64 contexts of a phase."""
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.num_predicted = num_predicted
        self.side_buckets = side_buckets
        self.register_buffer("code_class", torch.zeros(num_codebooks, codebook_size, dtype=torch.int32))
        self.register_buffer("code_level", torch.zeros(num_codebooks, codebook_size, dtype=torch.int32))
        self.register_buffer(
            "frequencies",
            torch.ones(num_codebooks, NUM_PHASES, CONTEXTS_PER_PHASE * side_buckets, codebook_size, dtype=torch.int32),
        )
        self.register_buffer("alphabet_sizes", torch.full((num_codebooks,), codebook_size, dtype=torch.int32))

    @torch.no_grad()
    def set_codes(self, codebooks: torch.Tensor, usage: torch.Tensor) -> None:
        """Set the alphabet sizes, activity classes and code levels from the codewords.

        codebooks: (M, K, D) codewords; usage: (M, K) code counts, zero for unused codes,
            which must come last (the mode defines class 0; used codes set the alphabet size).
        """
        self.alphabet_sizes.copy_((usage > 0).sum(dim=1).clamp_min(1).int())
        self.code_class.copy_(activity_classes(codebooks, usage))
        self.code_level.copy_((codebooks[:, :, 0] * LEVEL_SCALE).round().int())

    @torch.no_grad()
    def fit(self, index_batches: Iterable[tuple[np.ndarray, Side]], prior_count: float = 0.05, backoff: int = 0) -> None:
        """Count the tables over (indices (B, M, H, W), side) pairs of training data (after
        :meth:`set_codes`); ``prior_count`` is added to every cell, so unseen symbols stay codable.

        backoff: a context seen fewer times than this takes its codebook's table of that phase
            (all its contexts counted together): a table counted from a handful of symbols codes
            new images no better, and the identical tables are stored once (``pack_tables``).
        """
        m_count, _, context_count, k_count = self.frequencies.shape
        cells = context_count * k_count
        counts = np.zeros((m_count, NUM_PHASES, cells))
        for indices, side in index_batches:
            for step in self.coding_steps(indices.shape):
                context = self.contexts(indices, step.codebook, step.phase, step.mask, side).reshape(-1)
                symbols = step.symbols(indices)
                counts[step.codebook, step.phase] += np.bincount(context * k_count + symbols, minlength=cells)
        counts = counts.reshape(m_count, NUM_PHASES, context_count, k_count)
        rare = counts.sum(axis=-1, keepdims=True) < backoff
        counts = np.where(rare, counts.sum(axis=2, keepdims=True), counts) + prior_count
        self.frequencies.copy_(torch.from_numpy(quantize_table(counts)))
