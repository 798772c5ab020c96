"""``dqcodec train``: a tiny run end to end, resumed, exported and used as a codec."""

import json

import numpy as np
from PIL import Image

import dqcodec
from dqcodec.codec.cli import main


def _image_folder(folder, count: int = 3) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        rows, cols = np.mgrid[0:64, 0:80]
        base = 128 + 100 * np.sin((cols + 7 * i) / 6.0)[..., None] * np.cos(rows / 9.0)[..., None]
        pixels = np.clip(base + rng.normal(0, 8, size=(64, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"train{i}.png")


def test_train_resume_export_and_encode(tmp_path, capsys):
    _image_folder(tmp_path / "images")
    common = [
        "train", "--out", str(tmp_path / "run"), "--lambda", "0.01", "--data", str(tmp_path / "images"),
        "--init-samples", "400", "--ecvq-iterations", "2", "--batch-size", "2", "--crop", "32", "--threads", "1",
    ]
    assert main(common + ["--steps", "2"]) == 0
    assert (tmp_path / "run" / "state.safetensors").is_file()
    exported = ["--export", "t-q1", "--family", "test", "--quality", "1", "--weights-dir", str(tmp_path / "w"),
                "--measure-images", "1"]
    assert main(common + ["--steps", "4"] + exported) == 0
    output = capsys.readouterr()
    assert "resumed" in output.out and "at step 2" in output.out
    stem = tmp_path / "w" / "t-q1"
    description = json.loads(stem.with_suffix(".json").read_text())
    assert description["training"]["steps"] == 4 and description["kodak"]["images"] == 1
    pixels = np.asarray(Image.open(tmp_path / "images" / "train0.png"))
    decoded = dqcodec.decode(dqcodec.encode(pixels, model=str(stem) + ".json"))
    assert decoded.size == (80, 64)


def test_train_reports_a_missing_data_folder(tmp_path, capsys):
    status = main(["train", "--out", str(tmp_path / "run"), "--lambda", "0.01", "--data", str(tmp_path / "none")])
    assert status == 2
    assert capsys.readouterr().err.startswith("dqcodec: error: training data folder not found")
