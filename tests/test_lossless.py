"""Lossless .dqc files of a DQ-AE (``dqcodec encode --lossless``): bit-exact round trips under
1 and 2 torch threads, batch sizes, tiles and a fresh process; the integer pixel tables against
the float head; export from a run; the one-line refusals. Tiny untrained networks: exactness must
not depend on training."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dqcodec
from dqcodec.codec.api import inspect
from dqcodec.codec.cli import main
from dqcodec.codec.container import read_header
from dqcodec.eval.likelihood import encode_indices, fit_index_prior
from dqcodec.models.dqae import DQAE, DQAEConfig
from dqcodec.models.dqae_lossless import PIXELS, lossless_model
from dqcodec.models.mixture_tables import quantize_parameters
from dqcodec.models.registry import load_checkpoint, save_model

TINY = {"codebook_sizes": "16,8", "codebook_counts": "3,2", "code_dim": 4, "channels": 16, "residual_blocks": 1,
        "residual_channels": 8, "mixture_components": 3}


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: smooth patterns plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = 128 + 90 * np.sin(cols[..., None] / rng.uniform(2, 8, (1, 1, 3))) * np.cos(rows[..., None] / 5.0)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny lossless DQ-AE (codebooks seeded by one training pass, priors fitted on 16 patches)."""
    torch.manual_seed(0)
    net = DQAE(DQAEConfig(**TINY))
    net.train()
    net(torch.from_numpy(np.stack([_image(32, 32, seed) for seed in range(8)])).permute(0, 3, 1, 2).float() / 255)
    net.eval()
    patches = np.stack([_image(32, 32, seed) for seed in range(8, 24)])
    stem = tmp_path_factory.mktemp("lossless") / "tiny-lossless"
    save_model(lossless_model(net, fit_index_prior(net, encode_indices(net, patches))), stem,
               {"name": "tiny-lossless", "family": "dqae-lossless", "quality": 0})
    return stem.with_suffix(".json")


def _decoded(data: bytes, model: Path) -> np.ndarray:
    return np.asarray(dqcodec.decode(data, model=str(model)))


def test_round_trip_is_exact_and_info_says_lossless(model):
    image = _image(40, 52, 1)  # padded to 40 x 56 inside the file
    data = dqcodec.encode(image, model=str(model), lossless=True)
    assert np.array_equal(_decoded(data, model), image)
    facts = inspect(data, model=str(model))
    assert facts["lossless"] and facts["family"] == "dqae-lossless"
    assert abs(facts["overhead_percent"]) < 2  # the real size is the integer tables' -log2 p, plus header and coder


def test_grayscale_stays_grayscale_and_exact(model):
    image = _image(32, 32, 2)[..., 0]
    data = dqcodec.encode(image, model=str(model), lossless=True)
    assert np.array_equal(_decoded(data, model), image)


def test_tiles_decode_exactly(model):
    image = _image(24, 264, 3)  # a tile of 256 columns and one of 8
    data = dqcodec.encode(image, model=str(model), lossless=True, tile_size=256)
    assert len(read_header(data).tiling) == 2
    assert np.array_equal(_decoded(data, model), image)


def test_same_file_with_2_threads_and_decoded_in_a_fresh_process(model, tmp_path):
    """Encoded here with 1 torch thread; in a new interpreter with 2 threads the file is the same
    bytes, and decoding there gives back the image."""
    image = _image(48, 48, 4)
    torch.set_num_threads(1)
    data = dqcodec.encode(image, model=str(model), lossless=True)
    (tmp_path / "here.dqc").write_bytes(data)
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np, torch, dqcodec\n"
        "torch.set_num_threads(2)\n"
        "folder, model = sys.argv[1], sys.argv[2]\n"
        "image = np.load(folder + '/image.npy')\n"
        "open(folder + '/there.dqc', 'wb').write(dqcodec.encode(image, model=model, lossless=True))\n"
        "decoded = np.asarray(dqcodec.decode(open(folder + '/here.dqc', 'rb').read(), model=model))\n"
        "print(torch.get_num_threads(), np.array_equal(decoded, image))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(model)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True"]
    assert (tmp_path / "there.dqc").read_bytes() == data


def test_quantized_parameters_do_not_depend_on_the_batch(model):
    """The pixel tables of an image come from the same integers whether its codes are decoded
    alone or in a batch of three (float64 network, as the coding runtime runs it)."""
    net = load_checkpoint(model.with_suffix(""))[0].double()
    images = torch.from_numpy(np.stack([_image(32, 32, seed) for seed in (5, 6, 7)])).permute(0, 3, 1, 2).double() / 255
    weights = net.pixel_weight.numpy()
    with torch.no_grad():
        together = net.head_parameters(net.encode(images)).numpy()
        alone = net.head_parameters(net.encode(images[1:2])).numpy()
    batch, single = quantize_parameters(together[1:2], 3, weights), quantize_parameters(alone, 3, weights)
    for field in ("weights", "centres", "log_scales", "couplings"):
        assert np.array_equal(getattr(batch, field), getattr(single, field))


def test_integer_tables_cost_little_against_the_float_head(model):
    """-log2 p of the pixels under the integer tables is within 1 % of the float head's bits."""
    net = load_checkpoint(model.with_suffix(""))[0].double()
    image = _image(64, 64, 8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
    with torch.no_grad():
        levels = net.compress(tensor)
        head_bits = float(net.head.bits(net.head_parameters(net.encode(tensor)), tensor))
    specs = net.levels(64, 64)
    side = {level.name: level.indices for level in levels[:-1]}
    table_bits = specs[-1].entropy.bits(levels[-1].indices, side)
    assert specs[-1].name == levels[-1].name == PIXELS
    assert table_bits == pytest.approx(head_bits, rel=0.01)


def test_export_from_a_run_and_the_command_line(tmp_path, capsys):
    from test_dqae_likelihood import TINY_FLAGS, _cifar

    data = _cifar(tmp_path / "cifar")
    assert main(["train", "--arch", "dqae", "--out", str(tmp_path / "run"), "--data", str(data), "--dataset", "cifar10",
                 *TINY_FLAGS, "--batch-size", "4", "--threads", "1", "--steps", "2"]) == 0
    stem = tmp_path / "models" / "tiny-ll"
    assert main(["export-lossless", str(tmp_path / "run"), str(stem), "--fit-images", "20"]) == 0
    assert json.loads(stem.with_suffix(".json").read_text())["architecture"] == "LosslessDQAE"
    image = tmp_path / "image.png"
    Image.fromarray(_image(32, 40, 9)).save(image)
    assert main(["encode", "--lossless", "--model", str(stem) + ".json", str(image), str(tmp_path / "image.dqc")]) == 0
    assert main(["decode", "--model", str(stem) + ".json", str(tmp_path / "image.dqc"), str(tmp_path / "back.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), np.asarray(Image.open(image)))
    capsys.readouterr()
    assert main(["info", "--model", str(stem) + ".json", str(tmp_path / "image.dqc")]) == 0
    assert "lossless" in capsys.readouterr().out


def test_refusals_are_one_line_and_write_nothing(model, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(_image(32, 32, 10)).save(photo)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(deep)
    out = tmp_path / "out.dqc"
    assert main(["encode", "--lossless", str(photo), str(out)]) == 2  # no model
    assert main(["encode", "--lossless", "--model", "dq-q1", str(photo), str(out)]) == 2  # a lossy model
    assert main(["encode", "--model", str(model), str(deep), str(out)]) == 2  # 16-bit: not kept exactly
    assert main(["export-lossless", "dq-q1", str(tmp_path / "x")]) == 2
    assert main(["encode", "--model", str(model), "--lambda", "0.01", str(photo), str(out)]) == 2  # no trade-off to set
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("dqcodec: error:") for line in errors)
    assert "16-bit" in errors[2] and "no rate-distortion trade-off" in errors[4]
    assert not out.exists() and not (tmp_path / "x.json").exists()


def test_study_measures_file_sizes_against_the_evaluated_bits(model):
    from dqcodec.eval.studies.lossless import determinism, markdown, measure_set

    net = load_checkpoint(model.with_suffix(""))[0]
    result = measure_set("patches", [_image(32, 32, seed) for seed in (12, 13)], model, net, None)
    assert result["decoded_exactly"] == 2
    assert abs(result["streams_vs_evaluated_percent"]) < 2
    assert result["file_bits_per_dim"] > result["stream_bits_per_dim"] > 0 and result["png_bits_per_dim"] > 0
    checks = determinism(net, [_image(32, 32, 14), _image(32, 32, 15)])
    assert all(check["indices_equal"] and check["integers_equal"] for check in checks.values())
    summary = {"model": str(model), "description": "", "threads": 1, "jxl": "absent", "kodak_tile_size": 0,
               "determinism": checks, "command": "dqcodec study lossless", "sets": [result], "minutes": 0.1}
    assert "| patches | 2 |" in markdown(summary) and "2 threads" in markdown(summary)
