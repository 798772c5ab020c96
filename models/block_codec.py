"""What the two block codecs (DQ and SHVQ) share: one level of indices over P x P blocks.

A block codec analyses the image into one feature vector per P x P block, quantizes M slices of
it (codebook m: D values) to indices, codes those indices with a
:class:`~dqcodec.models.entropy.ContextIndexModel`, and synthesises the image back from the
quantized features. Subclasses say how features become slices and codewords (``code_slices``,
``code_values``, ``dequantize``); this base turns that into the codec-model interface
(:mod:`dqcodec.models.interface`): one level named ``"blocks"`` of shape (M, H/P, W/P).
"""

import numpy as np
import torch
from torch import nn

from dqcodec.models.entropy import ContextIndexModel, choose_indices
from dqcodec.models.interface import CompressedLevels, IndexLevel, LevelSpec

LEVEL_NAME = "blocks"


class BlockCodec(nn.Module):
    """Base of the block codecs; subclasses set ``config`` (with ``block``, ``rate_lambda``),
    ``analysis``, ``synthesis`` (a :class:`~dqcodec.models.transforms.BlockSynthesis`) and
    ``entropy``, and implement the three code hooks below."""

    config: object
    entropy: ContextIndexModel

    @property
    def padding_multiple(self) -> int:
        return self.config.block

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """One level: (M, height / P, width / P) indices under ``self.entropy``."""
        block = self.config.block
        return [LevelSpec(LEVEL_NAME, (self.entropy.num_codebooks, height // block, width // block), self.entropy)]

    def code_slices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, M, D, H/P, W/P): the values codebook m quantizes at each block."""
        raise NotImplementedError

    def code_values(self) -> np.ndarray:
        """(M, K, D) float64 codewords in the entropy model's code order."""
        raise NotImplementedError

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) int64 indices -> (B, C, h, w) synthesis input, in the network's dtype."""
        raise NotImplementedError

    def rate_lambdas(self) -> np.ndarray:
        """(M,) ``config.rate_lambda`` (squared pixel error, values in [0, 1], summed over the
        colour channels, per bit) in the units of each codebook's slice: an error e on codebook
        m's D values costs about gain_m * ||e||^2 of pixel error through the linear synthesis,
        gain_m the mean squared norm of its D synthesis columns."""
        columns = self.synthesis.linear.weight.detach().double()[:, :, 0, 0]  # (3 P^2, M * D)
        gains = (columns**2).sum(dim=0).view(self.entropy.num_codebooks, -1).mean(dim=1)
        return self.config.rate_lambda / gains.clamp_min(1e-12).numpy()

    @torch.no_grad()
    def compress(self, image: torch.Tensor) -> CompressedLevels:
        """(B, 3, H, W) image in [0, 1], H and W multiples of P -> one level of (B, M, H/P, W/P) indices.

        Each index minimises distortion + lambda * (-log2 p) under the context tables, in coding
        order (:func:`~dqcodec.models.entropy.choose_indices`).
        """
        slices = self.code_slices(image).double().numpy()
        indices = choose_indices(slices, self.code_values(), self.entropy, self.rate_lambdas())
        return [IndexLevel(LEVEL_NAME, indices)]

    @torch.no_grad()
    def decompress(self, levels: CompressedLevels) -> torch.Tensor:
        """The ``"blocks"`` level -> (B, 3, H, W) image clamped to [0, 1], in the network's dtype."""
        (level,) = levels
        return self.synthesis(self.dequantize(torch.from_numpy(level.indices))).clamp(0, 1)
