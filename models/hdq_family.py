"""A family of hierarchical DQ levels trained jointly (``--arch hdq-family``): one set of
transforms, coarse level and fine projection, one set of fine codebooks per rate level.

Why: levels refitted from transforms trained at one lambda fall behind at other rates (measured
on the photos' validation split: -0.90 and -1.65 dB against ``dq`` at the two highest levels,
which gained 0.39 dB within 35 minutes once trained at their own lambda), while separate
transforms per level would multiply the shipped weights. Each training batch is split into
consecutive parts, as equal as they can be, one per level; part ``i`` is quantized by level ``i``'s fine quantizer
at its lambda and charged its bits at that lambda, and all parts go through the shared analysis,
coarse level and synthesis. The exported levels are plain ``hdq`` models
(:class:`~dqcodec.models.hdq_codec.HierarchicalDQCodec`, :meth:`HDQFamily.level`) whose shared
tensors are identical, so ``--share-weights`` stores them once.
"""

from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass

import torch
from torch import nn

from dqcodec.models.hdq_codec import HDQConfig, HierarchicalDQCodec
from dqcodec.models.interface import CodecOutput

# What each level's table step measures (HDQConfig's fields with metadata "measured").
MEASURED_FIELDS = tuple(item.name for item in fields(HDQConfig) if item.metadata.get("measured"))
# Fine-level settings that differ between the levels of a family, and the measured ones; every other
# HDQConfig field is shared.
LEVEL_FIELDS = ("rate_lambda", "codebook_size", *MEASURED_FIELDS)
LEVELS_HELP = (
    "the family's levels, lowest rate first, as LAMBDA:K pairs (lambda as --lambda of --arch hdq, K fine codes per "
    "codebook), e.g. 0.03:128,0.012:128,0.005:256,0.002:256"
)


def parse_rate_levels(text: str) -> list[tuple[float, int]]:
    """``"0.03:128,0.005:256"`` -> [(0.03, 128), (0.005, 256)]. Raises ValueError (one line)."""
    levels = []
    for item in text.split(","):
        try:
            rate_lambda, size = item.split(":")
            levels.append((float(rate_lambda), int(size)))
        except ValueError:
            raise ValueError(f"--rate-levels {text!r}: expected LAMBDA:K pairs separated by commas") from None
    if any(rate_lambda <= 0 or size < 2 for rate_lambda, size in levels):
        raise ValueError(f"--rate-levels {text!r}: every lambda must be positive and every K at least 2")
    if [rate_lambda for rate_lambda, _ in levels] != sorted((rate_lambda for rate_lambda, _ in levels), reverse=True) \
            or len({rate_lambda for rate_lambda, _ in levels}) != len(levels):
        raise ValueError(f"--rate-levels {text!r}: list the levels lowest rate (largest lambda) first, each lambda once")
    return levels


def level_architecture(config: HDQConfig) -> dict:
    """A level's config as a dict without its measured fields: what a family and the levels it
    starts from must agree on."""
    return {key: value for key, value in asdict(config).items() if key not in MEASURED_FIELDS}


def _shared_field(item):
    default = {"default": item.default} if item.default is not MISSING else {}
    return item.name, item.type, field(**default, metadata=item.metadata)


def _check_levels(config) -> None:
    parse_rate_levels(config.rate_levels)


# HDQConfig's shared fields plus the list of levels (no second copy of the architecture's fields).
HDQFamilyConfig = make_dataclass(
    "HDQFamilyConfig",
    [_shared_field(item) for item in fields(HDQConfig) if item.name not in LEVEL_FIELDS]
    + [("rate_levels", str, field(default="0.03:128,0.012:128,0.005:256,0.002:256", metadata={"help": LEVELS_HELP}))],
    namespace={"__post_init__": _check_levels, "__module__": __name__,
               "__doc__": "Architecture of a jointly trained family of hdq levels (HDQConfig less lambda and K, plus the rate levels)."},
)


@dataclass
class FamilyOutput(CodecOutput):
    """A family's training pass: ``rate_lambdas`` (B,) is the lambda each image's bits are
    charged at (its level's)."""

    rate_lambdas: torch.Tensor | None = None


class HDQFamily(nn.Module):
    """Shared hdq transforms with one fine quantizer per level; images (B, 3, H, W) in [0, 1].

    ``body`` is the lowest level as an hdq network: its transforms, coarse level, fine projection
    and synthesis gains are every level's, its fine quantizer is level 0's; ``extra_quantizers``
    are the fine quantizers of levels 1..L-1 (on the body's projection).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.level_configs = [self.level_config(index) for index in range(len(parse_rate_levels(config.rate_levels)))]
        self.body = HierarchicalDQCodec(self.level_configs[0])
        self.extra_quantizers = nn.ModuleList(HierarchicalDQCodec._fine_quantizer(level) for level in self.level_configs[1:])
        # One projection for all levels: the shared synthesis reads the codewords in its space, so
        # levels differ only in how finely their codebooks cover it. (With a projection per level,
        # measured: every level lost 0.4-0.95 dB on the first 8 Kodak images in 6 100 steps while
        # the synthesis changed to serve four code spaces at once.) The other levels quantize the body's
        # projected slices, so their own projection is the identity.
        for quantizer in self.extra_quantizers:
            quantizer.projection = nn.Identity()

    @property
    def num_levels(self) -> int:
        return len(self.level_configs)

    @property
    def padding_multiple(self) -> int:
        return self.body.padding_multiple

    def level_config(self, index: int) -> HDQConfig:
        """The HDQConfig of level ``index`` (0: the lowest rate)."""
        rate_lambda, size = parse_rate_levels(self.config.rate_levels)[index]
        shared = {item.name: getattr(self.config, item.name) for item in fields(HDQConfig) if item.name not in LEVEL_FIELDS}
        return HDQConfig(**shared, rate_lambda=rate_lambda, codebook_size=size)  # measured fields: their defaults

    def fine_quantizer(self, index: int):
        """Level ``index``'s fine quantizer (levels 1..: codebooks only, on the body's projection)."""
        return self.body.fine_quantizer if index == 0 else self.extra_quantizers[index - 1]

    def forward(self, image: torch.Tensor) -> FamilyOutput:
        """Consecutive parts of the batch, as equal as they can be (sizes differ by at most one,
        the larger first), go to levels 0, 1, ...; a batch of fewer images than levels
        (validation) is coded by the first levels only, one image each."""
        body = self.body
        if self.training and image.shape[0] < self.num_levels:
            raise ValueError(f"a training batch needs at least one image per level ({self.num_levels}), not {image.shape[0]}")
        body._set_assignment_lambdas()
        latent = body.analysis(image)
        dtype = body.fine_quantizer.codebooks.dtype
        # tensor_split, not chunk: chunk(5) of 8 gives 4 parts of 2, leaving the fifth level out.
        parts = latent.tensor_split(min(len(latent), self.num_levels))
        with torch.autocast(image.device.type, enabled=False):  # codebook search and EMA in full precision
            fine = [self.quantize_level(index, part.to(dtype)) for index, part in enumerate(parts)]
            coarse = body.coarse_quantizer(body.coarse_analysis(latent).to(dtype))
        fine_codes = torch.cat([out.quantized for out in fine])
        reconstruction = body.reconstruct(fine_codes, coarse.quantized)
        if body.gain_update is not None:
            body._measure_synthesis_gains(fine_codes.detach(), coarse.quantized.detach(), reconstruction.detach())
        sizes = [len(part) for part in parts]
        rate_lambdas = torch.cat([torch.full((size,), self.level_configs[index].rate_lambda, device=image.device)
                                  for index, size in enumerate(sizes)])
        return FamilyOutput(
            reconstruction=reconstruction,
            bits=torch.cat([out.bits for out in fine]) + coarse.bits,
            quantizer_loss=sum(out.loss * size for out, size in zip(fine, sizes)) / image.shape[0] + coarse.loss,
            statistics={**self._level_statistics(image, reconstruction, fine, sizes),
                        "coarse_perplexity": coarse.perplexity.mean().item(),
                        "fine_gain": body.synthesis_gains[0].item(), "coarse_gain": body.synthesis_gains[1].item()},
            rate_lambdas=rate_lambdas,
        )

    def quantize_level(self, index: int, latent: torch.Tensor):
        """(B, C, h, w) fine latent -> level ``index``'s QuantizerOutput (ECVQ at its lambda)."""
        quantizer = self.fine_quantizer(index)
        quantizer.rate_lambda = self.body.rate_lambdas(self.level_configs[index].rate_lambda)[0]
        return quantizer(latent if index == 0 else self.body.fine_quantizer.projection(latent))

    @staticmethod
    @torch.no_grad()
    def _level_statistics(image: torch.Tensor, reconstruction: torch.Tensor, fine: list, sizes: list[int]) -> dict:
        """Per level (q1 = level 0): PSNR (dB) of its part of the batch and its fine bits per pixel."""
        statistics = {}
        pixels = image.shape[2] * image.shape[3]
        for index, (images, decoded, out) in enumerate(zip(image.split(sizes), reconstruction.split(sizes), fine)):
            mse = (decoded.float().clamp(0, 1) - images).pow(2).mean().clamp_min(1e-12)
            statistics[f"q{index + 1}_psnr"] = (-10 * torch.log10(mse)).item()
            statistics[f"q{index + 1}_fine_bpp"] = out.bits.float().sum().item() / (len(images) * pixels)
        return statistics

    def level(self, index: int) -> HierarchicalDQCodec:
        """Level ``index`` as a plain hdq network (a copy): the shared tensors with its own fine
        codebooks; its fine tables are empty, to be counted at export."""
        net = HierarchicalDQCodec(self.level_configs[index])
        state = net.state_dict()
        state.update({key: value for key, value in self.body.state_dict().items() if not key.startswith("fine_entropy.")})
        state.update({f"fine_quantizer.{key}": value for key, value in self.fine_quantizer(index).state_dict().items()})
        net.load_state_dict(state)
        return net
