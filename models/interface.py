"""The codec-model interface: all that ``dqcodec.codec`` and ``dqcodec.train`` know of a codec network.

A codec network (one module under ``models/`` plus a registry entry) maps an image to named
levels of code indices, coarse to fine, and back:

- ``padding_multiple``: images are padded (edge replication) to a multiple of this many pixels.
- ``levels(height, width) -> list[LevelSpec]``: for a padded image, each level's name, index
  shape (M, h, w) and index entropy model, coarse to fine.
- ``compress(image) -> CompressedLevels``: (B, 3, H, W) in [0, 1] -> the levels' indices.
- ``decompress(levels) -> image``: the levels' indices -> (B, 3, H, W) in [0, 1], in the dtype of
  the network.
- ``forward(image) -> CodecOutput``: the training pass.
- ``tile_overlap`` (optional, pixels): large images are coded in independent tiles (a multiple
  of ``padding_multiple``, see ``dqcodec.codec.tiles``) whose neighbours share this many pixels,
  blended on decode so that no seam shows where a tile's reconstruction near its border differs
  from the one inside. Without the attribute, ``padding_multiple``: one block for the block
  codecs (whose border blocks, coded without their neighbours as context, come out a little
  worse than inside), about how far border effects reach for a convolutional codec.

Index entropy models turn indices into integer frequency tables for the range coder
(``dqcodec.codec`` owns the coder and the bytes). They code one level's (B, M, h, w) indices in
``coding_steps``; ``step_tables`` may read what is already decoded of that level and ``side``, the
decoded coarser levels by name, so a hierarchical model is a composition of per-level models in
which the fine level reads the coarse one (as CompressAI's ``latent_codecs`` nest). Tables are
integers computed only from integers, so encoder and decoder rebuild them bit for bit
(DESIGN.md, "Entropy coding: exactness first").

For coding files, ``dqcodec.codec`` holds a :class:`CodingRuntime`: the same interface in
numpy and float64 (image arrays in, image arrays out), which each architecture's registry entry
provides (``dqcodec.models.registry``): a plain-numpy runtime where the transforms are simple
enough (the block codecs, :mod:`dqcodec.models.block_runtime`), else the network itself in
torch (:mod:`dqcodec.models.torch_runtime`). This module imports no torch, so the light
install reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


# The one unit of every architecture's rate_lambda (config field, training loss, encoder choice).
RATE_LAMBDA_HELP = (
    "rate-distortion trade-off: squared pixel error (RGB values in [0, 1], summed over pixels and "
    "channels) per bit; smaller means more bits and higher quality"
)
# The largest rate_lambda an encoder accepts in place of a model's own (``dqcodec encode --lambda``):
# 25 times the lowest level's, where nearly every index is already its codebook's cheapest.
MAX_RATE_LAMBDA = 1.0


@dataclass
class CodecOutput:
    """The training pass of a codec network, the same for every architecture.

    reconstruction: (B, 3, H, W) image, about [0, 1], differentiable.
    bits: (B,) rate estimate of each image's indices in bits, the term training trades against
        distortion (ECVQ marginal rate, soft entropy, ... as the architecture defines it).
    quantizer_loss: scalar added to the rate-distortion loss as it is (codebook and commitment
        terms; zero where the quantizer has none).
    statistics: figures to log (e.g. mean perplexity), plain floats.
    """

    reconstruction: torch.Tensor
    bits: torch.Tensor
    quantizer_loss: torch.Tensor
    statistics: dict[str, float] = field(default_factory=dict)


StepTables = list[tuple[np.ndarray, np.ndarray]]  # per coding step: (U, K) distinct tables, (N,) row of each symbol


@dataclass(frozen=True)
class IndexLevel:
    """One level of code indices: ``indices`` is (B, M, h, w) int64.

    ``step_tables``: what the entropy model's ``step_tables`` gave for each coding step when the
    encoder chose these indices (:func:`~dqcodec.models.context_tables.choose_indices`), so that
    the range coder need not compute every context a second time; None: computed when coded.
    Each step's tables read only indices placed before it, which the choice never changes
    afterwards, so they are the ones the decoder computes.
    """

    name: str
    indices: np.ndarray
    step_tables: StepTables | None = field(default=None, compare=False, repr=False)


CompressedLevels = list[IndexLevel]
Side = Mapping[str, np.ndarray]  # decoded coarser levels, name -> (B, M, h, w) indices


@dataclass(frozen=True)
class CodingStep:
    """One call of the range coder: codebook ``codebook`` of a level at the (h, w) positions of
    ``mask``, in ``phase`` (the entropy model's name for the pass, e.g. checkerboard anchors)."""

    codebook: int
    phase: int
    mask: np.ndarray

    def symbols(self, indices: np.ndarray) -> np.ndarray:
        """The (N,) indices this step codes, images first then row-major positions."""
        return indices[:, self.codebook][:, self.mask].reshape(-1)

    def place(self, indices: np.ndarray, symbols: np.ndarray) -> None:
        """Write decoded (N,) ``symbols`` into ``indices`` (B, M, h, w) at this step's positions."""
        indices[:, self.codebook][:, self.mask] = symbols.reshape(indices.shape[0], -1)


class IndexEntropyModel(Protocol):
    """Integer probability tables for one level's (B, M, h, w) indices."""

    def coding_steps(self, shape: tuple[int, int, int, int]) -> Iterator[CodingStep]:
        """The steps, in coding order, that together code every index of a (B, M, h, w) level once."""

    def step_tables(self, indices: np.ndarray, step: CodingStep, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """The tables of ``step``'s N symbols: (U, K) int32 distinct frequency tables (each entry
        >= 1, rows summing to at most 2**16) and the (N,) row of them each symbol reads (a step
        codes hundreds of symbols with a few dozen tables, and the coder turns each distinct
        table into probabilities once); reads only what is decoded before ``step`` and ``side``."""

    def bits(self, indices: np.ndarray, side: Side) -> float:
        """-log2 p of all indices under the tables (the estimate beside a file's real size)."""

    def fit(self, index_batches: Iterable[tuple[np.ndarray, Side]]) -> None:
        """Count the tables over training (indices, side) pairs."""


@dataclass(frozen=True)
class LevelSpec:
    """What the coder needs of one level: its name, index shape (M, h, w) and entropy model."""

    name: str
    shape: tuple[int, int, int]
    entropy: IndexEntropyModel


class CodecModel(Protocol):
    """A codec network (an ``nn.Module``) as ``dqcodec.codec`` and ``dqcodec.train`` see it."""

    config: object  # the architecture's config dataclass, stored in the model's JSON

    @property
    def padding_multiple(self) -> int:
        """Images are padded to a multiple of this many pixels (1..64) before ``compress``."""

    # Optional: ``tile_overlap: int``, pixels shared by neighbouring tiles (see the module notes).

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """The index levels, coarse to fine, of a padded ``height`` x ``width`` image."""

    def forward(self, image: torch.Tensor) -> CodecOutput:
        """Training pass on (B, 3, H, W) images in [0, 1]."""

    def compress(self, image: torch.Tensor) -> CompressedLevels:
        """(B, 3, H, W) padded image in [0, 1] -> its levels of indices, coarse to fine."""

    def decompress(self, levels: CompressedLevels) -> torch.Tensor:
        """Levels of indices -> (B, 3, H, W) image clamped to [0, 1], in the network's dtype."""


class CodingRuntime(Protocol):
    """A codec model as ``dqcodec.codec`` codes files with it: float64 numpy, no autograd.

    ``padding_multiple``, ``levels`` and the optional ``tile_overlap`` as for :class:`CodecModel`;
    ``compress`` takes a (B, 3, H, W) float64 array in [0, 1] and ``decompress`` returns one
    (clamped to [0, 1]). The same model file gives the same indices and pixels whichever
    runtime codes it.
    """

    @property
    def padding_multiple(self) -> int:
        """Images are padded to a multiple of this many pixels before ``compress``."""

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """The index levels, coarse to fine, of a padded ``height`` x ``width`` image."""

    def compress(self, image: np.ndarray, rate_lambda: float | None = None) -> CompressedLevels:
        """(B, 3, H, W) float64 padded image in [0, 1] -> its levels of indices, coarse to fine,
        chosen with the rate-distortion trade-off ``rate_lambda`` (pixel units; None: the model's own)."""

    def decompress(self, levels: CompressedLevels) -> np.ndarray:
        """Levels of indices -> (B, 3, H, W) float64 image clamped to [0, 1]."""


def level_bits(entropy: IndexEntropyModel, indices: np.ndarray, side: Side) -> float:
    """-log2 p of one level's (B, M, h, w) ``indices`` under ``entropy``'s tables, step by step
    in its coding order (what an entropy model's ``bits`` returns)."""
    total = 0.0
    for step in entropy.coding_steps(indices.shape):
        tables, rows = entropy.step_tables(indices, step, side)
        tables = tables.astype(np.float64)
        total -= float(np.log2(tables[rows, step.symbols(indices)] / tables.sum(axis=1)[rows]).sum())
    return total


def estimated_bits(specs: list[LevelSpec], levels: CompressedLevels) -> float:
    """-log2 p of all ``levels`` under the entropy models of ``specs`` (from ``net.levels``), in bits."""
    side: dict[str, np.ndarray] = {}
    total = 0.0
    for spec, level in zip(specs, levels, strict=True):
        total += spec.entropy.bits(level.indices, side)
        side[level.name] = level.indices
    return total
