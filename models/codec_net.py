"""The DQ block codec network: analysis -> depthwise quantizer -> synthesis, plus index tables.

``forward`` is for training (reconstruction, commitment loss and the rate in bits that the
entropy-constrained assignment traded against). ``compress`` / ``decompress`` map images to
code indices and back; turning indices into bytes is the job of ``dqcodec.codec`` with the
integer tables of ``self.entropy`` (models never touch bitstreams).
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dqcodec.models.entropy import ContextIndexModel, choose_indices
from dqcodec.models.quantizers import DepthwiseQuantizer
from dqcodec.models.transforms import BlockAnalysis, BlockSynthesis


@dataclass
class CodecConfig:
    """Architecture of one codec model (stored in the model's JSON)."""

    block: int = 8  # P: the image is processed in P x P blocks
    num_codebooks: int = 192  # M
    codebook_size: int = 64  # K
    code_dim: int = 1  # D
    rate_lambda: float = 0.01  # ECVQ trade-off: squared latent error per bit
    postfilter_channels: int = 0  # 0 disables the residual CNN after the block synthesis
    predicted_codebooks: int = 3  # first codebooks whose indices are coded with DPCM-like contexts

    @property
    def channels(self) -> int:
        return 3 * self.block * self.block


@dataclass
class CodecOutput:
    """Training outputs: reconstruction (B, 3, H, W), loss terms, bits (B,) of the indices."""

    reconstruction: torch.Tensor
    commitment: torch.Tensor
    bits: torch.Tensor
    indices: torch.Tensor


class DQCodecNet(nn.Module):
    """Block transform + depthwise quantizer + context tables; images (B, 3, H, W) in [0, 1]."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.analysis = BlockAnalysis(config.block, config.channels)
        self.quantizer = DepthwiseQuantizer(
            config.channels,
            config.num_codebooks,
            config.codebook_size,
            config.code_dim,
            rate_lambda=config.rate_lambda,
        )
        self.synthesis = BlockSynthesis(config.block, self.quantizer.out_channels, config.postfilter_channels)
        self.entropy = ContextIndexModel(config.num_codebooks, config.codebook_size, config.predicted_codebooks)

    def forward(self, image: torch.Tensor) -> CodecOutput:
        quantized = self.quantizer(self.analysis(image))
        return CodecOutput(
            reconstruction=self.synthesis(quantized.quantized),
            commitment=quantized.loss,
            bits=quantized.bits,
            indices=quantized.indices,
        )

    @torch.no_grad()
    def compress(self, image: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) image in [0, 1], H and W multiples of ``block`` -> (B, M, H/P, W/P) int64.

        Rate-distortion optimised choice of indices under the context tables
        (:func:`~dqcodec.models.entropy.choose_indices`) with the codec's lambda.
        """
        slices = self.quantizer.project(self.analysis(image)).double().numpy()  # (B, M, D, h, w)
        return choose_indices(slices, self.code_values(), self.entropy, self.config.rate_lambda)

    def code_values(self) -> np.ndarray:
        """(M, K, D) float64 codewords in the entropy model's code order."""
        return self.quantizer.codebooks.double().numpy()

    @torch.no_grad()
    def nearest_indices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, M, H/P, W/P): the quantizer's own choice (marginal-rate ECVQ), no tables."""
        return self.quantizer.quantize(self.analysis(image))

    @torch.no_grad()
    def sort_codes(self, usage: torch.Tensor) -> None:
        """Reorder each codebook's codes by ``usage`` (M, K), most used first; unused ones last and off."""
        self.quantizer.prune(usage)

    @torch.no_grad()
    def decompress(self, indices: np.ndarray) -> torch.Tensor:
        """(B, M, h, w) indices -> (B, 3, h*P, w*P) float64 image, clamped to [0, 1].

        Runs in float64: float32 convolutions differ by ~1e-9 between thread counts, enough to
        flip a rounded 8-bit pixel now and then; in float64 such a flip is practically
        impossible, so decoded pixels do not depend on the machine's threading.
        """
        synthesis = self.synthesis
        if synthesis.linear.weight.dtype != torch.float64:
            synthesis = copy.deepcopy(synthesis).double()
        quantized = self.quantizer.dequantize(torch.from_numpy(indices)).double()
        return synthesis(quantized).clamp(0, 1)
