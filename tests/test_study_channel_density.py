"""The channel-vs-pixel density study: its two vector layouts, the Lloyd fit, and the command end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dqcodec.codec.cli import main
from dqcodec.eval.studies import commands as studies
from dqcodec.eval.studies.channel_density import channel_slices, measure, pixel_slices
from dqcodec.eval.studies.density_fit import fit_codebooks
from dqcodec.models.quantizers import ProductQuantizer

TINY = ["--images", "2", "--eval-images", "1", "--vectors", "150", "--codebook-sizes", "4", "16", "--runs", "2"]


@pytest.fixture(autouse=True)
def only_this_study(monkeypatch):
    """Register only this study, so that these tests do not depend on the other studies' modules."""
    monkeypatch.setattr(studies, "STUDIES", {"channel-density": studies.STUDIES["channel-density"]})


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Three small synthetic photos (gradients, a disc, noise): 64 x 96 gives 8 x 12 features."""
    folder = tmp_path_factory.mktemp("images")
    rows, columns = np.mgrid[0:64, 0:96]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        image = np.stack([rows * 3.0 + 20 * seed, columns * 2.0, np.full(rows.shape, 90.0 + 30 * seed)], axis=-1)
        image[(rows - 30) ** 2 + (columns - 20 - 20 * seed) ** 2 < 200] = [220, 50, 40]
        image += rng.normal(0, 10, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"photo{seed}.png")
    return folder


@pytest.fixture(scope="module")
def study_out(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("channel-density")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(studies, "STUDIES", {"channel-density": studies.STUDIES["channel-density"]})
        assert main(["study", "channel-density", "--out", str(out), "--data", str(image_dir), *TINY]) == 0
    return out


def test_the_two_layouts_hold_the_same_blocks_transposed():
    features = torch.randn(2, 8, 4, 6)  # C = 8, patch 2 -> D = 4, M = 2
    channel, pixel = channel_slices(features, 4), pixel_slices(features, 2)
    assert channel.shape == pixel.shape == (2 * 4 * 6, 2, 4)
    assert torch.equal(channel.flatten().sort().values, features.flatten().sort().values)
    assert torch.equal(pixel.flatten().sort().values, features.flatten().sort().values)
    for b, g, c, h, w in [(0, 0, 0, 0, 0), (1, 1, 3, 3, 5), (0, 1, 2, 1, 4), (1, 0, 1, 2, 3)]:
        value = features[b, g * 4 + c, h, w]
        assert channel[(b * 4 + h) * 6 + w, g, c] == value
        i, j, r, s = h // 2, w // 2, h % 2, w % 2
        assert pixel[((b * 2 + i) * 3 + j) * 4 + c, g, r * 2 + s] == value


def test_lloyd_fit_converges_and_more_codes_quantize_better():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 6, 3, generator=generator) * 5  # M = 2 codebooks, 6 clusters of D = 3
    labels = torch.randint(0, 6, (600, 2), generator=generator)
    noise = 0.1 * torch.randn(600, 2, 3, generator=generator)
    slices = torch.stack([centres[m, labels[:, m]] for m in range(2)], dim=1) + noise
    errors = {}
    for k in (2, 6, 24):
        quantizer = ProductQuantizer(6, 2, k)
        fit = fit_codebooks(quantizer, slices, generator, tolerance=1e-3, max_iterations=100)
        assert fit.converged and fit.iterations == len(fit.mse) <= 100
        assert fit.mse[-1] <= fit.mse[0]
        assert (quantizer.ema_counts > 0).all()  # every code stays assignable
        errors[k], entropy = measure(quantizer, slices)
        assert 0 <= entropy <= np.log2(k) + 1e-6
        assert errors[k] == pytest.approx(fit.mse[-1], rel=0.5)
    assert errors[24] < errors[6] < errors[2]


def test_fit_refuses_fewer_vectors_than_codes():
    with pytest.raises(ValueError):
        fit_codebooks(ProductQuantizer(4, 1, 8), torch.randn(5, 1, 4), torch.Generator())


def test_study_writes_summary_and_plots(study_out):
    for name in ("summary.json", "summary.md", "channel_vs_pixel.png", "convergence.png"):
        assert (study_out / name).stat().st_size > 0
    summary = json.loads((study_out / "summary.json").read_text())
    assert {"study", "paper", "reading", "config", "results", "claims", "wall_seconds"} <= set(summary)
    config = summary["config"]
    assert config["num_codebooks"] == 12 and config["code_dim"] == 16
    assert len(config["fit_images"]) == 2 and len(config["eval_images"]) == 1
    assert not set(config["fit_images"]) & set(config["eval_images"])
    # one held-out 64 x 96 image: 8 x 12 feature pixels, 12 codebooks of 16-dim vectors in both arms
    assert config["vector_shapes"] == {"channel": [96, 12, 16], "pixel": [96, 12, 16]}
    assert set(summary["results"]) == set(summary["claims"]) == {"4", "16"}
    for k, by_arm in summary["results"].items():
        assert set(by_arm) == {"channel", "pixel"}
        for record in by_arm.values():
            assert len(record["l2"]["runs"]) == len(record["entropy_bits"]["runs"]) == 2
            assert all(0 <= h <= np.log2(int(k)) + 1e-6 for h in record["entropy_bits"]["runs"])
            assert len(record["iterations"]) == 2 and 0 <= record["converged_runs"] <= 2
    for arm in ("channel", "pixel"):
        assert summary["results"]["16"][arm]["l2"]["mean"] < summary["results"]["4"][arm]["l2"]["mean"]
    markdown = (study_out / "summary.md").read_text()
    assert "| K | arm |" in markdown and "| 16 | pixel |" in markdown


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--runs", "0"], "--runs"),
        (["--patch", "5"], "--patch 5"),
        (["--codebook-sizes", "1"], "--codebook-sizes"),
        (["--vectors", "3"], "--vectors 3"),
        (["--images", "3"], "fewer than --images"),
        (["--model", "no-such-model"], "unknown model"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(image_dir, tmp_path, capsys, extra, message):
    argv = ["study", "channel-density", "--out", str(tmp_path / "out"), "--data", str(image_dir), *TINY, *extra]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dqcodec: error:") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_missing_image_folder_exits_2(tmp_path, capsys):
    assert main(["study", "channel-density", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "none")]) == 2
    assert "no images found" in capsys.readouterr().err
