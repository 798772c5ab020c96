"""A DQ-AE with the logistic-mixture head as a lossless codec: code indices, then every pixel.

``dqcodec encode --lossless`` with a model of this architecture writes, per tile:

1. the code indices of every level, top (coarsest) first, each under the exact context index
   prior that ``dqcodec likelihood`` fits on training codes (the top level a
   :class:`~dqcodec.models.entropy.ContextIndexModel`, each lower level a
   :class:`~dqcodec.models.hierarchical_entropy.CoarseConditionedIndexModel` reading the level
   above), stored in the model;
2. the pixels, channel by channel (red, green given red, blue given both), under the head's
   discretized logistic mixture p(x | codes), as integer tables
   (:mod:`dqcodec.models.mixture_tables`).

Decoding reads the indices, runs the decoder network (float64, in the torch runtime) to the
head's parameters, rounds them to integers and decodes the pixels: the image comes back bit for
bit. The file's size is then the honest bits/dim of ``dqcodec likelihood`` (index bits plus
-log2 p(x | codes)), plus the rounding of the tables, the coder and the header.

The model is a :class:`~dqcodec.models.dqae.DQAE` (same weights, same state-dict names) plus the
index priors and the integer lookup tables; :func:`lossless_model` builds one from a trained
DQ-AE and its fitted priors. It is coded, never trained.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from dqcodec.models.dqae import DQAE, DQAEConfig
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.hierarchical_entropy import CoarseConditionedIndexModel
from dqcodec.models.interface import CodingStep, CompressedLevels, IndexLevel, LevelSpec, Side, level_bits
from dqcodec.models.mixture_tables import CHUNK, PixelTables, lookup_tables, quantize_parameters

PIXELS = "pixels"  # the name of the last "level": the image's 8-bit values, (B, 3, H, W)


def level_name(level: int) -> str:
    """The name of DQ-AE level ``level`` (0: the bottom, finest) in a file."""
    return f"level{level}"


@dataclass
class LosslessDQAEConfig(DQAEConfig):
    """A DQ-AE's config (the head must be ``logistic_mixture``); nothing else is chosen here."""

    def __post_init__(self):
        super().__post_init__()
        if self.head != "logistic_mixture":
            raise ValueError(f"lossless coding needs the logistic_mixture head, not {self.head}")


class LosslessDQAE(DQAE):
    """A DQ-AE that codes images losslessly (the codec-model interface; ``forward`` is the DQ-AE's).

    Extra state (saved with the model): ``index_priors`` (one per level, bottom first) and the
    integer lookup tables ``pixel_cdf``, ``pixel_inverse_scale``, ``pixel_weight``.
    """

    lossless = True
    tile_overlap = 0  # tiles decode exactly: nothing to blend
    # The float64 decoder runs at full resolution: coding a 256 tile peaks at 1.5 GB, a whole
    # Kodak image at 5.7 GB, and tiles of 256 cost 0.13 % more bytes on kodim01 (README).
    default_tile_size = 256

    def __init__(self, config: LosslessDQAEConfig):
        super().__init__(config)
        priors: list[ContextIndexModel] = []
        for level, (size, count) in enumerate(config.levels):
            if level + 1 < len(config.levels):
                above_size, above_count = config.levels[level + 1]
                priors.append(CoarseConditionedIndexModel(count, size, level_name(level + 1), above_count, above_size, factor=2))
            else:
                priors.append(ContextIndexModel(count, size))
        self.index_priors = nn.ModuleList(priors)
        for name, table in lookup_tables().items():
            self.register_buffer(f"pixel_{name}", torch.from_numpy(table))

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """The code levels, top first, then the pixels, of a padded ``height`` x ``width`` image."""
        specs = []
        for level in reversed(range(self.num_levels)):
            stride = self.config.first_stride * 2**level
            quantizer = self.quantizers[level]
            specs.append(LevelSpec(level_name(level), (quantizer.num_codebooks, height // stride, width // stride),
                                   self.index_priors[level]))
        specs.append(LevelSpec(PIXELS, (3, height, width), PixelMixtureModel(self)))
        return specs

    @torch.no_grad()
    def compress(self, image: torch.Tensor) -> CompressedLevels:
        """(B, 3, H, W) 8-bit image in [0, 1] -> the code levels (top first) and the pixels."""
        indices = self.encode(image)
        levels = [IndexLevel(level_name(level), indices[level].numpy()) for level in reversed(range(self.num_levels))]
        pixels = torch.round(image * 255).to(torch.int64).numpy()
        return [*levels, IndexLevel(PIXELS, pixels)]

    def decompress(self, levels: CompressedLevels) -> torch.Tensor:
        """The decoded levels -> (B, 3, H, W) the pixels, in [0, 1] (the code levels are not needed)."""
        return torch.from_numpy(levels[-1].indices / 255.0)

    @torch.no_grad()
    def pixel_tables(self, side: Side) -> PixelTables:
        """The integer tables of the pixels given every code level (``side``, by name)."""
        indices = [torch.from_numpy(side[level_name(level)]) for level in range(self.num_levels)]
        parameters = self.head_parameters(indices).double().numpy()
        tables = {"cdf": self.pixel_cdf.numpy(), "inverse_scale": self.pixel_inverse_scale.numpy(),
                  "weight": self.pixel_weight.numpy()}
        return PixelTables(quantize_parameters(parameters, self.config.mixture_components, tables["weight"]), tables)


class PixelMixtureModel:
    """The pixels as the last level of a file: M = 3 channels of K = 256 values, coded channel by
    channel (one coding step each), under :class:`~dqcodec.models.mixture_tables.PixelTables`.

    The decoder network runs once per tile: the tables of the last codes seen are kept for the
    three steps.
    """

    def __init__(self, network: LosslessDQAE):
        self._network = network
        self._key: tuple | None = None
        self._tables: PixelTables | None = None

    def _tables_for(self, side: Side) -> PixelTables:
        key = tuple(side[level_name(level)].tobytes() for level in range(self._network.num_levels))
        if key != self._key:
            self._tables, self._key = self._network.pixel_tables(side), key
        return self._tables

    def coding_steps(self, shape: tuple[int, int, int, int]):
        everywhere = np.ones(shape[2:], dtype=bool)
        return (CodingStep(channel, 0, everywhere) for channel in range(3))

    def step_tables(self, indices: np.ndarray, step: CodingStep, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """(B H W, 256) tables of channel ``step.codebook``, one per pixel (each its own row),
        reading the decoded earlier channels."""
        channel = step.codebook
        b, _, h, w = indices.shape
        earlier = np.moveaxis(indices[:, :channel], 1, -1).reshape(b * h * w, channel)
        tables = self._tables_for(side)
        chunks = [tables.frequencies(channel, earlier[start : start + CHUNK], start, start + CHUNK)
                  for start in range(0, len(earlier), CHUNK)]
        return np.concatenate(chunks), np.arange(len(earlier))

    def bits(self, indices: np.ndarray, side: Side) -> float:
        """-log2 p of the (B, 3, H, W) pixels under the integer tables."""
        return level_bits(self, indices, side)

    def fit(self, index_batches) -> None:
        raise NotImplementedError("the pixel tables come from the network, nothing is counted")


def lossless_model(network: DQAE, priors: list[ContextIndexModel]) -> LosslessDQAE:
    """A lossless codec of trained DQ-AE ``network`` (logistic-mixture head) and its index priors
    (one per level, bottom first, as :func:`dqcodec.eval.likelihood.fit_index_prior` fits them)."""
    model = LosslessDQAE(LosslessDQAEConfig(**asdict(network.config)))
    missing, unexpected = model.load_state_dict(network.state_dict(), strict=False)
    if unexpected or any(not key.startswith(("index_priors.", "pixel_")) for key in missing):
        raise ValueError(f"not the weights of this DQ-AE: unexpected {unexpected}, missing {missing}")
    for mine, fitted in zip(model.index_priors, priors, strict=True):
        mine.load_state_dict(fitted.state_dict())
    return model.eval()
