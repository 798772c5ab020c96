"""Files written by earlier releases: they decode to the same pixels, or are refused naming the release.

``tests/fixtures/release-0.1.0`` holds .dqc files made by dqcodec 0.1.0 (the commit before the
codec-model interface) with the pixels that release decoded them to.
"""

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dqcodec
from dqcodec.codec.cli import main
from dqcodec.models import registry

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1.0"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def _source(entry: dict) -> np.ndarray:
    image = Image.open(FIXTURES / "kodim23-crop.png")
    return np.asarray(image.convert("L") if "grayscale" in entry["source"] else image)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_files_of_release_0_1_0_decode_to_the_same_pixels(name):
    decoded = np.asarray(dqcodec.decode((FIXTURES / name).read_bytes()))
    assert np.array_equal(decoded, np.asarray(Image.open(FIXTURES / MANIFEST[name]["decoded"])))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_same_weights_encode_the_same_bytes(name):
    """The encoder of this release, given the 0.1.0 weights, writes the 0.1.0 file byte for byte."""
    entry = MANIFEST[name]
    stem = registry.RELEASES_DIR / "0.1.0" / entry["model"]
    assert dqcodec.encode(_source(entry), model=str(stem)) == (FIXTURES / name).read_bytes()


def test_every_shipped_model_is_in_the_release_history():
    history = json.loads(registry.HISTORY_FILE.read_text())
    shipped = {registry.WEIGHTS_DIR / name: version("dqcodec") for name in registry.model_names()}
    shipped.update({path.with_suffix(""): path.parent.name for path in registry.RELEASES_DIR.glob("*/*.json")})
    for stem, release in shipped.items():
        entry = history.get(registry.file_fingerprint(stem).hex())
        assert entry == {"model": stem.name, "release": release}, stem


def test_a_file_whose_weights_left_the_package_names_its_release(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "RELEASES_DIR", tmp_path / "no-releases")
    monkeypatch.setattr(registry, "_CHECKPOINTS", {})  # earlier tests registered the 0.1.0 files as checkpoints
    registry.clear_cache()
    (tmp_path / "old.dqc").write_bytes((FIXTURES / "dq-q3.dqc").read_bytes())
    status = main(["decode", str(tmp_path / "old.dqc"), str(tmp_path / "old.png")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and not (tmp_path / "old.png").exists()
    assert "dqcodec 0.1.0" in error and "pip install dqcodec==0.1.0" in error and "'dq-q3'" in error


def test_a_file_with_unknown_weights_is_refused(tmp_path, capsys):
    data = bytearray((FIXTURES / "dq-q1.dqc").read_bytes())
    stream_start = 4 + 2 + len("dq-q1")
    data[stream_start : stream_start + 16] = bytes(16)  # another fingerprint, CRC recomputed below
    import zlib

    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(dqcodec.DQCodecError, match="different weights for model 'dq-q1'"):
        dqcodec.decode(bytes(data))
