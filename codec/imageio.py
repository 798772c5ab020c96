"""Images in and out: whatever the user hands us becomes an (H, W, 3) uint8 RGB array, and
decoded images are written to the format their file name asks for, atomically.

Every problem with the user's input or output path is a one-line ``DQCodecError``.
"""

import contextlib
import functools
import io
import os
import re
import struct
import uuid
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from dqcodec.codec.container import MAX_PIXELS, MAX_SIDE
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.limits import check_pixels

# Pillow format and save options for each output extension.
_SAVE_FORMATS = {
    ".png": ("PNG", {}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
    ".ppm": ("PPM", {}),
    ".pgm": ("PPM", {}),
    ".pnm": ("PPM", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}
# Pillow's PPM writer picks P5 or P6 from the image mode; these extensions promise one of them.
_SAVE_MODES = {".pgm": "L", ".ppm": "RGB"}

# Raw modes with 16-bit samples (PNG/TIFF "RGB;16B", "I;16L", ...). Not "BGR;16", which is
# a 16-bit *pixel* (5-6-5) in BMP files.
_WIDE_RAWMODE = re.compile(r";16[BLN]")
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}

# What Pillow raises for a corrupt or truncated file, besides OSError.
_DECODE_ERRORS = (SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error)


@dataclass
class LoadedImage:
    """An input image ready for the model, and what became of it on the way."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB; grayscale inputs are replicated to three channels
    channels: int  # 1 or 3: what decode should give back
    bit_depth: int  # 8 or 16: bits per sample of the original
    notes: list[str] = field(default_factory=list)  # one line per lossy conversion


def load_image(source, max_pixels: int | None = None) -> LoadedImage:
    """Load ``source`` as an (H, W, 3) uint8 RGB array, applying EXIF orientation.

    ``source`` is a path (str or ``os.PathLike``), the bytes of an encoded image file, a
    ``PIL.Image.Image``, or a uint8 numpy array shaped (H, W), (H, W, 3) or (H, W, 4).
    Grayscale stays grayscale (``channels == 1``); alpha is composited on white; 16-bit
    samples are rounded to 8 bits; other colour spaces become RGB; each lossy step adds a note.
    ``max_pixels``: the pixel limit (see :mod:`dqcodec.codec.limits`), checked from the file's
    header before its pixels are read.
    Raises ``DQCodecError`` for a missing, unreadable, corrupt, empty or too large image.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_encoded(source, str(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DQCodecError("input image is empty (0 bytes)")
        return _load_encoded(io.BytesIO(source), "input image", max_pixels)
    if isinstance(source, Image.Image):
        with _pillow_errors("input image"):
            return _convert(source, "input image", max_pixels)
    if isinstance(source, np.ndarray):
        return _convert(_array_to_pil(source, max_pixels), "input array", max_pixels)
    raise DQCodecError(
        f"cannot read an image from a {type(source).__name__}; "
        "pass a path, the bytes of an image file, a PIL image or a uint8 numpy array"
    )


def to_pil(pixels: np.ndarray, channels: int) -> Image.Image:
    """Turn decoded (H, W, 3) uint8 RGB pixels into a PIL image: "L" if ``channels`` is 1
    (ITU-R 601-2 luma, which returns a replicated gray pixel unchanged), else "RGB"."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    return image.convert("L") if channels == 1 else image


def output_format(path) -> str:
    """The Pillow format that ``save_image`` writes for ``path``, chosen by its extension.

    Raises ``DQCodecError`` listing the supported extensions when the extension is unknown.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _SAVE_FORMATS:
        named = f"unknown extension '{suffix}'" if suffix else "no extension"
        raise DQCodecError(f"cannot write {path}: {named}; use one of {' '.join(_SAVE_FORMATS)}")
    return _SAVE_FORMATS[suffix][0]


def save_image(image: Image.Image, path) -> None:
    """Write ``image`` to ``path`` in the format its extension names, atomically.

    .png .bmp .tif/.tiff .ppm/.pgm/.pnm, .jpg/.jpeg (quality 95), .webp (lossless). An existing
    file is replaced; a failed write leaves nothing behind. Raises ``DQCodecError``.
    """
    format_name = output_format(path)
    suffix = Path(path).suffix.lower()
    options = _SAVE_FORMATS[suffix][1]
    if suffix in _SAVE_MODES and image.mode != _SAVE_MODES[suffix]:
        image = image.convert(_SAVE_MODES[suffix])
    _write_atomic(path, lambda file: image.save(file, format=format_name, **options))


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    ``path`` is either the old file or the complete new one. Raises ``DQCodecError``."""
    _write_atomic(path, lambda file: file.write(data))


def read_bytes(path) -> bytes:
    """The whole content of the file at ``path``; ``DQCodecError`` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DQCodecError(_file_problem(str(path), error)) from error


def check_output_path(path) -> None:
    """Raise ``DQCodecError`` unless a file can be written at ``path`` (its folder exists and is
    writable, and ``path`` is not a folder). Lets commands fail before any slow work."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise DQCodecError(f"cannot write {path}: it is a folder")
    if not folder.exists():
        raise DQCodecError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DQCodecError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise DQCodecError(f"cannot write {path}: no permission to write in {folder}")


def _write_atomic(path, write: Callable[[BinaryIO], object]) -> None:
    check_output_path(path)
    path = Path(path)
    temporary = path.with_name(f".{path.name[:100]}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with mode 0o666 lets the umask decide permissions, as for any new file
        # (tempfile would create it 0o600).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise DQCodecError(f"cannot write {path}: {_one_line(error.strerror or error)}") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError):
            raise DQCodecError(f"cannot write {path}: {_one_line(error.strerror or error)}") from error
        raise


@functools.cache
def _enable_heif() -> None:
    """Let Pillow open HEIC/HEIF, the default photo format of many phones."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _load_encoded(file, name: str, max_pixels: int | None) -> LoadedImage:
    _enable_heif()
    with _pillow_errors(name), warnings.catch_warnings():
        # Pillow warns about images above its own pixel limit; _check_size rejects them with
        # our limit (which is lower) right after the header is read, so the warning adds nothing.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(file) as image:
            return _convert(image, name, max_pixels)


@contextlib.contextmanager
def _pillow_errors(name: str):
    """Turn what Pillow raises for a missing, foreign or broken file into one DQCodecError."""
    try:
        yield
    except Image.UnidentifiedImageError:
        raise DQCodecError(f"{name}: not an image (or not a format Pillow can read)") from None
    except Image.DecompressionBombError:
        raise DQCodecError(
            f"{name}: image too large (Pillow refuses it as a possible decompression bomb)"
        ) from None
    except OSError as error:
        if error.errno is not None:  # the file system, not the image data
            raise DQCodecError(_file_problem(name, error)) from error
        raise DQCodecError(f"{name}: corrupt or truncated image ({_one_line(error)})") from error
    except _DECODE_ERRORS as error:
        raise DQCodecError(f"{name}: corrupt or truncated image ({_one_line(error)})") from error


def _convert(image: Image.Image, name: str, max_pixels: int | None) -> LoadedImage:
    """Check the size from the header, then decode, orient and convert ``image``."""
    _check_size(*image.size, name, max_pixels)
    frames = getattr(image, "n_frames", 1)
    sixteen_bit = _has_16_bit_samples(image)  # before load(), which empties image.tile
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)  # a copy, so only when there is something to turn
    notes = []
    if frames > 1:
        notes.append(f"only the first of {frames} frames is encoded")
    if sixteen_bit:
        notes.append("16-bit input reduced to 8 bits")
    pixels, channels = _to_rgb(image, name, notes)
    return LoadedImage(pixels=pixels, channels=channels, bit_depth=16 if sixteen_bit else 8, notes=notes)


def _to_rgb(image: Image.Image, name: str, notes: list[str]) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 pixels and the channel count to decode to; appends lossy-step notes."""
    mode = image.mode
    if mode == "F":
        raise DQCodecError(f"{name}: floating-point images are not supported; save it with 8 or 16 bits first")
    if mode.startswith("I"):
        # 16-bit (or 32-bit integer) grayscale: round to 8 bits, 65535 -> 255.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _replicate((values * 255 + 32767) // 65535), 1
    if mode in _ALPHA_MODES or (mode in ("L", "P", "RGB") and "transparency" in image.info):
        gray = mode in ("L", "LA", "La")
        with_alpha = np.asarray(image.convert("LA" if gray else "RGBA")).astype(np.uint32)
        color, alpha = with_alpha[..., :-1], with_alpha[..., -1:]
        composited = (color * alpha + 255 * (255 - alpha) + 127) // 255  # over white
        if alpha.min() < 255:
            notes.append("alpha channel dropped (transparent areas composited on white)")
        else:
            notes.append("alpha channel dropped (it was fully opaque)")
        if gray:
            return _replicate(composited[..., 0]), 1
        return composited.astype(np.uint8), 3
    if mode in ("1", "L"):
        return _replicate(np.asarray(image.convert("L"))), 1
    if mode == "RGB":
        return _rgb_array(image), 3
    if mode not in ("RGBX", "P"):
        notes.append(f"{mode} image converted to RGB")
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8), 3
    except ValueError:
        raise DQCodecError(f"{name}: cannot convert a {mode} image to RGB") from None


def _rgb_array(image: Image.Image, band: int = 256) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an RGB image, copied ``band`` rows at a time: ``np.asarray`` of
    the whole image would hold two copies of Pillow's bytes (its chunks, then joined) beside the
    array, 400 MB for a 67 MP photo."""
    width, height = image.size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, band):
        pixels[top : top + band] = np.asarray(image.crop((0, top, width, min(top + band, height))))
    return pixels


def _replicate(gray: np.ndarray) -> np.ndarray:
    """(H, W) gray values in 0..255 -> (H, W, 3) uint8 with R = G = B."""
    return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)


def _has_16_bit_samples(image: Image.Image) -> bool:
    if image.mode.startswith("I"):
        return True
    for tile in getattr(image, "tile", ()):  # only images read from a file have tiles
        args = tile[3]
        rawmode = args if isinstance(args, str) else args[0] if args and isinstance(args[0], str) else ""
        if _WIDE_RAWMODE.search(rawmode):
            return True
    return False


def _array_to_pil(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    if array.dtype != np.uint8:
        raise DQCodecError(f"input array must be uint8 (0..255), got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise DQCodecError(f"input array must be shaped (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    _check_size(array.shape[1], array.shape[0], "input array", max_pixels)
    return Image.fromarray(np.ascontiguousarray(array))


def _check_size(width: int, height: int, name: str, max_pixels: int | None) -> None:
    if width < 1 or height < 1:
        raise DQCodecError(f"{name}: image has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise DQCodecError(
            f"{name}: image is {width}x{height} pixels; dqcodec handles at most "
            f"{MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all"
        )
    check_pixels(width, height, name, max_pixels)


def _file_problem(name: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{name}: no such file"
    if isinstance(error, IsADirectoryError):
        return f"{name}: is a folder, not a file"
    if isinstance(error, PermissionError):
        return f"{name}: permission denied"
    return f"{name}: {_one_line(error.strerror or error)}"


def _one_line(text) -> str:
    return " ".join(str(text).split())
