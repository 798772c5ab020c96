"""``dqcodec train``: a tiny run end to end, resumed, exported and used as a codec."""

import json

import numpy as np
from PIL import Image

import dqcodec
from dqcodec.codec.cli import main


def test_train_resume_export_and_encode(tmp_path, training_images, capsys):
    common = [
        "train", "--out", str(tmp_path / "run"), "--lambda", "0.01", "--data", str(training_images),
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
    pixels = np.asarray(Image.open(training_images / "train0.png"))
    decoded = dqcodec.decode(dqcodec.encode(pixels, model=str(stem) + ".json"))
    assert decoded.size == (80, 64)


def test_train_reports_a_missing_data_folder(tmp_path, capsys):
    status = main(["train", "--out", str(tmp_path / "run"), "--lambda", "0.01", "--data", str(tmp_path / "none")])
    assert status == 2
    assert capsys.readouterr().err.startswith("dqcodec: error: training data folder not found")
