"""Convolutional analysis and synthesis transforms of the hierarchical DQ codec.

The fine level is a linear block transform plus a nonlinear residual branch. The linear path maps
each 16 x 16 block to the latent with one matrix (pixel-unshuffle, 1x1 convolution; the training
recipe starts it as the block PCA, so a fresh codec codes like a block transform codec); the
nonlinear branch follows Ballé et al.'s factorized-prior transforms (four 5x5 stride-2
convolutions with GDN, total stride 16; the synthesis mirrors them with IGDN and transposed
convolutions) and starts at zero (its last layer's weights are zero), so training can only
refine the block codec it starts from: CPU minutes go further from a good start than from
noise. The coarse level reads the fine latent and adds a factor 4 of stride (64 in all); its
decoded values come back up through ``CoarseSynthesis`` and join the fine level's quantized
features at the input of the synthesis' nonlinear branch, the top-down path of the DQ paper's
DQ-AE.
All shapes are (B, channels, H, W).
"""

import torch
import torch.nn.functional as F
from compressai.layers import GDN as CompressaiGDN
from compressai.models.utils import conv, deconv
from torch import nn

from dqcodec.models.hdq_levels import FINE_STRIDE


class GDN(CompressaiGDN):
    """compressai's GDN (y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); inverse: times the root),
    the same parameters, with a coding path that works in place when no gradient is taken: the
    GDN of a (1, 96, 256, 384) tensor took 0.08 instead of 0.12 s on 2 threads, with identical
    values. Training takes compressai's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        channels = x.shape[1]
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, self.beta_reparam(self.beta))
        return (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(x)


def _zero_last_layer(layers: nn.Sequential) -> None:
    """Start a residual branch at zero: its output layer's weights and bias are zero."""
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)


class ConvAnalysis(nn.Module):
    """(B, 3, H, W) image in [0, 1] -> (B, C, H/16, W/16) fine latent: linear block path + nonlinear branch."""

    def __init__(self, channels: int, latent_channels: int):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(FINE_STRIDE)
        self.linear = nn.Conv2d(3 * FINE_STRIDE**2, latent_channels, kernel_size=1)
        self.layers = nn.Sequential(
            conv(3, channels), GDN(channels),
            conv(channels, channels), GDN(channels),
            conv(channels, channels), GDN(channels),
            conv(channels, latent_channels),
        )
        _zero_last_layer(self.layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.linear(self.unshuffle(image)) + self.layers(image)


class ConvSynthesis(nn.Module):
    """(B, F + N, h, w) fine quantized features and up-sampled coarse features -> (B, 3, 16h, 16w).

    The linear path reads the F fine features only (one 16 x 16 block from each position); the
    nonlinear branch reads all F + N and works across block edges.
    """

    def __init__(self, fine_channels: int, coarse_channels: int, channels: int):
        super().__init__()
        self.fine_channels = fine_channels
        self.linear = nn.Conv2d(fine_channels, 3 * FINE_STRIDE**2, kernel_size=1)
        self.shuffle = nn.PixelShuffle(FINE_STRIDE)
        self.layers = nn.Sequential(
            conv(fine_channels + coarse_channels, channels, kernel_size=3, stride=1), GDN(channels, inverse=True),
            deconv(channels, channels), GDN(channels, inverse=True),
            deconv(channels, channels), GDN(channels, inverse=True),
            deconv(channels, channels), GDN(channels, inverse=True),
            deconv(channels, 3),
        )
        _zero_last_layer(self.layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.linear(features[:, : self.fine_channels])) + self.layers(features)


class CoarseAnalysis(nn.Module):
    """(B, C, h, w) fine latent -> (B, C_c, h/4, w/4) coarse latent."""

    def __init__(self, latent_channels: int, channels: int, coarse_channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            conv(latent_channels, channels, kernel_size=3, stride=1), nn.LeakyReLU(0.1),
            conv(channels, channels), nn.LeakyReLU(0.1),
            conv(channels, coarse_channels),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


class CoarseSynthesis(nn.Module):
    """(B, F_c, h/4, w/4) coarse quantized features -> (B, N, h, w) features for the synthesis."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            deconv(in_channels, channels), nn.LeakyReLU(0.1),
            deconv(channels, channels), nn.LeakyReLU(0.1),
            conv(channels, channels, kernel_size=3, stride=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
