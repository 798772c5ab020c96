"""The dqcodec command on bad input: exit status 2, one line on stderr, no traceback, no file.

Most tests run twice: against a stand-in codec API that stores raw pixels in a real .dqc
container (so the command layer is tested on its own, today) and against the real
``dqcodec.codec.api`` (skipped while that module does not exist).
"""

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest
from PIL import Image

import dqcodec.codec
from dqcodec.codec.cli import main
from dqcodec.codec.container import Header, pack, unpack
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.imageio import load_image, to_pil

RNG = np.random.default_rng(1)
PIXELS = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)

FAKE_MODEL = "fake-q1"
FAKE_FINGERPRINT = b"F" * 16


def fake_api_module() -> types.ModuleType:
    """A lossless stand-in for dqcodec.codec.api: the pixels are the only stream."""
    module = types.ModuleType("dqcodec.codec.api")

    def encode_with_notes(image, quality=None, model=None, max_pixels=None, tile_size=None, workers=1, lossless=False,
                          rate_lambda=None):
        if model not in (None, FAKE_MODEL):
            raise DQCodecError(f"unknown model '{model}'")
        loaded = load_image(image, max_pixels)
        height, width, _ = loaded.pixels.shape
        header = Header(FAKE_MODEL, FAKE_FINGERPRINT, width, height, loaded.channels, loaded.bit_depth, 1)
        return pack(header, [loaded.pixels.tobytes()]), loaded.notes

    def decode(data, max_pixels=None, workers=1, model=None):
        header, streams = unpack(data)
        if header.model != FAKE_MODEL:
            raise DQCodecError(f"unknown model '{header.model}'")
        if header.fingerprint != FAKE_FINGERPRINT:
            raise DQCodecError("made by a different version of the model")
        if len(streams[0]) != header.width * header.height * 3:
            raise DQCodecError("corrupted stream")
        pixels = np.frombuffer(streams[0], np.uint8).reshape(header.height, header.width, 3)
        return to_pil(pixels, header.channels)

    def inspect(data, max_pixels=None, model=None):
        header, _ = unpack(data)
        decode(data)
        return {
            "model": header.model,
            "family": "fake",
            "quality": 1,
            "lossless": True,
            "width": header.width,
            "height": header.height,
            "channels": header.channels,
            "bit_depth": header.bit_depth,
            "tiles": 1,
            "tile_size": 0,
            "tile_overlap": 0,
            "bytes": len(data),
            "bpp": 8 * len(data) / (header.width * header.height),
            "real_bits": 8 * len(data),
            "estimated_bits": 8 * header.width * header.height * 3.0,
            "overhead_percent": 100 * (len(data) / (header.width * header.height * 3) - 1),
        }

    module.encode_with_notes = encode_with_notes
    module.encode = lambda image, quality=None, model=None, max_pixels=None: encode_with_notes(
        image, quality, model, max_pixels
    )[0]
    module.decode = decode
    module.inspect = inspect
    return module


def install_fake_api(monkeypatch) -> types.ModuleType:
    module = fake_api_module()
    # Both places, so `from dqcodec.codec import api` finds the stand-in even after the real
    # module has been imported by another test.
    monkeypatch.setitem(sys.modules, "dqcodec.codec.api", module)
    monkeypatch.setattr(dqcodec.codec, "api", module, raising=False)
    return module


@pytest.fixture(params=["fake", "real"])
def codec_api(request, monkeypatch):
    """The codec API the commands will call: the stand-in, or the real one if it exists."""
    if request.param == "real":
        return pytest.importorskip("dqcodec.codec.api")
    return install_fake_api(monkeypatch)


@pytest.fixture
def fake_api(monkeypatch):
    return install_fake_api(monkeypatch)


@pytest.fixture
def sample_dqc(codec_api) -> bytes:
    return codec_api.encode(PIXELS)


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_error(status: int, stderr: str, *fragments: str) -> None:
    assert status == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dqcodec: error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def resealed(data: bytes, offset: int, replacement: bytes) -> bytes:
    """``data`` with bytes at ``offset`` replaced and the CRC32 recomputed, so the header check
    (not the checksum) has to catch the change."""
    body = bytearray(data[:-4])
    body[offset : offset + len(replacement)] = replacement
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def field_offset(data: bytes, field: str) -> int:
    fingerprint = 6 + data[5]
    offsets = {"version": 4, "fingerprint": fingerprint, "width": fingerprint + 16, "lengths": fingerprint + 28}
    return offsets[field]


def bad_files(sample: bytes) -> dict[str, bytes]:
    flipped = bytearray(sample)
    flipped[len(sample) // 2] ^= 0x10
    header, streams = unpack(sample)
    return {
        "empty": b"",
        "random": RNG.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "text": b"just some text\n",
        "png": sample_png(),
        "truncated": sample[: len(sample) // 2],
        "truncated header": sample[:20],
        "bit-flipped": bytes(flipped),
        "extra bytes": sample + b"\x00\x00",
        "wrong magic": b"\x89PNG" + sample[4:],
        "version 2": resealed(sample, field_offset(sample, "version"), b"\x02"),
        "absurd size": resealed(sample, field_offset(sample, "width"), struct.pack("<II", 100_000, 100_000)),
        "stream beyond data": resealed(sample, field_offset(sample, "lengths"), struct.pack("<I", 2**31)),
        "other fingerprint": resealed(sample, field_offset(sample, "fingerprint"), bytes(16)),
        "unknown model": pack(dataclasses.replace(header, model="no-such-model"), streams),
    }


def sample_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, "PNG")
    return buffer.getvalue()


class FakeStream:
    """A stand-in for sys.stdin / sys.stdout with a binary buffer."""

    def __init__(self, data: bytes = b"", tty: bool = False):
        self.buffer = io.BytesIO(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


# ---- decode and info on bad .dqc files ---------------------------------------------------------


@pytest.mark.parametrize("command", ["decode", "info"])
def test_bad_dqc_files(tmp_path, capsys, sample_dqc, command):
    for case, data in bad_files(sample_dqc).items():
        source = tmp_path / "in.dqc"
        source.write_bytes(data)
        output = [tmp_path / "out.png"] if command == "decode" else []
        status, stdout, stderr = run(capsys, command, source, *output)
        assert_one_error(status, stderr)
        assert stdout == "", case
        assert sorted(os.listdir(tmp_path)) == ["in.dqc"], case


def test_decode_missing_input(tmp_path, capsys):
    status, _, stderr = run(capsys, "decode", tmp_path / "nope.dqc", tmp_path / "out.png")
    assert_one_error(status, stderr, "nope.dqc", "no such file")
    assert os.listdir(tmp_path) == []


def test_decode_a_folder(tmp_path, capsys):
    status, _, stderr = run(capsys, "decode", tmp_path, tmp_path / "out.png")
    assert_one_error(status, stderr, "folder")


@pytest.mark.parametrize(
    "output, fragment",
    [
        ("missing/out.png", "does not exist"),
        ("file/out.png", "not a folder"),
        ("out.gif", "unknown extension"),
        ("out", "no extension"),
    ],
)
def test_decode_to_unwritable_output(tmp_path, capsys, sample_dqc, output, fragment):
    (tmp_path / "in.dqc").write_bytes(sample_dqc)
    (tmp_path / "file").write_bytes(b"")
    status, _, stderr = run(capsys, "decode", tmp_path / "in.dqc", tmp_path / output)
    assert_one_error(status, stderr, fragment)
    assert sorted(os.listdir(tmp_path)) == ["file", "in.dqc"]


def test_decode_garbage_from_stdin(monkeypatch, capsysbinary, codec_api):
    monkeypatch.setattr(sys, "stdin", FakeStream(b"garbage"))
    status = main(["decode", "-", "-"])
    captured = capsysbinary.readouterr()
    assert_one_error(status, captured.err.decode())
    assert captured.out == b""


# ---- encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, fragment",
    [(b"this is not an image\n", "not an image"), (b"", "in.png"), (sample_png()[:100], "in.png")],
    ids=["text", "empty", "truncated"],
)
def test_encode_bad_image(tmp_path, capsys, codec_api, content, fragment):
    (tmp_path / "in.png").write_bytes(content)
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / "out.dqc")
    assert_one_error(status, stderr, fragment)
    assert os.listdir(tmp_path) == ["in.png"]


def test_encode_missing_input(tmp_path, capsys, codec_api):
    status, _, stderr = run(capsys, "encode", tmp_path / "nope.png", tmp_path / "out.dqc")
    assert_one_error(status, stderr, "nope.png", "no such file")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output", ["missing/out.dqc", "file/out.dqc", "folder"])
def test_encode_to_unwritable_output(tmp_path, capsys, codec_api, output):
    (tmp_path / "in.png").write_bytes(sample_png())
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / output)
    assert_one_error(status, stderr, "cannot write")
    assert sorted(os.listdir(tmp_path)) == ["file", "folder", "in.png"]
    assert os.listdir(tmp_path / "folder") == []


def test_encode_refuses_to_overwrite_its_input(tmp_path, capsys, codec_api):
    (tmp_path / "in.png").write_bytes(sample_png())
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / "in.png")
    assert_one_error(status, stderr, "input file")
    assert (tmp_path / "in.png").read_bytes() == sample_png()


def test_encode_unknown_model(tmp_path, capsys, codec_api):
    (tmp_path / "in.png").write_bytes(sample_png())
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / "out.dqc", "--model", "no-such")
    assert_one_error(status, stderr)
    assert os.listdir(tmp_path) == ["in.png"]


def test_quality_and_model_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["encode", str(tmp_path / "in.png"), str(tmp_path / "out.dqc"), "--quality", "2", "--model", "x"])
    assert caught.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-0.01", "nan", "inf", "2", "abc"])
def test_encode_refuses_a_bad_lambda(tmp_path, capsys, value):
    to_pil(PIXELS, 3).save(tmp_path / "in.png")
    with pytest.raises(SystemExit) as caught:
        main(["encode", str(tmp_path / "in.png"), str(tmp_path / "out.dqc"), "--lambda", value])
    assert caught.value.code == 2
    assert f"argument --lambda: expected a number" in capsys.readouterr().err
    assert not (tmp_path / "out.dqc").exists()


@pytest.mark.parametrize("paths", [["a.png"], ["a.png", "b.png", "c.dqc"]])
def test_encode_wrong_number_of_paths(tmp_path, capsys, paths):
    status, _, stderr = run(capsys, "encode", *[tmp_path / path for path in paths])
    assert_one_error(status, stderr, "-o DIR")


def test_encode_stdout_refuses_a_terminal(tmp_path, monkeypatch, capsys, fake_api):
    (tmp_path / "in.png").write_bytes(sample_png())
    monkeypatch.setattr(sys, "stdout", FakeStream(tty=True))
    status = main(["encode", str(tmp_path / "in.png"), "-"])
    assert_one_error(status, capsys.readouterr().err, "terminal")
    assert sys.stdout.buffer.getvalue() == b""


def test_encode_stdin_refuses_a_terminal(tmp_path, monkeypatch, capsys, fake_api):
    monkeypatch.setattr(sys, "stdin", FakeStream(tty=True))
    status, _, stderr = run(capsys, "encode", "-", tmp_path / "out.dqc")
    assert_one_error(status, stderr, "terminal")


# ---- encode many -------------------------------------------------------------------------------


def test_encode_many_goes_past_bad_files(tmp_path, capsys, codec_api):
    (tmp_path / "good.png").write_bytes(sample_png())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "also_good.png").write_bytes(sample_png())
    inputs = [tmp_path / name for name in ("good.png", "bad.png", "missing.png", "also_good.png")]
    status, _, stderr = run(capsys, "encode", *inputs, "-o", tmp_path / "out")
    assert status == 2
    lines = stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("dqcodec: error: ") for line in lines)
    assert "bad.png" in lines[0] and "missing.png" in lines[1]
    assert sorted(os.listdir(tmp_path / "out")) == ["also_good.dqc", "good.dqc"]


def test_encode_many_refuses_clashing_names(tmp_path, capsys, fake_api):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(sample_png())
    (tmp_path / "x.png").write_bytes(sample_png())
    status, _, stderr = run(capsys, "encode", tmp_path / "a" / "x.png", tmp_path / "x.png", "-o", tmp_path / "out")
    assert_one_error(status, stderr, "x.dqc")
    assert not (tmp_path / "out").exists()


def test_encode_many_refuses_stdin(tmp_path, capsys, fake_api):
    status, _, stderr = run(capsys, "encode", "-", "-o", tmp_path)
    assert_one_error(status, stderr, "stdin")


def test_encode_many_into_a_file(tmp_path, capsys, fake_api):
    (tmp_path / "in.png").write_bytes(sample_png())
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", "-o", tmp_path / "in.png")
    assert_one_error(status, stderr, "in.png")


# ---- what works (stand-in API) -----------------------------------------------------------------


def test_round_trip_through_files(tmp_path, capsys, fake_api):
    (tmp_path / "in.png").write_bytes(sample_png())
    (tmp_path / "out.dqc").write_bytes(b"an old file that gets replaced")
    assert run(capsys, "encode", tmp_path / "in.png", tmp_path / "out.dqc") == (0, "", "")
    assert run(capsys, "decode", tmp_path / "out.dqc", tmp_path / "out.png") == (0, "", "")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), PIXELS)
    assert sorted(os.listdir(tmp_path)) == ["in.png", "out.dqc", "out.png"]


def test_round_trip_through_stdio(monkeypatch, capsysbinary, fake_api):
    monkeypatch.setattr(sys, "stdin", FakeStream(sample_png()))
    assert main(["encode", "-", "-"]) == 0
    dqc = capsysbinary.readouterr().out
    monkeypatch.setattr(sys, "stdin", FakeStream(dqc))
    assert main(["decode", "-", "-"]) == 0
    png = capsysbinary.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), PIXELS)


def test_notes_go_to_stderr(tmp_path, capsys, fake_api):
    rgba = np.concatenate([PIXELS, np.zeros((16, 24, 1), np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "in.png")
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / "out.dqc")
    assert status == 0
    assert stderr.startswith("dqcodec: note: alpha channel dropped")


def test_info_text_and_json(tmp_path, capsys, fake_api):
    (tmp_path / "in.dqc").write_bytes(fake_api.encode(PIXELS))
    status, stdout, _ = run(capsys, "info", tmp_path / "in.dqc")
    assert status == 0
    assert FAKE_MODEL in stdout and "24 x 16" in stdout and "bpp" in stdout
    status, stdout, _ = run(capsys, "info", tmp_path / "in.dqc", "--json")
    assert status == 0
    facts = json.loads(stdout)
    assert facts["width"] == 24 and facts["bytes"] == (tmp_path / "in.dqc").stat().st_size


def test_models_table_and_json(monkeypatch, capsys):
    registry = types.ModuleType("dqcodec.models.registry")
    models = [
        {"name": "dq-q1", "family": "dq", "quality": 1, "bpp": 0.2, "psnr": 28.1, "ms_ssim": None,
         "description": "low"},
        {"name": "dq-q2", "family": "dq", "quality": 2, "bpp": 0.5, "psnr": 31.0, "ms_ssim": 0.97,
         "description": "mid"},
    ]
    registry.list_models = lambda: models
    registry.model_names = lambda: [model["name"] for model in models]
    monkeypatch.setitem(sys.modules, "dqcodec.models.registry", registry)
    status, stdout, _ = run(capsys, "models")
    assert status == 0
    rows = stdout.splitlines()
    assert rows[0].split()[:3] == ["name", "family", "quality"]
    assert rows[1].split()[0] == "dq-q1" and rows[2].split()[0] == "dq-q2"
    assert rows[-1].split()[0] == "dq-q2"  # no line on the default family: none of its models is listed
    status, stdout, _ = run(capsys, "models", "--json")
    assert json.loads(stdout) == models
    models.append({"name": "hdq-q1", "family": "hdq", "quality": 1, "bpp": 0.1, "psnr": 26.0, "ms_ssim": 0.88,
                   "description": "neural"})
    status, stdout, _ = run(capsys, "models")
    assert stdout.splitlines()[-1] == ("default family: hdq (--quality N picks hdq-qN, N from 1 to 1; with neither "
                                       "--quality nor --model, the middle level)")


# ---- a fresh process ---------------------------------------------------------------------------


def run_process(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dqcodec.codec.cli", *map(str, argv)], capture_output=True, text=True, timeout=120
    )


def test_process_missing_input(tmp_path):
    result = run_process("decode", tmp_path / "nope.dqc", tmp_path / "out.png")
    assert_one_error(result.returncode, result.stderr, "no such file")
    assert os.listdir(tmp_path) == []


def test_process_quality_and_model_together(tmp_path):
    result = run_process("encode", "a.png", "b.dqc", "--quality", "1", "--model", "x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_process_garbage_with_the_real_api(tmp_path):
    pytest.importorskip("dqcodec.codec.api")
    (tmp_path / "in.dqc").write_bytes(b"\x89DQC garbage")
    result = run_process("decode", tmp_path / "in.dqc", tmp_path / "out.png")
    assert_one_error(result.returncode, result.stderr)
    assert os.listdir(tmp_path) == ["in.dqc"]
