"""Image <-> .dqc bytes: the Python face of dqcodec (``dqcodec.encode`` / ``dqcodec.decode``).

Encoding: load and normalise the image, pad it to the model's padding multiple (edge
replication), let the model choose its levels of code indices (coarse to fine), range-code each
level into its own stream in the coding order and with the integer tables of the level's entropy
model (which reads the coarser levels as side information), and wrap the streams in the .dqc
container. Decoding mirrors it exactly. Only the codec-model interface
(:mod:`dqcodec.models.interface`) is used here, whatever the architecture.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqcodec.codec.container import Header, pack, unpack
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.imageio import load_image, read_bytes, to_pil
from dqcodec.codec.limits import check_pixels
from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.models import registry
from dqcodec.models.interface import CodecModel, CompressedLevels, IndexLevel, LevelSpec, estimated_bits

DEFAULT_FAMILY = "dq"


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
    image, quality: int | None = None, model: str | None = None, max_pixels: int | None = None
) -> tuple[bytes, list[str]]:
    """Compress an image; returns (the .dqc bytes, one-line notes about input conversions).

    image: a path, encoded image bytes, a PIL image, or a (H, W, 3) / (H, W) uint8 array.
    max_pixels: the pixel limit (default: ``$DQCODEC_MAX_PIXELS`` or
        :data:`~dqcodec.codec.limits.DEFAULT_MAX_PIXELS`), checked before the pixels are read.
    """
    key = resolve_model_name(quality, model)
    loaded = load_image(image, max_pixels)
    net, info, fingerprint = registry.load_model(key)
    multiple = net.padding_multiple
    height, width, _ = loaded.pixels.shape
    padded = np.pad(loaded.pixels, ((0, -height % multiple), (0, -width % multiple), (0, 0)), mode="edge")
    tensor = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].to(_dtype(net)) / 255.0
    levels = net.compress(tensor)
    header = Header(
        model=info["name"],
        fingerprint=fingerprint,
        width=width,
        height=height,
        channels=loaded.channels,
        bit_depth=loaded.bit_depth,
        padding=multiple,
    )
    specs = net.levels(*padded.shape[:2])
    streams = [_encode_level(spec, level, levels[:i]) for i, (spec, level) in enumerate(zip(specs, levels, strict=True))]
    return pack(header, streams), loaded.notes


def encode(image, quality: int | None = None, model: str | None = None, max_pixels: int | None = None) -> bytes:
    """Compress an image to .dqc bytes (see :func:`encode_with_notes` for the inputs)."""
    return encode_with_notes(image, quality=quality, model=model, max_pixels=max_pixels)[0]


def decode(data: bytes | str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decompress a .dqc file to a PIL image ("RGB", or "L" for grayscale originals), 8-bit.

    data: the .dqc bytes (bytes, bytearray or memoryview), or the path of a .dqc file (str or
        ``os.PathLike``; a file that cannot be read is a one-line ``DQCodecError``).
    max_pixels: the pixel limit (as for :func:`encode_with_notes`), checked right after the
        header is parsed.
    """
    if isinstance(data, (str, os.PathLike)):
        data = read_bytes(data)
    header, net, _, levels = _read(data, max_pixels)
    image = net.decompress(levels)[0, :, : header.height, : header.width]
    pixels = (image * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return to_pil(np.ascontiguousarray(pixels), header.channels)


def inspect(data: bytes, max_pixels: int | None = None) -> dict:
    """What a .dqc file holds, with its real size next to the model's -log2 p estimate (which
    decodes the indices, hence ``max_pixels`` as for :func:`decode`)."""
    header, net, info, levels = _read(data, max_pixels)
    estimated = estimated_bits(net.levels(header.padded_height, header.padded_width), levels)
    real_bits = 8 * len(data)
    return {
        "model": header.model,
        "family": info["family"],
        "quality": info["quality"],
        "width": header.width,
        "height": header.height,
        "channels": header.channels,
        "bit_depth": header.bit_depth,
        "bytes": len(data),
        "bpp": real_bits / (header.width * header.height),
        "real_bits": real_bits,
        "estimated_bits": estimated,
        "overhead_percent": 100.0 * (real_bits - estimated) / estimated if estimated > 0 else 0.0,
    }


def _read(data: bytes, max_pixels: int | None) -> tuple[Header, CodecModel, dict, CompressedLevels]:
    """Parse, check the pixel limit, find the model by name and fingerprint, range-decode every
    level: -> (header, model, the model's JSON info, levels)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DQCodecError(f"expected .dqc bytes, got {type(data).__name__}")
    header, streams = unpack(bytes(data))
    check_pixels(header.width, header.height, ".dqc file", max_pixels)
    try:
        net, info, _ = registry.find_model(header.model, header.fingerprint)
    except KeyError as error:
        raise DQCodecError(error.args[0]) from None
    specs = net.levels(header.padded_height, header.padded_width)
    if header.padding != net.padding_multiple or len(streams) != len(specs):
        raise DQCodecError(f"file geometry does not match model {header.model!r}")
    levels: CompressedLevels = []
    for spec, stream in zip(specs, streams):
        levels.append(_decode_level(spec, stream, levels))
    return header, net, info, levels


def _dtype(net: CodecModel) -> torch.dtype:
    return next(net.parameters()).dtype


def _side(levels: CompressedLevels) -> dict[str, np.ndarray]:
    return {level.name: level.indices for level in levels}


def _encode_level(spec: LevelSpec, level: IndexLevel, coarser: CompressedLevels) -> bytes:
    """One level's indices -> its stream, step by step in the entropy model's coding order."""
    encoder = RangeEncoder()
    side = _side(coarser)
    for step in spec.entropy.coding_steps(level.indices.shape):
        encoder.encode(step.symbols(level.indices), spec.entropy.tables(level.indices, step, side))
    return encoder.to_bytes()


def _decode_level(spec: LevelSpec, stream: bytes, coarser: CompressedLevels) -> IndexLevel:
    """Mirror of :func:`_encode_level`: each step's tables read only what is decoded before it."""
    decoder = RangeDecoder(stream)
    indices = np.zeros((1, *spec.shape), dtype=np.int64)
    side = _side(coarser)
    for step in spec.entropy.coding_steps(indices.shape):
        step.place(indices, decoder.decode(spec.entropy.tables(indices, step, side)))
    decoder.finish()
    return IndexLevel(spec.name, indices)
