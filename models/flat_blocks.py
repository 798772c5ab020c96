"""Flat blocks: blocks whose pixels all hold one 8-bit colour are signalled with that colour
and painted with it after the network's reconstruction (numpy only).

A convolutional codec gives a flat area back only as exactly as its network can: hdq, trained
on photographs, brought saturated flat colours back up to 46 code values off (green; black 10,
white 13), with or without quantization. Screenshots, graphics and clipped highlights are made
of such areas, and a block codec keeps them exact. This level costs photographs almost
nothing and makes every flat block exact:

Per block of ``block`` x ``block`` pixels, 4 symbols ((B, 4, h, w) indices):
    0: mode: 0 not flat; 1 flat, with the colour of the last block of mode 2 before it in
       raster order; 2 flat, with a new colour;
    1-3: red, green, blue of a new colour (0..255) where the mode is 2, else 0.

Coding: the modes row by row, each table chosen by whether the block above is flat (flat areas
run on), then each colour channel in one step, its table chosen by the block's mode. The
tables are fixed integers of this module (nothing is fitted or stored in a model), so encoder
and decoder rebuild them bit for bit. A photograph without flat blocks pays about 0.02 bits
per block (0.0001 bpp for 16 x 16 blocks), plus the few bytes that end the level's stream
(about 15 bytes in all per Kodak image, measured with hdq); a flat area pays a mode per block
plus 24 bits per colour change.
"""

from collections.abc import Iterator

import numpy as np

from dqcodec.models.context_tables import quantize_table
from dqcodec.models.interface import CodingStep, Side, level_bits

MODE, NEW_COLOUR_MODE = 0, 2
NUM_SYMBOLS = 4  # mode, red, green, blue
# Modes (not flat, flat as the last new colour, flat with a new colour) after a block above
# that is not flat (or the first row), and after a flat one.
_MODE_COUNTS = np.array([[65408, 64, 64], [4096, 57344, 4096]], dtype=np.float64)
# A colour channel where the mode is not 2 (always 0), and where it is (uniform).
_COLOUR_COUNTS = np.stack([np.eye(1, 256)[0], np.ones(256)])


class FlatBlockModel:
    """The fixed entropy model of the flat-block level (an ``IndexEntropyModel``)."""

    mode_tables = quantize_table(_MODE_COUNTS)  # (2, 3)
    colour_tables = quantize_table(_COLOUR_COUNTS)  # (2, 256)

    def coding_steps(self, shape: tuple[int, int, int, int]) -> Iterator[CodingStep]:
        """The modes one row per step (each row's tables read the row above), then the colours."""
        _, _, height, width = shape
        rows = np.broadcast_to(np.arange(height)[:, None], (height, width))
        for row in range(height):
            yield CodingStep(MODE, 0, rows == row)
        for channel in range(1, NUM_SYMBOLS):
            yield CodingStep(channel, 0, np.ones((height, width), dtype=bool))

    def step_tables(self, indices: np.ndarray, step: CodingStep, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """The two tables of ``step``'s kind and the (N,) one each symbol reads: reads the
        decoded modes only."""
        modes = indices[:, MODE]
        if step.codebook == MODE:
            above = np.zeros_like(modes)
            above[:, 1:] = modes[:, :-1]
            return self.mode_tables, (above[:, step.mask] > 0).reshape(-1).astype(np.int64)
        return self.colour_tables, (modes[:, step.mask] == NEW_COLOUR_MODE).reshape(-1).astype(np.int64)

    def bits(self, indices: np.ndarray, side: Side) -> float:
        """-log2 p of all (B, 4, h, w) symbols under the tables."""
        return level_bits(self, indices, side)


def flat_block_symbols(image: np.ndarray, block: int) -> np.ndarray:
    """(B, 3, H, W) image in [0, 1] (8-bit values / 255), H and W multiples of ``block`` ->
    (B, 4, H / block, W / block) int64 symbols of the flat-block level."""
    b, _, height, width = image.shape
    h, w = height // block, width // block
    # Equal 8-bit values are equal floats, so flatness is read off the floats as they come.
    values = np.asarray(image).reshape(b, 3, h, block, w, block)
    low, high = values.min(axis=5).min(axis=3), values.max(axis=5).max(axis=3)  # (B, 3, h, w)
    flat = (low == high).all(axis=1).reshape(b, -1)  # (B, h * w), raster order
    colours = np.rint(low.astype(np.float64) * 255).astype(np.int64).reshape(b, 3, -1)
    symbols = np.zeros((b, NUM_SYMBOLS, h * w), dtype=np.int64)
    for image_index in range(b):
        positions = np.flatnonzero(flat[image_index])
        if len(positions) == 0:
            continue
        block_colours = colours[image_index][:, positions]  # (3, F)
        new = np.ones(len(positions), dtype=bool)
        new[1:] = (block_colours[:, 1:] != block_colours[:, :-1]).any(axis=0)
        symbols[image_index, MODE, positions] = np.where(new, NEW_COLOUR_MODE, 1)
        symbols[image_index, 1:, positions[new]] = block_colours[:, new].T
    return symbols.reshape(b, NUM_SYMBOLS, h, w)


def flat_block_colours(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 4, h, w) symbols -> ((B, h, w) bool: the flat blocks, (B, 3, h, w) their 8-bit
    colours). A mode 1 before any mode 2 (never written by the encoder) takes black."""
    b, _, h, w = symbols.shape
    modes = symbols[:, MODE].reshape(b, -1)
    colours = symbols[:, 1:].reshape(b, 3, -1)
    positions = np.broadcast_to(np.arange(h * w), modes.shape)
    last_new = np.maximum.accumulate(np.where(modes == NEW_COLOUR_MODE, positions, -1), axis=1)  # (B, h * w)
    picked = np.take_along_axis(colours, np.maximum(last_new, 0)[:, None, :], axis=2)
    picked = np.where((last_new >= 0)[:, None, :], picked, 0)
    return (modes > 0).reshape(b, h, w), picked.reshape(b, 3, h, w)
