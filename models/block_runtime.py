"""The block codecs (DQ and SHVQ) as a plain-numpy coding runtime: the light install's codec.

A block codec's transforms are linear (:mod:`dqcodec.models.transforms`: pixel-unshuffle and a
1x1 convolution, the quantizer's 1x1 projection, a 1x1 convolution and pixel-shuffle back), so
coding a file needs no network runtime: this module reads the model's safetensors arrays and
computes what :class:`~dqcodec.models.block_codec.BlockCodec` computes in torch for training, in
float64, and chooses and codes indices with the same integer tables and the same encoder choice
(:mod:`dqcodec.models.context_tables`). ``tests/test_runtimes.py`` checks that both give the
same indices and pixels for every shipped model. A model with a post-filter after the synthesis
(a small CNN, ``postfilter_channels`` > 0) is not served here: its registry entry names the
torch runtime for it.

Shapes as in the codec-model interface (:mod:`dqcodec.models.interface`): images (B, 3, H, W)
float64 in [0, 1] with H and W multiples of the block size P; one level of (B, M, H/P, W/P)
indices.
"""

import itertools

import numpy as np

from dqcodec.models.context_tables import (
    CONTEXTS_PER_PHASE, NUM_PHASES, ROWS_SUFFIX, StoredContextTables, choose_indices, unpack_tables,
)
from dqcodec.models.interface import CompressedLevels, IndexLevel, LevelSpec

LEVEL_NAME = "blocks"
# Flat colours that every block codec must reproduce: the 8 corners of the RGB cube and the greys
# 32, 64, ..., 224 (8-bit levels).
GUARD_LEVELS = (0, 32, 64, 96, 128, 160, 192, 224, 255)
# How far (in [0, 1] pixel units, per codebook) a flat colour may be off through the guard codes.
GUARD_PIXEL_ERROR = 3 / 255


def guard_colours() -> np.ndarray:
    """(15, 3) float64 colours in [0, 1]: the cube's 8 corners, then the 7 inner greys of ``GUARD_LEVELS``."""
    corners = list(itertools.product((0, 255), repeat=3))
    greys = [(level,) * 3 for level in GUARD_LEVELS[1:-1]]
    return np.asarray(corners + greys, dtype=np.float64) / 255.0


def unshuffle(image: np.ndarray, block: int) -> np.ndarray:
    """(B, 3, H, W) -> (B, 3 P^2, H/P, W/P), channel c * P^2 + i * P + j (torch's PixelUnshuffle)."""
    b, c, h, w = image.shape
    blocks = image.reshape(b, c, h // block, block, w // block, block).transpose(0, 1, 3, 5, 2, 4)
    return blocks.reshape(b, c * block * block, h // block, w // block)


def shuffle(features: np.ndarray, block: int) -> np.ndarray:
    """Inverse of :func:`unshuffle`: (B, 3 P^2, h, w) -> (B, 3, h P, w P) (torch's PixelShuffle)."""
    b, c, h, w = features.shape
    blocks = features.reshape(b, c // (block * block), block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    return blocks.reshape(b, c // (block * block), h * block, w * block)


def pointwise(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 1x1 convolution: (B, C_in, h, w) features, (C_out, C_in) weight, (C_out,) bias -> (B, C_out, h, w)."""
    b, c, h, w = features.shape
    return (np.matmul(weight, features.reshape(b, c, h * w)) + bias[:, None]).reshape(b, -1, h, w)


class BlockRuntime:
    """A DQ or SHVQ model file as a :class:`~dqcodec.models.interface.CodingRuntime` in numpy.

    All arrays float64 (the weights as the file stores them, widened) or the integer tables
    (int32, as the training network holds them), never modified after.
    """

    def __init__(self, arrays: dict[str, np.ndarray], info: dict):
        """``arrays``: the model file's tensors by state-dict name (tables packed as stored);
        ``info``: its JSON description (``config`` read)."""
        config = info["config"]
        self.block = int(config["block"])
        self.rate_lambda = float(config["rate_lambda"])
        floats = {key: value.astype(np.float64) for key, value in arrays.items() if value.dtype.kind == "f"}
        # Analysis, then (DQ) the quantizer's projection: the values each codebook quantizes.
        self.slice_transforms = [(floats["analysis.linear.weight"][:, :, 0, 0], floats["analysis.linear.bias"])]
        if "quantizer.projection.weight" in floats:  # DQ: codebooks (M, K, D)
            self.slice_transforms.append((floats["quantizer.projection.weight"][:, :, 0, 0], floats["quantizer.projection.bias"]))
            self.code_values = floats["quantizer.codebooks"]
        else:  # SHVQ: channel c's symbol s is centre symbol_centre[c, s]
            centres = floats["quantizer.centres"]
            self.code_values = centres[arrays["symbol_centre"].astype(np.int64)]  # (C, L, 1)
        self.synthesis = (floats["synthesis.linear.weight"][:, :, 0, 0], floats["synthesis.linear.bias"])
        num_codebooks, codebook_size, _ = self.code_values.shape
        sizes = arrays["entropy.alphabet_sizes"].astype(np.int32)
        self.entropy = StoredContextTables(
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            num_predicted=int(config["predicted_codebooks"]),
            code_class=arrays["entropy.code_class"].astype(np.int32),
            code_level=arrays["entropy.code_level"].astype(np.int32),
            frequencies=unpack_tables(arrays["entropy.frequencies"], sizes, (num_codebooks, NUM_PHASES, CONTEXTS_PER_PHASE, codebook_size),
                                      arrays.get(f"entropy.{ROWS_SUFFIX}")).astype(np.int32),
            alphabet_sizes=sizes,
        )
        self.nearest_first_rows = self._holds_guard_codes()
        for array in (self.code_values, *self.synthesis, *(a for pair in self.slice_transforms for a in pair)):
            array.setflags(write=False)  # shared by every file this process codes (and by forked workers)

    @property
    def padding_multiple(self) -> int:
        return self.block

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """One level: (M, height / P, width / P) indices under the model's context tables."""
        return [LevelSpec(LEVEL_NAME, (self.entropy.num_codebooks, height // self.block, width // self.block), self.entropy)]

    def code_slices(self, image: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) -> (B, M, D, H/P, W/P): the values codebook m quantizes at each block."""
        features = unshuffle(image, self.block)
        for weight, bias in self.slice_transforms:
            features = pointwise(features, weight, bias)
        b, _, h, w = features.shape
        return features.reshape(b, self.entropy.num_codebooks, -1, h, w)

    def rate_lambdas(self, rate_lambda: float | None = None) -> np.ndarray:
        """(M,) the rate-distortion trade-off ``rate_lambda`` (pixel units; None: the model's) in
        each codebook's slice units (as ``BlockCodec.rate_lambdas``: pixel error per bit over the
        mean squared norm of the codebook's synthesis columns)."""
        columns = self.synthesis[0]  # (3 P^2, M * D)
        gains = (columns**2).sum(axis=0).reshape(self.entropy.num_codebooks, -1).mean(axis=1)
        return (self.rate_lambda if rate_lambda is None else rate_lambda) / np.maximum(gains, 1e-12)

    def _holds_guard_codes(self) -> bool:
        """Whether every codebook has a code in use near the value of every guard colour (as
        ``BlockCodec.holds_guard_codes``): models from release 0.3.0 on start each predicted
        codebook on its nearest codes."""
        reach = np.abs(self.synthesis[0]).max(axis=0).reshape(self.entropy.num_codebooks, -1).max(axis=1)
        gaps = 2 * GUARD_PIXEL_ERROR / np.maximum(reach, 1e-12)
        colours = guard_colours()  # (G, 3)
        flat = np.repeat(np.repeat(colours.T[None, :, None, :], self.block, axis=2), self.block, axis=3)  # (1, 3, P, G P)
        slices = self.code_slices(flat)[0, :, :, 0, :].transpose(0, 2, 1)  # (M, G, D)
        sizes = self.entropy.alphabet_sizes
        for m, targets in enumerate(slices):
            codes = self.code_values[m, : sizes[m]]
            distances = np.sqrt(((targets[:, None] - codes[None]) ** 2).sum(-1)).min(axis=1)
            if distances.max() > gaps[m] / 2:
                return False
        return True

    def compress(self, image: np.ndarray, rate_lambda: float | None = None) -> CompressedLevels:
        """(B, 3, H, W) float64 image in [0, 1] -> one level of (B, M, H/P, W/P) indices, each
        minimising distortion + lambda * (-log2 p) under the context tables in coding order
        (``rate_lambda`` in pixel units; None: the model's own)."""
        indices, step_tables = choose_indices(self.code_slices(image), self.code_values, self.entropy,
                                              self.rate_lambdas(rate_lambda), nearest_first_rows=self.nearest_first_rows)
        return [IndexLevel(LEVEL_NAME, indices, step_tables)]

    def decompress(self, levels: CompressedLevels) -> np.ndarray:
        """The ``"blocks"`` level -> (B, 3, H, W) float64 image clamped to [0, 1]."""
        (level,) = levels
        indices = level.indices  # (B, M, h, w)
        b, m, h, w = indices.shape
        codes = self.code_values[np.arange(m)[None, :, None, None], indices]  # (B, M, h, w, D)
        features = codes.transpose(0, 1, 4, 2, 3).reshape(b, -1, h, w)
        return np.clip(shuffle(pointwise(features, *self.synthesis), self.block), 0.0, 1.0)
