"""The Pillow plugin: Image.open reads the header only, load() decodes through dqcodec, save()
encodes through it; Pillow-style errors; dqcodec.decode of a path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import dqcodec
from dqcodec.codec import api
from dqcodec.codec.cli import main

# A smooth 40x24 RGB pattern: small enough to code in a fraction of a second.
ROWS, COLS = np.mgrid[0:24, 0:40]
PIXELS = np.stack([ROWS * 10, COLS * 6, 255 - ROWS * 5 - COLS * 3], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dqc") / "rgb.dqc"
    path.write_bytes(dqcodec.encode(PIXELS, model="dq-q1"))
    return path


@pytest.fixture(scope="module")
def gray_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dqc") / "gray.dqc"
    path.write_bytes(dqcodec.encode(PIXELS[..., 1], model="dq-q1"))
    return path


def test_registered_by_import_and_idempotent():
    dqcodec.register_pillow_plugin()
    dqcodec.register_pillow_plugin()
    assert Image.ID.count("DQC") == 1
    assert Image.registered_extensions()[".dqc"] == "DQC"
    assert Image.MIME["DQC"] == "image/x-dqc"


def test_open_reads_the_header_without_decoding(rgb_file, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(api, "decode", refuse)
    with Image.open(rgb_file) as image:
        assert (image.format, image.size, image.mode) == ("DQC", (40, 24), "RGB")
        assert image.info["model"] == "dq-q1"
        assert image.get_format_mimetype() == "image/x-dqc"
        with pytest.raises(AssertionError, match="decoded"):
            image.load()  # pixels, and only pixels, go through api.decode


@pytest.mark.parametrize("which", ["rgb_file", "gray_file"])
def test_load_equals_dqcodec_decode(which, request):
    path = request.getfixturevalue(which)
    expected = dqcodec.decode(path.read_bytes())
    with Image.open(path) as image:
        assert image.mode == expected.mode == ("RGB" if which == "rgb_file" else "L")
        image.load()
        assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_open_from_a_stream(rgb_file):
    with rgb_file.open("rb") as file, Image.open(file) as image:
        assert np.array_equal(np.asarray(image), np.asarray(dqcodec.decode(rgb_file)))


def test_save_through_pillow_decodes_with_the_cli(tmp_path, capsys):
    saved, decoded = tmp_path / "saved.dqc", tmp_path / "decoded.png"
    Image.fromarray(PIXELS).save(saved, quality=3)
    assert saved.read_bytes() == dqcodec.encode(PIXELS, quality=3)
    assert main(["decode", str(saved), str(decoded)]) == 0
    assert np.array_equal(np.asarray(Image.open(decoded)), np.asarray(dqcodec.decode(saved)))

    Image.fromarray(PIXELS[..., 0]).save(saved, model="dq-q1")
    with Image.open(saved) as image:
        assert (image.mode, image.info["model"]) == ("L", "dq-q1")


def test_save_errors_and_notes(tmp_path):
    with pytest.raises(ValueError, match="quality must be an integer"):
        Image.fromarray(PIXELS).save(tmp_path / "bad.dqc", quality=99)
    with pytest.raises(OSError, match="floating-point images are not supported"):
        Image.new("F", (8, 8)).save(tmp_path / "float.dqc")
    assert not (tmp_path / "bad.dqc").exists() and not (tmp_path / "float.dqc").exists()
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        Image.new("RGBA", (16, 8), (10, 20, 30, 128)).save(tmp_path / "alpha.dqc", model="dq-q1")


def test_bad_header_is_not_identified(rgb_file, tmp_path, monkeypatch):
    data = bytearray(rgb_file.read_bytes())
    data[4] = 9  # format version
    path = tmp_path / "newer.dqc"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(Image, "WARN_POSSIBLE_FORMATS", True)
    with pytest.warns(UserWarning) as caught, pytest.raises(UnidentifiedImageError):
        Image.open(path)
    assert any(str(w.message) == "DQC opening failed. unsupported .dqc version 9 (this dqcodec reads 1 to 2)" for w in caught)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[:-6] + bytes([data[-6] ^ 1]) + data[-5:], "checksum mismatch"),  # a payload bit
        (lambda data: data[:-10], "truncated .dqc file"),
    ],
)
def test_damaged_payload_is_an_oserror_on_load(rgb_file, tmp_path, damage, reason):
    path = tmp_path / "damaged.dqc"
    path.write_bytes(damage(rgb_file.read_bytes()))
    with Image.open(path) as image:  # the header is intact
        assert image.size == (40, 24)
        with pytest.raises(OSError) as raised:
            image.load()
    assert not isinstance(raised.value, dqcodec.DQCodecError)
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    with Image.open(path) as image, pytest.raises(SyntaxError, match=reason):
        image.verify()  # the whole file is checked without decoding


def test_pillow_pixel_limit_applies_at_open(rgb_file, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 24 // 2 - 1)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(rgb_file)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 24 - 1)
    with pytest.warns(Image.DecompressionBombWarning), Image.open(rgb_file) as image:
        image.load()


def test_decode_accepts_a_path(rgb_file, tmp_path):
    expected = np.asarray(dqcodec.decode(rgb_file.read_bytes()))
    assert np.array_equal(np.asarray(dqcodec.decode(rgb_file)), expected)
    assert np.array_equal(np.asarray(dqcodec.decode(str(rgb_file))), expected)
    with pytest.raises(dqcodec.DQCodecError, match=r"missing\.dqc: no such file$"):
        dqcodec.decode(tmp_path / "missing.dqc")
    with pytest.raises(dqcodec.DQCodecError, match="is a folder"):
        dqcodec.decode(tmp_path)


def test_open_imports_no_torch(rgb_file):
    code = (
        "import json, sys, dqcodec; from PIL import Image; image = Image.open(sys.argv[1]); "
        "print(json.dumps([image.size, image.mode, sorted(m for m in sys.modules if m.split('.')[0] == 'torch')]))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(rgb_file)], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [[40, 24], "RGB", []]
