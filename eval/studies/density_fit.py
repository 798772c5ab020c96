"""Fit a codebook quantizer's codebooks to a fixed set of vectors, to convergence (Lloyd).

Used by the channel-vs-pixel density study, where there is no encoder or decoder to train:
only codebooks, on feature vectors that are already given. Batch Lloyd iterations (k-means,
:func:`dqcodec.models.lloyd.lloyd`) reach the fixed point that the quantizers' EMA updates
approach online (a full-batch EMA step with decay 0 is a Lloyd step), at a fraction of the
cost per vector, and make "converged" a concrete test: the training error stopped falling.
"""

import torch

from dqcodec.models.lloyd import LloydResult, lloyd, sample_centres
from dqcodec.models.quantizers import CodebookQuantizer


@torch.no_grad()
def fit_codebooks(
    quantizer: CodebookQuantizer,
    slices: torch.Tensor,
    generator: torch.Generator,
    tolerance: float = 1e-3,
    max_iterations: int = 50,
) -> LloydResult:
    """Lloyd iterations of the M codebooks of ``quantizer`` on (N, M, D) slices.

    Codebook m is fitted to the N vectors ``slices[:, m]``, nearest-code assignment (the
    quantizer's rule without a rate term). Codebooks start on K distinct random vectors; a code
    left without vectors restarts on a random one. It stops after the first iteration whose
    MSE fell by less than ``tolerance`` (relative to the previous one), once the assignment
    repeats, or after ``max_iterations``; ``mse[i]`` of the result is the training MSE per
    scalar under the codebooks of iteration i. On return the quantizer's EMA state holds the
    final code usage, so it is a consistent, usable quantizer.
    """
    points = slices.transpose(0, 1).contiguous()  # (M, N, D)
    start = sample_centres(points, quantizer.codebook_size, generator)
    fit = lloyd(points, start, max_iterations, tolerance=tolerance, restart_empty=True, generator=generator)
    quantizer.load_codebooks(fit.centres, fit.counts.clamp_min(1e-3))
    return fit
