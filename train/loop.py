"""Training of a DQ block codec: data-driven initialisation, then resumable RD fine-tuning.

Stage 1 (once per run): block PCA, entropy-constrained Lloyd codebooks (train/initialize.py).
Stage 2 (resumable): Adam on lambda-weighted RD loss, (SSE + lambda * bits) / pixels, with the
quantizer's straight-through gradients and EMA codebooks; the synthesis post-filter learns
here. Stage 3: context tables counted over whole training images; export.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dqcodec.models.codec_net import CodecConfig, DQCodecNet
from dqcodec.models.registry import save_model
from dqcodec.paths import kodak_dir
from dqcodec.train.checkpoint import load_start_model, load_state, save_state
from dqcodec.train.data import RandomCrops, default_train_dir, image_files, load_rgb, to_tensor
from dqcodec.train.initialize import (
    block_pca,
    ecvq_codebooks,
    fit_entropy_tables,
    sample_slices,
    set_block_transform,
)


@dataclass
class TrainConfig:
    """Everything a training run needs; saved next to its checkpoints."""

    out: Path  # run folder (state, log)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: Path = field(default_factory=default_train_dir)
    init_from: Path | None = None  # start from an exported model (stem) with a fresh optimizer
    init_samples: int = 60_000  # latent blocks for the ECVQ initialisation
    ecvq_iterations: int = 15
    steps: int = 0  # total Adam steps of stage 2 (0: initialisation only)
    batch_size: int = 8
    crop: int = 128
    learning_rate: float = 1e-4
    validate_every: int = 250
    checkpoint_every: int = 100
    validation_images: int = 4  # first N Kodak images, a quick check while training
    seed: int = 0


@torch.no_grad()
def validate(net: DQCodecNet, files: list[Path]) -> dict:
    """Mean PSNR (dB, 8-bit) and marginal-rate bpp estimate on a few Kodak images."""
    net.eval()
    psnrs, bpps = [], []
    for path in files:
        pixels = load_rgb(path, net.config.block)
        image = to_tensor(pixels)
        out = net(image)
        decoded = (out.reconstruction.clamp(0, 1) * 255).round()
        mse = ((decoded - image * 255) ** 2).mean().item()
        psnrs.append(10 * math.log10(255**2 / mse))
        bpps.append(out.bits.item() / (pixels.shape[0] * pixels.shape[1]))
    net.train()
    return {"psnr": float(np.mean(psnrs)), "bpp_marginal_estimate": float(np.mean(bpps))}


def initialise(net: DQCodecNet, config: TrainConfig, files: list[Path], generator: torch.Generator) -> None:
    """Stage 1: PCA block transform and ECVQ codebooks from the training images."""
    mean, axes = block_pca(files, net.config.block)
    set_block_transform(net, mean, axes)
    slices = sample_slices(net, files, config.init_samples, generator)
    ecvq_codebooks(net, slices, config.ecvq_iterations, generator)


def train(config: TrainConfig, log=print) -> DQCodecNet:
    """Run (or resume) a training run in ``config.out``; returns the trained network."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    files = image_files(config.data)
    if config.init_from is not None:
        net = load_start_model(config.init_from, DQCodecNet)
        net.quantizer.rate_lambda = config.codec.rate_lambda
        net.config.rate_lambda = config.codec.rate_lambda
    else:
        net = DQCodecNet(config.codec)
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
            log(f"initialised (PCA + ECVQ) in {time.time() - started:.0f} s")
        step = 0
        save_state(state_path, net, optimizer, step, generator)

    if step < config.steps:
        _fine_tune(net, optimizer, config, files, generator, step, state_path, log)
    return net


def _fine_tune(net, optimizer, config, files, generator, step, state_path, log) -> None:
    crops = RandomCrops(files, config.crop, config.batch_size, generator)
    validation = sorted(kodak_dir().glob("*.png"))[: config.validation_images]
    net.train()
    progress = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="training", unit="step")
    for step in progress:
        batch = crops.batch()
        out = net(batch)
        pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
        sse = ((out.reconstruction - batch) ** 2).sum()
        # SSE in [0, 1] units over all values matches the ECVQ cost's latent units.
        loss = (sse + config.codec.rate_lambda * out.bits.sum()) / pixels + out.commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mse = sse.item() / (pixels * 3)
        progress.set_postfix(psnr=f"{10 * math.log10(1 / max(mse, 1e-12)):.2f}", bpp=f"{out.bits.sum().item() / pixels:.3f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_state(state_path, net, optimizer, done, generator)
        if validation and (done % config.validate_every == 0 or done == config.steps):
            figures = validate(net, validation)
            log(f"step {done}: Kodak[:{len(validation)}] PSNR {figures['psnr']:.2f} dB, "
                f"~{figures['bpp_marginal_estimate']:.3f} bpp (marginal estimate)")


def export(net: DQCodecNet, config: TrainConfig, stem: Path, info: dict) -> None:
    """Stage 3: count the context tables over whole training images, then save the model."""
    net.eval()
    files = image_files(config.data)
    fit_entropy_tables(net, files)
    data = config.data.name if config.data.is_absolute() else str(config.data)
    recipe = (
        f"block PCA; {config.ecvq_iterations} entropy-constrained Lloyd iterations on {config.init_samples} blocks; "
        f"{config.steps} Adam steps; context tables counted over the training images in 2 rounds"
    )
    training = {"data": f"{data} ({len(files)} images)", "recipe": recipe, **{k: v for k, v in asdict(config).items() if k not in ("out", "codec", "data", "init_from")}}
    save_model(net, stem, {**info, "training": {**training, **info.get("training", {})}})
