"""The SHVQ block codec: analysis -> soft-to-hard quantizer -> synthesis, plus index tables.

The image codec of the soft-to-hard VQ paper (Agustsson et al., NeurIPS 2017) on this
project's block transform: every block feature (one channel of the analysis output, 1 x 1
patches, the paper's image-compression setting) is quantized to one of L centres shared by
all channels, trained through the soft assignment with the soft-histogram entropy term
(:class:`~dqcodec.models.soft_quantizers.SoftToHardQuantizer`); at coding time the assignment
is hard.

For coding, each channel is one index plane of the context entropy model
(:class:`~dqcodec.models.entropy.ContextIndexModel`) with its own code order: ``symbol_centre``
(C, L) lists, per channel, the centres by decreasing training usage, so a channel's symbol s
means centre ``symbol_centre[c, s]`` and the channel's alphabet ends at its last used centre.
``compress`` / ``decompress`` map images to symbols and back; bytes are ``dqcodec.codec``'s job.
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dqcodec.models.entropy import ContextIndexModel, choose_indices
from dqcodec.models.soft_quantizers import SoftQuantizerOutput, SoftToHardQuantizer
from dqcodec.models.transforms import BlockAnalysis, BlockSynthesis


@dataclass
class SHVQCodecConfig:
    """Architecture of one SHVQ codec model (stored in the model's JSON)."""

    block: int = 8  # P: the image is processed in P x P blocks
    num_centres: int = 128  # L, shared by all channels
    rate_lambda: float = 0.01  # squared pixel error (values in [0, 1], summed) per bit
    predicted_codebooks: int = 3  # first channels whose symbols are coded with DPCM-like contexts

    @property
    def channels(self) -> int:
        return 3 * self.block * self.block

    @property
    def num_codebooks(self) -> int:
        """Index planes of the entropy model: one per channel."""
        return self.channels

    @property
    def codebook_size(self) -> int:
        return self.num_centres


class SHVQCodecNet(nn.Module):
    """Block transform + soft-to-hard quantizer + context tables; images (B, 3, H, W) in [0, 1]."""

    def __init__(self, config: SHVQCodecConfig):
        super().__init__()
        self.config = config
        self.analysis = BlockAnalysis(config.block, config.channels)
        self.quantizer = SoftToHardQuantizer(config.num_centres)
        self.synthesis = BlockSynthesis(config.block, config.channels, postfilter_channels=0)
        self.entropy = ContextIndexModel(config.num_codebooks, config.codebook_size, config.predicted_codebooks)
        order = torch.arange(config.num_centres, dtype=torch.int32).repeat(config.channels, 1)
        self.register_buffer("symbol_centre", order)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, SoftQuantizerOutput]:
        """Training pass: (B, 3, H, W) -> (reconstruction from the straight-through output, quantizer output)."""
        quantized = self.quantizer(self.analysis(image))
        return self.synthesis(quantized.quantized), quantized

    def code_values(self) -> np.ndarray:
        """(C, L, 1) float64: each channel's centres in its symbol order."""
        centres = self.quantizer.centres.detach().double()
        return centres[self.symbol_centre.long()].numpy()

    def channel_lambdas(self) -> np.ndarray:
        """(C,) rate_lambda in latent units: an error e on channel c costs ||W_c||^2 e^2 of
        squared pixel error through the linear synthesis (W_c its column)."""
        gains = (self.synthesis.linear.weight.detach().double()[:, :, 0, 0] ** 2).sum(dim=0)
        return self.config.rate_lambda / gains.clamp_min(1e-12).numpy()

    @torch.no_grad()
    def nearest_indices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/P, W/P) symbols of the nearest centres (the paper's hard assignment)."""
        centres = self.quantizer.quantize(self.analysis(image))
        lookup = self.symbol_centre.long().argsort(dim=1)  # centre -> symbol, per channel
        channels = torch.arange(self.config.channels)[None, :, None, None]
        return lookup[channels, centres]

    @torch.no_grad()
    def sort_codes(self, usage: torch.Tensor) -> None:
        """Reorder each channel's symbols by ``usage`` (C, L) over the current symbols, most used first."""
        order = usage.argsort(dim=1, descending=True)
        self.symbol_centre.copy_(self.symbol_centre.gather(1, order))

    @torch.no_grad()
    def compress(self, image: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) image in [0, 1], H and W multiples of ``block`` -> (B, C, H/P, W/P) int64 symbols.

        Rate-distortion optimised choice among each channel's used centres under the context
        tables (:func:`~dqcodec.models.entropy.choose_indices`), lambda converted to latent
        units per channel.
        """
        latents = self.analysis(image).double().numpy()[:, :, None]  # (B, C, 1, h, w)
        return choose_indices(latents, self.code_values(), self.entropy, self.channel_lambdas())

    @torch.no_grad()
    def decompress(self, symbols: np.ndarray) -> torch.Tensor:
        """(B, C, h, w) symbols -> (B, 3, h*P, w*P) float64 image, clamped to [0, 1].

        float64 for the same reason as the DQ codec: decoded pixels must not depend on threads.
        """
        synthesis = self.synthesis
        if synthesis.linear.weight.dtype != torch.float64:
            synthesis = copy.deepcopy(synthesis).double()
        symbols = torch.from_numpy(symbols)
        channels = torch.arange(self.config.channels)[None, :, None, None]
        centres = self.symbol_centre.long()[channels, symbols]
        latents = self.quantizer.centres.detach().double()[centres, 0]
        return synthesis(latents).clamp(0, 1)
