"""Putting decoded tiles back together: overlaps blended, finished pixels handed over at once.

Two neighbouring tiles (:class:`~dqcodec.codec.tiles.Tiling`) share ``overlap`` pixels. There the
output is a weighted sum of both reconstructions, with linear ramps whose weights sum to 1:
the seam of a model whose reconstruction near a tile border differs from the one inside (a
convolutional codec's border effects; a block codec's border blocks, coded without their
neighbours as context) is spread over the overlap instead of showing as an edge. Elsewhere a
pixel comes from one tile, exactly as decoding that tile alone gives it.

Tiles come in raster order. The assembler keeps only what later tiles still add to (the bottom
``overlap`` rows of the current row of tiles across the image, the right ``overlap`` columns of
the last tile) and hands every pixel over, as 8 bits, as soon as no later tile touches it.
"""

from collections.abc import Callable

import numpy as np

from dqcodec.codec.tiles import Tile, Tiling


def ramp(tiling: Tiling, index: int, count: int, length: int) -> np.ndarray:
    """(length,) float64 blending weights across tile ``index`` of ``count`` along one axis
    (``length`` its pixels there): rising over the overlap with the previous tile, falling over
    the one with the next, 1 elsewhere; two neighbours' weights sum to 1 on every shared pixel."""
    weights = np.ones(length)
    overlap = tiling.overlap
    if overlap == 0:
        return weights
    rising = (np.arange(overlap) + 0.5) / overlap
    if index > 0:
        weights[:overlap] = rising
    if index < count - 1:
        weights[-overlap:] = 1.0 - rising
    return weights


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] -> uint8 round(255 * value), as whole-image decoding rounds."""
    scaled = values * 255.0
    return np.clip(np.round(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)


class TileAssembler:
    """Blends tile reconstructions, given in raster order, into finished 8-bit pixels.

    ``paste(top, left, pixels)`` receives each finished (h, w, 3) uint8 region once; together
    the regions cover the image exactly. A pixel is round(255 * sum of weight * reconstruction)
    over the tiles that cover it (clipped to 0..255); with one tile, round(255 * reconstruction).
    Memory beside the tile being added: two strips of ``overlap`` rows across the image and one
    of ``overlap`` columns down a tile (float64), nothing without overlap.
    """

    def __init__(self, tiling: Tiling, paste: Callable[[int, int, np.ndarray], None]):
        self._tiling = tiling
        self._paste = paste
        overlap = tiling.overlap
        self._above = np.zeros((overlap, tiling.width, 3))  # what tile row r-1 adds to row r's top rows
        self._below = np.zeros((overlap, tiling.width, 3))  # what tile row r adds to row r+1's top rows
        self._left: np.ndarray | None = None  # what the tiles before add to this tile's left columns
        self._next = 0

    def add(self, tile: Tile, reconstruction: np.ndarray) -> None:
        """Add the (tile.height, tile.width, 3) float reconstruction (values in [0, 1]) of the next
        tile in raster order, and paste what is now finished."""
        tiling, overlap = self._tiling, self._tiling.overlap
        if tile.index != self._next or reconstruction.shape != (tile.height, tile.width, 3):
            raise ValueError(f"tile {tile.index} {reconstruction.shape}: out of order or of the wrong shape")
        self._next += 1
        if overlap == 0:
            self._paste(tile.top, tile.left, to_uint8(reconstruction))
            return
        rows, columns = tiling.rows, tiling.columns
        weights = np.outer(ramp(tiling, tile.row, rows, tile.height), ramp(tiling, tile.column, columns, tile.width))
        blended = reconstruction * weights[:, :, None]
        top_shared = overlap if tile.row > 0 else 0
        left_shared = overlap if tile.column > 0 else 0
        # The row above's share of this tile's top rows; in the left columns it came with the
        # previous tile's share, which already holds it.
        if top_shared:
            blended[:top_shared, left_shared:] += self._above[:, tile.left + left_shared : tile.right]
        if left_shared:
            blended[:, :left_shared] += self._left
        last_row, last_column = tile.row == rows - 1, tile.column == columns - 1
        height = tile.height if last_row else tiling.size
        width = tile.width if last_column else tiling.size
        self._paste(tile.top, tile.left, to_uint8(blended[:height, :width]))
        self._left = None if last_column else blended[:, width:].copy()
        if not last_row:
            # Complete sums in the left columns too: they overwrite the previous tile's part.
            self._below[:, tile.left : tile.right] = blended[height:]
        if last_column:
            self._above, self._below = self._below, self._above
