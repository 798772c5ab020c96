"""The hierarchical Depthwise-Quantized Auto-Encoder (DQ-AE) of the DQ paper, a likelihood model.

N levels, following Algorithm 1 of the paper's appendix (and the layout of its reference code):

- **Encoders, bottom to top.** e_1 = E_1(x) at stride ``first_stride`` (4: two stride-2
  convolutions), e_l = E_l(e_{l-1}) at twice the stride of the level below; each E_l ends in
  residual blocks.
- **Quantization, top down.** The top level quantizes its encoding, q_N = Q_N(e_N); every lower
  level quantizes its encoding plus the decoded quantized representation of the level above,
  q_l = Q_l(e_l + D_l(q_{l+1})), D_l a stride-2 up-sampling decoder. Q_l is depthwise
  quantization (M_l codebooks of K_l codes, each on its own D-dim 1x1 projection) or, with
  ``quantizer="vq"``, the paper's coupled VQ baseline (M_l codebooks on one shared D-dim
  projection): the same networks, only the quantizer's projection differs.
- **Joint decoding.** U_l up-samples q_l to the bottom level's resolution; a joint decoder reads
  the N up-sampled levels (concatenated) and outputs the parameters of the output head at full
  resolution, p(x | q_1, ..., q_N) (:mod:`dqcodec.models.likelihood_heads`).

Codebooks are EMA codebooks (decay 0.99) with dead-code re-initialisation and commitment weight
beta; on the first training pass they are seeded by k-means++ on that batch's vectors, level by
level from the top. Images are (B, 3, H, W) in [0, 1] (8-bit values / 255) with H and W multiples
of ``padding_multiple``.

The network is a likelihood model, not a codec (no ``compress``): ``forward`` returns a
:class:`DQAEOutput` for :func:`dqcodec.train.loop.train` (``bits`` = -log2 p(x | codes) per
image, the reconstruction term only; the code indices' own bits come from an index prior fitted
elsewhere), ``encode`` the indices of every level and ``head_parameters`` the head's input
decoded from indices alone.
"""

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from dqcodec.models.interface import CodecOutput
from dqcodec.models.likelihood_heads import HEADS, make_head
from dqcodec.models.lloyd import kmeans_plus_plus
from dqcodec.models.quantizers import CoupledDepthwiseQuantizer, DepthwiseQuantizer, slice_vectors

QUANTIZERS = {"dq": DepthwiseQuantizer, "vq": CoupledDepthwiseQuantizer}


def parse_levels(text: str, name: str) -> list[int]:
    """ "256,128" -> [256, 128] (one positive integer per level, bottom level first)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, one per level (e.g. 256,128), not {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must be positive integers, one per level, not {text!r}")
    return values


@dataclass
class DQAEConfig:
    """Architecture of one DQ-AE (stored in the model's JSON). Per-level lists run bottom to top."""

    codebook_sizes: str = field(default="256,128", metadata={
        "help": "codes per codebook K of each level, bottom (finest) level first; the number of entries is the number of levels"})
    codebook_counts: str = field(default="3,3", metadata={"help": "codebooks M of each level, bottom level first"})
    code_dim: int = field(default=32, metadata={"help": "dimension D of each codebook's codes"})
    quantizer: str = field(default="dq", metadata={
        "help": "dq: depthwise quantization (a projection per codebook); vq: the coupled-VQ baseline "
                "(every codebook on one shared projection), identical networks otherwise", "choices": tuple(QUANTIZERS)})
    channels: int = field(default=128, metadata={"help": "channels of the encoders and decoders"})
    residual_blocks: int = field(default=2, metadata={"help": "residual blocks in each encoder and decoder"})
    residual_channels: int = field(default=32, metadata={"help": "hidden channels of a residual block"})
    first_stride: int = field(default=4, metadata={"help": "stride of the bottom level (2 or 4); each level above doubles it",
                                                   "choices": (2, 4)})
    head: str = field(default="logistic_mixture", metadata={
        "help": "output distribution p(x | codes): mse (Gaussian of fixed sigma, trained on MSE), categorical "
                "(256-way softmax per sub-pixel) or logistic_mixture (PixelCNN++)", "choices": HEADS})
    mixture_components: int = field(default=10, metadata={"help": "components of the logistic mixture head"})
    gaussian_sigma: float = field(default=8.0, metadata={"help": "standard deviation of the mse head's Gaussian, in 8-bit code values"})
    beta: float = field(default=0.25, metadata={"help": "commitment weight of the quantizers"})
    dead_code_threshold: float = field(default=0.1, metadata={
        "help": "a code whose EMA usage share falls below this fraction of a uniform share (1/K) is moved onto a "
                "random vector of the batch"})

    def __post_init__(self):
        sizes, counts = parse_levels(self.codebook_sizes, "codebook_sizes"), parse_levels(self.codebook_counts, "codebook_counts")
        if len(sizes) != len(counts):
            raise ValueError(f"codebook_sizes has {len(sizes)} levels but codebook_counts {len(counts)}")
        if self.first_stride not in (2, 4):
            raise ValueError(f"first_stride must be 2 or 4, not {self.first_stride}")

    @property
    def levels(self) -> list[tuple[int, int]]:
        """(K, M) of each level, bottom first."""
        return list(zip(parse_levels(self.codebook_sizes, "codebook_sizes"), parse_levels(self.codebook_counts, "codebook_counts")))


@dataclass
class DQAEOutput(CodecOutput):
    """A DQ-AE training pass: :class:`~dqcodec.models.interface.CodecOutput` plus

    reconstruction: (B, 3, H, W) the head's mean image, in [0, 1].
    bits: (B,) -log2 p(x | codes) of each 8-bit image, in bits (reconstruction term only).
    quantizer_loss: scalar, beta * commitment summed over the levels.
    statistics: bits_per_dim (of ``bits``) and perplexity_<level> (mean over its codebooks, level 0
        the bottom one).
    indices: per level, bottom first, (B, M_l, H / s_l, W / s_l) int64 code indices.
    objective: scalar, the head's training loss per sub-pixel (MSE of [0, 1] values for the mse
        head, bits for the others).
    """

    indices: list[torch.Tensor] = field(default_factory=list)
    objective: torch.Tensor | None = None


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), channels unchanged."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.layers(features)


def encoder(in_channels: int, channels: int, blocks: int, hidden: int, stride: int) -> nn.Sequential:
    """(B, in, H, W) -> (B, channels, H / stride, W / stride): stride-2 4x4 convolutions, residual blocks."""
    layers: list[nn.Module] = []
    width = in_channels
    for step in range(stride.bit_length() - 1):
        out = channels if step == stride.bit_length() - 2 else channels // 2
        layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
        width = out
    layers.append(nn.Conv2d(width, channels, 3, padding=1))
    layers += [ResidualBlock(channels, hidden) for _ in range(blocks)]
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def decoder(in_channels: int, out_channels: int, channels: int, blocks: int, hidden: int, stride: int) -> nn.Sequential:
    """(B, in, h, w) -> (B, out, stride h, stride w): a 3x3 convolution, residual blocks, stride-2
    transposed convolutions (none for stride 1)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
    layers += [ResidualBlock(channels, hidden) for _ in range(blocks)]
    layers.append(nn.ReLU())
    steps = stride.bit_length() - 1
    if steps == 0 and out_channels != channels:
        layers.append(nn.Conv2d(channels, out_channels, 1))
    for step in range(steps):
        last = step == steps - 1
        layers.append(nn.ConvTranspose2d(channels if step == 0 else channels // 2, out_channels if last else channels // 2,
                                         4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DQAE(nn.Module):
    """N-level DQ-AE (see the module notes); images (B, 3, H, W) in [0, 1]."""

    def __init__(self, config: DQAEConfig):
        super().__init__()
        self.config = config
        c, blocks, hidden = config.channels, config.residual_blocks, config.residual_channels
        levels = config.levels
        self.encoders = nn.ModuleList(
            [encoder(3 if level == 0 else c, c, blocks, hidden, config.first_stride if level == 0 else 2)
             for level in range(len(levels))]
        )
        quantizer = QUANTIZERS[config.quantizer]
        self.quantizers = nn.ModuleList(
            [quantizer(c, codebooks, size, config.code_dim, beta=config.beta, dead_code_threshold=config.dead_code_threshold)
             for size, codebooks in levels]
        )
        # decoders[l] takes level l + 1's codes down to level l's resolution (none for the top).
        self.decoders = nn.ModuleList(
            [decoder(self.quantizers[level + 1].out_channels, c, c, blocks, hidden, 2) for level in range(len(levels) - 1)]
        )
        self.upsamplers = nn.ModuleList([self._upsampler(level) for level in range(len(levels))])
        self.head = make_head(config.head, config.gaussian_sigma, config.mixture_components)
        self.joint_decoder = nn.Sequential(
            decoder(c * len(levels), c, c, blocks, hidden, config.first_stride),
            decoder(c, c, c, blocks, hidden, 1),
            nn.Conv2d(c, self.head.channels, 3, padding=1),
        )
        # False until the first training pass has seeded the codebooks from its batch.
        self.register_buffer("codebooks_seeded", torch.tensor(False))

    def _upsampler(self, level: int) -> nn.Sequential:
        """Level ``level``'s codes (B, M D, h, w) -> (B, channels, 2^level h, 2^level w), the bottom resolution."""
        c, blocks, hidden = self.config.channels, self.config.residual_blocks, self.config.residual_channels
        codes = self.quantizers[level].out_channels
        if level == 0:
            return decoder(codes, c, c, blocks, hidden, 1)
        return nn.Sequential(*[decoder(codes if step == 0 else c, c, c, blocks, hidden, 2) for step in range(level)])

    @property
    def num_levels(self) -> int:
        return len(self.quantizers)

    @property
    def padding_multiple(self) -> int:
        """Image sides must be multiples of the top level's stride."""
        return self.config.first_stride * 2 ** (self.num_levels - 1)

    def _encodings(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-to-top encodings e_1 ... e_N."""
        side = self.padding_multiple
        if image.shape[-1] % side or image.shape[-2] % side:
            raise ValueError(f"image sides {tuple(image.shape[-2:])} must be multiples of {side}")
        encodings, features = [], image
        for block in self.encoders:
            features = block(features)
            encodings.append(features)
        return encodings

    def _quantize_top_down(self, encodings: list[torch.Tensor]):
        """Quantizer outputs of every level, bottom first (computed top down)."""
        outputs = [None] * self.num_levels
        dtype = self.quantizers[0].codebooks.dtype
        above = None
        for level in reversed(range(self.num_levels)):
            features = encodings[level] if above is None else encodings[level] + self.decoders[level](above)
            with torch.autocast(features.device.type, enabled=False):  # codebook search and EMA in full precision
                features = features.to(dtype)
                if self.training and not bool(self.codebooks_seeded):
                    self._seed_codebooks(self.quantizers[level], features)
                outputs[level] = self.quantizers[level](features)
            above = outputs[level].quantized
        if self.training:
            self.codebooks_seeded.fill_(True)
        return outputs

    @torch.no_grad()
    def _seed_codebooks(self, quantizer: DepthwiseQuantizer, features: torch.Tensor) -> None:
        """k-means++ seeds from this batch's vectors (process 0's, in data-parallel training)."""
        slices = quantizer.project(features).float()  # (B, M, D, h, w)
        vectors = slice_vectors(slices).cpu()
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        codebooks = []
        for points in vectors:
            if len(points) < quantizer.codebook_size:  # fewer vectors than codes: jittered copies
                copies = -(-quantizer.codebook_size // len(points))
                points = points.repeat(copies, 1)
                points = points + 0.01 * points.std() * torch.randn(points.shape, generator=generator)
            codebooks.append(kmeans_plus_plus(points, quantizer.codebook_size, generator))
        codebooks = torch.stack(codebooks).to(quantizer.codebooks)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(codebooks, src=0)
        quantizer.load_codebooks(codebooks, torch.full_like(quantizer.ema_counts, 1.0 / quantizer.codebook_size))

    def _decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Quantized representations of every level (bottom first) -> (B, head channels, H, W)."""
        upsampled = [upsampler(level_codes) for upsampler, level_codes in zip(self.upsamplers, codes, strict=True)]
        return self.joint_decoder(torch.cat(upsampled, dim=1))

    def forward(self, image: torch.Tensor) -> DQAEOutput:
        """Training pass on (B, 3, H, W) 8-bit images in [0, 1]."""
        outputs = self._quantize_top_down(self._encodings(image))
        parameters = self._decode([out.quantized for out in outputs])
        with torch.autocast(image.device.type, enabled=False):  # likelihoods in full precision
            bits = self.head.bits(parameters, image)
            objective = self.head.objective(parameters, image, bits)
            reconstruction = self.head.mean(parameters)
        dims = image[0].numel()
        statistics = {"bits_per_dim": bits.detach().mean().item() / dims}
        for level, out in enumerate(outputs):
            statistics[f"perplexity_{level}"] = out.perplexity.mean().item()
        return DQAEOutput(
            reconstruction=reconstruction,
            bits=bits,
            quantizer_loss=sum(out.loss for out in outputs),
            statistics=statistics,
            indices=[out.indices for out in outputs],
            objective=objective,
        )

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) images -> per level, bottom first, (B, M_l, h_l, w_l) int64 indices.

        Nearest-code assignment, computed top down (a level's input reads the decoded level
        above); nothing is updated, whatever the module's mode.
        """
        encodings = self._encodings(image)
        indices: list[torch.Tensor] = [None] * self.num_levels
        above = None
        for level in reversed(range(self.num_levels)):
            features = encodings[level] if above is None else encodings[level] + self.decoders[level](above)
            quantizer = self.quantizers[level]
            indices[level] = quantizer.quantize(features.to(quantizer.codebooks.dtype))
            above = quantizer.dequantize(indices[level])
        return indices

    def head_parameters(self, indices: list[torch.Tensor], levels: tuple[int, ...] | None = None) -> torch.Tensor:
        """Per-level indices (bottom first) -> (B, head channels, H, W) parameters of p(x | codes).

        ``levels``: decode from these levels only (default: all); the quantized representation
        of every other level enters the joint decoder as zeros, as in the DQ paper's top-only and
        bottom-only reconstructions (its Fig. 4).
        """
        codes = [quantizer.dequantize(level) for quantizer, level in zip(self.quantizers, indices, strict=True)]
        if levels is not None:
            codes = [level_codes if level in levels else torch.zeros_like(level_codes) for level, level_codes in enumerate(codes)]
        return self._decode(codes)

    def bits(self, image: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
        """(B,) -log2 p(image | indices) in bits (the reconstruction term of bits/dim)."""
        parameters = self.head_parameters(indices)
        return self.head.bits(parameters, image)
