"""The ``.dqc`` container: a small checked header, the range-coded streams, and a CRC32.

Layout (little-endian)::

    magic        4 bytes   b"\\x89DQC"
    version      u8        1
    name_len     u8        1..64, followed by the model name in ASCII ([a-z0-9._-])
    fingerprint  16 bytes  model fingerprint (first 16 bytes of a sha256; compared by the API)
    width        u32       original image width in pixels, 1..MAX_SIDE
    height       u32       original image height in pixels, 1..MAX_SIDE (width*height <= MAX_PIXELS)
    channels     u8        1 (decode gives grayscale) or 3 (RGB)
    bit_depth    u8        8 or 16: bit depth of the original input (decoded output is 8-bit)
    padding      u8        padding multiple of the model (pixels), 1..64
    n_streams    u8        1..32, followed by n_streams u32 stream lengths in bytes
    payload                the streams, concatenated
    crc32        u32       zlib.crc32 of every byte before it

``unpack`` checks the layout (lengths add up to the file size), then the checksum, then every
header field, before anything sized by the header exists; each failure is one ``DQCodecError``.
``read_header`` checks the header fields alone, from the first bytes of a file (what an image
viewer needs to show the size without reading the streams).
"""

import re
import struct
import zlib
from dataclasses import dataclass

from dqcodec.codec.errors import DQCodecError

MAGIC = b"\x89DQC"
VERSION = 1
MAX_SIDE = 32768
MAX_PIXELS = 2**26
MAX_NAME_LENGTH = 64
FINGERPRINT_LENGTH = 16
MAX_PADDING = 64
MAX_STREAMS = 32

_NAME_PATTERN = re.compile(rb"[a-z0-9._-]{1,64}")
_PREFIX = struct.Struct("<4sBB")  # magic, version, name_len
_GEOMETRY = struct.Struct(f"<{FINGERPRINT_LENGTH}sIIBBBB")  # fingerprint .. n_streams
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")
# The most bytes a header can take up to and including n_streams (name_len is a u8): what
# ``read_header`` needs at most.
MAX_HEADER_SIZE = _PREFIX.size + 255 + _GEOMETRY.size


@dataclass(frozen=True)
class Header:
    """What a ``.dqc`` file says about its image and the model that coded it.

    Sizes are in pixels; ``width``/``height`` are the original image's, before padding to a
    multiple of ``padding``.
    """

    model: str
    fingerprint: bytes
    width: int
    height: int
    channels: int
    bit_depth: int
    padding: int

    @property
    def padded_width(self) -> int:
        """Width rounded up to a multiple of ``padding``, in pixels (what the model sees)."""
        return -(-self.width // self.padding) * self.padding

    @property
    def padded_height(self) -> int:
        """Height rounded up to a multiple of ``padding``, in pixels (what the model sees)."""
        return -(-self.height // self.padding) * self.padding


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise ``header`` and the coded ``streams`` (1..32 byte strings) into a ``.dqc`` file.

    Raises ``DQCodecError`` if a header field or the stream list is out of range.
    """
    _check_header(header)
    _check_stream_count(len(streams))
    for stream in streams:
        if len(stream) >= 2**32:
            raise DQCodecError(f"invalid .dqc stream: {len(stream)} bytes is more than a u32 length holds")
    name = header.model.encode("ascii")
    parts = [
        _PREFIX.pack(MAGIC, VERSION, len(name)),
        name,
        _GEOMETRY.pack(
            header.fingerprint,
            header.width,
            header.height,
            header.channels,
            header.bit_depth,
            header.padding,
            len(streams),
        ),
        *(_LENGTH.pack(len(stream)) for stream in streams),
        *streams,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and check a ``.dqc`` file; return its header and its streams (byte strings).

    ``data`` is the whole file (bytes, bytearray or memoryview). Raises ``DQCodecError`` with a
    one-line reason for anything that is not a complete, intact ``.dqc`` file this version reads.
    """
    data = bytes(data)
    geometry_offset, geometry = _read_fixed_fields(data)
    n_streams = geometry[-1]

    # Layout first: every length the header states must add up to the size of the file, so a cut
    # or padded file is named as such rather than as a checksum failure.
    lengths_offset = geometry_offset + _GEOMETRY.size
    payload_offset = lengths_offset + n_streams * _LENGTH.size
    if len(data) < payload_offset:
        raise _truncated(len(data))
    lengths = [_LENGTH.unpack_from(data, lengths_offset + i * _LENGTH.size)[0] for i in range(n_streams)]
    expected_size = payload_offset + sum(lengths) + _CRC.size
    if len(data) < expected_size:
        raise _truncated(len(data), expected_size)
    if len(data) > expected_size:
        raise DQCodecError(
            f"corrupted .dqc file ({len(data) - expected_size} unexpected bytes after the last stream)"
        )

    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != stored_crc:
        raise DQCodecError("corrupted .dqc file (checksum mismatch)")

    # The checksum only proves the bytes are as written; a crafted file can still claim anything.
    header = _checked_header(data[_PREFIX.size : geometry_offset], geometry)
    streams = []
    offset = payload_offset
    for length in lengths:
        streams.append(data[offset : offset + length])
        offset += length
    return header, streams


def read_header(data: bytes) -> Header:
    """Parse and check the header of a ``.dqc`` file from its first bytes, without its streams.

    ``data``: the start of the file (bytes, bytearray or memoryview) up to n_streams at least;
    the first :data:`MAX_HEADER_SIZE` bytes always suffice, and the whole file does too. Checks
    the magic, the version and every header field as :func:`unpack` does; the stream lengths,
    the file size and the checksum need the whole file and are left to :func:`unpack`. Raises
    ``DQCodecError`` with a one-line reason.
    """
    data = bytes(data[:MAX_HEADER_SIZE])
    geometry_offset, geometry = _read_fixed_fields(data)
    return _checked_header(data[_PREFIX.size : geometry_offset], geometry)


def _read_fixed_fields(data: bytes) -> tuple[int, tuple]:
    """Check magic and version; return the offset of the fingerprint and the unpacked fields
    from fingerprint to n_streams. Raises ``DQCodecError`` for a foreign, cut or newer file."""
    if not data:
        raise DQCodecError("empty input (0 bytes): not a .dqc file")
    if data[: len(MAGIC)] != MAGIC:
        raise DQCodecError("not a .dqc file (wrong magic bytes)")
    if len(data) < _PREFIX.size:
        raise _truncated(len(data))
    _, version, name_length = _PREFIX.unpack_from(data, 0)
    if version != VERSION:
        raise DQCodecError(f"unsupported .dqc version {version} (this dqcodec reads {VERSION})")
    geometry_offset = _PREFIX.size + name_length
    if len(data) < geometry_offset + _GEOMETRY.size:
        raise _truncated(len(data))
    return geometry_offset, _GEOMETRY.unpack_from(data, geometry_offset)


def _checked_header(name_bytes: bytes, geometry: tuple) -> Header:
    """The header made of the raw model name and the fixed fields, every field checked."""
    fingerprint, width, height, channels, bit_depth, padding, n_streams = geometry
    if not _NAME_PATTERN.fullmatch(name_bytes):
        raise DQCodecError("invalid .dqc header: the model name is not 1-64 characters of [a-z0-9._-]")
    _check_stream_count(n_streams)
    header = Header(
        model=name_bytes.decode("ascii"),
        fingerprint=fingerprint,
        width=width,
        height=height,
        channels=channels,
        bit_depth=bit_depth,
        padding=padding,
    )
    _check_header(header)
    return header


def _check_header(header: Header) -> None:
    """Raise ``DQCodecError`` naming the first header field that is out of range."""
    name = header.model.encode("ascii", "replace") if isinstance(header.model, str) else b""
    if not _NAME_PATTERN.fullmatch(name):
        raise DQCodecError(
            f"invalid .dqc header: model name {header.model!r} is not 1-64 characters of [a-z0-9._-]"
        )
    if not isinstance(header.fingerprint, bytes) or len(header.fingerprint) != FINGERPRINT_LENGTH:
        raise DQCodecError(f"invalid .dqc header: the model fingerprint must be {FINGERPRINT_LENGTH} bytes")
    if not (1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE):
        raise DQCodecError(
            f"invalid .dqc header: image size {header.width}x{header.height} "
            f"(each side must be 1..{MAX_SIDE} pixels)"
        )
    if header.width * header.height > MAX_PIXELS:
        raise DQCodecError(
            f"invalid .dqc header: image size {header.width}x{header.height} "
            f"is more than {MAX_PIXELS} pixels"
        )
    if header.channels not in (1, 3):
        raise DQCodecError(f"invalid .dqc header: {header.channels} channels (must be 1 or 3)")
    if header.bit_depth not in (8, 16):
        raise DQCodecError(f"invalid .dqc header: bit depth {header.bit_depth} (must be 8 or 16)")
    if not 1 <= header.padding <= MAX_PADDING:
        raise DQCodecError(f"invalid .dqc header: padding multiple {header.padding} (must be 1..{MAX_PADDING})")


def _check_stream_count(n_streams: int) -> None:
    if not 1 <= n_streams <= MAX_STREAMS:
        raise DQCodecError(f"invalid .dqc header: {n_streams} streams (must be 1..{MAX_STREAMS})")


def _truncated(size: int, expected_size: int | None = None) -> DQCodecError:
    if expected_size is None:
        return DQCodecError(f"truncated .dqc file (only {size} bytes, the header is cut off)")
    return DQCodecError(f"truncated .dqc file ({size} bytes, the header promises {expected_size})")
