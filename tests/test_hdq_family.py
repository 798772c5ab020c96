"""A family of hdq levels trained jointly (``--arch hdq-family``): every batch trains every level
through the shared transforms, and the levels export as plain hdq models sharing one weights file."""

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from test_hdq import TINY, wave_images

import dqcodec
from dqcodec.codec.cli import main
from dqcodec.models import registry
from dqcodec.models.hdq_family import HDQFamily, HDQFamilyConfig, parse_rate_levels
from dqcodec.train.data import image_files, load_rgb, to_tensor
from dqcodec.train.recipes import HDQFamilyOptions, _initialise_family, _load_family_levels, _start_levels_config

# hdq's tiny configuration less its codebook size, which each level gives.
SHARED = [arg for flag, value in zip(TINY[::2], TINY[1::2]) if flag != "--codebook-size" for arg in (flag, value)]
LEVELS = "1e-6:16,1e-8:8,1e-9:16"


def family_run(out, data, steps: int, *extra: str) -> list[str]:
    return ["train", "--arch", "hdq-family", "--out", str(out), "--data", str(data), *SHARED, "--rate-levels", LEVELS,
            "--init-crops", "8", "--table-crops", "8", "--fit-crop", "64", "--batch-size", "3", "--crop", "64",
            "--threads", "1", "--validation-images", "0", "--gain-every", "2", "--steps", str(steps), *extra]


def tiny_family(latent_channels: int = 16, num_codebooks: int = 4) -> HDQFamily:
    return HDQFamily(HDQFamilyConfig(channels=12, latent_channels=latent_channels, num_codebooks=num_codebooks, code_dim=2,
                                     coarse_channels=8, coarse_codebooks=2, coarse_codebook_size=8, coarse_code_dim=2,
                                     rate_levels=LEVELS))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(weights folder, images): a tiny family of 3 levels trained jointly for 4 steps and exported."""
    root = tmp_path_factory.mktemp("family")
    data = wave_images(root / "images", seed=2, phase=5, period=6.0)
    export = ["--export", "fam", "--family", "fam-test", "--quality", "1", "--weights-dir", str(root / "w"),
              "--measure-images", "0", "--share-weights", "fam-shared"]
    assert main(family_run(root / "run", data, 4, *export)) == 0
    return root / "w", data


def test_every_level_trains_and_exports_as_an_hdq_model_sharing_one_network(family):
    weights, data = family
    infos = [json.loads((weights / f"fam-q{quality}.json").read_text()) for quality in (1, 2, 3)]
    assert [(info["quality"], info["config"]["rate_lambda"], info["config"]["codebook_size"]) for info in infos] == \
        [(1, 1e-6, 16), (2, 1e-8, 8), (3, 1e-9, 16)]
    assert all(info["architecture"] == "HierarchicalDQCodec" and info["shared_weights"] == "fam-shared" for info in infos)
    assert "hdq-family" in infos[0]["training"]["recipe"] and infos[0]["training"]["steps"] == 4
    # The levels share the transforms and the fine projection; each has its own codebooks.
    shared = load_file(weights / "fam-shared.safetensors")
    assert {"analysis.linear.weight", "fine_quantizer.projection.weight"} <= set(shared)
    own = [load_file(weights / f"fam-q{quality}.safetensors") for quality in (1, 2, 3)]
    assert [level["fine_quantizer.codebooks"].shape[1] for level in own] == [16, 8, 16]
    assert not any(key.startswith("fine_quantizer.projection") for level in own for key in level)
    log = [json.loads(line) for line in (weights.parent / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"q1_psnr", "q2_fine_bpp", "q3_psnr", "q3_fine_bpp"} <= set(log[-1])
    pixels = np.asarray(Image.open(data / "1.png"))
    files = [dqcodec.encode(pixels, model=str(weights / f"fam-q{quality}.json")) for quality in (1, 2, 3)]
    assert all(np.asarray(dqcodec.decode(file)).shape == pixels.shape for file in files)
    assert len({registry.file_fingerprint(weights / f"fam-q{quality}") for quality in (1, 2, 3)}) == 3


def test_a_family_starts_from_its_exported_levels_and_gives_them_back(family, tmp_path):
    weights, _ = family
    net = tiny_family()
    # Without architecture options on the command line, the family is the levels' own.
    implied = HDQFamilyConfig(**_start_levels_config(HDQFamilyOptions(start_levels=str(weights))))
    assert parse_rate_levels(implied.rate_levels) == parse_rate_levels(LEVELS)
    assert asdict(net.level_config(0)) == asdict(HDQFamily(implied).level_config(0))
    _load_family_levels(net, weights)
    for index in range(3):
        level, _, _ = registry.load_checkpoint(weights / f"fam-q{index + 1}")
        rebuilt = net.level(index).state_dict()
        for key, value in level.state_dict().items():
            if not key.startswith(("fine_entropy.", "coarse_entropy.")):  # tables: counted anew at export
                assert torch.equal(rebuilt[key], value), key
    # Levels whose tables the current entropy model cannot read (saved before it changed) still
    # start a family: the export counts the tables anew.
    for path in weights.iterdir():
        tensors = load_file(path) if path.suffix == ".safetensors" else None
        if tensors is not None and "fine_entropy.marginal" in tensors:
            save_file({k: v for k, v in tensors.items() if k != "fine_entropy.marginal"}, tmp_path / path.name)
        else:
            shutil.copy(path, tmp_path / path.name)
    registry.clear_cache()
    with pytest.raises(ValueError, match="marginal"):
        registry.load_checkpoint(tmp_path / "fam-q1")
    old = tiny_family()
    _load_family_levels(old, tmp_path)
    assert all(torch.equal(old.state_dict()[key], value) for key, value in net.state_dict().items()
               if not key.startswith(("body.fine_entropy.", "body.coarse_entropy.")))


def _unquantized_error(net, image: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(fine slices, squared error of the reconstruction with the fine latent unquantized) of one hdq level."""
    with torch.no_grad():
        latent = net.analysis(image)
        coarse = net.coarse_quantizer.dequantize(net.coarse_quantizer.quantize(net.coarse_analysis(latent)))
        slices = net.fine_quantizer.project(latent)
        return slices, (net.reconstruct(net.fine_quantizer.assemble(slices), coarse) - image).pow(2).sum().item()


def test_a_wider_family_keeps_the_narrow_levels_and_adds_channels_that_cut_their_residual(family):
    weights, data = family
    wide = tiny_family(latent_channels=20, num_codebooks=6)  # 2 more codebooks of D = 2 on 4 more channels
    options = HDQFamilyOptions(start_levels=str(weights), init_crops=8, fit_crop=64, ecvq_iterations=6)
    lines = []
    _initialise_family(wide, options, image_files(data), torch.Generator().manual_seed(0), lines.append)
    assert "widened from 16 to 20 fine latent channels (4 to 6 codebooks)" in lines[-1]
    images = torch.cat([to_tensor(load_rgb(path)) for path in image_files(data)]).float()[:, :, :64, :64]
    for index in range(3):
        narrow = registry.load_checkpoint(weights / f"fam-q{index + 1}")[0].eval()
        level = wide.level(index).eval()
        old_slices, old_error = _unquantized_error(narrow, images)
        new_slices, new_error = _unquantized_error(level, images)
        # The old channels and codebooks are as they were; the new ones predict part of the residual.
        torch.testing.assert_close(new_slices[:, :4], old_slices, rtol=1e-4, atol=1e-5)
        assert new_error < 0.9 * old_error
        assert torch.equal(level.fine_quantizer.codebooks[:4], narrow.fine_quantizer.codebooks)
        assert (level.fine_quantizer.ema_counts[4:] > 1e-3).sum(dim=1).min() >= 2  # the new codebooks are in use
        indices = level.fine_quantizer.quantize(level.analysis(images))
        assert indices.shape[1] == 6 and not torch.equal(indices[:, 4:], torch.zeros_like(indices[:, 4:]))


def test_each_image_of_a_batch_is_coded_and_charged_by_its_level():
    torch.manual_seed(0)
    net = tiny_family().eval()
    images = torch.rand(4, 3, 64, 64)  # 4 images, 3 levels: parts of 2, 1 and 1
    with torch.no_grad():
        out = net(images)
        assert out.rate_lambdas.tolist() == pytest.approx([1e-6, 1e-6, 1e-8, 1e-9])
        body = net.body
        for image, level in enumerate((0, 0, 1, 2)):
            latent = body.analysis(images[image : image + 1])
            alone = net.quantize_level(level, latent).bits + body.coarse_quantizer(body.coarse_analysis(latent)).bits
            assert out.bits[image].item() == pytest.approx(alone.item(), rel=1e-5)


def test_bad_family_settings_are_one_line_errors(family, tmp_path, capsys):
    weights, data = family
    assert main(family_run(tmp_path / "a", data, 1, "--batch-size", "2")) == 2
    assert "at least one crop per level (3)" in capsys.readouterr().err
    assert main([*family_run(tmp_path / "b", data, 1), "--rate-levels", "1e-9:16,1e-6:16"]) == 2
    assert "lowest rate (largest lambda) first" in capsys.readouterr().err
    assert main([*family_run(tmp_path / "c", data, 1), "--rate-levels", "fast"]) == 2
    assert "LAMBDA:K pairs" in capsys.readouterr().err
    assert main([*family_run(tmp_path / "d", data, 1), "--rate-levels", "1e-6:16,1e-9:16", "--start-levels", str(weights)]) == 2
    assert "3 hdq models, the family has 2 levels" in capsys.readouterr().err
    assert main([*family_run(tmp_path / "e", data, 1), "--rate-levels", "1e-6:16,1e-8:16,1e-9:16",
                 "--start-levels", str(weights)]) == 2
    assert "is not the family's level" in capsys.readouterr().err
    assert main([*family_run(tmp_path / "f", data, 1), "--latent-channels", "18", "--num-codebooks", "6",
                 "--start-levels", str(weights)]) == 2
    assert "the channels must grow by D times the codebooks" in capsys.readouterr().err
    assert not (tmp_path / "e" / "state.safetensors").exists()
