"""Training recipes: the architecture-specific parts that the one training loop is given.

A recipe names an architecture of the registry (``dqcodec.models.registry.ARCHITECTURES``) and
says how to start a fresh network (``initialise``), what to do before each step (``before_step``,
e.g. anneal SHVQ's hardness), how to finish it for export (``finish``, e.g. count the context
tables) and what its rate estimate is; a recipe that trains on something other than random crops
of image files, or on another loss than rate-distortion, says so too (``data``, ``loss``: the
DQ-AE likelihood model). Its ``options`` dataclass holds the settings that are not part of the
architecture (initialisation sizes, schedules); ``dqcodec train --arch NAME`` builds
its command-line options from that dataclass, the architecture's config and
:class:`~dqcodec.train.loop.LoopConfig`. Fields marked ``init_only`` act only on a fresh start.
"""

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dqcodec.models.block_runtime import guard_colours
from dqcodec.models.flat_blocks import flat_block_symbols
from dqcodec.models.hdq_levels import FINE_STRIDE
from dqcodec.models.image_lambda import typical_distortion
from dqcodec.models.interface import IndexLevel
from dqcodec.models.lloyd import LloydResult, kmeans_plus_plus, lloyd, nearest_codes, sample_centres
from dqcodec.models.quantizers import slice_vectors
from dqcodec.paths import data_dir
from dqcodec.train.data import ImageFolder, RandomCrops, fitting_images, load_fitting_image, to_tensor
from dqcodec.train.initialize import (
    block_pca,
    ecvq_codebooks,
    fit_entropy_tables,
    sample_slices,
    set_block_transform,
    set_hdq_block_transform,
)
from dqcodec.train.likelihood_data import DATASETS, likelihood_training_data
from dqcodec.train.widen import check_widening, narrow_config, widen_family


def option(default, help: str, init_only: bool = False, flag: str | None = None, choices: tuple | None = None):
    """A dataclass field that becomes a ``dqcodec train`` option (``--name-with-dashes`` or ``flag``)."""
    return field(default=default, metadata={"help": help, "init_only": init_only, "flag": flag, "choices": choices})


def _nothing(*_args) -> None:
    return None


def _config_summary(config) -> str:
    return ", ".join(f"{item.name}={getattr(config, item.name)}" for item in fields(config))


def _image_folder(_options, loop) -> ImageFolder:
    return ImageFolder(loop.data)


@dataclass(frozen=True)
class Recipe:
    """How to train one architecture with :func:`dqcodec.train.loop.train`.

    initialise(net, options, files, generator, log): set a fresh network's weights from the data.
    adapt(net, options, files, generator, log, changed): fit what the config fields ``changed``
        (e.g. a new lambda) invalidate in a network started from a model (``--init-from``).
    before_step(net, options, step, total_steps, fresh): called before every optimisation step;
        ``fresh`` is False for a run that started from a model (``--init-from``).
    finish(net, options, files): prepare the trained network for export (integer tables).
    describe(net, options, steps) -> str: the recipe of a fresh start, one paragraph, for the
        model's JSON (a run that starts from a model says so instead, see ``loop.export``).
    summarize(config) -> str: one line for ``dqcodec models``.
    loop_defaults: LoopConfig fields whose default differs for this architecture.
    data(options, loop) -> the training data (``files``, ``describe()``, ``batches(crop,
        batch_size, generator)``; see :class:`~dqcodec.train.data.ImageFolder`); by default
        random crops of the images under ``--data``.
    loss(out, batch) -> (loss, SSE): the training loss of a pass and its squared error (summed,
        [0, 1] RGB values, for the log); None: the loop's rate-distortion loss with the
        network's ``rate_lambda``.
    config_defaults(options) -> dict: config fields that the options imply, used where the
        command line does not give them (hdq-family: those of the ``--start-levels`` levels).
    export_levels(net) -> the networks ``--export NAME --quality Q`` writes, as NAME-q<Q>,
        NAME-q<Q+1>, ... (``finish``, ``describe`` and ``summarize`` see each of them); None: the
        trained network itself, as NAME.
    """

    architecture: str
    options: type
    initialise: Callable
    finish: Callable
    describe: Callable
    estimate: str  # what CodecOutput.bits is, for the log
    adapt: Callable = _nothing
    before_step: Callable = _nothing
    summarize: Callable = _config_summary
    loop_defaults: dict = field(default_factory=dict)
    mutable: tuple[str, ...] = ("rate_lambda",)  # config fields --init-from may change (net.set_<field>)
    data: Callable = _image_folder
    loss: Callable | None = None
    config_defaults: Callable = lambda _options: {}
    export_levels: Callable | None = None


# --- what the block codecs (DQ, SHVQ) share -----------------------------------------------------

SYNTHETIC_SHARE = 0.1
SYNTHETIC_SHARE_HELP = (
    "mix saturation-boosted copies of this share of the training photos, and about as many synthetic images "
    "(flat colours, saturated gradients, text, screenshots), into the images that fit the transform, codebooks "
    "and context tables (0: photographs only)"
)
GUARD_ERROR = 3.0
GUARD_ERROR_HELP = "spacing of the guard codes that keep flat colours reproducible, in 8-bit code values of pixel error"


def _fitting_note(options) -> str:
    if options.synthetic_share <= 0:
        return "photographs only"
    return (f"fitted on the photographs plus saturation-boosted (x2) copies of {options.synthetic_share:.0%} of them "
            "and synthetic content (flat colours, gradients, text, screenshots)")


# --- DQ block codec ---------------------------------------------------------------------------


@dataclass
class DQOptions:
    """Initialisation of a DQ block codec: block PCA, then entropy-constrained Lloyd codebooks."""

    init_samples: int = option(60_000, "latent blocks sampled for the ECVQ initialisation", init_only=True)
    ecvq_iterations: int = option(15, "entropy-constrained Lloyd iterations", init_only=True)
    synthetic_share: float = option(SYNTHETIC_SHARE, SYNTHETIC_SHARE_HELP)
    guard_error: float = option(GUARD_ERROR, GUARD_ERROR_HELP)


def _initialise_dq(net: nn.Module, options: DQOptions, files: list[Path], generator: torch.Generator, log) -> None:
    images = fitting_images(files, options.synthetic_share)
    mean, axes = block_pca(images, net.config.block)
    set_block_transform(net, mean, axes)
    slices = sample_slices(net, images, options.init_samples, generator)
    guard = partial(net.guard_codes, options.guard_error / 255)
    ecvq_codebooks(net, slices, options.ecvq_iterations, generator, guard=guard)
    log("initialised: block PCA with flat colours apart, ECVQ codebooks, guard codes")


def _describe_dq(net: nn.Module, options: DQOptions, steps: int) -> str:
    return (
        f"block PCA with flat colours on 3 opponent-colour axes of their own; {options.ecvq_iterations} "
        f"entropy-constrained Lloyd iterations on {options.init_samples} blocks; {steps} Adam steps; guard codes for "
        f"flat colours ({options.guard_error} code values apart); context tables counted over the training images "
        "in 2 rounds; "
        f"{_fitting_note(options)}"
    )


# --- SHVQ block codec -------------------------------------------------------------------------


@dataclass
class SHVQOptions:
    """The soft-to-hard VQ paper's order: unquantized autoencoder (block PCA), then centres by
    k-means and soft-to-hard training of the centres with sigma annealed geometrically."""

    kmeans_blocks: int = option(20_000, "training blocks whose latents refine the centre grid", init_only=True)
    kmeans_iterations: int = option(10, "k-means iterations from the uniform grid", init_only=True)
    sigma_start: float = option(2.0, "soft assignment hardness at the first step (latents in units of the step)")
    sigma_end: float = option(200.0, "hardness at the last step (geometric schedule)")
    synthetic_share: float = option(SYNTHETIC_SHARE, SYNTHETIC_SHARE_HELP)
    guard_error: float = option(GUARD_ERROR, GUARD_ERROR_HELP)


def shvq_step_size(rate_lambda: float) -> float:
    """Delta = sqrt(6 lambda / ln 2): uniform quantization with ideal entropy coding has
    D = Delta^2 / 12 per coefficient and dD/dR = -(2 ln 2) D, which equals -lambda here."""
    return math.sqrt(6 * rate_lambda / math.log(2))


@torch.no_grad()
def _initialise_shvq(net: nn.Module, options: SHVQOptions, files: list[Path], generator: torch.Generator, log) -> None:
    """Stage 1 (block PCA) and the start of stage 2 (step Delta, centres by k-means from a grid)."""
    config = net.config
    images = fitting_images(files, options.synthetic_share)
    mean, axes = block_pca(images, config.block)
    delta = shvq_step_size(config.rate_lambda)
    channels = config.channels
    net.analysis.linear.weight.copy_((axes.T / delta).reshape(channels, channels, 1, 1))
    net.analysis.linear.bias.copy_(-(axes.T @ mean) / delta)
    net.synthesis.linear.weight.copy_((axes * delta).reshape(channels, channels, 1, 1))
    net.synthesis.linear.bias.copy_(mean)
    latents = []
    per_image = options.kmeans_blocks // len(images) + 1
    for image in tqdm(images, desc="sampling latents", unit="img", leave=False):
        blocks = net.analysis(to_tensor(load_fitting_image(image, config.block)))[0].flatten(1)  # (C, N)
        latents.append(blocks[:, torch.randperm(blocks.shape[1], generator=generator)[:per_image]])
    latents = torch.cat(latents, dim=1)[None, :, :, None]  # (1, C, N, 1)
    grid = torch.arange(config.num_centres, dtype=torch.float32)[:, None] - config.num_centres // 2
    net.quantizer.init_centres_kmeans(latents, options.kmeans_iterations, start=grid)
    log(f"initialised: block PCA with flat colours apart, step {delta:.4f}, k-means centres")


def _anneal_shvq(net: nn.Module, options: SHVQOptions, step: int, total_steps: int, fresh: bool) -> None:
    growth = (options.sigma_end / options.sigma_start) ** (1 / max(total_steps - 1, 1))
    net.quantizer.sigma_init, net.quantizer.sigma_growth = options.sigma_start, growth
    net.quantizer.anneal(step)
    # Stage 2 trains the centres only: the block transform keeps flat colours on its first 3
    # channels (and greys on the first), where a few guard centres hold them exactly; trained
    # too, it lets them leak into every channel, more values than the shared centres can hold.
    net.analysis.requires_grad_(False)
    net.synthesis.requires_grad_(False)


def _describe_shvq(net: nn.Module, options: SHVQOptions, steps: int) -> str:
    return (
        "stage 1: block PCA with flat colours on 3 opponent-colour axes of their own (closed-form optimum of the "
        f"unquantized linear autoencoder under that constraint); stage 2: step "
        f"{shvq_step_size(net.config.rate_lambda):.4f}, {net.config.num_centres} shared centres by "
        f"{options.kmeans_iterations} k-means iterations from a uniform grid, {steps} Adam steps of the centres on "
        f"(SSE + lambda * soft entropy) with sigma {options.sigma_start} -> {options.sigma_end}; synthesis anchored "
        f"on flat colours, guard codes ({options.guard_error} code values apart), context tables counted over the "
        f"training images in 2 rounds; {_fitting_note(options)}"
    )


def _fit_tables(net: nn.Module, options, files: list[Path]) -> None:
    fit_entropy_tables(net, fitting_images(files, options.synthetic_share), guard_error=options.guard_error)


# --- hierarchical DQ codec ---------------------------------------------------------------------


@dataclass
class HDQOptions:
    """Start, gain tracking and table fit of the hierarchical DQ codec (``--arch hdq``)."""

    init_crops: int = option(
        256, "training crops whose 16 x 16 blocks give the block PCA and seed the codebooks (also the crops the "
        "fine codebooks are refitted on when --init-from comes with a new --lambda or --codebook-size)"
    )
    ecvq_iterations: int = option(15, "Lloyd iterations of the fine codebooks (the first third without rate)")
    gain_every: int = option(25, "steps between measurements of the synthesis gains (lambda in latent units)")
    table_crops: int = option(192, "training crops the context tables are counted over at export")
    table_backoff: int = option(64, "contexts seen fewer times than this in those crops take their codebook's table")
    fit_crop: int = option(256, "size in pixels of the crops that start the network and count the tables")
    synthetic_share: float = option(
        SYNTHETIC_SHARE, "mix saturation-boosted copies of this share of the training photos, and about as many "
        "synthetic images (flat colours, saturated gradients, text, screenshots), into the training crops and the "
        "crops that start the network and count the tables (0: photographs only)"
    )


GAIN_KEPT = 0.9  # share of the old synthesis gains kept when they are re-measured


def _crops(files: list[Path], options: HDQOptions, count: int, seed: int) -> torch.Tensor:
    """(count, 3, fit_crop, fit_crop) random crops of ``files`` and, by ``options.synthetic_share``,
    of saturation-boosted and synthetic images (reproducible for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    images = [load_fitting_image(image) for image in fitting_images(files, options.synthetic_share)]
    return RandomCrops(images, options.fit_crop, count, generator).batch()


def _init_crops(files: list[Path], options: HDQOptions, generator: torch.Generator) -> torch.Tensor:
    """``options.init_crops`` crops of ``_crops`` on a seed drawn from ``generator`` (to start or widen a network)."""
    return _crops(files, options, options.init_crops, int(torch.randint(0, 2**31, (1,), generator=generator)))


def _hdq_data(options: HDQOptions, loop) -> ImageFolder:
    return ImageFolder(loop.data, options.synthetic_share)


@torch.no_grad()
def _initialise_hdq(net: nn.Module, options: HDQOptions, files: list[Path], generator: torch.Generator, log) -> None:
    """A block transform codec to start from: block PCA of 16 x 16 blocks in the linear paths (the
    nonlinear branches start at zero), fine codebooks by entropy-constrained Lloyd iterations on
    the projected crops, coarse codebooks by k-means++ on the coarse latents."""
    crops = _init_crops(files, options, generator)
    pixels = list((crops * 255).round().byte().permute(0, 2, 3, 1).numpy())
    set_hdq_block_transform(net, *block_pca(pixels, 16))
    latent = torch.cat([net.analysis(batch) for batch in crops.split(16)])
    coarse = net.coarse_quantizer
    coarse_points = _slice_points(coarse, torch.cat([net.coarse_analysis(part) for part in latent.split(16)]))
    seeds = torch.stack([kmeans_plus_plus(points, coarse.codebook_size, generator) for points in coarse_points])
    coarse.load_codebooks(seeds, torch.full_like(coarse.ema_counts, 1.0 / coarse.codebook_size))
    fine = net.fine_quantizer
    fine_points = _slice_points(fine, latent)
    start = sample_centres(fine_points, fine.codebook_size, generator)
    fine.load_codebooks(start, torch.full_like(fine.ema_counts, 1.0 / fine.codebook_size))
    net.eval()  # no codebook update on the gain measurement
    net.gain_update = 0.0
    net(crops[:8])
    used = _fit_fine_codebooks(fine, net.rate_lambdas()[0], options, fine_points, start)
    log(f"initialised: block PCA of 16 x 16 blocks on {len(crops)} crops, fine codebooks by ECVQ (mean {used:.0f} "
        f"codes in use), synthesis gains {net.synthesis_gains[0]:.3g} (fine), {net.synthesis_gains[1]:.3g} (coarse)")


def _fit_fine_codebooks(quantizer, latent_lambda: float, options: HDQOptions, points: torch.Tensor,
                        start: torch.Tensor) -> float:
    """Fit a fine quantizer's codebooks to (M, N, D) ``points`` from (M, K, D) ``start`` by Lloyd
    iterations, the first third plain, the rest entropy-constrained at ``latent_lambda`` (latent
    units, ``net.rate_lambdas()``); returns the mean number of codes in use."""
    fitted = _ecvq_fit(points, start, latent_lambda, options)
    # Unused codes keep a tiny count: the rate term keeps them out of use, yet they stay valid.
    quantizer.load_codebooks(fitted.centres, fitted.counts.clamp_min(1e-3))
    return (fitted.counts > 0).sum(dim=1).float().mean().item()


def _ecvq_fit(points: torch.Tensor, start: torch.Tensor, latent_lambda: float, options: HDQOptions) -> LloydResult:
    """Lloyd iterations on (M, N, D) ``points`` from (M, K, D) ``start``, the first third plain,
    the rest entropy-constrained at ``latent_lambda`` (latent units)."""
    plain = lloyd(points, start, options.ecvq_iterations // 3, chunk=8192)
    return lloyd(points, plain.centres, options.ecvq_iterations - options.ecvq_iterations // 3,
                 latent_lambda, plain.counts.clamp_min(1e-3), chunk=8192)


@torch.no_grad()
def _adapt_hdq(net: nn.Module, options: HDQOptions, files: list[Path], generator: torch.Generator, log,
               changed: tuple[str, ...]) -> None:
    """A model started with a new lambda or codebook size (``--init-from``): its fine codebooks
    are fitted anew, by the Lloyd iterations of a fresh start, on its own latents of
    ``init_crops`` training crops. This makes another rate level from a trained network in
    minutes: its transforms serve other rates better than a block start does. (``changed`` is
    within the recipe's ``mutable`` fields, both of which call for new codebooks.)"""
    net.eval()
    crops = _init_crops(files, options, generator)
    latent = torch.cat([net.analysis(batch) for batch in crops.split(16)])
    points = _slice_points(net.fine_quantizer, latent)
    used = _fit_fine_codebooks(net.fine_quantizer, net.rate_lambdas()[0], options, points,
                               sample_centres(points, net.config.codebook_size, generator))
    log(f"fine codebooks fitted anew for lambda {net.config.rate_lambda}, K {net.config.codebook_size} on "
        f"{len(crops)} crops (mean {used:.0f} codes in use)")


def _slice_points(quantizer, features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features -> (M, B*h*w, D) the vectors each codebook quantizes."""
    return slice_vectors(quantizer.project(features))


def _before_hdq_step(net: nn.Module, options: HDQOptions, step: int, total_steps: int, fresh: bool) -> None:
    """Re-measure the synthesis gains (lambda in latent units) every ``gain_every`` steps."""
    net.gain_update = GAIN_KEPT if step % options.gain_every == 0 else None


@torch.no_grad()
def _fit_hdq_tables(net: nn.Module, options: HDQOptions, files: list[Path]) -> None:
    """Give the fine level guard codes for flat colours, sort both levels' codes by usage (dropping
    unused ones but never a guard code), then count the context tables over training crops in 2 rounds
    (the quantizers' own indices, then the indices that ``net.choose_levels`` chooses under the first
    round's tables) and, in each round, over a flat 64 x 64 area of every guard colour on its
    nearest codes: photographs seldom reach a guard code, and tables that price it like one
    they never use would make the encoder trade a flat colour for a common code nearby. Small
    areas, so as not to move photographs' rates: on the first 6 Kodak images (tables from 96
    crops, two checkpoints of a training run), guard codes with 64-pixel areas changed the rate
    by -0.07 % and +0.4 % (PSNR -0.007 and -0.006 dB) against none; 128-pixel areas by +0.5 %."""
    crops = _crops(files, options, options.table_crops, seed=0).split(8)
    # Each crop's latent once, for the four passes below (they change codes, not the network).
    # When each pass ran the analysis again, a refit over 1 536 crops on one thread took 8.3
    # minutes for hdq-q1 and 9.6 for hdq-q4; now 3.5 and 4.2, with the same Kodak rates.
    latents = [net.analyse(batch) for batch in tqdm(crops, desc="analysis", unit="batch", leave=False)]
    colours = guard_colours()
    quantizers = {"coarse": net.coarse_quantizer, "fine": net.fine_quantizer}
    guard = net.guard_codes(colours, _code_usage(net, latents)["fine"])
    usage = _code_usage(net, latents)  # again: guard codes took free slots
    usage["fine"][guard] = usage["fine"][guard].clamp_min(1.0)  # a guard code stays, used or not
    for name, quantizer in quantizers.items():
        quantizer.prune(usage[name])
        usage[name] = usage[name].sort(dim=1, descending=True).values
    net.coarse_entropy.set_codes(net.coarse_quantizer.codebooks, usage["coarse"])
    net.fine_entropy.set_codes(net.fine_quantizer.codebooks, usage["fine"])
    net.fine_entropy.set_coarse_codes(net.coarse_quantizer.codebooks, usage["coarse"])
    flat_areas = _flat_area_indices(net, colours, net.padding_multiple)
    for round_index in range(2):
        levels = [{level.name: level.indices for level in (net.nearest_indices(latent) if round_index == 0
                                                           else net.choose_levels(batch, latent=latent)[0])}
                  for batch, latent in tqdm(list(zip(crops, latents)), desc=f"context tables {round_index + 1}/2",
                                            unit="batch", leave=False)]
        if round_index == 0:  # the second round's codes are the encoder's, at each crop's image lambda
            coarse = [level["coarse"] for level in levels]
            net.config.distortion_reference = _typical_first_guess_error(net, crops, latents, coarse)
        levels.append({level.name: level.indices for level in flat_areas})
        net.coarse_entropy.fit(((level["coarse"], {}) for level in levels), backoff=options.table_backoff)
        net.fine_entropy.fit(((level["fine"], {"coarse": level["coarse"]}) for level in levels),
                             backoff=options.table_backoff)
    if net.refinement is not None:
        _fit_refinement(net, options, crops, latents)


@torch.no_grad()
def _typical_first_guess_error(net: nn.Module, crops: list[torch.Tensor], latents: list[torch.Tensor],
                               coarse: list[np.ndarray]) -> float:
    """The level's ``distortion_reference`` (:mod:`~dqcodec.models.image_lambda`): the median
    first-guess mean squared error of the table crops, each first guess decoded with the crop's
    ``coarse`` indices as the quantizer chose them."""
    errors = []
    for batch, latent, batch_coarse in zip(crops, latents, coarse):
        residual = net.first_guess_residual(batch, latent, batch_coarse, flat_block_symbols(batch.numpy(), FINE_STRIDE))
        errors.append(residual.double().square().mean(dim=(1, 2, 3)).numpy())
    return typical_distortion(np.concatenate(errors))


@torch.no_grad()
def _fit_refinement(net: nn.Module, options: HDQOptions, crops: list[torch.Tensor], latents: list[torch.Tensor]) -> None:
    """The refinement level (:mod:`~dqcodec.models.refinement`) of the table crops' fine indices
    chosen under the fine tables just counted: codes by ``options.ecvq_iterations`` Lloyd
    iterations on the residuals (the first third plain, the rest entropy-constrained at the fine
    level's lambda; code 0 held at zero), sorted by use; the fine codes' cell buckets from their
    mean squared residual; then the tables, counted in 2 rounds as the fine level's (indices by
    the codes' training shares, then those ``net.choose_refinement`` chooses under the first round's)."""
    refinement, quantizer = net.refinement, net.fine_quantizer
    fine_levels, slices, coding_weights, residuals = [], [], [], []
    for batch, latent in tqdm(list(zip(crops, latents)), desc="refinement residuals", unit="batch", leave=False):
        levels, fine_slices, weights = net.choose_levels(batch, latent=latent)
        fine = {level.name: level.indices for level in levels}["fine"]
        fine_levels.append(fine)
        slices.append(fine_slices)
        coding_weights.append(weights)
        residuals.append(slices[-1] - quantizer.lookup(torch.from_numpy(fine)))
    points = torch.cat([slice_vectors(residual) for residual in residuals], dim=1)  # (M, N, D)
    fine_codes = torch.cat([torch.from_numpy(fine).permute(1, 0, 2, 3).reshape(len(points), -1) for fine in fine_levels], 1)
    start = sample_centres(points, refinement.codebooks.shape[1], torch.Generator().manual_seed(0))
    start[:, 0] = 0
    fixed = torch.zeros(start.shape[:2], dtype=torch.bool)
    fixed[:, 0] = True
    fine_lambda = net.rate_lambdas()[0]
    plain = lloyd(points, start, options.ecvq_iterations // 3, chunk=8192, fixed=fixed)
    fitted = lloyd(points, plain.centres, options.ecvq_iterations - options.ecvq_iterations // 3, fine_lambda,
                   plain.counts.clamp_min(1e-3), chunk=8192, fixed=fixed)
    # Code 0 stays the zero vector (the contexts count the codes other than 0 as refined), the
    # rest sorted by use; it stays in the alphabet even where no residual took it.
    counts = torch.cat([fitted.counts[:, :1].clamp_min(1.0), fitted.counts[:, 1:]], dim=1)
    order = torch.cat([torch.zeros_like(counts[:, :1], dtype=torch.long),
                       1 + counts[:, 1:].argsort(dim=1, descending=True, stable=True)], dim=1)
    codes = fitted.centres.gather(1, order[..., None].expand(-1, -1, points.shape[2]))
    usage = counts.gather(1, order)
    refinement.codebooks.copy_(codes)
    refinement.entropy.set_codes(codes, usage)
    # (M, K_fine) use and summed squared residual of every fine code.
    fine_usage = torch.zeros_like(quantizer.ema_counts).scatter_add_(1, fine_codes, torch.ones_like(points[..., 0]))
    power = torch.zeros_like(fine_usage).scatter_add_(1, fine_codes, points.pow(2).sum(-1))
    refinement.entropy.set_cell_buckets(power / fine_usage.clamp_min(1), fine_usage)
    code_cost = -fine_lambda * torch.log2((usage / usage.sum(dim=1, keepdim=True)).clamp_min(1e-12))
    code_cost = code_cost.masked_fill(usage <= 0, float("inf"))
    for round_index in range(2):
        batches = []
        for weights, batch_slices, fine, residual in zip(coding_weights, slices, fine_levels, residuals):
            if round_index == 0:
                b, m, _, h, w = residual.shape
                chosen, _ = nearest_codes(slice_vectors(residual), codes, code_cost)
                refine = chosen.view(m, b, h, w).transpose(0, 1).numpy()
            else:
                refine, _ = net.choose_refinement(weights, batch_slices.double().numpy(), fine, fine_lambda)
            batches.append((refine, {"fine": fine}))
        refinement.entropy.fit(batches, backoff=options.table_backoff)


def _code_usage(net: nn.Module, latents: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per level (M, K) counts of the quantizers' own choices (``net.nearest_indices``) for the
    fine ``latents`` of the table crops."""
    usage = {"coarse": torch.zeros_like(net.coarse_quantizer.ema_counts), "fine": torch.zeros_like(net.fine_quantizer.ema_counts)}
    for latent in tqdm(latents, desc="code usage", unit="batch", leave=False):
        for level in net.nearest_indices(latent):
            indices = torch.from_numpy(level.indices).transpose(0, 1).reshape(len(usage[level.name]), -1)
            usage[level.name].scatter_add_(1, indices, torch.ones_like(indices, dtype=usage[level.name].dtype))
    return usage


def _flat_area_indices(net: nn.Module, colours, size: int) -> list[IndexLevel]:
    """Coarse and fine indices of flat ``size`` x ``size`` images of ``colours`` (G, 3), each
    slice on its nearest code in use (no rate term: the guard codes)."""
    latent = net.analysis(torch.from_numpy(colours).float()[:, :, None, None].expand(-1, -1, size, size))
    coarse, fine = net.coarse_quantizer, net.fine_quantizer
    return [IndexLevel("coarse", coarse.assign(coarse.project(net.coarse_analysis(latent)), rate_lambda=0.0).numpy()),
            IndexLevel("fine", fine.assign(fine.project(latent), rate_lambda=0.0).numpy())]


def _describe_hdq(net: nn.Module, options: HDQOptions, steps: int) -> str:
    return (
        f"block start: block PCA of 16 x 16 blocks on {options.init_crops} crops of {options.fit_crop} px in the linear "
        f"paths (nonlinear branches at zero), fine codebooks by {options.ecvq_iterations} Lloyd iterations (entropy-"
        f"constrained after the first third), coarse codebooks by k-means++; {steps} Adam steps on (SSE + lambda * "
        f"marginal bits) {_hdq_steps_and_tables(options)}"
    )


def _hdq_steps_and_tables(options: HDQOptions) -> str:
    return (
        f"with straight-through EMA codebooks, ECVQ assignment of the fine level (lambda in latent units from synthesis "
        f"gains measured every {options.gain_every} steps) and nearest-code assignment of the coarse level; context "
        f"tables counted over {options.table_crops} crops of {options.fit_crop} px in 2 rounds, contexts seen fewer than "
        f"{options.table_backoff} times backed off to their codebook's table; {_fitting_note(options)}"
    )


def _summarize_hdq(config) -> str:
    return (f"hierarchical DQ codec, fine M={config.num_codebooks} K={config.codebook_size} D={config.code_dim} (stride 16), "
            f"coarse M={config.coarse_codebooks} K={config.coarse_codebook_size} (stride 64), lambda={config.rate_lambda}")


# --- a family of hdq levels trained jointly ------------------------------------------------------


@dataclass
class HDQFamilyOptions(HDQOptions):
    """hdq's options, plus where a family starts (``--arch hdq-family``)."""

    start_levels: str = option(
        "", "folder of hdq models (e.g. models/weights, the shipped levels) to start from, one per level in quality order, sharing their "
        "transforms; the family's architecture and --rate-levels default to theirs; given more --latent-channels and "
        "--num-codebooks than they have, the family starts as them widened (default: a block start, as --arch hdq)",
        init_only=True,
    )


@torch.no_grad()
def _initialise_family(net: nn.Module, options: HDQFamilyOptions, files: list[Path], generator: torch.Generator,
                       log) -> None:
    """From the levels in ``options.start_levels``; else hdq's block start for level 0 (its
    projection is every level's), and each other level's codebooks fitted by the same Lloyd
    iterations on the block start's latents at its own lambda."""
    if options.start_levels:
        loaded = _load_family_levels(net, Path(options.start_levels))
        log(f"initialised: {net.num_levels} levels from {options.start_levels}")
        if loaded is not net:
            crops = _init_crops(files, options, generator)
            log(widen_family(loaded, net, crops, partial(_ecvq_fit, options=options), generator))
        return
    _initialise_hdq(net.body, options, files, generator, log)
    crops = _init_crops(files, options, generator)
    latent = torch.cat([net.body.analysis(batch) for batch in crops.split(16)])
    points = _slice_points(net.body.fine_quantizer, latent)
    for index in range(1, net.num_levels):
        level = net.level_configs[index]
        used = _fit_fine_codebooks(net.fine_quantizer(index), net.body.rate_lambdas(level.rate_lambda)[0], options, points,
                                   sample_centres(points, level.codebook_size, generator))
        log(f"level {index + 1}: fine codebooks fitted for lambda {level.rate_lambda}, K {level.codebook_size} "
            f"(mean {used:.0f} codes in use)")


def _level_infos(folder: Path) -> list[dict]:
    """The JSON of each hdq model in ``folder``, in quality order."""
    infos = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    return sorted((info for info in infos if info.get("architecture") == "HierarchicalDQCodec"),
                  key=lambda info: info.get("quality", 0))


def _start_levels_config(options: HDQFamilyOptions) -> dict:
    """The family config of the levels in ``--start-levels``: their shared fields, and their
    LAMBDA:K in quality order as ``--rate-levels`` (empty without ``--start-levels``)."""
    from dqcodec.models.hdq_family import HDQFamilyConfig

    infos = _level_infos(Path(options.start_levels)) if options.start_levels else []
    if not infos:
        return {}
    names = {item.name for item in fields(HDQFamilyConfig)}
    shared = {key: value for key, value in infos[0]["config"].items() if key in names}
    levels = ",".join(f"{info['config']['rate_lambda']}:{info['config']['codebook_size']}" for info in infos)
    return {**shared, "rate_levels": levels}


def _load_family_levels(net: nn.Module, folder: Path) -> nn.Module:
    """Load the hdq models in ``folder`` (quality order) into ``net``, or, when they have fewer
    fine latent channels and codebooks than ``net`` (and are otherwise its levels), into a
    narrower family to widen into ``net`` (:mod:`dqcodec.train.widen`); returns the family they
    were loaded into: the shared tensors from the first, each level's fine quantizer from its
    own. Raises DQCodecError (one line) when they are not ``net``'s levels or do not share their
    transforms."""
    from dqcodec.codec.errors import DQCodecError
    from dqcodec.models.hdq_family import HDQFamily, level_architecture
    from dqcodec.models.registry import ARCHITECTURES
    from dqcodec.train.checkpoint import load_hdq_without_tables

    stems = [folder / info["name"] for info in _level_infos(folder)]
    if len(stems) != net.num_levels:
        raise DQCodecError(f"--start-levels {folder}: {len(stems)} hdq models, the family has {net.num_levels} levels")
    # Without their tables: the export counts them anew, and levels saved before the entropy
    # model last changed still start a family.
    levels = [load_hdq_without_tables(stem, f"--start-levels {stem}", "a family starts from hdq levels")[0]
              for stem in stems]
    if level_architecture(levels[0].config) != level_architecture(net.level_configs[0]):
        try:
            check_widening(levels[0].config, net.config)
        except ValueError as error:
            raise DQCodecError(f"--start-levels {stems[0]}: {error}") from None
        net = HDQFamily(narrow_config(net.config, levels[0].config))
    for stem, level, wanted in zip(stems, levels, net.level_configs):
        if level_architecture(level.config) != level_architecture(wanted):
            raise DQCodecError(f"--start-levels {stem}: its config {asdict(level.config)} is not the family's level "
                               f"{asdict(wanted)}")
    first = levels[0].state_dict()
    shared = ARCHITECTURES["HierarchicalDQCodec"].shareable
    for stem, level in zip(stems[1:], levels[1:]):
        if any(not torch.equal(first[key], value) for key, value in level.state_dict().items() if key.startswith(shared)):
            raise DQCodecError(f"--start-levels {stem}: its transforms are not those of {stems[0]}")
    net.body.load_state_dict(first)
    for index, level in enumerate(levels[1:], start=1):
        net.fine_quantizer(index).load_state_dict({key: value for key, value in level.fine_quantizer.state_dict().items()
                                                   if not key.startswith("projection.")})
    return net


def _before_family_step(net: nn.Module, options: HDQFamilyOptions, step: int, total_steps: int, fresh: bool) -> None:
    _before_hdq_step(net.body, options, step, total_steps, fresh)


def _family_loss(out, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, SSE): as the loop's rate-distortion loss, each image's bits charged at its level's lambda."""
    pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
    sse = ((out.reconstruction.float() - batch) ** 2).sum()
    return (sse + (out.rate_lambdas * out.bits.float()).sum()) / pixels + out.quantizer_loss.float(), sse


def _describe_family(net: nn.Module, options: HDQFamilyOptions, steps: int) -> str:
    start = (f"started from the levels in {options.start_levels}" if options.start_levels
             else "started as --arch hdq's block start, each level's fine codebooks fitted at its lambda")
    return (f"a level of a family trained jointly (--arch hdq-family): {start}; {steps} Adam steps on (SSE + lambda * "
            "marginal bits) with each batch split into equal parts, one per level, each quantized by its level's fine "
            f"quantizer and charged its bits at its lambda, through the shared transforms and coarse level, "
            f"{_hdq_steps_and_tables(options)}")


# --- DQ-AE likelihood model ------------------------------------------------------------------


@dataclass
class DQAEOptions:
    """What the DQ-AE trains on (``--arch dqae``).

    Progressive training over image sizes (the paper's 32 -> 64 px) continues one model: export
    the 32 px run (``--crop 32 --export NAME --quality 1 --weights-dir DIR``), then start the
    64 px run from it (``--init-from DIR/NAME --crop 64``; fresh Adam, the codebooks as they were).
    """

    dataset: str = option(
        "patches",
        "training data under --data: patches (fixed --crop-sized patches of the training split of the images, the "
        "local stand-in for CIFAR-10 / ImageNet32/64), cifar10 (python batches), imagenet (ImageNet32/64 .npz "
        "batches) or images (random crops of an image folder)",
        choices=DATASETS,
    )


def _dqae_data(options: DQAEOptions, loop):
    return likelihood_training_data(options.dataset, loop.data, loop.crop)


def _dqae_loss(out, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output head's objective (per sub-pixel: bits, or MSE for the mse head) + the quantizers' loss."""
    sse = ((out.reconstruction.float() - batch) ** 2).sum()
    return out.objective + out.quantizer_loss.float(), sse


def _initialise_dqae(net: nn.Module, options: DQAEOptions, files: list[Path], generator: torch.Generator, log) -> None:
    log("initialised: random weights; the codebooks are seeded by k-means++ on the first batch")


def _describe_dqae(net: nn.Module, options: DQAEOptions, steps: int) -> str:
    objective = "mean squared error" if net.config.head == "mse" else "negative log-likelihood in bits"
    return (f"random initial weights, codebooks seeded by k-means++ on the first batch; {steps} Adam steps on the "
            f"{net.config.head} head's {objective} + beta {net.config.beta} * commitment, EMA codebooks (decay 0.99) "
            f"with dead-code re-initialisation below {net.config.dead_code_threshold} of a uniform share; data set "
            f"{options.dataset}")


def _summarize_dqae(config) -> str:
    levels = ", ".join(f"K={size} M={count}" for size, count in config.levels)
    return (f"{len(config.levels)}-level DQ-AE ({'depthwise' if config.quantizer == 'dq' else 'coupled VQ'}: {levels}, "
            f"D={config.code_dim}), {config.head} head")


# Clipping as CompressAI's training does: without it a CPU run diverged (loss 1e10) when the rate
# term collapsed the codebooks to one code each. Learning rate 1e-4: the rate hdq-q2 was refined at
# from its block start (6370 steps, steadily better).
HDQ_LOOP_DEFAULTS = {"steps": 2000, "crop": 128, "learning_rate": 1e-4, "clip_grad_norm": 1.0}

# --arch NAME -> recipe. A new architecture adds its recipe here (or with register_recipe).
RECIPES: dict[str, Recipe] = {
    "dq": Recipe(
        architecture="DQCodecNet",
        options=DQOptions,
        initialise=_initialise_dq,
        finish=_fit_tables,
        describe=_describe_dq,
        estimate="marginal-rate ECVQ estimate",
        summarize=lambda c: f"DQ block codec, M={c.num_codebooks} K={c.codebook_size} D={c.code_dim}, lambda={c.rate_lambda}",
        loop_defaults={"steps": 0, "crop": 128},
    ),
    "shvq": Recipe(
        architecture="SHVQCodecNet",
        options=SHVQOptions,
        initialise=_initialise_shvq,
        finish=_fit_tables,
        describe=_describe_shvq,
        estimate="pooled soft-entropy estimate",
        before_step=_anneal_shvq,
        summarize=lambda c: f"SHVQ block codec, L={c.num_centres} shared centres, 1x1 patches, lambda={c.rate_lambda}",
        loop_defaults={"steps": 1000, "crop": 64},
    ),
    "hdq": Recipe(
        architecture="HierarchicalDQCodec",
        options=HDQOptions,
        initialise=_initialise_hdq,
        finish=_fit_hdq_tables,
        describe=_describe_hdq,
        adapt=_adapt_hdq,
        mutable=("rate_lambda", "codebook_size"),
        estimate="marginal-rate ECVQ estimate of both levels",
        before_step=_before_hdq_step,
        summarize=_summarize_hdq,
        loop_defaults=HDQ_LOOP_DEFAULTS,
        data=_hdq_data,
    ),
    "hdq-family": Recipe(
        architecture="HDQFamily",
        options=HDQFamilyOptions,
        initialise=_initialise_family,
        finish=_fit_hdq_tables,
        describe=_describe_family,
        mutable=(),
        estimate="marginal-rate ECVQ estimate of both levels, at the first level(s)",
        before_step=_before_family_step,
        summarize=_summarize_hdq,
        loop_defaults=HDQ_LOOP_DEFAULTS,
        data=_hdq_data,
        loss=_family_loss,
        config_defaults=_start_levels_config,
        export_levels=lambda net: [net.level(index) for index in range(net.num_levels)],
    ),
    "dqae": Recipe(
        architecture="DQAE",
        options=DQAEOptions,
        initialise=_initialise_dqae,
        finish=_nothing,
        describe=_describe_dqae,
        estimate="-log2 p(x | codes), the reconstruction term only",
        summarize=_summarize_dqae,
        loop_defaults={"steps": 2000, "crop": 32, "batch_size": 32, "learning_rate": 2e-4, "validation_images": 0,
                       "data": data_dir()},
        mutable=(),
        data=_dqae_data,
        loss=_dqae_loss,
    ),
}


def register_recipe(name: str, recipe: Recipe) -> None:
    """Make ``dqcodec train --arch name`` train ``recipe`` (its architecture must be registered)."""
    RECIPES[name] = recipe
