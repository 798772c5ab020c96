"""Image <-> .dqc bytes: the Python face of dqcodec (``dqcodec.encode`` / ``dqcodec.decode``).

Encoding: load and normalise the image, cut it into tiles (:mod:`dqcodec.codec.tiles`), and for
each tile: pad it to the model's padding multiple (edge replication), let the model choose its
levels of code indices (coarse to fine), range-code each level into its own stream in the coding
order and with the integer tables of the level's entropy model (which reads the coarser levels
as side information). The .dqc container wraps every tile's streams. Decoding mirrors it tile by
tile and blends the tiles' overlaps (:mod:`dqcodec.codec.blend`), so memory holds one tile's
work per worker besides the image itself. Only the coding runtime of the codec-model interface
(:class:`~dqcodec.models.interface.CodingRuntime`, numpy in and out) is used here, whatever the
architecture; the registry picks it (plain numpy for the block codecs), so this module imports
no torch.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dqcodec.codec.blend import TileAssembler
from dqcodec.codec.container import MAX_SIDE, Header, pack, unpack
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.imageio import load_image, read_bytes, to_pil
from dqcodec.codec.limits import check_pixels
from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.codec.tiles import DEFAULT_TILE_SIZE, MIN_TILE_SIZE, Tile, Tiling, ordered_map
from dqcodec.models import registry
from dqcodec.models.interface import MAX_RATE_LAMBDA, CodingRuntime, CompressedLevels, IndexLevel, LevelSpec, estimated_bits

DEFAULT_FAMILY = "hdq"


def resolve_model_name(quality: int | None = None, model: str | None = None) -> str:
    """The model to use, as a key for ``registry.load_model``: ``model`` by name (or a
    checkpoint path), else level ``quality`` of the default family.

    With neither, the middle quality level of the default family. Raises DQCodecError for an
    unknown name, an out-of-range quality, or both arguments at once.
    """
    models = registry.list_models()
    if model is not None and quality is not None:
        raise DQCodecError("give either a quality or a model name, not both")
    names = [m["name"] for m in models]
    if model is not None and model in names:
        return model  # a shipped name wins over a file of that name in the current folder
    if model is not None and _looks_like_checkpoint(model):
        try:
            return registry.register_checkpoint(Path(model))
        except (OSError, ValueError, KeyError) as error:
            raise DQCodecError(f"cannot use checkpoint {model}: {error}") from None
    if model is not None:
        raise DQCodecError(f"unknown model {model!r} (available: {', '.join(names)})")
    levels = {m["quality"]: m["name"] for m in models if m["family"] == DEFAULT_FAMILY}
    if not levels:
        raise DQCodecError(f"no shipped models of family {DEFAULT_FAMILY!r} are installed")
    if quality is None:
        ordered = sorted(levels)
        return levels[ordered[len(ordered) // 2]]
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or quality not in levels:
        raise DQCodecError(f"quality must be an integer from {min(levels)} to {max(levels)}, got {quality!r}")
    return levels[int(quality)]


def _looks_like_checkpoint(model: str) -> bool:
    path = Path(model)
    return path.suffix in (".json", ".safetensors") or Path(f"{path}.json").is_file()


def encode_with_notes(
    image,
    quality: int | None = None,
    model: str | None = None,
    max_pixels: int | None = None,
    tile_size: int | None = None,
    workers: int = 1,
    lossless: bool = False,
    rate_lambda: float | None = None,
) -> tuple[bytes, list[str]]:
    """Compress an image; returns (the .dqc bytes, one-line notes about input conversions).

    image: a path, encoded image bytes, a PIL image, or a (H, W, 3) / (H, W) uint8 array.
    max_pixels: the pixel limit (default: ``$DQCODEC_MAX_PIXELS`` or
        :data:`~dqcodec.codec.limits.DEFAULT_MAX_PIXELS`), checked before the pixels are read.
    tile_size: the image is coded in square tiles starting every ``tile_size`` pixels (default
        :data:`~dqcodec.codec.tiles.DEFAULT_TILE_SIZE`), each reaching the model's
        :func:`tile_overlap` into the next: a multiple of the model's padding multiple from
        :data:`~dqcodec.codec.tiles.MIN_TILE_SIZE` up, or 0 to code the image whole (memory then
        grows with the image). An image that one tile covers is coded whole. A model may set a
        smaller default (its ``default_tile_size``: 256 for a lossless DQ-AE).
    workers: tiles coded at once, in worker processes (:func:`~dqcodec.codec.tiles.ordered_map`);
        the file does not depend on it.
    lossless: insist on a lossless model (``model``, e.g. a lossless DQ-AE made by
        ``dqcodec export-lossless``; none ships): decoding gives back every pixel exactly. A
        lossless model is lossless with or without it.
    rate_lambda: the encoder's rate-distortion trade-off (squared error of [0, 1] RGB values per
        bit; smaller spends more bits) in place of the model's own, for rates between the trained
        levels. The encoder picks each index by distortion + lambda * bits under the model's
        tables (an hdq level with an image lambda scales it by the image's own error, within
        [1/2, 2]: :mod:`~dqcodec.models.image_lambda`); the file decodes with the same model,
        whatever lambda made it.
    """
    if lossless and model is None:
        raise DQCodecError("lossless coding needs a lossless model: give --model (a lossless DQ-AE made by "
                           "'dqcodec export-lossless'; none ships with dqcodec)")
    key = resolve_model_name(quality, model)
    _check_workers(workers)
    net, info, fingerprint = _runtime(registry.load_model, key)
    if tile_size is None:  # a model whose work per pixel is large asks for smaller tiles
        tile_size = getattr(net, "default_tile_size", None) or DEFAULT_TILE_SIZE
    if lossless and not is_lossless(net):
        raise DQCodecError(f"model {info['name']!r} is lossy; lossless coding needs a lossless model ('dqcodec export-lossless')")
    _check_rate_lambda(rate_lambda, net, info)
    multiple = net.padding_multiple
    _check_tile_size(tile_size, multiple)
    loaded = load_image(image, max_pixels)
    if is_lossless(net):
        _check_exact(loaded)
    height, width, _ = loaded.pixels.shape
    overlap = min(tile_overlap(net), tile_size)
    if len(Tiling(width, height, tile_size, overlap)) == 1:
        tile_size = overlap = 0  # one tile: the whole image, in a file earlier releases read too
    header = Header(
        model=info["name"],
        fingerprint=fingerprint,
        width=width,
        height=height,
        channels=loaded.channels,
        bit_depth=loaded.bit_depth,
        padding=multiple,
        tile_size=tile_size,
        overlap=overlap,
    )

    crops = (loaded.pixels[tile.top : tile.bottom, tile.left : tile.right] for tile in header.tiling.tiles())
    workers = min(workers, len(header.tiling))
    encoder = (net, rate_lambda)
    streams = [stream for tile in ordered_map(_encode_tile, encoder, crops, workers, _one_thread) for stream in tile]
    return pack(header, streams), loaded.notes


def encode(
    image,
    quality: int | None = None,
    model: str | None = None,
    max_pixels: int | None = None,
    tile_size: int | None = None,
    workers: int = 1,
    lossless: bool = False,
    rate_lambda: float | None = None,
) -> bytes:
    """Compress an image to .dqc bytes (see :func:`encode_with_notes` for the inputs)."""
    return encode_with_notes(
        image, quality=quality, model=model, max_pixels=max_pixels, tile_size=tile_size, workers=workers,
        lossless=lossless, rate_lambda=rate_lambda,
    )[0]


def decode(
    data: bytes | str | os.PathLike, max_pixels: int | None = None, workers: int = 1, model: str | None = None
) -> Image.Image:
    """Decompress a .dqc file to a PIL image ("RGB", or "L" for grayscale originals), 8-bit.

    data: the .dqc bytes (bytes, bytearray or memoryview), or the path of a .dqc file (str or
        ``os.PathLike``; a file that cannot be read is a one-line ``DQCodecError``).
    max_pixels: the pixel limit (as for :func:`encode_with_notes`), checked right after the
        header is parsed.
    workers: tiles decoded at once, in worker processes; the pixels do not depend on it.
    model: a checkpoint (model files outside the package) that may have made the file; the
        file's model is still found by its name and fingerprint.

    Tile by tile: memory holds the output image and a few tiles' work, not the image's indices.
    """
    _check_workers(workers)
    if isinstance(data, (str, os.PathLike)):
        data = read_bytes(data)
    header, net, _, tile_streams = _read(data, max_pixels, model)
    outputs: list[Image.Image] = []  # made once the first tile has decoded: a few bytes claiming
    # a large image that cannot be decoded never get the image allocated

    def paste(top: int, left: int, pixels: np.ndarray) -> None:
        if not outputs:
            outputs.append(Image.new("L" if header.channels == 1 else "RGB", (header.width, header.height)))
        outputs[0].paste(to_pil(pixels, header.channels), (left, top))

    assembler = TileAssembler(header.tiling, paste)
    workers = min(workers, len(tile_streams))
    for (tile, _), reconstruction in zip(tile_streams, ordered_map(_decode_tile, net, tile_streams, workers, _one_thread)):
        assembler.add(tile, reconstruction)
    return outputs[0]


def inspect(data: bytes, max_pixels: int | None = None, model: str | None = None) -> dict:
    """What a .dqc file holds, with its real size next to the model's -log2 p estimate (which
    decodes the indices, hence ``max_pixels`` and ``model`` as for :func:`decode`)."""
    header, net, info, tile_streams = _read(data, max_pixels, model)
    estimated = 0.0
    for tile, streams in tile_streams:
        levels = _decode_levels(net, tile, streams)
        estimated += estimated_bits(net.levels(*_padded(tile, net.padding_multiple)), levels)
    real_bits = 8 * len(data)
    tiling = header.tiling
    return {
        "model": header.model,
        "family": info["family"],
        "quality": info["quality"],
        "lossless": is_lossless(net),
        "width": header.width,
        "height": header.height,
        "channels": header.channels,
        "bit_depth": header.bit_depth,
        "tiles": len(tiling),
        "tile_size": header.tile_size,
        "tile_overlap": header.overlap,
        "bytes": len(data),
        "bpp": real_bits / (header.width * header.height),
        "real_bits": real_bits,
        "estimated_bits": estimated,
        "overhead_percent": 100.0 * (real_bits - estimated) / estimated if estimated > 0 else 0.0,
    }


def is_lossless(net: CodingRuntime) -> bool:
    """Whether ``net`` decodes its files to the very pixels it encoded (its ``lossless`` attribute)."""
    return bool(getattr(net, "lossless", False))


def _check_exact(loaded) -> None:
    """Refuse an input that reading it changed (beyond dropping an opaque alpha channel): a
    lossless file gives back the pixels it coded, which would not be the original's."""
    changes = [note for note in loaded.notes if not note.endswith("(it was fully opaque)")]
    if loaded.bit_depth != 8 or changes:
        reason = changes[0] if changes else f"{loaded.bit_depth}-bit input"
        raise DQCodecError(f"lossless coding keeps 8-bit RGB or grayscale pixels exactly, and this image is not one "
                           f"({reason}); convert it first")


def tile_overlap(net: CodingRuntime) -> int:
    """Pixels a tile of ``net`` reaches into the next: its ``tile_overlap`` attribute, else its
    padding multiple (one block of a block codec, whose border blocks lack their neighbours as
    context; about how far a convolutional codec's border effects reach)."""
    return int(getattr(net, "tile_overlap", net.padding_multiple))


def _check_rate_lambda(rate_lambda: float | None, net: CodingRuntime, info: dict) -> None:
    if rate_lambda is None:
        return
    if is_lossless(net):
        raise DQCodecError(f"model {info['name']!r} is lossless: it has no rate-distortion trade-off to set")
    if isinstance(rate_lambda, bool) or not (isinstance(rate_lambda, (int, float)) and math.isfinite(rate_lambda) and 0 < rate_lambda <= MAX_RATE_LAMBDA):
        raise DQCodecError(f"the rate-distortion lambda must be a number above 0 and at most {MAX_RATE_LAMBDA:g}, "
                           f"got {rate_lambda!r}")


def _encode_tile(encoder: tuple[CodingRuntime, float | None], pixels: np.ndarray) -> list[bytes]:
    """One tile's (h, w, 3) uint8 pixels -> its streams, coarse to fine: padded to the model's
    multiple (edge replication), the model's levels of indices (chosen with the encoder's
    rate_lambda, None: the model's own), range-coded level by level."""
    net, rate_lambda = encoder
    multiple = net.padding_multiple
    height, width, _ = pixels.shape
    padded = np.pad(pixels, ((0, -height % multiple), (0, -width % multiple), (0, 0)), mode="edge")
    levels = net.compress(padded.transpose(2, 0, 1)[None].astype(np.float64) / 255.0, rate_lambda)
    specs = net.levels(*padded.shape[:2])
    return [_encode_level(spec, level, levels[:i]) for i, (spec, level) in enumerate(zip(specs, levels, strict=True))]


def _decode_tile(net: CodingRuntime, item: tuple[Tile, list[bytes]]) -> np.ndarray:
    """A tile and its streams -> its (h, w, 3) float64 reconstruction in [0, 1] (rounded to 8
    bits by the assembler as whole-image decoding always rounded)."""
    tile, streams = item
    image = net.decompress(_decode_levels(net, tile, streams))[0, :, : tile.height, : tile.width]
    return image.transpose(1, 2, 0)


def _one_thread() -> None:
    """In a worker process: one torch thread where a torch runtime codes (the worker is the
    unit of parallel work); nothing to do for a numpy runtime."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _runtime(lookup, *args) -> tuple[CodingRuntime, dict, bytes]:
    """``registry.load_model`` / ``find_model``, with a runtime this install lacks, or a model file
    that cannot be read (e.g. a checkpoint cut short), as a one-line error."""
    try:
        return lookup(*args)
    except registry.MissingRuntime as error:
        raise DQCodecError(str(error)) from None
    except (OSError, ValueError) as error:
        raise DQCodecError(f"cannot load the model ({error})") from None


def _read(
    data: bytes, max_pixels: int | None, model: str | None = None
) -> tuple[Header, CodingRuntime, dict, list[tuple[Tile, list[bytes]]]]:
    """Parse, check the pixel limit, find the model by name and fingerprint (among the shipped
    ones and the checkpoint ``model``), check the geometry: -> (header, model, the model's JSON
    info, each tile with its streams in raster order)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DQCodecError(f"expected .dqc bytes, got {type(data).__name__}")
    header, streams = unpack(bytes(data))
    check_pixels(header.width, header.height, ".dqc file", max_pixels)
    if model is not None:
        resolve_model_name(model=model)  # registers a checkpoint, so that find_model sees it
    try:
        net, info, _ = _runtime(registry.find_model, header.model, header.fingerprint)
    except KeyError as error:
        raise DQCodecError(error.args[0]) from None
    tiles = list(header.tiling.tiles())
    count = len(net.levels(*_padded(tiles[0], net.padding_multiple)))
    if header.padding != net.padding_multiple or len(streams) != count * len(tiles):
        raise DQCodecError(f"file geometry does not match model {header.model!r}")
    return header, net, info, [(tile, streams[i * count : (i + 1) * count]) for i, tile in enumerate(tiles)]


def _decode_levels(net: CodingRuntime, tile: Tile, streams: list[bytes]) -> CompressedLevels:
    """Range-decode one tile's levels, coarse to fine (each stream used up exactly)."""
    levels: CompressedLevels = []
    for spec, stream in zip(net.levels(*_padded(tile, net.padding_multiple)), streams, strict=True):
        levels.append(_decode_level(spec, stream, levels))
    return levels


def _padded(tile: Tile, multiple: int) -> tuple[int, int]:
    """(height, width) of ``tile`` padded to ``multiple``: what the model codes."""
    return -(-tile.height // multiple) * multiple, -(-tile.width // multiple) * multiple


def _check_tile_size(tile_size: int, multiple: int) -> None:
    valid = isinstance(tile_size, (int, np.integer)) and not isinstance(tile_size, bool)
    if not valid or (tile_size != 0 and not (MIN_TILE_SIZE <= tile_size <= MAX_SIDE and tile_size % multiple == 0)):
        raise DQCodecError(
            f"tile size must be 0 (the whole image) or a multiple of {multiple} from {MIN_TILE_SIZE} "
            f"to {MAX_SIDE} for this model, got {tile_size!r}"
        )


def _check_workers(workers: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DQCodecError(f"workers must be a positive integer, got {workers!r}")


def _side(levels: CompressedLevels) -> dict[str, np.ndarray]:
    return {level.name: level.indices for level in levels}


def _encode_level(spec: LevelSpec, level: IndexLevel, coarser: CompressedLevels) -> bytes:
    """One level's indices -> its stream, step by step in the entropy model's coding order."""
    encoder = RangeEncoder()
    side = _side(coarser)
    for number, step in enumerate(spec.entropy.coding_steps(level.indices.shape)):
        tables = spec.entropy.step_tables(level.indices, step, side) if level.step_tables is None else level.step_tables[number]
        encoder.encode(step.symbols(level.indices), *tables)
    return encoder.to_bytes()


def _decode_level(spec: LevelSpec, stream: bytes, coarser: CompressedLevels) -> IndexLevel:
    """Mirror of :func:`_encode_level`: each step's tables read only what is decoded before it."""
    decoder = RangeDecoder(stream)
    indices = np.zeros((1, *spec.shape), dtype=np.int64)
    side = _side(coarser)
    for step in spec.entropy.coding_steps(indices.shape):
        step.place(indices, decoder.decode(*spec.entropy.step_tables(indices, step, side)))
    decoder.finish()
    return IndexLevel(spec.name, indices)
