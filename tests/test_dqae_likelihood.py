"""DQ-AE measurements: code statistics (entropy, mutual information), honest bits/dim and
``dqcodec likelihood``, and the two studies (dqae-ablation, dqae-codes) on tiny configurations."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dqcodec.codec.cli import main
from dqcodec.eval.code_statistics import mean_off_diagonal, mutual_information, position_entropy
from dqcodec.eval.likelihood import encode_images, encode_indices, fit_index_prior, split_likelihood
from dqcodec.eval.studies import dqae_ablation, dqae_codes
from dqcodec.eval.studies.dqae_training import PatchSets
from dqcodec.models.dqae import DQAE, DQAEConfig

TINY = {"codebook_sizes": "16,8", "codebook_counts": "3,2", "code_dim": 4, "channels": 16, "residual_blocks": 1,
        "residual_channels": 8, "mixture_components": 3}
TINY_FLAGS = ["--codebook-sizes", "16,8", "--codebook-counts", "3,2", "--code-dim", "4", "--channels", "16",
              "--residual-blocks", "1", "--residual-channels", "8", "--mixture-components", "3"]


def _patches(count: int, size: int, seed: int) -> np.ndarray:
    """(count, size, size, 3) uint8: smooth patterns plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    base = 128 + 90 * np.sin(cols[None, ..., None] / rng.uniform(2, 8, (count, 1, 1, 3))) * np.cos(rows[None, ..., None] / 5.0)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


# --- code statistics -------------------------------------------------------------------------


def test_mutual_information_of_a_code_with_itself_is_its_entropy():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 8, (400, 1, 4, 4))
    indices = np.concatenate([first, first, (first + 3) % 8], axis=1)  # copies and a relabelled copy
    information = mutual_information(indices, 8)
    entropy = information[0, 0]
    assert entropy == pytest.approx(np.log(8), abs=0.01)
    assert np.allclose(information, entropy, atol=1e-9)  # every pair is a deterministic function of the other
    assert mean_off_diagonal(information) == pytest.approx(entropy)


def test_independent_codes_have_mutual_information_near_zero():
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 4, (5000, 3, 4, 4))  # 80 000 samples per 4 x 4 histogram
    information = mutual_information(indices, 4)
    assert np.diag(information) == pytest.approx([np.log(4)] * 3, abs=0.01)
    assert mean_off_diagonal(information) < 1e-3  # plug-in bias ~ 9 / (2 * 80 000) nats


def test_position_entropy_sees_each_position_separately():
    rng = np.random.default_rng(2)
    indices = np.zeros((2000, 2, 2, 3), dtype=np.int64)
    indices[:, 0, 0, 0] = rng.integers(0, 16, 2000)  # one busy position, the rest constant
    indices[:, 1] = rng.integers(0, 2, (2000, 2, 3))
    entropy = position_entropy(indices, 16)
    assert entropy.shape == (2, 2, 3)
    assert entropy[0, 0, 0] == pytest.approx(np.log(16), abs=0.02)
    assert np.all(entropy[0].ravel()[1:] == 0)
    assert np.allclose(entropy[1], np.log(2), atol=0.01)


# --- honest bits/dim -------------------------------------------------------------------------


def _trained_tiny(seed: int = 0) -> DQAE:
    torch.manual_seed(seed)
    net = DQAE(DQAEConfig(**TINY))
    net.train()
    net(torch.from_numpy(_patches(16, 32, seed)).permute(0, 3, 1, 2).float() / 255)  # seeds the codebooks
    return net.eval()


def test_honest_bits_add_the_index_bits_of_every_level():
    net = _trained_tiny()
    train_set, test_set = encode_images(net, _patches(32, 32, 1)), encode_images(net, _patches(12, 32, 2))
    assert [level.shape for level in test_set.indices] == [(12, 3, 8, 8), (12, 2, 4, 4)]
    assert test_set.dims == 3 * 32 * 32 and test_set.squared_error.shape == (12,)
    assert all(np.array_equal(a, b) for a, b in zip(encode_indices(net, _patches(32, 32, 1)), train_set.indices, strict=True))
    priors = fit_index_prior(net, train_set.indices)
    test = split_likelihood(priors, test_set)
    assert test.reconstruction_bits_per_dim == pytest.approx(test_set.reconstruction_bits.mean() / test_set.dims)
    assert len(test.index_bits_per_dim_by_level) == 2 and min(test.index_bits_per_dim_by_level) > 0
    assert test.index_bits_per_dim == pytest.approx(sum(test.index_bits_per_dim_by_level))
    assert test.bits_per_dim == pytest.approx(test.reconstruction_bits_per_dim + test.index_bits_per_dim)
    assert test.bits_per_dim > test.reconstruction_bits_per_dim
    # No more than coding every index uniformly (plus the tables' rounding and prior counts).
    uniform = sum(level[0].size * np.log2(k) for level, k in zip(test_set.indices, (16, 8), strict=True)) / test_set.dims
    assert test.index_bits_per_dim < 1.1 * uniform


def _cifar(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = _patches(6, 32, int(rng.integers(1000))).transpose(0, 3, 1, 2).reshape(6, 3072)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0] * 6}, protocol=2))
    return folder


def test_likelihood_command_reports_both_figures_for_a_run_folder_and_a_model(tmp_path, capsys):
    data = _cifar(tmp_path / "cifar")
    assert main(["train", "--arch", "dqae", "--out", str(tmp_path / "run"), "--data", str(data), "--dataset", "cifar10",
                 *TINY_FLAGS, "--batch-size", "4", "--threads", "1", "--steps", "2", "--export", "tiny", "--quality", "1",
                 "--weights-dir", str(tmp_path / "models")]) == 0
    capsys.readouterr()
    for run in (tmp_path / "run", tmp_path / "models" / "tiny.json"):
        report = tmp_path / f"{run.stem}.json"
        assert main(["likelihood", str(run), "--data", str(data), "--fit-images", "20", "--json", str(report)]) == 0
        printed = capsys.readouterr().out
        assert "recon. term only" in printed and "honest" in printed
        figures = json.loads(report.read_text())
        assert figures["dataset"] == "cifar10" and set(figures["splits"]) == {"train", "test"}
        assert figures["splits"]["train"]["images"] == 20 and figures["splits"]["test"]["images"] == 6
        for split in figures["splits"].values():
            assert split["bits_per_dim"] > split["reconstruction_bits_per_dim"] > 0


def test_likelihood_command_refuses_what_is_not_a_dqae_run(tmp_path, capsys):
    assert main(["likelihood", str(tmp_path / "missing")]) == 2
    assert main(["likelihood", "dq-q1"]) == 2
    assert main(["likelihood", str(tmp_path), "--fit-images", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("dqcodec: error:") for line in errors)


# --- the studies -----------------------------------------------------------------------------


def _patch_sets() -> PatchSets:
    return PatchSets(Path("."), 16, _patches(64, 16, 3), _patches(16, 16, 4), _patches(16, 16, 5))


def test_ablation_table_has_every_cell_and_m1_is_trained_once(tmp_path):
    config = dqae_ablation.AblationConfig(codebook_sizes=(4, 8), codebook_counts=(1, 2), code_dim=2, channels=8,
                                          residual_channels=4, mse_steps=2, categorical_steps=1, batch_size=2, crop=8,
                                          patch_size=16)
    trained = dqae_ablation.cells(config)
    assert len(trained) == 2 * 2 * 3 and not any(m == 1 and q == "vq" for _, _, m, q in trained)
    results = dqae_ablation.run_cells(config, _patch_sets(), tmp_path / "work")
    dqae_ablation.write_report(config, results, _patch_sets().describe(), 1.0, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    grid = dqae_ablation.table(summary["cells"])
    for head in ("mse", "categorical"):
        for k in (4, 8):
            for m in (1, 2):
                for quantizer in ("dq", "vq"):
                    cell = grid[head][k][m][quantizer]
                    assert cell["bits_per_dim"] >= cell["reconstruction_bits_per_dim"] > 0 and cell["squared_error"] > 0
            assert grid[head][k][1]["dq"] is grid[head][k][1]["vq"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert markdown.count("| 8 | 2 |") == 2 and "DQ below VQ in" in markdown
    assert set(summary["claim_dq_below_coupled_vq_at_m_ge_3"]) == {f"{h}/{m}" for h in ("mse", "categorical")
                                                                   for m in dqae_ablation.MEASURES}
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    # A rerun reuses the finished cells instead of training them again.
    again = dqae_ablation.run_cells(config, _patch_sets(), tmp_path / "work")
    assert [cell["bits_per_dim"] for cell in again] == [cell["bits_per_dim"] for cell in results]


def test_ablation_refuses_a_bad_grid(capsys):
    assert main(["study", "dqae-ablation", "--codebook-counts", "3,x"]) == 2
    assert main(["study", "dqae-ablation", "--heads", "mse,gaussian"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_code_analysis_of_dq_and_vq(tmp_path):
    config = dqae_codes.CodesConfig(codebook_sizes="8,4", codebook_counts="3,2", code_dim=2, channels=8, residual_channels=4,
                                    steps=2, batch_size=2, crop=16, patch_size=16)
    patches = _patch_sets()
    results, pictures = dqae_codes.analyse(config, patches, tmp_path / "work")
    for quantizer in ("dq", "vq"):
        bottom, top = results[quantizer]["levels"]["bottom"], results[quantizer]["levels"]["top"]
        assert np.asarray(bottom["position_entropy"]).shape == (3, 4, 4) and np.asarray(top["mutual_information"]).shape == (2, 2)
        information = np.asarray(bottom["mutual_information"])
        assert np.allclose(information, information.T) and np.allclose(np.diag(information), bottom["codebook_entropy"])
        assert 0 <= bottom["mean_position_entropy"] <= np.log(8) + 1e-9
        assert set(results[quantizer]["squared_error"]) == {"full", "top only", "bottom only"}
        assert all(images.shape == (8, 3, 16, 16) for images in pictures[quantizer].values())
    assert not np.allclose(pictures["dq"]["top only"], pictures["dq"]["full"])
    assert pictures["original"].shape == (8, 16, 16, 3)
    dqae_codes._plot_codes(results, tmp_path / "codes.png")
    dqae_codes._plot_reconstructions(pictures, tmp_path / "reconstructions.png")
    assert (tmp_path / "codes.png").stat().st_size > 0 and (tmp_path / "reconstructions.png").stat().st_size > 0
