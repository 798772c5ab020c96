"""Files written by earlier releases: they decode to the same pixels, or are refused naming the release.

``tests/fixtures/release-<version>`` holds .dqc files made by that release with the pixels it
decoded them to: 0.1.0 (the commit before the codec-model interface) and 0.2.0 (the refitted
tables; made with the 0.2.0 models before release 0.3.0 replaced them, a flat-colour file among
them, since 0.3.0 changed how flat colours are coded).
"""

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dqcodec
from dqcodec.codec.cli import main
from dqcodec.models import registry

RELEASES = ("0.1.0", "0.2.0")
FIXTURES = {release: Path(__file__).parent / "fixtures" / f"release-{release}" for release in RELEASES}
FILES = [(release, name) for release in RELEASES
         for name in sorted(json.loads((FIXTURES[release] / "manifest.json").read_text()))]


def _entry(release: str, name: str) -> dict:
    return json.loads((FIXTURES[release] / "manifest.json").read_text())[name]


def _source(release: str, entry: dict) -> np.ndarray:
    image = Image.open(FIXTURES[release] / entry["source"].removesuffix(" (grayscale)"))
    return np.asarray(image.convert("L") if "grayscale" in entry["source"] else image)


@pytest.mark.parametrize(("release", "name"), FILES)
def test_files_of_earlier_releases_decode_to_the_same_pixels(release, name):
    data = (FIXTURES[release] / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == _entry(release, name)["sha256"]
    decoded = np.asarray(dqcodec.decode(data))
    assert np.array_equal(decoded, np.asarray(Image.open(FIXTURES[release] / _entry(release, name)["decoded"])))


@pytest.mark.parametrize(("release", "name"), FILES)
def test_the_same_weights_encode_the_same_bytes(release, name):
    """The encoder of this release, given an earlier release's weights, writes that release's file byte for byte."""
    entry = _entry(release, name)
    stem = registry.RELEASES_DIR / release / entry["model"]
    assert dqcodec.encode(_source(release, entry), model=str(stem)) == (FIXTURES[release] / name).read_bytes()


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
    (tmp_path / "old.dqc").write_bytes((FIXTURES["0.1.0"] / "dq-q3.dqc").read_bytes())
    status = main(["decode", str(tmp_path / "old.dqc"), str(tmp_path / "old.png")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and not (tmp_path / "old.png").exists()
    assert "dqcodec 0.1.0" in error and "pip install dqcodec==0.1.0" in error and "'dq-q3'" in error


def test_a_file_with_unknown_weights_is_refused(tmp_path, capsys):
    data = bytearray((FIXTURES["0.1.0"] / "dq-q1.dqc").read_bytes())
    stream_start = 4 + 2 + len("dq-q1")
    data[stream_start : stream_start + 16] = bytes(16)  # another fingerprint, CRC recomputed below
    import zlib

    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(dqcodec.DQCodecError, match="different weights for model 'dq-q1'"):
        dqcodec.decode(bytes(data))
