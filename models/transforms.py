"""Analysis and synthesis transforms of the block codec.

The analysis cuts the image into P x P blocks (pixel-unshuffle) and maps each block's 3*P*P
values linearly to C features (a learned 1x1 convolution, initialised to the block PCA so
that training starts from a decorrelating transform). The synthesis maps the quantized slices
back to 3*P*P values per block (pixel-shuffle) and can add a small residual CNN that works
across block edges (deblocking and detail). All shapes are (B, channels, H, W).
"""

import torch
from torch import nn


class BlockAnalysis(nn.Module):
    """(B, 3, H, W) image in [0, 1] -> (B, C, H/P, W/P) block features."""

    def __init__(self, block: int, channels: int):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(block)
        self.linear = nn.Conv2d(3 * block * block, channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.linear(self.unshuffle(image))


class BlockSynthesis(nn.Module):
    """(B, M*D, H/P, W/P) quantized features -> (B, 3, H, W) image in about [0, 1]."""

    def __init__(self, block: int, in_channels: int, postfilter_channels: int):
        super().__init__()
        self.linear = nn.Conv2d(in_channels, 3 * block * block, kernel_size=1)
        self.shuffle = nn.PixelShuffle(block)
        self.postfilter = PostFilter(postfilter_channels) if postfilter_channels > 0 else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        image = self.shuffle(self.linear(features))
        if self.postfilter is not None:
            image = self.postfilter(image)
        return image


class PostFilter(nn.Module):
    """Residual 3-layer CNN on the block reconstruction; starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, 3, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.body(image)
