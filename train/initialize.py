"""Data-driven initialisation of the block codecs: block PCA, ECVQ codebooks, context tables.

These closed-form steps put a fresh network where gradient training alone takes hours on a
CPU to go: a decorrelating transform (the Karhunen-Loeve transform of P x P colour blocks, with
flat colours on 3 coefficients of their own), codebooks from the entropy-constrained Lloyd
algorithm (Chou, Lookabaugh & Gray 1989) on the projected training latents, and context tables
counted over whole training images.

The images these steps fit are "fitting images": training photographs, saturation-boosted
copies of some of them and synthetic content (:func:`dqcodec.train.data.fitting_images`), since photographs alone
hold few saturated colours and no flat graphics; and before the tables are counted the network
gets guard codes for flat colours (``BlockCodec.guard_codes``), kept through code pruning.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dqcodec.models.block_codec import guard_colours
from dqcodec.models.codec_net import DQCodecNet
from dqcodec.models.lloyd import lloyd, sample_centres
from dqcodec.train.data import FittingImage, load_fitting_image, to_tensor


# Columns: grey, yellow-blue, red-green (orthonormal, in RGB).
OPPONENT_AXES = torch.tensor(
    [[3**-0.5, 6**-0.5, 2**-0.5], [3**-0.5, 6**-0.5, -(2**-0.5)], [3**-0.5, -2 * 6**-0.5, 0.0]], dtype=torch.float64
)


def flat_basis(block: int) -> torch.Tensor:
    """(3 P^2, 3) orthonormal basis of flat blocks (one colour per block), pixel-unshuffle order."""
    basis = torch.zeros(3 * block * block, 3, dtype=torch.float64)
    for channel in range(3):
        basis[channel * block * block : (channel + 1) * block * block, channel] = 1 / block
    return basis


@torch.no_grad()
def block_pca(images: list[FittingImage], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (C,) and principal axes (C, C) of P x P blocks, with flat colours kept apart.

    The first 3 axes span the flat blocks, along the opponent colour axes (``OPPONENT_AXES``):
    grey (equal weights on R, G and B), then yellow-blue and red-green in the order of the
    variance the blocks' mean colours have along them. The other C - 3 are the principal axes
    of what is left of the blocks once their mean colour is removed, by decreasing variance.
    The centre is the flat grey block of the mean value. So a flat block of any colour has
    exactly zero on every axis but the first 3, a grey one on every axis but the first, and the
    other corners of the RGB cube lie far out on the chroma axes (or on zero, like the greys),
    away from the crowd of nearly grey photographs' codes: those 3 codebooks alone decide how
    flat colours come back. (The plain block PCA mixes flat colours into most of its axes,
    where photographs leave a single code; principal chroma axes put some corners near zero,
    where a code of their own loses to the photographs' common ones.)
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
    colour_axes = OPPONENT_AXES[:, :1]
    chroma = OPPONENT_AXES[:, 1:]
    variances = torch.diagonal(chroma.T @ flat.T @ covariance @ flat @ chroma)
    colour_axes = torch.cat([colour_axes, chroma[:, variances.argsort(descending=True)]], dim=1)
    detail = torch.eye(len(mean), dtype=torch.float64) - flat @ flat.T
    _, detail_axes = torch.linalg.eigh(detail @ covariance @ detail)
    # Drop the 3 null directions (the flat ones), re-orthogonalise the rest against them.
    detail_axes = torch.linalg.qr(detail @ detail_axes.flip(1)[:, : len(mean) - 3]).Q
    axes = torch.cat([flat @ colour_axes, detail_axes], dim=1)
    centre = torch.full_like(mean, float(mean.mean()))
    return centre.float(), axes.float()


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


def balanced_groups(num_groups: int, group_size: int) -> list[int]:
    """Axes 0 .. G*S - 1, sorted by falling variance, dealt into G groups of S with similar
    summed log-variance: group g takes the g-th axis from the top, then alternately from the
    bottom and the top of each next band of G axes ("snake" order). Returns the G*S axis numbers,
    group after group.

    Why: a D-dim codebook of K codes resolves about K^(1/D) steps per dimension, so axes of
    widely different variance in one codebook (the block PCA's mean colours with its next axes)
    leave the big one coarse; balanced groups need about the same number of codes each. Measured
    on 8 Kodak images, block PCA of 16 x 16 blocks, 192 axes, D = 4, K = 128, lambda = 0.012:
    23.8 dB at 0.24 bpp (marginal entropy) with consecutive groups, 27.8 dB at 0.35 bpp balanced.
    """
    return [band * num_groups + (group if band % 2 == 0 else num_groups - 1 - group)
            for group in range(num_groups) for band in range(group_size)]


@torch.no_grad()
def set_hdq_block_transform(net, mean: torch.Tensor, axes: torch.Tensor) -> None:
    """Start the hierarchical codec's fine level as a block transform codec: analysis linear
    path = the first C principal axes of 16 x 16 blocks (centred), fine projections = those axes in
    balanced groups (:func:`balanced_groups`), synthesis linear path = the inverse.

    ``mean`` (3*16*16,), ``axes`` (3*16*16, 3*16*16) from :func:`block_pca`; the nonlinear branches
    start at zero (:mod:`dqcodec.models.conv_transforms`), so the network is this linear codec.
    """
    latent = net.config.latent_channels
    quantizer = net.fine_quantizer
    slice_channels = quantizer.out_channels
    if slice_channels > latent:
        raise ValueError(f"num_codebooks * code_dim = {slice_channels} exceeds latent_channels = {latent}")
    kept = axes[:, :latent]
    net.analysis.linear.weight.copy_(kept.T.reshape(latent, -1, 1, 1))
    net.analysis.linear.bias.copy_(-(kept.T @ mean))
    order = balanced_groups(quantizer.num_codebooks, quantizer.code_dim)
    quantizer.projection.weight.zero_()
    quantizer.projection.bias.zero_()
    quantizer.projection.weight[torch.arange(slice_channels), order, 0, 0] = 1.0
    net.synthesis.linear.weight.copy_(kept[:, order].reshape(-1, slice_channels, 1, 1))
    net.synthesis.linear.bias.copy_(mean)


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
    net: DQCodecNet,
    slices: torch.Tensor,
    iterations: int,
    generator: torch.Generator,
    chunk: int = 4096,
    guard: Callable[[], np.ndarray] | None = None,
) -> None:
    """Entropy-constrained Lloyd iterations on (N, M, D) slices; sets codebooks and EMA state.

    Codebook m starts on K distinct random slices ``slices[:, m]``. The first third of the
    iterations are plain k-means (no rate term) so that codes spread over the data before the
    rate term (the quantizer's ``rate_lambda``) starts pruning the expensive ones; see
    :func:`dqcodec.models.lloyd.lloyd`.

    ``guard`` (``BlockCodec.guard_codes``: places guard codes on the quantizer, returns their
    (M, K) mask) runs after the plain k-means, and the guard codes stay where they are through
    the entropy-constrained iterations, which fit the other codes and every code's usage around
    them: a guard code inside the photographs' range then serves the slices nearest to it like
    any other code (the tables price it by that use), instead of being a stranger among codes
    fitted without it. It runs once more at the end, to spread codes into the slots that the
    rate term left free.
    """
    quantizer = net.quantizer
    points = slices.transpose(0, 1).contiguous()  # (M, N, D)
    centres, counts = sample_centres(points, quantizer.codebook_size, generator), None
    plain_iterations = iterations // 3
    if plain_iterations:
        plain = lloyd(points, centres, plain_iterations, chunk=chunk)
        centres, counts = plain.centres, plain.counts
    fixed = None
    if guard is not None:
        quantizer.load_codebooks(centres, counts.clamp_min(1e-3) if counts is not None else quantizer.ema_counts)
        fixed = torch.from_numpy(guard())
        centres, counts = quantizer.codebooks.clone(), quantizer.ema_counts.clone()
        # A guard code enters with a uniform share, so that the rate term prices it by its use.
        counts = torch.where(fixed, counts.clamp_min(float(counts.mean())), counts)
    fit = lloyd(points, centres, iterations - plain_iterations, quantizer.rate_lambda, counts, chunk=chunk, fixed=fixed)
    # Unused codes keep a tiny count: the rate term keeps them out of use, yet they stay valid.
    quantizer.load_codebooks(fit.centres, fit.counts.clamp_min(1e-3))
    if guard is not None:
        guard()


@torch.no_grad()
def code_usage(net, images: list[torch.Tensor]) -> torch.Tensor:
    """(M, K) how often the quantizer's own assignment (``net.nearest_indices``) picks each code
    over (1, 3, H, W) ``images``, in ``net.code_values`` order."""
    m_count, k_count = net.config.num_codebooks, net.config.codebook_size
    offsets = torch.arange(m_count)[:, None] * k_count
    usage = torch.zeros(m_count * k_count)
    for image in tqdm(images, desc="code usage", unit="img", leave=False):
        indices = net.nearest_indices(image)[0].reshape(m_count, -1)
        usage += torch.bincount((indices + offsets).reshape(-1), minlength=m_count * k_count).float()
    return usage.view(m_count, k_count)


def guard_indices(net, width: int = 32, height: int = 2) -> np.ndarray:
    """(G, M, height, width) indices of flat areas of each guard colour (``guard_colours``), every
    block on the code nearest to the colour's slice (its guard code), in the current code order."""
    values = net.code_values()  # (M, K, D)
    sizes = net.entropy.alphabet_sizes.tolist()
    slices = net.flat_slices(guard_colours())  # (M, G, D)
    nearest = np.stack([((slices[m][:, None] - values[m, :size][None]) ** 2).sum(-1).argmin(1)
                        for m, size in enumerate(sizes)], axis=1)  # (G, M)
    return np.ascontiguousarray(np.broadcast_to(nearest[:, :, None, None], (*nearest.shape, height, width)))


@torch.no_grad()
def fit_entropy_tables(
    net, images: list[FittingImage], rounds: int = 2, guard_error: float = 3.0, guard_share: float = 0.05
) -> None:
    """Anchor flat colours, place guard codes, sort codes by usage (dropping unused ones but
    never a guard code), then count the context tables over whole fitting images and flat areas
    of the guard colours.

    ``net`` is a block codec network (DQ or SHVQ: ``anchor_flat_colours``, ``guard_codes``,
    ``nearest_indices``, ``sort_codes``, ``code_values``, ``compress``); ``guard_error`` the
    spacing of its guard codes, in 8-bit code values of pixel error per codebook. Round 1
    counts its quantizer's own indices; each later round counts the indices that
    ``net.compress`` chooses with the previous round's tables, since the rate-distortion
    choice shifts the statistics the tables must describe.

    Flat areas of every guard colour (:func:`guard_indices`), on their guard codes, are counted
    too, often enough to make ``guard_share`` of all the blocks counted: photographs seldom
    reach a guard code, and where the tables price it like one they never use, the greedy
    encoder (``choose_indices``) prefers a common code nearby, and a flat area of that colour
    keeps the wrong code from its first block to its last.
    """
    net.anchor_flat_colours()
    images = [to_tensor(load_fitting_image(image, net.config.block)) for image in images]
    guard = torch.from_numpy(net.guard_codes(guard_error / 255, code_usage(net, images).numpy()))
    usage = code_usage(net, images)  # again: guard codes took free slots
    usage[guard] = usage[guard].clamp_min(1.0)  # a guard code stays in the alphabet, used or not
    net.sort_codes(usage)
    usage = usage.sort(dim=1, descending=True).values
    net.entropy.set_codes(torch.from_numpy(net.code_values()).float(), usage)
    flat_areas = guard_indices(net)
    blocks = sum(image.shape[2] * image.shape[3] for image in images) // net.config.block**2
    repeats = int(np.ceil(guard_share / (1 - guard_share) * blocks / np.prod(flat_areas.shape[2:]) / len(flat_areas)))
    for round_index in range(rounds):

        def index_batches():
            for image in tqdm(images, desc=f"context tables {round_index + 1}/{rounds}", unit="img", leave=False):
                if round_index == 0:
                    yield net.nearest_indices(image).numpy(), {}
                else:
                    yield net.compress(image)[0].indices, {}
            for _ in range(repeats if guard_share > 0 else 0):
                yield flat_areas, {}

        net.entropy.fit(index_batches())
