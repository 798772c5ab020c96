"""The evaluation commands end to end on two small synthetic images: eval, bdrate, plot, and the comparison figure."""

import json

import numpy as np
import pytest
from PIL import Image

from dqcodec.codec.cli import main
from dqcodec.eval.classical import get_classical
from dqcodec.eval.compare import Panel, centred_crop, coded_panel, draw_comparison, matched_panel
from dqcodec.eval.results import load_curve
from dqcodec.paths import anchors_dir

RESULT_KEYS = {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}


def synthetic_photo(seed: int, height: int = 176, width: int = 192) -> np.ndarray:
    """Gradients, a disc and noise: large enough for MS-SSIM's five scales (short side > 160)."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 200 / height + 20, columns * 200 / width + 20, np.full((height, width), 120.0)], axis=-1)
    disc = (rows - height / 2) ** 2 + (columns - width / 3) ** 2 < (height / 4) ** 2
    image[disc] = [230, 60, 40]
    image += rng.normal(0, 8, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed in (1, 2):
        Image.fromarray(synthetic_photo(seed)).save(folder / f"synthetic{seed}.png")
    return folder


@pytest.fixture(scope="module")
def jpeg_results(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert main(["eval", "--codec", "jpeg", "--images", str(image_dir), "--out", str(out)]) == 0
    return out / "jpeg.json"


def test_eval_writes_compressai_layout(jpeg_results):
    content = json.loads(jpeg_results.read_text())
    ladder = get_classical("jpeg").points
    assert isinstance(content["name"], str) and isinstance(content["description"], str)
    assert set(content["results"]) == RESULT_KEYS
    for key in RESULT_KEYS:
        assert len(content["results"][key]) == len(ladder)
    assert content["quality"]["values"] == list(ladder)
    assert set(content["per_image"]) == {"synthetic1", "synthetic2"}
    bpp = content["results"]["bpp"]
    assert bpp == sorted(bpp) and 0 < bpp[0] < bpp[-1] < 24
    first = [content["per_image"][name]["psnr-rgb"][0] for name in ("synthetic1", "synthetic2")]
    assert content["results"]["psnr-rgb"][0] == pytest.approx(np.mean(first))
    assert all(0 < value <= 1 for value in content["results"]["ms-ssim-rgb"])
    curve = load_curve(jpeg_results)
    assert curve.kind == "classical" and len(curve.bpp) == len(ladder)


def test_bdrate_prints_a_markdown_table(jpeg_results, capsys):
    assert main(["bdrate", str(jpeg_results), "--anchor", str(jpeg_results), "--metric", "both"]) == 0
    output = capsys.readouterr().out
    assert "| codec | JPEG (4:2:0) |" in output
    assert "| JPEG (4:2:0) | +0.0 |" in output
    assert "PSNR-RGB" in output and "MS-SSIM-RGB (dB)" in output


def test_bdrate_json(jpeg_results, capsys):
    assert main(["bdrate", str(jpeg_results), "--anchor", str(jpeg_results), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["metric"] == "psnr" and record["bd_rate_percent"] == pytest.approx(0.0, abs=1e-9)


def test_bdrate_names_published_anchors(capsys):
    if not (anchors_dir() / "vtm.json").is_file():
        pytest.skip(f"published anchors not found in {anchors_dir()}")
    assert main(["bdrate", "vtm", "--anchor", "bpg_444_x265_ycbcr"]) == 0
    assert "| VTM | -18.0 |" in capsys.readouterr().out


def test_bdrate_reports_curves_that_do_not_overlap(jpeg_results, tmp_path, capsys):
    content = json.loads(jpeg_results.read_text())
    content["name"] = "far better"
    content["results"]["psnr-rgb"] = [value + 40 for value in content["results"]["psnr-rgb"]]
    far = tmp_path / "far.json"
    far.write_text(json.dumps(content))
    assert main(["bdrate", str(far), "--anchor", str(jpeg_results)]) == 0
    output = capsys.readouterr().out
    assert "| far better | n/a |" in output and "do not overlap" in output


def test_plot_writes_png_and_svg(jpeg_results, tmp_path):
    assert main(["plot", str(jpeg_results), "--no-anchors", "--out", str(tmp_path)]) == 0
    for stem in ("rd_psnr", "rd_ms-ssim"):
        for suffix in (".png", ".svg"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 0


def test_eval_rejects_unknown_codec_and_small_images(image_dir, tmp_path, capsys):
    assert main(["eval", "--codec", "gif", "--images", str(image_dir), "--out", str(tmp_path)]) == 2
    assert "unknown codec 'gif'" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(synthetic_photo(3, 64, 64)).save(small / "tiny.png")
    assert main(["eval", "--codec", "jpeg", "--images", str(small), "--out", str(tmp_path)]) == 2
    assert "MS-SSIM needs" in capsys.readouterr().err


def test_comparison_matches_bpp_and_draws(tmp_path):
    image = synthetic_photo(4)
    reference = coded_panel(get_classical("webp"), image, 50, "WebP 50")
    jpeg = matched_panel(get_classical("jpeg"), image, reference.bpp)
    # The match is the closest of JPEG's integer qualities: within a few percent of the target here.
    assert jpeg.bpp == pytest.approx(reference.bpp, rel=0.1)
    out = draw_comparison([Panel("original", image, None, None), reference, jpeg], centred_crop(image, 128), "synthetic", tmp_path / "cmp.png")
    with Image.open(out) as figure:
        assert figure.width > 3 * 128
