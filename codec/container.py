"""The ``.dqc`` container: a small checked header, the range-coded streams, and a CRC32.

Layout of format version 2 (little-endian)::

    magic        4 bytes   b"\\x89DQC"
    version      u8        2
    name_len     u8        1..64, followed by the model name in ASCII ([a-z0-9._-])
    fingerprint  16 bytes  model fingerprint (first 16 bytes of a sha256; compared by the API)
    width        u32       original image width in pixels, 1..MAX_SIDE
    height       u32       original image height in pixels, 1..MAX_SIDE (width*height <= MAX_PIXELS)
    channels     u8        1 (decode gives grayscale) or 3 (RGB)
    bit_depth    u8        8 or 16: bit depth of the original input (decoded output is 8-bit)
    padding      u8        padding multiple of the model (pixels), 1..64
    tile_size    u16       pixels from one tile to the next: 0 (the whole image is one tile) or
                           MIN_TILE_SIZE..MAX_SIDE, a multiple of padding
    overlap      u16       pixels a tile reaches into the next (two neighbours share them):
                           0 (always with tile_size 0) up to tile_size
    levels       u8        1..32 streams per tile, one per level of the model's indices
    lengths      u32 each  the stream lengths in bytes, tile by tile in raster order (the tile
                           grid follows from width, height, tile_size and overlap, see
                           ``dqcodec.codec.tiles``), each tile's levels coarse to fine
    payload                the streams, concatenated in the same order
    crc32        u32       zlib.crc32 of every byte before it

Format version 1 (dqcodec 0.1 and 0.2) has no tile_size, overlap or levels; in their place one
u8 ``n_streams`` (1..32), the streams of the whole image as one tile. It is still written for an
image coded as one tile (``tile_size`` 0), so such files stay readable by earlier releases;
version 2 is written when there are tiles. Both are read.

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
from dqcodec.codec.tiles import MIN_TILE_SIZE, Tiling

MAGIC = b"\x89DQC"
VERSION = 2  # the newest format version; ``unpack`` reads 1 to VERSION
MAX_SIDE = 32768
MAX_PIXELS = 2**26
MAX_NAME_LENGTH = 64
FINGERPRINT_LENGTH = 16
MAX_PADDING = 64
MAX_LEVELS = 32  # streams per tile

_NAME_PATTERN = re.compile(rb"[a-z0-9._-]{1,64}")
_PREFIX = struct.Struct("<4sBB")  # magic, version, name_len
# Fingerprint .. levels (version 2) or n_streams (version 1), by version.
_GEOMETRY = {
    1: struct.Struct(f"<{FINGERPRINT_LENGTH}sIIBBBB"),
    2: struct.Struct(f"<{FINGERPRINT_LENGTH}sIIBBBHHB"),
}
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")
# The most bytes a header can take up to and including the stream count (name_len is a u8):
# what ``read_header`` needs at most.
MAX_HEADER_SIZE = _PREFIX.size + 255 + max(geometry.size for geometry in _GEOMETRY.values())


@dataclass(frozen=True)
class Header:
    """What a ``.dqc`` file says about its image, the model that coded it and the tile grid.

    Sizes are in pixels; ``width``/``height`` are the original image's, before padding to a
    multiple of ``padding``. ``tile_size`` 0 (with ``overlap`` 0) means one tile, the whole image.
    """

    model: str
    fingerprint: bytes
    width: int
    height: int
    channels: int
    bit_depth: int
    padding: int
    tile_size: int = 0
    overlap: int = 0

    @property
    def padded_width(self) -> int:
        """Width rounded up to a multiple of ``padding``, in pixels (what the model sees of a
        whole image coded as one tile)."""
        return -(-self.width // self.padding) * self.padding

    @property
    def padded_height(self) -> int:
        """Height rounded up to a multiple of ``padding``, in pixels."""
        return -(-self.height // self.padding) * self.padding

    @property
    def tiling(self) -> Tiling:
        """The tile grid (:class:`~dqcodec.codec.tiles.Tiling`) of the image."""
        return Tiling(self.width, self.height, self.tile_size, self.overlap)


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise ``header`` and the coded ``streams`` into a ``.dqc`` file: format version 1 for
    one tile (``header.tile_size`` 0), else version 2.

    streams: each tile's streams in raster order, the same number (1..32) for every tile.
    Raises ``DQCodecError`` if a header field or the stream count is out of range.
    """
    _check_header(header)
    tiles = len(header.tiling)
    if not streams or len(streams) % tiles:
        raise DQCodecError(f"invalid .dqc streams: {len(streams)} streams for {tiles} tiles")
    levels = len(streams) // tiles
    _check_levels(levels)
    for stream in streams:
        if len(stream) >= 2**32:
            raise DQCodecError(f"invalid .dqc stream: {len(stream)} bytes is more than a u32 length holds")
    name = header.model.encode("ascii")
    version = 2 if header.tile_size else 1
    tiling = (header.tile_size, header.overlap) if version == 2 else ()
    parts = [
        _PREFIX.pack(MAGIC, version, len(name)),
        name,
        _GEOMETRY[version].pack(
            header.fingerprint,
            header.width,
            header.height,
            header.channels,
            header.bit_depth,
            header.padding,
            *tiling,
            levels,
        ),
        struct.pack(f"<{len(streams)}I", *(len(stream) for stream in streams)),
        *streams,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and check a ``.dqc`` file; return its header and its streams (byte strings), tile by
    tile in raster order, each tile's levels coarse to fine.

    ``data`` is the whole file (bytes, bytearray or memoryview). Raises ``DQCodecError`` with a
    one-line reason for anything that is not a complete, intact ``.dqc`` file this version reads.
    """
    data = bytes(data)
    version, geometry_offset, geometry = _read_fixed_fields(data)
    # The header fields are checked first (a checksum proves only that the bytes are as written;
    # a crafted file can still claim anything): with the tile grid they size the stream table.
    header = _checked_header(data[_PREFIX.size : geometry_offset], geometry, version)
    n_streams = _stream_count(header, geometry, version)

    # Layout next: every length the header states must add up to the size of the file, so a cut
    # or padded file is named as such rather than as a checksum failure.
    lengths_offset = geometry_offset + _GEOMETRY[version].size
    payload_offset = lengths_offset + n_streams * _LENGTH.size
    if len(data) < payload_offset:
        raise _truncated(len(data))
    lengths = struct.unpack_from(f"<{n_streams}I", data, lengths_offset)
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

    streams = []
    offset = payload_offset
    for length in lengths:
        streams.append(data[offset : offset + length])
        offset += length
    return header, streams


def read_header(data: bytes) -> Header:
    """Parse and check the header of a ``.dqc`` file from its first bytes, without its streams.

    ``data``: the start of the file (bytes, bytearray or memoryview) up to the stream count at
    least; the first :data:`MAX_HEADER_SIZE` bytes always suffice, and the whole file does too.
    Checks the magic, the version and every header field as :func:`unpack` does; the stream
    lengths, the file size and the checksum need the whole file and are left to :func:`unpack`.
    Raises ``DQCodecError`` with a one-line reason.
    """
    data = bytes(data[:MAX_HEADER_SIZE])
    version, geometry_offset, geometry = _read_fixed_fields(data)
    header = _checked_header(data[_PREFIX.size : geometry_offset], geometry, version)
    _stream_count(header, geometry, version)
    return header


def _read_fixed_fields(data: bytes) -> tuple[int, int, tuple]:
    """Check magic and version; return the version, the offset of the fingerprint and the
    unpacked fields from fingerprint to the stream count. Raises ``DQCodecError`` for a foreign,
    cut or newer file."""
    if not data:
        raise DQCodecError("empty input (0 bytes): not a .dqc file")
    if data[: len(MAGIC)] != MAGIC:
        raise DQCodecError("not a .dqc file (wrong magic bytes)")
    if len(data) < _PREFIX.size:
        raise _truncated(len(data))
    _, version, name_length = _PREFIX.unpack_from(data, 0)
    if version not in _GEOMETRY:
        raise DQCodecError(f"unsupported .dqc version {version} (this dqcodec reads 1 to {VERSION})")
    geometry_offset = _PREFIX.size + name_length
    if len(data) < geometry_offset + _GEOMETRY[version].size:
        raise _truncated(len(data))
    return version, geometry_offset, _GEOMETRY[version].unpack_from(data, geometry_offset)


def _checked_header(name_bytes: bytes, geometry: tuple, version: int) -> Header:
    """The header made of the raw model name and the fixed fields, every field checked."""
    fingerprint, width, height, channels, bit_depth, padding = geometry[:6]
    tile_size, overlap = geometry[6:8] if version >= 2 else (0, 0)
    if not _NAME_PATTERN.fullmatch(name_bytes):
        raise DQCodecError("invalid .dqc header: the model name is not 1-64 characters of [a-z0-9._-]")
    _check_levels(geometry[-1])
    header = Header(
        model=name_bytes.decode("ascii"),
        fingerprint=fingerprint,
        width=width,
        height=height,
        channels=channels,
        bit_depth=bit_depth,
        padding=padding,
        tile_size=tile_size,
        overlap=overlap,
    )
    _check_header(header)
    return header


def _stream_count(header: Header, geometry: tuple, version: int) -> int:
    """How many streams (and lengths) the file holds: per tile (version 2) or in all (version 1)."""
    return geometry[-1] * (len(header.tiling) if version >= 2 else 1)


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
    _check_tiles(header.tile_size, header.overlap, header.padding)


def _check_tiles(tile_size: int, overlap: int, padding: int) -> None:
    if tile_size != 0 and not (MIN_TILE_SIZE <= tile_size <= MAX_SIDE and tile_size % padding == 0):
        raise DQCodecError(
            f"invalid .dqc header: tile size {tile_size} (must be 0 or a multiple of the padding {padding} "
            f"from {MIN_TILE_SIZE} to {MAX_SIDE})"
        )
    if not 0 <= overlap <= tile_size:
        raise DQCodecError(
            f"invalid .dqc header: tile overlap {overlap} (must be 0..{tile_size} for tile size {tile_size})"
        )


def _check_levels(levels: int) -> None:
    if not 1 <= levels <= MAX_LEVELS:
        raise DQCodecError(f"invalid .dqc header: {levels} streams per tile (must be 1..{MAX_LEVELS})")


def _truncated(size: int, expected_size: int | None = None) -> DQCodecError:
    if expected_size is None:
        return DQCodecError(f"truncated .dqc file (only {size} bytes, the header is cut off)")
    return DQCodecError(f"truncated .dqc file ({size} bytes, the header promises {expected_size})")
