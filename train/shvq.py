"""Training of an SHVQ block codec, in the soft-to-hard VQ paper's order.

Stage 1, the autoencoder without quantization: the codec's autoencoder is a complete linear
block transform, whose unquantized optimum has a closed form, the block PCA (exact
reconstruction); it is set directly instead of being approached by gradient steps.
Stage 2, soft-to-hard with the entropy term (resumable): the latents are scaled to a step
Delta (the high-rate optimum for lambda, every orthonormal coefficient with the same step),
the L shared centres start as the uniform grid refined by k-means on training latents, and
Adam minimises (SSE + lambda * bits) / pixels, bits = the paper's mini-batch soft entropy
H(p, q) times the symbols in the batch, with the soft assignment's hardness sigma annealed
geometrically from ``sigma_start`` to ``sigma_end``.
Stage 3: per-channel code order and context tables counted over whole training images; export.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dqcodec.models.registry import save_model
from dqcodec.models.shvq_codec import SHVQCodecConfig, SHVQCodecNet
from dqcodec.paths import kodak_dir
from dqcodec.train.checkpoint import load_start_model, load_state, save_state
from dqcodec.train.data import RandomCrops, default_train_dir, image_files, load_rgb, to_tensor
from dqcodec.train.initialize import block_pca, fit_entropy_tables


@dataclass
class SHVQTrainConfig:
    """Everything an SHVQ training run needs."""

    out: Path  # run folder (state, log)
    codec: SHVQCodecConfig = field(default_factory=SHVQCodecConfig)
    data: Path = field(default_factory=default_train_dir)
    init_from: Path | None = None  # start stage 2 from an exported model with a fresh optimizer
    kmeans_blocks: int = 20_000  # training blocks whose latents refine the centre grid
    kmeans_iterations: int = 10
    steps: int = 1000  # Adam steps of stage 2 in total
    batch_size: int = 8
    crop: int = 64
    learning_rate: float = 1e-4
    sigma_start: float = 2.0  # hardness at step 0, latents in units of Delta
    sigma_end: float = 200.0  # hardness at the last step
    validate_every: int = 250
    checkpoint_every: int = 100
    validation_images: int = 4  # first N Kodak images, a quick check while training
    seed: int = 0

    @property
    def step_size(self) -> float:
        """Delta = sqrt(6 lambda / ln 2): uniform quantization with ideal entropy coding has
        D = Delta^2 / 12 per coefficient and dD/dR = -(2 ln 2) D, which equals -lambda here."""
        return math.sqrt(6 * self.codec.rate_lambda / math.log(2))


@torch.no_grad()
def initialise(net: SHVQCodecNet, config: SHVQTrainConfig, files: list[Path], generator: torch.Generator) -> None:
    """Stage 1 (block PCA) and the start of stage 2 (step Delta, centres by k-means from a grid)."""
    mean, axes = block_pca(files, config.codec.block)
    delta = config.step_size
    channels = config.codec.channels
    net.analysis.linear.weight.copy_((axes.T / delta).reshape(channels, channels, 1, 1))
    net.analysis.linear.bias.copy_(-(axes.T @ mean) / delta)
    net.synthesis.linear.weight.copy_((axes * delta).reshape(channels, channels, 1, 1))
    net.synthesis.linear.bias.copy_(mean)
    latents = []
    per_image = config.kmeans_blocks // len(files) + 1
    for path in tqdm(files, desc="sampling latents", unit="img", leave=False):
        blocks = net.analysis(to_tensor(load_rgb(path, config.codec.block)))[0].flatten(1)  # (C, N)
        latents.append(blocks[:, torch.randperm(blocks.shape[1], generator=generator)[:per_image]])
    latents = torch.cat(latents, dim=1)[None, :, :, None]  # (1, C, N, 1)
    count = config.codec.num_centres
    grid = torch.arange(count, dtype=torch.float32)[:, None] - count // 2
    net.quantizer.init_centres_kmeans(latents, config.kmeans_iterations, start=grid)
    net.quantizer.sigma.fill_(config.sigma_start)


@torch.no_grad()
def validate(net: SHVQCodecNet, files: list[Path]) -> dict:
    """Mean PSNR (dB, 8-bit, hard quantization) and the soft-entropy bpp estimate on a few images."""
    net.eval()
    psnrs, bpps = [], []
    for path in files:
        image = to_tensor(load_rgb(path, net.config.block))
        reconstruction, quantized = net(image)
        decoded = (reconstruction.clamp(0, 1) * 255).round()
        mse = ((decoded - image * 255) ** 2).mean().item()
        psnrs.append(10 * math.log10(255**2 / mse))
        bpps.append(quantized.bits.item() / (image.shape[2] * image.shape[3]))
    net.train()
    return {"psnr": float(np.mean(psnrs)), "bpp_pooled_entropy_estimate": float(np.mean(bpps))}


def train(config: SHVQTrainConfig, log=print) -> SHVQCodecNet:
    """Run (or resume) an SHVQ training run in ``config.out``; returns the trained network."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    files = image_files(config.data)
    if config.init_from is not None:
        net = load_start_model(config.init_from, SHVQCodecNet)
        net.config.rate_lambda = config.codec.rate_lambda
    else:
        net = SHVQCodecNet(config.codec)
    config.out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    state_path = config.out / "state"
    if Path(f"{state_path}.safetensors").exists():
        step = load_state(state_path, net, optimizer, generator)
        log(f"resumed {config.out} at step {step}")
    else:
        if config.init_from is None:
            started = time.time()
            initialise(net, config, files, generator)
            log(f"initialised (block PCA, step {config.step_size:.4f}, k-means centres) in {time.time() - started:.0f} s")
        else:
            net.quantizer.sigma.fill_(config.sigma_start)
        step = 0
        save_state(state_path, net, optimizer, step, generator)
    if step < config.steps:
        _soft_to_hard(net, optimizer, config, files, generator, step, state_path, log)
    return net


def _soft_to_hard(net, optimizer, config, files, generator, step, state_path, log) -> None:
    crops = RandomCrops(files, config.crop, config.batch_size, generator)
    validation = sorted(kodak_dir().glob("*.png"))[: config.validation_images]
    growth = (config.sigma_end / config.sigma_start) ** (1 / max(config.steps - 1, 1))
    net.quantizer.sigma_init, net.quantizer.sigma_growth = config.sigma_start, growth
    net.train()
    progress = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="soft-to-hard", unit="step")
    for step in progress:
        net.quantizer.anneal(step)
        batch = crops.batch()
        reconstruction, quantized = net(batch)
        pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
        symbols = quantized.indices.numel()
        sse = ((reconstruction - batch) ** 2).sum()
        loss = (sse + config.codec.rate_lambda * quantized.loss * symbols) / pixels
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mse = sse.item() / (pixels * 3)
        progress.set_postfix(
            psnr=f"{10 * math.log10(1 / max(mse, 1e-12)):.2f}",
            bpp=f"{quantized.loss.item() * symbols / pixels:.3f}",
            sigma=f"{float(net.quantizer.sigma):.1f}",
        )
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_state(state_path, net, optimizer, done, generator)
        if validation and (done % config.validate_every == 0 or done == config.steps):
            figures = validate(net, validation)
            log(f"step {done}: Kodak[:{len(validation)}] PSNR {figures['psnr']:.2f} dB, "
                f"~{figures['bpp_pooled_entropy_estimate']:.3f} bpp (pooled soft-entropy estimate)")


def export(net: SHVQCodecNet, config: SHVQTrainConfig, stem: Path, info: dict) -> None:
    """Stage 3: per-channel code order and context tables over whole training images; save."""
    net.eval()
    files = image_files(config.data)
    fit_entropy_tables(net, files)
    data = config.data.name if config.data.is_absolute() else str(config.data)
    recipe = (
        f"stage 1: block PCA (closed-form optimum of the unquantized linear autoencoder); stage 2: step "
        f"{config.step_size:.4f}, {config.codec.num_centres} shared centres by {config.kmeans_iterations} k-means "
        f"iterations from a uniform grid, {config.steps} Adam steps on (SSE + lambda * soft entropy) with sigma "
        f"{config.sigma_start} -> {config.sigma_end}; context tables counted over the training images in 2 rounds"
    )
    skip = ("out", "codec", "data", "init_from")
    training = {"data": f"{data} ({len(files)} images)", "recipe": recipe,
                **{k: v for k, v in asdict(config).items() if k not in skip}}
    save_model(net, stem, {**info, "training": {**training, **info.get("training", {})}})
