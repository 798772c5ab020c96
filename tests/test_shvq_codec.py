"""The SHVQ codec: its network's symbol bookkeeping, and ``dqcodec train-shvq`` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dqcodec
from dqcodec.codec.cli import main
from dqcodec.models.interface import IndexLevel
from dqcodec.models.registry import WEIGHTS_DIR, list_models
from dqcodec.models.shvq_codec import SHVQCodecConfig, SHVQCodecNet


def _net() -> SHVQCodecNet:
    torch.manual_seed(0)
    net = SHVQCodecNet(SHVQCodecConfig(block=2, num_centres=16, rate_lambda=0.01, predicted_codebooks=1))
    with torch.no_grad():
        net.quantizer.centres.copy_(torch.linspace(-4, 4, 16)[:, None])
    return net.eval()


def _image(seed: int = 0, height: int = 16, width: int = 24) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_symbols_decode_to_the_hard_forward_output_whatever_the_code_order():
    net = _net()
    image = _image()
    expected = net(image).reconstruction.clamp(0, 1)

    def decoded() -> torch.Tensor:
        return net.decompress([IndexLevel("blocks", net.nearest_indices(image).numpy())])

    assert torch.allclose(decoded(), expected, atol=1e-5)
    usage = torch.rand(net.config.channels, net.config.num_centres, generator=torch.Generator().manual_seed(3))
    net.sort_codes(usage)
    # Each channel now has its own permutation of the centres, yet the same pixels come back.
    assert not torch.equal(net.symbol_centre[0], net.symbol_centre[1])
    assert torch.allclose(decoded(), expected, atol=1e-5)


def test_sorting_puts_the_most_used_centre_first_in_each_channel():
    net = _net()
    usage = torch.zeros(net.config.channels, net.config.num_centres)
    usage[:, 5] = 10
    usage[:, 9] = 3
    net.sort_codes(usage)
    assert (net.symbol_centre[:, 0] == 5).all() and (net.symbol_centre[:, 1] == 9).all()
    values = net.code_values()
    assert values.shape == (net.config.channels, net.config.num_centres, 1)
    assert np.allclose(values[:, 0, 0], net.quantizer.centres[5, 0].item())


def test_rate_lambdas_follow_the_synthesis_gains():
    net = _net()
    with torch.no_grad():
        net.synthesis.linear.weight.fill_(0.0)
        net.synthesis.linear.weight[:, 0] = 2.0  # channel 0: squared column norm 12 * 4
        net.synthesis.linear.weight[:, 1:] = 1.0
    lambdas = net.rate_lambdas()
    assert lambdas[0] == pytest.approx(0.01 / 48)
    assert lambdas[1] == pytest.approx(0.01 / 12)


def test_train_shvq_resumes_exports_and_codes(tmp_path, training_images, capsys):
    common = [
        "train-shvq", "--out", str(tmp_path / "run"), "--lambda", "0.01", "--data", str(training_images),
        "--num-centres", "64", "--kmeans-blocks", "300", "--kmeans-iterations", "2", "--batch-size", "2",
        "--crop", "32", "--threads", "1",
    ]
    assert main(common + ["--steps", "2"]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2
    exported = ["--export", "s-q1", "--quality", "1", "--weights-dir", str(tmp_path / "w"), "--measure-images", "1"]
    assert main(common + ["--steps", "4"] + exported) == 0
    assert "resumed" in capsys.readouterr().out
    stem = tmp_path / "w" / "s-q1"
    description = json.loads(stem.with_suffix(".json").read_text())
    assert description["architecture"] == "SHVQCodecNet" and description["family"] == "shvq"
    assert description["training"]["steps"] == 4 and description["kodak"]["images"] == 1
    pixels = np.asarray(Image.open(training_images / "train1.png"))
    data = dqcodec.encode(pixels, model=str(stem) + ".json")
    decoded = np.asarray(dqcodec.decode(data))
    assert decoded.shape == pixels.shape
    mse = np.mean((decoded.astype(float) - pixels) ** 2)
    assert 10 * np.log10(255**2 / mse) > 20


def test_train_shvq_refuses_bad_settings(tmp_path, capsys):
    status = main(["train-shvq", "--out", str(tmp_path / "run"), "--lambda", "-1", "--data", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.startswith("dqcodec: error: --lambda must be positive")


@pytest.mark.parametrize(
    "command, start, expected",
    [
        ("train-shvq", WEIGHTS_DIR / "dq-q1", "is a DQCodecNet, not a SHVQCodecNet"),
        ("train", WEIGHTS_DIR / "shvq-q1", "is a SHVQCodecNet, not a DQCodecNet"),
        ("train-shvq", Path("no/such/model"), "cannot load the model"),
    ],
)
def test_init_from_a_missing_or_foreign_model_is_one_line_and_writes_nothing(
    tmp_path, training_images, capsys, command, start, expected
):
    run = tmp_path / "run"
    status = main([command, "--out", str(run), "--lambda", "0.01", "--data", str(training_images), "--init-from", str(start)])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("dqcodec: error: --init-from") and expected in error and error.count("\n") == 1
    assert not run.exists()


def test_shipped_shvq_levels_are_listed_and_selectable():
    shvq = [m for m in list_models() if m["family"] == "shvq"]
    assert len(shvq) >= 2 and all("shvq" in m["name"] for m in shvq)
    pixels = np.asarray(_image(height=40, width=56)[0].permute(1, 2, 0).mul(255).round().byte())
    for model in shvq:
        decoded = dqcodec.decode(dqcodec.encode(pixels, model=model["name"]))
        assert decoded.size == (56, 40)
