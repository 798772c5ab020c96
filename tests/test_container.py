"""The .dqc container: exact layout, round trip, and a one-line DQCodecError for every bad file."""

import random
import struct
import zlib

import pytest

from dqcodec.codec.container import (
    MAGIC,
    MAX_HEADER_SIZE,
    MAX_PIXELS,
    MAX_SIDE,
    VERSION,
    Header,
    pack,
    read_header,
    unpack,
)
from dqcodec.codec.errors import DQCodecError

HEADER = Header(
    model="dq-q3", fingerprint=bytes(range(16)), width=100, height=37, channels=3, bit_depth=8, padding=16
)
STREAMS = [b"\x01\x02\x03", b"", b"payload-two"]


def build(
    *,
    model=b"dq-q3",
    version=None,
    fingerprint=bytes(range(16)),
    width=100,
    height=37,
    channels=3,
    bit_depth=8,
    padding=16,
    tile_size=0,
    overlap=0,
    levels=None,
    streams=(b"\x01\x02\x03", b"", b"payload-two"),
    lengths=None,
    tail=b"",
):
    """A .dqc file assembled by hand from the documented layout (format ``version`` 1 or 2),
    with a correct CRC32, so a test proves that the field check fires and not merely the
    checksum. ``version`` defaults to what ``pack`` writes: 1 for one tile (``tile_size`` 0),
    else 2; ``levels`` (streams per tile, version 2) defaults to all streams in one tile."""
    lengths = [len(stream) for stream in streams] if lengths is None else lengths
    version = (2 if tile_size else 1) if version is None else version
    if version == 1:
        geometry = struct.pack("<IIBBBB", width, height, channels, bit_depth, padding, len(lengths))
    else:
        levels = len(lengths) if levels is None else levels
        geometry = struct.pack("<IIBBBHHB", width, height, channels, bit_depth, padding, tile_size, overlap, levels)
    body = (
        MAGIC
        + struct.pack("<BB", version, len(model))
        + model
        + fingerprint
        + geometry
        + b"".join(struct.pack("<I", length) for length in lengths)
        + b"".join(streams)
        + tail
    )
    return body + struct.pack("<I", zlib.crc32(body))


def assert_rejected(data, *fragments):
    with pytest.raises(DQCodecError) as caught:
        unpack(data)
    message = str(caught.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_pack_writes_the_documented_layout():
    assert pack(HEADER, STREAMS) == build()


def test_round_trip():
    header, streams = unpack(pack(HEADER, STREAMS))
    assert header == HEADER
    assert streams == STREAMS


def test_round_trip_accepts_bytearray_and_memoryview():
    data = pack(HEADER, STREAMS)
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == (HEADER, STREAMS)


def test_round_trip_at_the_limits():
    header = Header(model="a" * 64, fingerprint=b"\xff" * 16, width=MAX_SIDE, height=MAX_PIXELS // MAX_SIDE,
                    channels=1, bit_depth=16, padding=64)
    streams = [bytes([i]) for i in range(32)]
    assert unpack(pack(header, streams)) == (header, streams)


def test_padded_size_rounds_up_to_the_block():
    assert (HEADER.padded_width, HEADER.padded_height) == (112, 48)
    exact = Header("m", bytes(16), width=64, height=1, channels=3, bit_depth=8, padding=1)
    assert (exact.padded_width, exact.padded_height) == (64, 1)


def test_constants():
    assert MAGIC == b"\x89DQC" and VERSION == 2 and MAX_SIDE == 32768 and MAX_PIXELS == 2**26


@pytest.mark.parametrize(
    "change, streams",
    [
        ({"model": ""}, STREAMS),
        ({"model": "Upper"}, STREAMS),
        ({"model": "x" * 65}, STREAMS),
        ({"model": "caf\u00e9"}, STREAMS),
        ({"fingerprint": bytes(15)}, STREAMS),
        ({"width": 0}, STREAMS),
        ({"height": MAX_SIDE + 1}, STREAMS),
        ({"width": MAX_SIDE, "height": MAX_SIDE}, STREAMS),
        ({"channels": 4}, STREAMS),
        ({"bit_depth": 12}, STREAMS),
        ({"padding": 0}, STREAMS),
        ({"padding": 65}, STREAMS),
        ({}, []),
        ({}, [b""] * 33),
    ],
)
def test_pack_rejects_bad_input(change, streams):
    fields = {**HEADER.__dict__, **change}
    with pytest.raises(DQCodecError):
        pack(Header(**fields), streams)


def test_empty_input():
    assert_rejected(b"", "empty")


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes(seed):
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    assert_rejected(data)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_after_the_magic(seed):
    rng = random.Random(seed)
    assert_rejected(MAGIC + b"\x01" + bytes(rng.randrange(256) for _ in range(200)))


def test_wrong_magic():
    data = pack(HEADER, STREAMS)
    assert_rejected(b"\x89PNG" + data[4:], "not a .dqc file")
    assert_rejected(b"\x89DQ", "not a .dqc file")


def test_unknown_version():
    assert_rejected(build(version=3), "unsupported .dqc version 3 (this dqcodec reads 1 to 2)")
    assert_rejected(build(version=0), "unsupported .dqc version 0")


def test_every_truncation():
    data = pack(HEADER, STREAMS)
    for size in range(len(data)):
        assert_rejected(data[:size])


def test_truncated_payload_says_so():
    data = pack(HEADER, STREAMS)
    assert_rejected(data[:-6], "truncated")


def test_trailing_bytes():
    assert_rejected(pack(HEADER, STREAMS) + b"\x00", "unexpected bytes")


def test_every_single_bit_flip():
    data = pack(HEADER, STREAMS)
    for position in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        assert_rejected(bytes(flipped))


def test_checksum_mismatch():
    data = bytearray(pack(HEADER, STREAMS))
    data[-8] ^= 0x40  # inside the last stream
    assert_rejected(bytes(data), "checksum mismatch")


def test_absurd_dimensions_with_a_valid_checksum():
    assert_rejected(build(width=100_000, height=100_000), "100000x100000")


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"width": 0}, "0x37"),
        ({"width": MAX_SIDE, "height": MAX_SIDE}, "more than"),
        ({"channels": 2}, "channels"),
        ({"bit_depth": 12}, "bit depth"),
        ({"padding": 0}, "padding"),
        ({"padding": 200}, "padding"),
        ({"model": b""}, "model name"),
        ({"model": b"Bad Name\n"}, "model name"),
        ({"model": b"\xff" * 70}, "model name"),
        ({"streams": ()}, "0 streams"),
        ({"streams": (b"x",) * 33}, "33 streams"),
        ({"tile_size": 16}, "tile size 16"),
        ({"tile_size": 255}, "tile size 255"),
        ({"tile_size": 264, "padding": 16}, "multiple of the padding 16"),
        ({"tile_size": MAX_SIDE + 16}, "tile size"),
        ({"overlap": 8, "version": 2}, "tile overlap 8"),
        ({"tile_size": 256, "overlap": 257}, "must be 0..256"),
    ],
)
def test_bad_header_fields_with_a_valid_checksum(fields, fragment):
    assert_rejected(build(**fields), fragment)


def test_stream_length_beyond_the_data_with_a_valid_checksum():
    assert_rejected(build(streams=(b"abc",), lengths=[1000]), "truncated")
    assert_rejected(build(streams=(b"abc",), lengths=[2**32 - 1]), "truncated")


def test_stream_lengths_short_of_the_data_with_a_valid_checksum():
    assert_rejected(build(streams=(b"abc",), tail=b"extra"), "unexpected bytes")


def test_read_header_needs_only_the_header():
    data = pack(HEADER, STREAMS)
    through_n_streams = 4 + 2 + len(HEADER.model) + 16 + 4 + 4 + 4
    for prefix in (data, data[:MAX_HEADER_SIZE], data[:through_n_streams], bytearray(data), memoryview(data)):
        assert read_header(prefix) == HEADER
    with pytest.raises(DQCodecError, match="truncated"):
        read_header(data[: through_n_streams - 1])
    for foreign in (b"", b"\x89PNG\r\n\x1a\n", MAGIC):
        with pytest.raises(DQCodecError):
            read_header(foreign)


@pytest.mark.parametrize(
    "fields",
    [{"version": 3}, {"width": 0}, {"width": MAX_SIDE, "height": MAX_SIDE}, {"channels": 2}, {"bit_depth": 12},
     {"padding": 0}, {"model": b"Bad Name"}, {"model": b"\xff" * 255}, {"streams": ()}, {"streams": (b"x",) * 33}],
)
def test_read_header_rejects_what_unpack_rejects(fields):
    data = build(**fields)
    with pytest.raises(DQCodecError) as caught:
        read_header(data)
    assert str(caught.value) == assert_rejected(data)


# ---- tiles (format version 2) and files of version 1 ------------------------------------------


TILED = Header(model="dq-q3", fingerprint=bytes(range(16)), width=600, height=300, channels=3, bit_depth=8,
               padding=8, tile_size=256, overlap=32)


def test_a_tiled_file_holds_every_tile_s_streams_in_raster_order():
    assert (TILED.tiling.columns, TILED.tiling.rows) == (3, 2)
    streams = [f"tile {tile} level {level}".encode() for tile in range(6) for level in range(2)]
    data = pack(TILED, streams)
    assert unpack(data) == (TILED, streams)
    assert data == build(width=600, height=300, padding=8, tile_size=256, overlap=32, levels=2, streams=streams)
    assert read_header(data) == TILED
    through_levels = 4 + 2 + len(TILED.model) + 16 + 4 + 4 + 3 + 2 + 2 + 1
    assert read_header(data[:through_levels]) == TILED
    with pytest.raises(DQCodecError, match="truncated"):
        read_header(data[: through_levels - 1])


def test_the_stream_count_must_fill_every_tile():
    for streams in ([b"x"] * 5, [b"x"] * 7, [], [b"x"] * 6 * 33):
        with pytest.raises(DQCodecError, match="streams"):
            pack(TILED, streams)
    # A file whose table is short of what the tile grid needs is cut, whatever its checksum says.
    short = build(width=600, height=300, padding=8, tile_size=256, levels=2, streams=(b"x",) * 11)
    assert_rejected(short, "truncated")
    long = build(width=600, height=300, padding=8, tile_size=256, levels=1, streams=(b"x",) * 7)
    assert_rejected(long)


def test_a_huge_tile_grid_is_refused_before_its_table_is_read():
    data = build(width=MAX_SIDE, height=2048, padding=8, tile_size=256, overlap=128, levels=32, streams=())
    assert_rejected(data, "truncated")


def test_one_tile_is_written_in_version_1_and_read_from_either_version():
    data = build()
    assert data[4] == 1 and pack(HEADER, STREAMS) == data  # readable by dqcodec 0.1 and 0.2
    header, streams = unpack(data)
    assert header == HEADER and header.tile_size == 0 and len(header.tiling) == 1
    assert streams == STREAMS and read_header(data) == HEADER
    assert_rejected(build(version=1, streams=(b"x",) * 33), "33 streams per tile")
    assert unpack(build(version=2)) == (HEADER, STREAMS)  # version 2 may say "one tile" too
    assert unpack(pack(TILED, [b"x"] * 6))[0].tiling.size == 256 and pack(TILED, [b"x"] * 6)[4] == 2
