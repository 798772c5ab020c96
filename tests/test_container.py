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
    version=1,
    fingerprint=bytes(range(16)),
    width=100,
    height=37,
    channels=3,
    bit_depth=8,
    padding=16,
    streams=(b"\x01\x02\x03", b"", b"payload-two"),
    lengths=None,
    tail=b"",
):
    """A .dqc file assembled by hand from the documented layout, with a correct CRC32, so a
    test proves that the field check fires and not merely the checksum."""
    lengths = [len(stream) for stream in streams] if lengths is None else lengths
    body = (
        MAGIC
        + struct.pack("<BB", version, len(model))
        + model
        + fingerprint
        + struct.pack("<IIBBBB", width, height, channels, bit_depth, padding, len(lengths))
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
    assert MAGIC == b"\x89DQC" and VERSION == 1 and MAX_SIDE == 32768 and MAX_PIXELS == 2**26


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
    assert_rejected(build(version=2), "unsupported .dqc version 2 (this dqcodec reads 1)")


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
    [{"version": 2}, {"width": 0}, {"width": MAX_SIDE, "height": MAX_SIDE}, {"channels": 2}, {"bit_depth": 12},
     {"padding": 0}, {"model": b"Bad Name"}, {"model": b"\xff" * 255}, {"streams": ()}, {"streams": (b"x",) * 33}],
)
def test_read_header_rejects_what_unpack_rejects(fields):
    data = build(**fields)
    with pytest.raises(DQCodecError) as caught:
        read_header(data)
    assert str(caught.value) == assert_rejected(data)
