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

from dataclasses import dataclass, field

import numpy as np
import torch

from dqcodec.models.block_codec import BlockCodec
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.interface import RATE_LAMBDA_HELP, CodecOutput
from dqcodec.models.soft_quantizers import SoftToHardQuantizer
from dqcodec.models.transforms import BlockAnalysis, BlockSynthesis


@dataclass
class SHVQCodecConfig:
    """Architecture of one SHVQ codec model (stored in the model's JSON)."""

    block: int = field(default=8, metadata={"help": "block size P: the image is processed in P x P blocks"})
    num_centres: int = field(default=128, metadata={"help": "centres L, shared by all channels"})
    rate_lambda: float = field(default=0.01, metadata={"help": RATE_LAMBDA_HELP, "flag": "--lambda"})
    predicted_codebooks: int = field(
        default=3, metadata={"help": "first channels whose symbols are coded with DPCM-like contexts"}
    )

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


# How close (in quantization steps) a centre in use must already be to a guard value to be moved
# onto it: every channel that uses the centre moves with it, so only by a negligible amount.
EXACT_TOLERANCE = 0.02


class SHVQCodecNet(BlockCodec):
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

    def forward(self, image: torch.Tensor) -> CodecOutput:
        """Training pass: the straight-through reconstruction and the soft-entropy bits."""
        quantized = self.quantizer(self.analysis(image))
        return CodecOutput(
            reconstruction=self.synthesis(quantized.quantized),
            bits=quantized.bits,
            quantizer_loss=torch.zeros((), device=image.device),
            statistics={
                "sigma": float(self.quantizer.sigma),
                "perplexity": quantized.perplexity.mean().item(),
                # How far the annealing has come: 0 once the soft assignment is one-hot.
                "soft_hard_gap": (quantized.soft - quantized.quantized).abs().mean().item(),
            },
        )

    def code_slices(self, image: torch.Tensor) -> torch.Tensor:
        return self.analysis(image)[:, :, None]

    def code_values(self) -> np.ndarray:
        """(C, L, 1) float64: each channel's centres in its symbol order."""
        centres = self.quantizer.centres.detach().double()
        return centres[self.symbol_centre.long()].numpy()

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        channels = torch.arange(self.config.channels)[None, :, None, None]
        centres = self.symbol_centre.long()[channels, symbols]
        return self.quantizer.centres[centres, 0]

    @torch.no_grad()
    def nearest_indices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/P, W/P) symbols of the nearest centres (the paper's hard assignment)."""
        centres = self.quantizer.quantize(self.analysis(image))
        lookup = self.symbol_centre.long().argsort(dim=1)  # centre -> symbol, per channel
        channels = torch.arange(self.config.channels)[None, :, None, None]
        return lookup[channels, centres]

    def code_in_use(self) -> np.ndarray:
        """(C, L) bool: every centre may be assigned (the hard assignment has no rate term)."""
        return np.ones(tuple(self.symbol_centre.shape), dtype=bool)

    @torch.no_grad()
    def place_guard_codes(
        self, exact: list[np.ndarray], spread: list[np.ndarray], gaps: np.ndarray, in_use: np.ndarray
    ) -> np.ndarray:
        """Guard centres (see ``BlockCodec.guard_codes``); returns the (C, L) mask of the symbols
        that serve them.

        The centres are shared by all channels, so an exact value takes the centre nearest to it
        only when that one lies within ``EXACT_TOLERANCE`` steps (it is then moved onto the value),
        else a centre that no channel uses (``in_use`` false for every channel; the uniform grid
        that training starts from reaches far beyond the photographs' range, and its tail centres
        serve nobody), the one nearest to the value. Spread values keep the nearest centre where
        it is. Raises ValueError when the free centres run out.
        """
        centres = self.quantizer.centres.detach()
        order = self.symbol_centre.long()
        free = np.ones(len(centres), dtype=bool)
        for m in range(len(order)):
            free[order[m][torch.from_numpy(in_use[m])].numpy()] = False
        moved: dict[int, float] = {}
        for m, values in enumerate(exact):
            for value in values[:, 0]:
                distances = (centres[:, 0].double() - value).abs().numpy()
                nearest = int(distances.argmin())
                if distances[nearest] <= EXACT_TOLERANCE and abs(moved.get(nearest, value) - value) <= EXACT_TOLERANCE:
                    choice = nearest
                elif free.any():
                    choice = int(np.where(free, distances, np.inf).argmin())
                    free[choice] = False
                else:
                    raise ValueError("no free SHVQ centre left for a guard value; use more centres (--num-centres)")
                centres[choice, 0] = float(value)
                moved[choice] = float(value)
        guard = np.zeros(tuple(order.shape), dtype=bool)
        values = self.code_values()  # (C, L, 1), with the moved centres
        for m in range(len(values)):
            targets = np.concatenate([exact[m], spread[m]])[:, 0]
            guard[m, np.abs(values[m, :, 0][None] - targets[:, None]).argmin(axis=1)] = True
        return guard

    @torch.no_grad()
    def sort_codes(self, usage: torch.Tensor) -> None:
        """Reorder each channel's symbols by ``usage`` (C, L) over the current symbols, most used first."""
        order = usage.argsort(dim=1, descending=True)
        self.symbol_centre.copy_(self.symbol_centre.gather(1, order))

    def set_rate_lambda(self, rate_lambda: float) -> None:
        """Change the rate-distortion trade-off (``--init-from`` with another ``--lambda``)."""
        self.config.rate_lambda = rate_lambda
