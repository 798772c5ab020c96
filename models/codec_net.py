"""The DQ block codec network: analysis -> depthwise quantizer -> synthesis, plus index tables.

``forward`` is for training (reconstruction, commitment loss and the rate in bits that the
entropy-constrained assignment traded against). ``compress`` / ``decompress`` (from
:class:`~dqcodec.models.block_codec.BlockCodec`) map images to code indices and back; turning
indices into bytes is the job of ``dqcodec.codec`` with the integer tables of ``self.entropy``.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from dqcodec.models.block_codec import BlockCodec
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.interface import RATE_LAMBDA_HELP, CodecOutput
from dqcodec.models.quantizers import DepthwiseQuantizer
from dqcodec.models.transforms import BlockAnalysis, BlockSynthesis

# A code whose count is below this share of its codebook's mean count is free for a guard code
# (the dead-code rule of the quantizer, relative to a uniform share).
FREE_SHARE = 1e-3


@dataclass
class CodecConfig:
    """Architecture of one DQ block codec model (stored in the model's JSON)."""

    block: int = field(default=8, metadata={"help": "block size P: the image is processed in P x P blocks"})
    num_codebooks: int = field(default=192, metadata={"help": "number of codebooks M"})
    codebook_size: int = field(default=64, metadata={"help": "codes per codebook K"})
    code_dim: int = field(default=1, metadata={"help": "dimension D of each codebook's slice"})
    rate_lambda: float = field(default=0.01, metadata={"help": RATE_LAMBDA_HELP, "flag": "--lambda"})
    postfilter_channels: int = field(
        default=0, metadata={"help": "channels of the residual CNN after the block synthesis (0: none)"}
    )
    predicted_codebooks: int = field(
        default=3, metadata={"help": "first codebooks whose indices are coded with DPCM-like contexts"}
    )

    @property
    def channels(self) -> int:
        return 3 * self.block * self.block


class DQCodecNet(BlockCodec):
    """Block transform + depthwise quantizer + context tables; images (B, 3, H, W) in [0, 1].

    The quantizer's training-time ECVQ assignment uses ``rate_lambda`` in latent units, which
    are pixel units for the orthonormal (block PCA) transform training starts from; coding
    converts it per codebook through the synthesis gains (``rate_lambdas``).
    """

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
            bits=quantized.bits,
            quantizer_loss=quantized.loss,
            statistics={"perplexity": quantized.perplexity.mean().item()},
        )

    def code_slices(self, image: torch.Tensor) -> torch.Tensor:
        return self.quantizer.project(self.analysis(image))

    def code_values(self) -> np.ndarray:
        return self.quantizer.codebooks.detach().double().numpy()

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantizer.dequantize(indices)

    @torch.no_grad()
    def nearest_indices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, M, H/P, W/P): the quantizer's own choice (marginal-rate ECVQ), no tables."""
        return self.quantizer.quantize(self.analysis(image))

    def code_in_use(self) -> np.ndarray:
        """(M, K) bool: codes with more than a dead code's share of the usage counts (the codes
        that the ECVQ initialisation or training left at a negligible count are free)."""
        counts = self.quantizer.ema_counts
        return (counts > FREE_SHARE * counts.mean(dim=1, keepdim=True)).cpu().numpy()

    def place_guard_codes(
        self, exact: list[np.ndarray], spread: list[np.ndarray], gaps: np.ndarray, in_use: np.ndarray
    ) -> np.ndarray:
        """Guard codes in the free slots of the quantizer's codebooks (see ``BlockCodec.guard_codes``
        and :meth:`~dqcodec.models.quantizers.CodebookQuantizer.place_guard_codes`)."""
        return self.quantizer.place_guard_codes(exact, spread, gaps, in_use)

    @torch.no_grad()
    def sort_codes(self, usage: torch.Tensor) -> None:
        """Reorder each codebook's codes by ``usage`` (M, K), most used first; unused ones last and off."""
        self.quantizer.prune(usage)

    def set_rate_lambda(self, rate_lambda: float) -> None:
        """Change the rate-distortion trade-off (``--init-from`` with another ``--lambda``)."""
        self.config.rate_lambda = rate_lambda
        self.quantizer.rate_lambda = rate_lambda
