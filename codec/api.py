"""Image <-> .dqc bytes: the Python face of dqcodec (``dqcodec.encode`` / ``dqcodec.decode``).

Encoding: load and normalise the image, pad it to whole blocks (edge replication), let the
model choose code indices, range-code them codebook by codebook with the model's integer
context tables, and wrap the stream in the .dqc container. Decoding mirrors it exactly.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqcodec.codec.container import Header, pack, unpack
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.imageio import load_image, to_pil
from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.models import registry

DEFAULT_FAMILY = "dq"


def resolve_model_name(quality: int | None = None, model: str | None = None) -> str:
    """The model to use: ``model`` by name (or a checkpoint path), else level ``quality`` of
    the default family.

    With neither, the middle quality level of the default family. Raises DQCodecError for an
    unknown name, an out-of-range quality, or both arguments at once.
    """
    models = registry.list_models()
    if model is not None and quality is not None:
        raise DQCodecError("give either a quality or a model name, not both")
    if model is not None and _looks_like_checkpoint(model):
        try:
            return registry.register_checkpoint(Path(model))
        except (OSError, ValueError, KeyError) as error:
            raise DQCodecError(f"cannot use checkpoint {model}: {error}") from None
    if model is not None:
        if model not in {m["name"] for m in models}:
            raise DQCodecError(f"unknown model {model!r} (available: {', '.join(m['name'] for m in models)})")
        return model
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


def encode_with_notes(image, quality: int | None = None, model: str | None = None) -> tuple[bytes, list[str]]:
    """Compress an image; returns (the .dqc bytes, one-line notes about input conversions).

    image: a path, encoded image bytes, a PIL image, or a (H, W, 3) / (H, W) uint8 array.
    """
    name = resolve_model_name(quality, model)
    loaded = load_image(image)
    net, _, fingerprint = registry.load_model(name)
    block = net.config.block
    height, width, _ = loaded.pixels.shape
    padded = np.pad(loaded.pixels, ((0, -height % block), (0, -width % block), (0, 0)), mode="edge")
    tensor = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].float() / 255.0
    indices = net.compress(tensor)
    header = Header(
        model=name,
        fingerprint=fingerprint,
        width=width,
        height=height,
        channels=loaded.channels,
        bit_depth=loaded.bit_depth,
        block=block,
    )
    return pack(header, [_encode_indices(net.entropy, indices)]), loaded.notes


def encode(image, quality: int | None = None, model: str | None = None) -> bytes:
    """Compress an image to .dqc bytes (see :func:`encode_with_notes` for the inputs)."""
    return encode_with_notes(image, quality=quality, model=model)[0]


def decode(data: bytes) -> Image.Image:
    """Decompress .dqc bytes to a PIL image ("RGB", or "L" for grayscale originals), 8-bit."""
    header, net, indices = _read(data)
    image = net.decompress(indices)[0, :, : header.height, : header.width]
    pixels = (image * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return to_pil(np.ascontiguousarray(pixels), header.channels)


def inspect(data: bytes) -> dict:
    """What a .dqc file holds, with its real size next to the model's -log2 p estimate."""
    header, net, indices = _read(data)
    info = registry.load_model(header.model)[1]
    estimated = net.entropy.bits(indices)
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


def _read(data: bytes):
    """Parse, check the model, range-decode: -> (header, model, (1, M, h, w) indices)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DQCodecError(f"expected .dqc bytes, got {type(data).__name__}")
    header, streams = unpack(bytes(data))
    try:
        net, _, fingerprint = registry.load_model(header.model)
    except KeyError:
        raise DQCodecError(f"file made with model {header.model!r}, which this dqcodec does not have") from None
    if header.fingerprint != fingerprint:
        raise DQCodecError(f"file made with different weights for model {header.model!r} (fingerprint mismatch)")
    if header.block != net.config.block or len(streams) != 1:
        raise DQCodecError(f"file geometry does not match model {header.model!r}")
    shape = (1, net.config.num_codebooks, header.padded_height // header.block, header.padded_width // header.block)
    return header, net, _decode_indices(net.entropy, streams[0], shape)


def _encode_indices(entropy, indices: np.ndarray) -> bytes:
    encoder = RangeEncoder()
    _, _, h, w = indices.shape
    for m, phase, mask in entropy.coding_steps(h, w):
        encoder.encode(indices[:, m][:, mask].reshape(-1), entropy.tables(indices, m, phase, mask))
    return encoder.to_bytes()


def _decode_indices(entropy, stream: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
    decoder = RangeDecoder(stream)
    indices = np.zeros(shape, dtype=np.int64)
    _, _, h, w = shape
    for m, phase, mask in entropy.coding_steps(h, w):
        symbols = decoder.decode(entropy.tables(indices, m, phase, mask))
        indices[:, m][:, mask] = symbols.reshape(shape[0], -1)
    return indices

