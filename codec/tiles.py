"""Tiles: how a large image is cut for coding, so that memory is bounded by a tile.

An image is coded as a grid of tiles, each an independent image to the model (padded to the
model's multiple, its own levels of indices, its own container streams), so coding holds one
tile's tensors at a time and its time grows linearly with the pixels.

Geometry (:class:`Tiling`), the same along both axes: tiles start every ``size`` pixels (a
multiple of the model's padding multiple, so every tile starts on the model's block grid) and
reach ``overlap`` pixels into the next one, so a tile is ``size + overlap`` pixels square, less
where the image ends; the pixels two neighbours share are blended on decode
(:class:`~dqcodec.codec.blend.TileAssembler`). The last tile along a side starts more than
``overlap`` pixels before the image ends, so every shared strip lies inside the image and no tile
is a sliver inside its neighbour's overlap. ``size == 0`` means one tile, the whole image (files
of format version 1, and ``--tile-size 0``).

Pure Python (no numpy): the container reads the geometry from a header, and opening a file in
Pillow must stay light.
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

DEFAULT_TILE_SIZE = 1024
# The smallest tile (apart from 0, the whole image): each tile costs a fixed amount of work
# (one pass of the entropy model's coding steps, ~0.07 s to decode with the block codecs), so
# tiny tiles would let a small file buy a long decode; at 256 a tile's pixels outweigh that.
MIN_TILE_SIZE = 256

Context = TypeVar("Context")
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Tile:
    """One tile: its place in the grid and the pixels it codes, [top, bottom) x [left, right)."""

    index: int
    row: int
    column: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class Tiling:
    """The tile grid of a ``width`` x ``height`` image (pixels): tiles every ``size`` pixels (0:
    one tile, the whole image), each reaching ``overlap`` pixels (0..size) into the next."""

    width: int
    height: int
    size: int
    overlap: int = 0

    def __post_init__(self):
        if self.size == 0 and self.overlap != 0:
            raise ValueError("a single tile has no overlap")
        if self.size and not 0 <= self.overlap <= self.size:
            raise ValueError(f"overlap {self.overlap} must be 0..{self.size} for tiles every {self.size}")

    @property
    def columns(self) -> int:
        return self._count(self.width)

    @property
    def rows(self) -> int:
        return self._count(self.height)

    def __len__(self) -> int:
        return self.rows * self.columns

    def _count(self, length: int) -> int:
        """Tiles along a side of ``length`` pixels: the last starts more than ``overlap`` pixels
        before the end (so every shared strip lies inside the image, and the last tile is no
        sliver) and ends there."""
        if self.size == 0 or length <= self.size + self.overlap:
            return 1
        return -(-(length - self.overlap) // self.size)

    def _span(self, index: int, length: int) -> tuple[int, int]:
        if self.size == 0:
            return 0, length
        start = index * self.size
        return start, min(start + self.size + self.overlap, length)

    def tiles(self) -> Iterator[Tile]:
        """Every tile, row by row (raster order: the order of the streams in a file)."""
        for row in range(self.rows):
            top, bottom = self._span(row, self.height)
            for column in range(self.columns):
                left, right = self._span(column, self.width)
                yield Tile(row * self.columns + column, row, column, top, bottom, left, right)


# The context of the tile function in a worker process (see ordered_map).
_worker_context = None


def _install(context, setup: Callable[[], None] | None) -> None:
    global _worker_context
    _worker_context = context
    if setup is not None:
        setup()


def _call(function, item):
    return function(_worker_context, item)


def ordered_map(
    function: Callable[[Context, Item], Result],
    context: Context,
    items: Iterable[Item],
    workers: int,
    setup: Callable[[], None] | None = None,
) -> Iterator[Result]:
    """``function(context, item)`` for every item, in order; on ``workers`` processes if more than 1.

    The tile work (range coding in small numpy steps, the model) holds Python's lock too much
    for threads to help, so workers are processes: forked where the platform allows (the
    context, e.g. a loaded model, is then inherited at no cost), else spawned (it is pickled
    once per worker). ``function`` must be a module-level function, items and results picklable;
    ``setup`` runs first in each worker. At most 2 * workers items are in flight, so memory
    stays bounded by a few tiles however many there are. An exception in ``function`` is raised
    at its item; the items after it are cancelled.
    """
    if workers <= 1:
        for item in items:
            yield function(context, item)
        return
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    start = "fork" if sys.platform == "linux" else "spawn"
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start),
        initializer=_install,
        initargs=(context, setup),
    )
    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(_call, function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
