"""``dqcodec train``: a tiny run end to end, resumed, exported and used as a codec."""

import json

import numpy as np
import torch
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


def _tiny_dq_run(out, data, steps: int) -> list[str]:
    return ["train", "--arch", "dq", "--out", str(out), "--lambda", "0.01", "--data", str(data), "--block", "4",
            "--num-codebooks", "24", "--codebook-size", "16", "--init-samples", "300", "--ecvq-iterations", "2",
            "--batch-size", "2", "--crop", "16", "--threads", "1", "--validation-images", "0",
            "--checkpoint-every", "1", "--steps", str(steps)]


def test_a_resumed_run_continues_bit_for_bit(tmp_path, training_images):
    from safetensors.numpy import load_file

    assert main(_tiny_dq_run(tmp_path / "straight", training_images, 4)) == 0
    assert main(_tiny_dq_run(tmp_path / "resumed", training_images, 2)) == 0
    assert main(_tiny_dq_run(tmp_path / "resumed", training_images, 4)) == 0
    straight = load_file(tmp_path / "straight" / "state.safetensors")
    resumed = load_file(tmp_path / "resumed" / "state.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert np.array_equal(straight[key], resumed[key]), key
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4]


def load_state_rate(run) -> float:
    """The learning rate in a run folder's saved optimizer state."""
    return json.loads((run / "state.json").read_text())["param_groups"][0]["lr"]


def test_a_run_folder_refuses_other_settings_and_cuda_without_a_gpu(tmp_path, training_images, capsys):
    assert main(_tiny_dq_run(tmp_path / "run", training_images, 1)) == 0
    changed = _tiny_dq_run(tmp_path / "run", training_images, 2) + ["--crop", "8"]
    assert main(changed) == 2
    assert "was started with crop = 16, not 8" in capsys.readouterr().err
    # A lower learning rate on resume is a fine-tuning phase of the same run.
    assert main(_tiny_dq_run(tmp_path / "run", training_images, 2) + ["--lr", "0.00002"]) == 0
    assert "learning rate 0.0001 -> 2e-05" in capsys.readouterr().out and load_state_rate(tmp_path / "run") == 2e-5
    if not torch.cuda.is_available():
        assert main(_tiny_dq_run(tmp_path / "gpu", training_images, 1) + ["--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err


def test_init_from_honours_lambda_and_refuses_fixed_settings(tmp_path, capsys):
    common = ["train", "--arch", "dq", "--out", str(tmp_path / "run"), "--init-from", "dq-q1", "--steps", "0"]
    assert main(common + ["--codebook-size", "32"]) == 2
    assert "--codebook-size 32 differs from the --init-from model's 64; only --lambda can change" in capsys.readouterr().err
    assert main(common + ["--ecvq-iterations", "3"]) == 2
    assert "--ecvq-iterations acts on a fresh start only" in capsys.readouterr().err
    assert main(common + ["--num-centres", "3"]) == 2
    assert "--num-centres is not an option of --arch dq" in capsys.readouterr().err


def test_the_weight_average_follows_each_step_and_swaps_in_and_out():
    from dqcodec.train.weight_average import WeightAverage

    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = WeightAverage(net, 0.75)
    with torch.no_grad():
        net.weight.fill_(5.0)
    average.update()  # 0.75 * 1 + 0.25 * 5
    assert torch.equal(average.average["weight"], torch.full((1, 2), 2.0))
    with average.applied():
        assert torch.equal(net.weight, torch.full((1, 2), 2.0))
    assert torch.equal(net.weight, torch.full((1, 2), 5.0))
    average.load({})  # a state without an average: it starts at the current weights
    assert torch.equal(average.average["weight"], torch.full((1, 2), 5.0))


def test_a_run_with_a_weight_average_resumes_bit_for_bit_and_exports_the_average(tmp_path, training_images, capsys):
    from safetensors.numpy import load_file

    averaged = ["--average-decay", "0.5", "--lr", "0.01"]
    assert main(_tiny_dq_run(tmp_path / "straight", training_images, 4) + averaged) == 0
    assert main(_tiny_dq_run(tmp_path / "resumed", training_images, 2) + averaged) == 0
    exported = ["--export", "t-q1", "--family", "test", "--quality", "1", "--weights-dir", str(tmp_path / "w"),
                "--measure-images", "0"]
    assert main(_tiny_dq_run(tmp_path / "resumed", training_images, 4) + averaged + exported) == 0
    assert "moving average of its weights (decay 0.5)" in capsys.readouterr().out
    phases = json.loads((tmp_path / "w" / "t-q1.json").read_text())["training"]["learning_rate_phases"]
    assert [{key: value for key, value in phase.items() if key != "minutes"} for phase in phases] == [
        {"steps": 4, "learning_rate": 0.01, "average_decay": 0.5}]
    straight = load_file(tmp_path / "straight" / "state.safetensors")
    resumed = load_file(tmp_path / "resumed" / "state.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(np.array_equal(straight[key], resumed[key]) for key in straight)
    model = load_file(tmp_path / "w" / "t-q1.safetensors")
    # The analysis is exported as trained; the export refits the synthesis (flat colours).
    names = [key[len("average."):] for key in resumed if key.startswith("average.analysis.")]
    assert names
    for name in names:
        live, mean = resumed[f"model.{name}"], resumed[f"average.{name}"]
        assert np.abs(live - mean).max() > 1e-3  # four steps at lr 0.01 move the weights off their average
        assert np.allclose(model[name].astype(np.float32), mean, rtol=1e-3, atol=1e-4), name


def test_train_refuses_an_average_decay_of_one_or_more(tmp_path, training_images, capsys):
    assert main(_tiny_dq_run(tmp_path / "run", training_images, 1) + ["--average-decay", "1"]) == 2
    assert "--average-decay 1.0: use 0 (no average) or a decay below 1" in capsys.readouterr().err


def test_learning_rate_phases_follow_the_log():
    from dqcodec.train.training_log import learning_rate_phases

    records = [{"step": 1, "wall_seconds": 10.0}, {"step": 2, "wall_seconds": 20.0},  # logged before the rate was
               {"step": 3, "learning_rate": 1e-4, "wall_seconds": 80.0},
               {"step": 4, "learning_rate": 2e-5, "average_decay": 0.9, "wall_seconds": 140.0}]
    assert learning_rate_phases(records) == [
        {"steps": 2, "learning_rate": None, "minutes": 0.3},
        {"steps": 1, "learning_rate": 1e-4, "minutes": 1.0},
        {"steps": 1, "learning_rate": 2e-5, "average_decay": 0.9, "minutes": 1.0},
    ]
