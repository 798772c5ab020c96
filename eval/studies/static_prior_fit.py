"""A static prior (Gaussian blobs) and the loop that fits a quantizer to it.

The DVQ paper's toy study has no encoder: the "latents" are drawn from a fixed distribution,
N_G tight Gaussian blobs (the latent factors) in D dimensions, and a quantizer is fitted to
them directly. The N points are laid out as one (1, D, N, 1) feature map, a point per pixel,
so every quantizer of :mod:`dqcodec.models.quantizers` takes them as they are, and the 1x1
convolutions of the projections and decoders run as one matrix product over the N positions
(N images of 1 x 1 pixels would be about three times slower). The fits below also take any
other layout of the same scalars, (B, C, H, W).

Fitting is full-batch: each pass is one forward of the quantizer in training mode (nearest-code
assignment, then the EMA codebook update) and, where the quantizer's projections or a decoder
are trainable, one Adam step on the data-space reconstruction error plus the commitment term.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dqcodec.models.lloyd import sample_centres
from dqcodec.models.quantizers import CodebookQuantizer


def make_blobs(num_factors: int, dim: int, points_per_factor: int, sigma: float, seed: int) -> torch.Tensor:
    """Draw Gaussian-blob data: N_G means uniform in [-1, 1]^D, isotropic noise of std ``sigma``.

    Args:
        num_factors: N_G, the number of blobs (latent factors).
        dim: D, the dimension of each point.
        points_per_factor: points drawn around each mean.
        sigma: standard deviation of every coordinate around its blob mean (data units).
        seed: seed of the torch generator that draws means and noise.
    Returns:
        (1, D, N, 1) float32, the N = N_G * points_per_factor points blob after blob.
    """
    generator = torch.Generator().manual_seed(seed)
    means = torch.rand(num_factors, dim, generator=generator) * 2 - 1
    noise = torch.randn(num_factors, points_per_factor, dim, generator=generator) * sigma
    return (means[:, None, :] + noise).reshape(-1, dim).T[None, :, :, None].contiguous()


@torch.no_grad()
def set_identity_projection(quantizer: CodebookQuantizer, trainable: bool) -> None:
    """Make a quantizer's 1x1 projection (R outputs from C channels, R <= C) the first R rows of
    the identity.

    For DQ / VQ (R = M*D' = C) that is the identity split, codebook m seeing input channels
    [m*D', (m+1)*D'); with ``trainable=False`` the quantizer is then plain VQ (M = 1) or
    product quantization (M > 1) on the raw points. For coupled DQ (R = D') every codebook
    starts on the first D' channels.
    """
    weight = quantizer.projection.weight  # (R, C, 1, 1)
    if weight.shape[0] > weight.shape[1]:
        raise ValueError(f"an identity projection needs at most C = {weight.shape[1]} outputs, got {weight.shape[0]}")
    weight.copy_(torch.eye(weight.shape[0], weight.shape[1])[:, :, None, None])
    quantizer.projection.bias.zero_()
    quantizer.projection.requires_grad_(trainable)


@torch.no_grad()
def init_codebooks_from_data(quantizer: CodebookQuantizer, points: torch.Tensor, generator: torch.Generator) -> None:
    """Set each codebook to K distinct random vectors of its own (projected) slice of the data.

    points: (B, C, H, W), cut by the quantizer into B*H'*W' >= K vectors per codebook. EMA
    counts restart at a uniform share per code.
    """
    slices = quantizer.project(points)  # (N, M, D', H', W')
    vectors = slices.permute(1, 0, 3, 4, 2).reshape(quantizer.num_codebooks, -1, quantizer.code_dim)
    codebooks = sample_centres(vectors, quantizer.codebook_size, generator)
    quantizer.load_codebooks(codebooks, torch.full_like(quantizer.ema_counts, 1.0 / quantizer.codebook_size))


@torch.no_grad()
def reconstruction_mse(quantizer: CodebookQuantizer, points: torch.Tensor, decoder: nn.Module | None = None) -> float:
    """Mean squared error per coordinate (data units^2) of hard quantization, then ``decoder``.

    points: (B, C, H, W). Without a decoder the quantizer's output must be in data space
    (identity projection, or a quantizer without projections).
    """
    decoded = quantizer.dequantize(quantizer.quantize(points))
    if decoder is not None:
        decoded = decoder(decoded)
    return F.mse_loss(decoded, points).item()


@dataclass
class FitConfig:
    """When a fit stops. Every ``check_every`` passes the hard data-space MSE is measured; the
    fit has converged when the lowest MSE so far fell by less than ``tolerance`` (relative)
    over the last ``patience`` passes (a multiple of ``check_every``; the lowest, so that the
    noise of Adam steps does not end a fit that is still improving). ``max_passes`` caps the
    fit (it then counts as not converged)."""

    max_passes: int = 1000
    check_every: int = 10
    patience: int = 10
    tolerance: float = 1e-4
    learning_rate: float = 1e-2


@dataclass
class FitResult:
    mse: float  # final hard data-space MSE per coordinate
    passes: int  # full-batch passes run
    converged: bool
    history: list[float] = field(default_factory=list)  # MSE at each check, pass check_every first


def fit_quantizer(
    quantizer: CodebookQuantizer,
    points: torch.Tensor,
    config: FitConfig,
    decoder: nn.Module | None = None,
) -> FitResult:
    """Fit ``quantizer`` (and ``decoder``, if given) to ``points`` (B, C, H, W) by full-batch passes.

    Codebooks move by their EMA update inside the forward pass. Trainable parameters (a
    projection left trainable, the decoder) take one Adam step per pass on
    mse(decoder(quantized), points) + the quantizer's commitment loss; with none, a pass is an
    EMA step only (a smoothed Lloyd iteration).
    """
    parameters = [p for p in quantizer.parameters() if p.requires_grad]
    if decoder is not None:
        parameters += list(decoder.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate) if parameters else None
    history: list[float] = []
    converged = False
    passes = 0
    quantizer.train()
    while passes < config.max_passes and not converged:
        out = quantizer(points)
        if optimizer is not None:
            decoded = out.quantized if decoder is None else decoder(out.quantized)
            loss = F.mse_loss(decoded, points) + out.loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        passes += 1
        if passes % config.check_every == 0:
            history.append(reconstruction_mse(quantizer, points, decoder))
            window = config.patience // config.check_every
            if len(history) > window:
                before, now = min(history[:-window]), min(history)
                converged = before - now < config.tolerance * before
    quantizer.eval()
    return FitResult(mse=reconstruction_mse(quantizer, points, decoder), passes=passes, converged=converged, history=history)
