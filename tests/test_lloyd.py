"""Lloyd / k-means / ECVQ (models/lloyd.py), the ECVQ codebook initialisation and code perplexity."""

from types import SimpleNamespace

import pytest
import torch

from dqcodec.models.lloyd import kmeans_plus_plus, lloyd, nearest_codes, sample_centres, squared_distances
from dqcodec.models.quantizers import DepthwiseQuantizer, perplexity
from dqcodec.train.initialize import ecvq_codebooks

MEANS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


def _blobs(per_blob: int, seed: int, means: torch.Tensor = MEANS, spread: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(means)).repeat_interleave(per_blob)
    return means[labels] + spread * torch.randn(len(labels), means.shape[1], generator=generator)


def _matched(found: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """The rows of ``found`` nearest to each row of ``expected``."""
    return found[squared_distances(expected, found).argmin(dim=1)]


def test_nearest_codes_is_the_brute_force_argmin_with_code_costs():
    generator = torch.Generator().manual_seed(0)
    points, centres = torch.randn(3, 50, 4, generator=generator), torch.randn(3, 7, 4, generator=generator)
    code_cost = torch.rand(3, 7, generator=generator)
    code_cost[:, 2] = float("inf")  # a pruned code
    costs = torch.cdist(points, centres) ** 2 + code_cost[:, None, :]
    indices, cost = nearest_codes(points, centres, code_cost)
    assert torch.equal(indices, costs.argmin(dim=2)) and not (indices == 2).any()
    torch.testing.assert_close(cost, costs.min(dim=2).values, rtol=0, atol=1e-5)
    chunked, _ = nearest_codes(points, centres, code_cost, chunk=3)
    assert torch.equal(chunked, indices)


def test_kmeans_plus_plus_and_lloyd_find_separated_blobs():
    points = _blobs(40, seed=1)
    start = kmeans_plus_plus(points, 4, torch.Generator().manual_seed(0))
    assert torch.equal(start, kmeans_plus_plus(points, 4, torch.Generator().manual_seed(0)))
    fit = lloyd(points, start, iterations=50)
    assert fit.converged and fit.iterations < 50 and fit.centres.shape == (4, 2)
    torch.testing.assert_close(_matched(fit.centres, MEANS), MEANS, rtol=0, atol=0.2)
    assert fit.counts.sum() == len(points) and fit.mse[-1] <= fit.mse[0]


def test_codebooks_are_fitted_independently():
    first, second = _blobs(30, seed=2), _blobs(30, seed=3, means=MEANS * -2)
    start = sample_centres(torch.stack([first, second]), 4, torch.Generator().manual_seed(4))
    both = lloyd(torch.stack([first, second]), start, iterations=20)
    alone = lloyd(second, start[1], iterations=20)
    torch.testing.assert_close(both.centres[1], alone.centres)
    torch.testing.assert_close(both.counts[1], alone.counts)


def test_rate_term_prunes_codes_and_trades_error_for_bits():
    points = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    start = sample_centres(points[None], 16, torch.Generator().manual_seed(6))[0]
    plain = lloyd(points, start, iterations=30)
    constrained = lloyd(points, plain.centres, iterations=30, rate_lambda=0.5, counts=plain.counts)

    def entropy(counts: torch.Tensor) -> float:
        shares = counts[counts > 0] / counts.sum()
        return float(-(shares * shares.log2()).sum())

    assert (plain.counts > 0).all()
    assert (constrained.counts == 0).any()  # pruned: out of use for good
    assert entropy(constrained.counts) < entropy(plain.counts) - 0.3
    assert constrained.mse[-1] > plain.mse[-1]


def test_empty_codes_keep_their_place_or_restart_on_the_data():
    points = _blobs(20, seed=7)
    start = torch.cat([MEANS, torch.full((1, 2), 1e3)])  # the last code is far from every point
    kept = lloyd(points, start, iterations=5)
    assert torch.equal(kept.centres[4], start[4]) and kept.counts[4] == 0
    restarted = lloyd(points, start, iterations=1, restart_empty=True, generator=torch.Generator().manual_seed(8))
    assert (squared_distances(restarted.centres[4:], points) == 0).any()


def test_tolerance_stops_a_fit_before_the_cap():
    points = torch.randn(500, 2, generator=torch.Generator().manual_seed(9))
    start = sample_centres(points[None], 8, torch.Generator().manual_seed(10))[0]
    full = lloyd(points, start, iterations=200)
    loose = lloyd(points, start, iterations=200, tolerance=0.05)
    assert full.converged and loose.converged and loose.iterations < full.iterations
    assert loose.mse == full.mse[: loose.iterations]


def test_ecvq_codebooks_fit_the_slices_and_their_usage():
    torch.manual_seed(0)
    quantizer = DepthwiseQuantizer(4, 2, 8, 2, rate_lambda=0.5)
    net = SimpleNamespace(quantizer=quantizer)
    # (N, M, D) slices: codebook 0 sees the four blobs, codebook 1 a wider Gaussian.
    slices = torch.stack([_blobs(100, seed=11), 3 * torch.randn(400, 2, generator=torch.Generator().manual_seed(12))], 1)
    random_error = ((slices[:, :, None] - quantizer.codebooks[None]) ** 2).sum(-1).min(-1).values.mean()
    ecvq_codebooks(net, slices, iterations=9, generator=torch.Generator().manual_seed(13))
    codes = quantizer.codebooks.detach()
    torch.testing.assert_close(_matched(codes[0], MEANS), MEANS, rtol=0, atol=0.3)
    quantizer.rate_lambda = 0.0
    indices = quantizer.assign(slices.permute(1, 2, 0)[None, :, :, :, None])[0, :, :, 0]  # (M, N)
    error = ((slices.transpose(0, 1) - codes.gather(1, indices[..., None].expand(-1, -1, 2))) ** 2).sum(-1).mean()
    assert error < 0.2 * random_error
    assert (quantizer.ema_counts >= 1e-3).all()  # every code stays valid
    assert torch.allclose(quantizer.ema_counts.sum(dim=1), torch.full((2,), 400.0), atol=0.1)
    torch.testing.assert_close(quantizer.ema_sums, codes * quantizer.ema_counts[..., None])


def test_perplexity_counts_the_codes_in_use():
    every = torch.arange(8).view(1, 1, 2, 4)  # one plane, 8 codes once each
    one = torch.zeros(1, 1, 2, 4, dtype=torch.int64)
    torch.testing.assert_close(perplexity(torch.cat([every, one], dim=1), 8), torch.tensor([8.0, 1.0]))
