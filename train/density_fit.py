"""Fit a codebook quantizer's codebooks to a fixed set of vectors, to convergence (Lloyd).

Used by the channel-vs-pixel density study, where there is no encoder or decoder to train:
only codebooks, on feature vectors that are already given. Batch Lloyd iterations (k-means)
reach the fixed point that the quantizers' EMA updates approach online (a full-batch EMA step
with decay 0 is a Lloyd step), at a fraction of the cost per vector, and make "converged" a
concrete test: the training error stopped falling.
"""

from dataclasses import dataclass

import torch

from dqcodec.models.quantizers import CodebookQuantizer


@dataclass
class LloydConfig:
    """When a fit stops: relative drop of the training MSE below ``tolerance``, or the cap."""

    tolerance: float = 1e-3
    max_iterations: int = 50
    chunk: int = 4096  # vectors assigned at a time (bounds the memory of one assignment)


@dataclass
class LloydFit:
    """How a fit went: ``mse[i]`` is the training MSE per scalar under the codebooks of
    iteration i (before its update); converged is False when the cap stopped it."""

    iterations: int
    converged: bool
    mse: list[float]


@torch.no_grad()
def fit_codebooks(
    quantizer: CodebookQuantizer, slices: torch.Tensor, config: LloydConfig, generator: torch.Generator
) -> LloydFit:
    """Lloyd iterations of the M codebooks of ``quantizer`` on (N, M, D) slices.

    Codebook m is fitted to the N vectors ``slices[:, m]``. Codebooks start on K distinct
    random vectors; a code left without vectors restarts on a random one. Each iteration
    assigns every vector with the quantizer's own rule (``assign``) and moves each code to the
    mean of its vectors. It stops after the first iteration whose MSE fell by less than
    ``tolerance`` (relative to the previous one), or after ``max_iterations``. On return the
    quantizer's EMA state holds the final code usage, so it is a consistent, usable quantizer.
    """
    count, m_count, d = slices.shape
    k_count = quantizer.codebook_size
    if count < k_count:
        raise ValueError(f"{count} vectors cannot seed {k_count} codes")
    quantizer.codebooks.copy_(
        torch.stack([slices[torch.randperm(count, generator=generator)[:k_count], m] for m in range(m_count)])
    )
    quantizer.ema_counts.fill_(1.0)
    offsets = torch.arange(m_count) * k_count
    history: list[float] = []
    converged = False
    while len(history) < config.max_iterations and not converged:
        counts = torch.zeros(m_count * k_count)
        sums = torch.zeros(m_count * k_count, d)
        squared_error = 0.0
        for part in slices.split(config.chunk):
            indices = quantizer.assign(part[..., None, None])  # (n, M, 1, 1)
            codes = quantizer.lookup(indices)[..., 0, 0]  # (n, M, D)
            squared_error += float(((part - codes) ** 2).sum())
            flat = (indices[..., 0, 0] + offsets).reshape(-1)
            counts.index_add_(0, flat, torch.ones(len(flat)))
            sums.index_add_(0, flat, part.reshape(-1, d))
        history.append(squared_error / slices.numel())
        if len(history) > 1:
            converged = history[-2] - history[-1] < config.tolerance * history[-2]
        codebooks = quantizer.codebooks.view(-1, d)
        used = counts > 0
        codebooks[used] = sums[used] / counts[used, None]
        empty = (~used).nonzero()[:, 0]
        if len(empty):
            rows = torch.randint(0, count, (len(empty),), generator=generator)
            codebooks[empty] = slices[rows, empty // k_count]
        quantizer.ema_counts.copy_(counts.view(m_count, k_count).clamp_min(1e-3))
    quantizer.ema_sums.copy_(quantizer.codebooks * quantizer.ema_counts[..., None])
    return LloydFit(iterations=len(history), converged=converged, mse=history)
