"""Training loop of the toy autoencoders (:mod:`dqcodec.eval.studies.toy_autoencoder`).

Objective per batch: normalised reconstruction error plus the bottleneck's own regulariser,
    loss = mean((x_hat - x)^2) / var(training images) + out.loss,
the normalisation as in the soft VQ-VAE authors' code, so that the reconstruction term is
about 1 for a decoder that outputs the mean image whatever the data's contrast. Adam on
mini-batches taken in order from a fresh shuffle of the images each epoch.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dqcodec.eval.studies.toy_autoencoder import ToyAutoencoder


@dataclass
class AutoencoderTrainConfig:
    """Steps, batch size (images) and Adam learning rate of one training run."""

    steps: int = 3000
    batch_size: int = 128
    learning_rate: float = 1e-3


def train_autoencoder(
    model: ToyAutoencoder,
    images: torch.Tensor,
    config: AutoencoderTrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> float:
    """Train ``model`` in place on ``images`` (N, 1, S, S) in [0, 1]; returns the last batch's loss.

    The generator fixes the order of mini-batches; the quantizer's own noise comes from the
    global torch RNG, which the caller seeds.
    """
    variance = images.var().clamp_min(1e-8)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    order = torch.randperm(len(images), generator=generator)
    position = 0
    bar = tqdm(range(config.steps), desc=f"train {model.bottleneck}", leave=False, disable=not progress)
    for _ in bar:
        if position + config.batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        batch = images[order[position : position + config.batch_size]]
        position += config.batch_size
        out = model(batch)
        reconstruction_error = F.mse_loss(out.reconstruction, batch) / variance
        loss = reconstruction_error + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(recon=f"{reconstruction_error.item():.3f}", reg=f"{out.loss.item():.3f}", refresh=False)
    model.eval()
    return loss.item()
