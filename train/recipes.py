"""Training recipes: the architecture-specific parts that the one training loop is given.

A recipe names an architecture of the registry (``dqcodec.models.registry.ARCHITECTURES``) and
says how to start a fresh network (``initialise``), what to do before each step (``before_step``,
e.g. anneal SHVQ's hardness), how to finish it for export (``finish``, e.g. count the context
tables) and what its rate estimate is. Its ``options`` dataclass holds the settings that are not
part of the architecture (initialisation sizes, schedules); ``dqcodec train --arch NAME`` builds
its command-line options from that dataclass, the architecture's config and
:class:`~dqcodec.train.loop.LoopConfig`. Fields marked ``init_only`` act only on a fresh start.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dqcodec.train.data import load_rgb, to_tensor
from dqcodec.train.initialize import block_pca, ecvq_codebooks, fit_entropy_tables, sample_slices, set_block_transform


def option(default, help: str, init_only: bool = False, flag: str | None = None, choices: tuple | None = None):
    """A dataclass field that becomes a ``dqcodec train`` option (``--name-with-dashes`` or ``flag``)."""
    return field(default=default, metadata={"help": help, "init_only": init_only, "flag": flag, "choices": choices})


def _nothing(*_args) -> None:
    return None


def _config_summary(config) -> str:
    return ", ".join(f"{item.name}={getattr(config, item.name)}" for item in fields(config))


@dataclass(frozen=True)
class Recipe:
    """How to train one architecture with :func:`dqcodec.train.loop.train`.

    initialise(net, options, files, generator, log): set a fresh network's weights from the data.
    before_step(net, options, step, total_steps): called before every optimisation step.
    finish(net, options, files): prepare the trained network for export (integer tables).
    describe(net, options, steps) -> str: the recipe of a fresh start, one paragraph, for the
        model's JSON (a run that starts from a model says so instead, see ``loop.export``).
    summarize(config) -> str: one line for ``dqcodec models``.
    loop_defaults: LoopConfig fields whose default differs for this architecture.
    """

    architecture: str
    options: type
    initialise: Callable
    finish: Callable
    describe: Callable
    estimate: str  # what CodecOutput.bits is, for the log
    before_step: Callable = _nothing
    summarize: Callable = _config_summary
    loop_defaults: dict = field(default_factory=dict)
    mutable: tuple[str, ...] = ("rate_lambda",)  # config fields --init-from may change (net.set_<field>)


# --- DQ block codec ---------------------------------------------------------------------------


@dataclass
class DQOptions:
    """Initialisation of a DQ block codec: block PCA, then entropy-constrained Lloyd codebooks."""

    init_samples: int = option(60_000, "latent blocks sampled for the ECVQ initialisation", init_only=True)
    ecvq_iterations: int = option(15, "entropy-constrained Lloyd iterations", init_only=True)


def _initialise_dq(net: nn.Module, options: DQOptions, files: list[Path], generator: torch.Generator, log) -> None:
    mean, axes = block_pca(files, net.config.block)
    set_block_transform(net, mean, axes)
    slices = sample_slices(net, files, options.init_samples, generator)
    ecvq_codebooks(net, slices, options.ecvq_iterations, generator)
    log("initialised: block PCA, ECVQ codebooks")


def _describe_dq(net: nn.Module, options: DQOptions, steps: int) -> str:
    return (
        f"block PCA; {options.ecvq_iterations} entropy-constrained Lloyd iterations on {options.init_samples} "
        f"blocks; {steps} Adam steps; context tables counted over the training images in 2 rounds"
    )


# --- SHVQ block codec -------------------------------------------------------------------------


@dataclass
class SHVQOptions:
    """The soft-to-hard VQ paper's order: unquantized autoencoder (block PCA), then centres by
    k-means and soft-to-hard training with sigma annealed geometrically."""

    kmeans_blocks: int = option(20_000, "training blocks whose latents refine the centre grid", init_only=True)
    kmeans_iterations: int = option(10, "k-means iterations from the uniform grid", init_only=True)
    sigma_start: float = option(2.0, "soft assignment hardness at the first step (latents in units of the step)")
    sigma_end: float = option(200.0, "hardness at the last step (geometric schedule)")


def shvq_step_size(rate_lambda: float) -> float:
    """Delta = sqrt(6 lambda / ln 2): uniform quantization with ideal entropy coding has
    D = Delta^2 / 12 per coefficient and dD/dR = -(2 ln 2) D, which equals -lambda here."""
    return math.sqrt(6 * rate_lambda / math.log(2))


@torch.no_grad()
def _initialise_shvq(net: nn.Module, options: SHVQOptions, files: list[Path], generator: torch.Generator, log) -> None:
    """Stage 1 (block PCA) and the start of stage 2 (step Delta, centres by k-means from a grid)."""
    config = net.config
    mean, axes = block_pca(files, config.block)
    delta = shvq_step_size(config.rate_lambda)
    channels = config.channels
    net.analysis.linear.weight.copy_((axes.T / delta).reshape(channels, channels, 1, 1))
    net.analysis.linear.bias.copy_(-(axes.T @ mean) / delta)
    net.synthesis.linear.weight.copy_((axes * delta).reshape(channels, channels, 1, 1))
    net.synthesis.linear.bias.copy_(mean)
    latents = []
    per_image = options.kmeans_blocks // len(files) + 1
    for path in tqdm(files, desc="sampling latents", unit="img", leave=False):
        blocks = net.analysis(to_tensor(load_rgb(path, config.block)))[0].flatten(1)  # (C, N)
        latents.append(blocks[:, torch.randperm(blocks.shape[1], generator=generator)[:per_image]])
    latents = torch.cat(latents, dim=1)[None, :, :, None]  # (1, C, N, 1)
    grid = torch.arange(config.num_centres, dtype=torch.float32)[:, None] - config.num_centres // 2
    net.quantizer.init_centres_kmeans(latents, options.kmeans_iterations, start=grid)
    log(f"initialised: block PCA, step {delta:.4f}, k-means centres")


def _anneal_shvq(net: nn.Module, options: SHVQOptions, step: int, total_steps: int) -> None:
    growth = (options.sigma_end / options.sigma_start) ** (1 / max(total_steps - 1, 1))
    net.quantizer.sigma_init, net.quantizer.sigma_growth = options.sigma_start, growth
    net.quantizer.anneal(step)


def _describe_shvq(net: nn.Module, options: SHVQOptions, steps: int) -> str:
    return (
        f"stage 1: block PCA (closed-form optimum of the unquantized linear autoencoder); stage 2: step "
        f"{shvq_step_size(net.config.rate_lambda):.4f}, {net.config.num_centres} shared centres by "
        f"{options.kmeans_iterations} k-means iterations from a uniform grid, {steps} Adam steps on "
        f"(SSE + lambda * soft entropy) with sigma {options.sigma_start} -> {options.sigma_end}; context tables "
        "counted over the training images in 2 rounds"
    )


def _fit_tables(net: nn.Module, options, files: list[Path]) -> None:
    fit_entropy_tables(net, files)


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
}


def register_recipe(name: str, recipe: Recipe) -> None:
    """Make ``dqcodec train --arch name`` train ``recipe`` (its architecture must be registered)."""
    RECIPES[name] = recipe
