"""The evaluation commands end to end on two small synthetic images: eval, bdrate, plot, and the comparison figure."""

import json
from pathlib import Path

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


def test_bdrate_keeps_two_files_of_one_name_apart(jpeg_results, tmp_path, capsys):
    """An earlier results file of the same codec is its own column, not merged with this one's."""
    content = json.loads(jpeg_results.read_text())
    content["results"]["bpp"] = [value / 2 for value in content["results"]["bpp"]]  # same name, half the bits
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(content))
    assert main(["bdrate", str(jpeg_results), "--anchor", str(jpeg_results), "--anchor", str(earlier)]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[2:5]
    assert header.count("JPEG (4:2:0) (") == 2 and str(earlier) in header
    assert row.startswith("| JPEG (4:2:0) | +0.0 | ")
    assert float(row.split("|")[3]) == pytest.approx(100.0, abs=0.5)


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


class FakeApi:
    """Stands in for dqcodec.codec.api: 'models' are JPEG at a quality taken from the model name."""

    @staticmethod
    def resolve_model_name(quality=None, model=None):
        return model or "fake-q50"

    @staticmethod
    def encode(image, quality=None, model=None, rate_lambda=None):
        import io

        buffer = io.BytesIO()
        jpeg_quality = int(Path(model or "fake-q50").stem.split("-q")[1])  # a name or a checkpoint path
        if rate_lambda is not None:  # a stand-in for the encoder trade-off: smaller lambda, higher quality
            jpeg_quality = min(95, max(5, round(jpeg_quality * 0.01 / rate_lambda)))
        Image.fromarray(np.asarray(image)).save(buffer, format="JPEG", quality=jpeg_quality)
        return buffer.getvalue()

    @staticmethod
    def inspect(data):
        return {"estimated_bits": 8 * len(data) * 0.99}

    @staticmethod
    def decode(data):
        import io

        return Image.open(io.BytesIO(data))


class FakeRegistry:
    """Stands in for dqcodec.models.registry with a two-level family 'fake'."""

    @staticmethod
    def list_models():
        return [
            {"name": "fake-q60", "family": "fake", "quality": 2, "bpp": 1.0, "psnr": 30.0},
            {"name": "fake-q20", "family": "fake", "quality": 1, "bpp": 0.5, "psnr": 28.0},
        ]


@pytest.fixture
def fake_dqcodec(monkeypatch):
    import sys

    import dqcodec.codec
    import dqcodec.models

    for package, name, module in ((dqcodec.codec, "api", FakeApi), (dqcodec.models, "registry", FakeRegistry)):
        monkeypatch.setitem(sys.modules, f"{package.__name__}.{name}", module)
        monkeypatch.setattr(package, name, module, raising=False)


def test_eval_sweeps_every_level_of_a_family(fake_dqcodec, image_dir, tmp_path):
    assert main(["eval", "--codec", "fake", "--images", str(image_dir), "--out", str(tmp_path)]) == 0
    content = json.loads((tmp_path / "fake.json").read_text())
    assert content["kind"] == "dqcodec"
    assert content["quality"]["values"] == ["fake-q20", "fake-q60"]  # lowest quality level first
    assert content["results"]["bpp"][0] < content["results"]["bpp"][1]
    assert content["results"]["estimated_bpp"] == pytest.approx([0.99 * bpp for bpp in content["results"]["bpp"]])


def test_eval_sweeps_a_folder_of_checkpoints_of_one_family(fake_dqcodec, image_dir, tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, quality in (("fake-q60", 2), ("fake-q20", 1)):
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "family": "fakeckpt", "quality": quality}))
    assert main(["eval", "--codec", str(folder), "--images", str(image_dir), "--out", str(tmp_path)]) == 0
    content = json.loads((tmp_path / "fakeckpt.json").read_text())
    assert content["quality"]["values"] == [str(folder / "fake-q20.json"), str(folder / "fake-q60.json")]
    assert content["results"]["bpp"][0] < content["results"]["bpp"][1]
    (folder / "other-q40.json").write_text(json.dumps({"name": "other-q40", "family": "other", "quality": 1}))
    assert main(["eval", "--codec", str(folder), "--images", str(image_dir), "--out", str(tmp_path)]) == 2
    assert "checkpoints of one family" in capsys.readouterr().err


def test_eval_sweeps_the_encoder_lambda_of_a_model(fake_dqcodec, image_dir, tmp_path, capsys):
    argv = ["eval", "--codec", "fake-q60", "--images", str(image_dir), "--out", str(tmp_path), "--lambdas", "0.005", "0.02"]
    assert main(argv) == 0
    content = json.loads((tmp_path / "fake-q60-lambdas.json").read_text())
    assert content["quality"]["values"] == [["fake-q60", 0.02], ["fake-q60", 0.005]]  # lowest rate first
    assert content["results"]["bpp"][0] < content["results"]["bpp"][1]
    for bad in (["--lambdas", "0"], ["--lambdas", "nan"], ["--codec", "jpeg", "--lambdas", "0.01"]):
        assert main(["eval", "--codec", "fake-q60", "--images", str(image_dir), "--out", str(tmp_path), *bad]) == 2
    errors = capsys.readouterr().err
    assert "--lambdas must be numbers above 0" in errors and "--lambdas applies to dqcodec models" in errors


def test_compare_cli_draws_ours_next_to_matched_jpeg(fake_dqcodec, image_dir, tmp_path, capsys):
    out = tmp_path / "compare.png"
    image = image_dir / "synthetic1.png"
    assert main(["compare", "--image", str(image), "--codec", "jpeg", "--crop", "0", "0", "160", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as figure:
        assert figure.width > 3 * 160


def test_bench_prints_medians_and_ratios(fake_dqcodec, image_dir, tmp_path, capsys):
    timings = tmp_path / "bench.json"
    assert main(["bench", "--images", str(image_dir), "--threads", "1", "--json", str(timings)]) == 0
    output = capsys.readouterr().out
    assert "torch.set_num_threads(1)" in output and "| ratio ours / baseline |" in output
    assert [entry["codec"] for entry in json.loads(timings.read_text())["codecs"]][0] == "dqcodec fake-q50"
