"""Data-driven initialisation of the block codecs: block PCA, ECVQ codebooks, context tables.

These closed-form steps put a fresh network where gradient training alone takes hours on a
CPU to go: a decorrelating transform (the Karhunen-Loeve transform of P x P colour blocks, with
flat colours on 3 coefficients of their own), codebooks from the entropy-constrained Lloyd
algorithm (Chou, Lookabaugh & Gray 1989) on the projected training latents, and context tables
counted over whole training images.

The images these steps fit are "fitting images": training photographs, saturation-boosted
copies of some of them and synthetic content (:func:`fitting_images`), since photographs alone
hold few saturated colours and no flat graphics; and before the tables are counted the network
gets guard codes for flat colours (``BlockCodec.guard_codes``), kept through code pruning.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dqcodec.content import fitting_content, saturate
from dqcodec.models.codec_net import DQCodecNet
from dqcodec.models.lloyd import lloyd, sample_centres
from dqcodec.train.data import load_rgb, to_tensor


@dataclass(frozen=True)
class SaturatedPhoto:
    """A training photograph with its saturation multiplied by ``factor`` (loaded when used)."""

    path: Path
    factor: float


FittingImage = Path | SaturatedPhoto | np.ndarray


def load_fitting_image(image: FittingImage, block: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 of a fitting image, cropped to whole ``block`` x ``block`` tiles."""
    if isinstance(image, Path):
        return load_rgb(image, block)
    if isinstance(image, SaturatedPhoto):
        return saturate(load_rgb(image.path, block), image.factor)
    height, width = image.shape[0] // block * block, image.shape[1] // block * block
    return image[:height, :width]


def fitting_images(files: list[Path], synthetic_share: float) -> list[FittingImage]:
    """``files`` plus, when ``synthetic_share`` > 0, saturation-boosted copies (x2) of every
    round(1 / synthetic_share)-th file and as many synthetic images, taken in turn from
    :func:`dqcodec.content.fitting_content` (flat tiles, hue sweeps, gradients, text, screenshots)."""
    if synthetic_share <= 0:
        return list(files)
    saturated = [SaturatedPhoto(path, 2.0) for path in files[:: max(1, round(1 / synthetic_share))]]
    synthetic = fitting_content()
    return [*files, *saturated, *(synthetic[index % len(synthetic)] for index in range(len(saturated)))]


def flat_basis(block: int) -> torch.Tensor:
    """(3 P^2, 3) orthonormal basis of flat blocks (one colour per block), pixel-unshuffle order."""
    basis = torch.zeros(3 * block * block, 3, dtype=torch.float64)
    for channel in range(3):
        basis[channel * block * block : (channel + 1) * block * block, channel] = 1 / block
    return basis


@torch.no_grad()
def block_pca(images: list[FittingImage], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (C,) and principal axes (C, C) of P x P blocks, with flat colours kept apart.

    The first 3 axes span the flat blocks (the principal axes of the blocks' mean colours, by
    decreasing variance), the other C - 3 are the principal axes of what is left of the blocks
    once their mean colour is removed, by decreasing variance. The centre is the flat block of
    the mean colour. So a flat block of any colour has exactly zero on every axis but the first
    3, and those 3 codebooks alone decide how well flat colours come back (the plain block PCA
    mixes them into most of its axes, where photographs leave a single code).
    """
    unshuffle = torch.nn.PixelUnshuffle(block)
    total, outer, count = 0.0, 0.0, 0
    for image in tqdm(images, desc="block PCA", unit="img", leave=False):
        blocks = unshuffle(to_tensor(load_fitting_image(image, block)))[0].flatten(1).double()  # (C, N)
        total = total + blocks.sum(dim=1)
        outer = outer + blocks @ blocks.T
        count += blocks.shape[1]
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    flat = flat_basis(block)
    detail = torch.eye(len(mean), dtype=torch.float64) - flat @ flat.T
    _, colour_axes = torch.linalg.eigh(flat.T @ covariance @ flat)
    _, detail_axes = torch.linalg.eigh(detail @ covariance @ detail)
    # Drop the 3 null directions (the flat ones), re-orthogonalise the rest against them.
    detail_axes = torch.linalg.qr(detail @ detail_axes.flip(1)[:, : len(mean) - 3]).Q
    axes = torch.cat([flat @ colour_axes.flip(1), detail_axes], dim=1)
    return (flat @ flat.T @ mean).float(), axes.float()


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
def sample_slices(net: DQCodecNet, images: list[FittingImage], count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, M, D) projected latent slices of random blocks of the fitting images."""
    per_image = max(1, count // len(images) + 1)
    samples = []
    for image in tqdm(images, desc="sampling latents", unit="img", leave=False):
        slices = net.quantizer.project(net.analysis(to_tensor(load_fitting_image(image, net.config.block))))
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
    :func:`dqcodec.models.lloyd.lloyd`. The codes left unused then hold the guard codes for flat
    colours (``BlockCodec.guard_codes``).
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
    net.guard_codes()


@torch.no_grad()
def fit_entropy_tables(net, images: list[FittingImage], rounds: int = 2, guard_error: float = 3.0) -> None:
    """Anchor flat colours, place guard codes, sort codes by usage (dropping unused ones but
    never a guard code), then count the context tables over whole fitting images.

    ``net`` is a block codec network (DQ or SHVQ: ``anchor_flat_colours``, ``guard_codes``,
    ``nearest_indices``, ``sort_codes``, ``code_values``, ``compress``); ``guard_error`` the
    spacing of its guard codes, in 8-bit code values of pixel error per codebook. Round 1
    counts its quantizer's own indices; each later round counts the indices that
    ``net.compress`` chooses with the previous round's tables, since the rate-distortion
    choice shifts the statistics the tables must describe.
    """
    net.anchor_flat_colours()
    guard = torch.from_numpy(net.guard_codes(guard_error / 255))
    images = [to_tensor(load_fitting_image(image, net.config.block)) for image in images]
    m_count, k_count = net.config.num_codebooks, net.config.codebook_size
    offsets = torch.arange(m_count)[:, None] * k_count
    usage = torch.zeros(m_count * k_count)
    for image in tqdm(images, desc="code usage", unit="img", leave=False):
        indices = net.nearest_indices(image)[0].reshape(m_count, -1)
        usage += torch.bincount((indices + offsets).reshape(-1), minlength=m_count * k_count).float()
    usage = usage.view(m_count, k_count)
    usage[guard] = usage[guard].clamp_min(1.0)  # a guard code stays in the alphabet, used or not
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
