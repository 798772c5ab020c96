"""Data-driven initialisation of a DQ block codec: block PCA, ECVQ codebooks, context tables.

These closed-form steps put a fresh network where gradient training alone takes hours on a
CPU to go: a decorrelating transform (the Karhunen-Loeve transform of P x P colour blocks),
codebooks from the entropy-constrained Lloyd algorithm (Chou, Lookabaugh & Gray 1989) on the
projected training latents, and context tables counted over whole training images.
"""

from pathlib import Path

import torch
from tqdm import tqdm

from dqcodec.models.codec_net import DQCodecNet
from dqcodec.models.lloyd import lloyd, sample_centres
from dqcodec.train.data import load_rgb, to_tensor


@torch.no_grad()
def block_pca(files: list[Path], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and principal axes (C, C), columns by decreasing variance, of P x P blocks."""
    unshuffle = torch.nn.PixelUnshuffle(block)
    total, outer, count = 0.0, 0.0, 0
    for path in tqdm(files, desc="block PCA", unit="img", leave=False):
        blocks = unshuffle(to_tensor(load_rgb(path, block)))[0].flatten(1).double()  # (C, N)
        total = total + blocks.sum(dim=1)
        outer = outer + blocks @ blocks.T
        count += blocks.shape[1]
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    _, axes = torch.linalg.eigh(covariance)
    return mean.float(), axes.flip(1).float()


@torch.no_grad()
def set_block_transform(net: DQCodecNet, mean: torch.Tensor, axes: torch.Tensor) -> None:
    """Analysis = centred PCA, quantizer projections = identity, synthesis = inverse PCA."""
    channels = net.config.channels
    net.analysis.linear.weight.copy_(axes.T.reshape(channels, channels, 1, 1))
    net.analysis.linear.bias.copy_(-(axes.T @ mean))
    projection = net.quantizer.projection
    projection.weight.zero_()
    projection.bias.zero_()
    out = min(projection.out_channels, channels)
    projection.weight[:out, :out, 0, 0] = torch.eye(out)
    synthesis = net.synthesis.linear
    synthesis.weight.zero_()
    synthesis.weight[:, :out, 0, 0] = axes[:, :out]
    synthesis.bias.copy_(mean)


@torch.no_grad()
def sample_slices(net: DQCodecNet, files: list[Path], count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, M, D) projected latent slices of random blocks of the training images."""
    per_image = max(1, count // len(files) + 1)
    samples = []
    for path in tqdm(files, desc="sampling latents", unit="img", leave=False):
        slices = net.quantizer.project(net.analysis(to_tensor(load_rgb(path, net.config.block))))
        flat = slices[0].permute(2, 3, 0, 1).reshape(-1, slices.shape[1], slices.shape[2])
        pick = torch.randperm(len(flat), generator=generator)[:per_image]
        samples.append(flat[pick])
    return torch.cat(samples)[:count]


@torch.no_grad()
def ecvq_codebooks(
    net: DQCodecNet, slices: torch.Tensor, iterations: int, generator: torch.Generator, chunk: int = 4096
) -> None:
    """Entropy-constrained Lloyd iterations on (N, M, D) slices; sets codebooks and EMA state.

    Codebook m starts on K distinct random slices ``slices[:, m]``. The first third of the
    iterations are plain k-means (no rate term) so that codes spread over the data before the
    rate term (the quantizer's ``rate_lambda``) starts pruning the expensive ones; see
    :func:`dqcodec.models.lloyd.lloyd`.
    """
    quantizer = net.quantizer
    points = slices.transpose(0, 1).contiguous()  # (M, N, D)
    centres, counts = sample_centres(points, quantizer.codebook_size, generator), None
    plain_iterations = iterations // 3
    if plain_iterations:
        plain = lloyd(points, centres, plain_iterations, chunk=chunk)
        centres, counts = plain.centres, plain.counts
    fit = lloyd(points, centres, iterations - plain_iterations, quantizer.rate_lambda, counts, chunk=chunk)
    # Unused codes keep a tiny count: the rate term keeps them out of use, yet they stay valid.
    quantizer.load_codebooks(fit.centres, fit.counts.clamp_min(1e-3))


@torch.no_grad()
def fit_entropy_tables(net, files: list[Path], rounds: int = 2) -> None:
    """Sort codes by usage (dropping unused ones), then count the context tables over whole
    training images.

    ``net`` is a block codec network (DQ or SHVQ: ``nearest_indices``, ``sort_codes``,
    ``code_values``, ``compress``). Round 1 counts its quantizer's own indices; each later
    round counts the indices that ``net.compress`` chooses with the previous round's tables,
    since the rate-distortion choice shifts the statistics the tables must describe.
    """
    images = [to_tensor(load_rgb(path, net.config.block)) for path in files]
    m_count, k_count = net.config.num_codebooks, net.config.codebook_size
    offsets = torch.arange(m_count)[:, None] * k_count
    usage = torch.zeros(m_count * k_count)
    for image in tqdm(images, desc="code usage", unit="img", leave=False):
        indices = net.nearest_indices(image)[0].reshape(m_count, -1)
        usage += torch.bincount((indices + offsets).reshape(-1), minlength=m_count * k_count).float()
    usage = usage.view(m_count, k_count)
    net.sort_codes(usage)
    usage = usage.sort(dim=1, descending=True).values
    net.entropy.set_codes(torch.from_numpy(net.code_values()).float(), usage)
    for round_index in range(rounds):

        def index_batches():
            for image in tqdm(images, desc=f"context tables {round_index + 1}/{rounds}", unit="img", leave=False):
                if round_index == 0:
                    yield net.nearest_indices(image).numpy(), {}
                else:
                    yield net.compress(image)[0].indices, {}

        net.entropy.fit(index_batches())
