"""``dqcodec study static-prior``: blob data, quantizer fits, and the command on a tiny grid."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from dqcodec.codec.cli import main
from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.studies import static_prior as study
from dqcodec.eval.studies.report import mean_std
from dqcodec.eval.studies.static_prior_fit import (
    FitConfig,
    fit_quantizer,
    init_codebooks_from_data,
    make_blobs,
    set_identity_projection,
)
from dqcodec.models.quantizers import VectorQuantizer

# Shorter fits than the study's (a looser EMA stop, a shorter Adam window) keep each test
# within seconds on a busy CPU.
TINY = replace(
    study.QUICK, seeds=2, factor_counts=(70,), dims=(4, 8), codebook_sizes=(10, 30), compare_dims=(8,),
    fit=FitConfig(max_passes=1000, check_every=10, patience=10, tolerance=1e-3),
    gradient_fit=FitConfig(max_passes=300, check_every=10, patience=30, tolerance=1e-3),
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_blobs_have_the_stated_law_and_are_reproducible():
    points = make_blobs(num_factors=7, dim=3, points_per_factor=50, sigma=0.01, seed=3)
    assert points.shape == (1, 3, 350, 1)
    blobs = points[0, :, :, 0].T.reshape(7, 50, 3)
    means = blobs.mean(dim=1)
    assert means.abs().max() <= 1.0 + 0.01
    assert abs(blobs.std(dim=1).mean().item() - 0.01) < 0.002
    assert torch.equal(points, make_blobs(7, 3, 50, 0.01, seed=3))
    assert not torch.equal(points, make_blobs(7, 3, 50, 0.01, seed=4))


def test_vq_loss_falls_with_k_and_every_trained_codebook_beats_random():
    points = make_blobs(num_factors=40, dim=8, points_per_factor=5, sigma=0.01, seed=0)
    trained = [study._fit("vq", points, size, study.StudyConfig(), seed=0) for size in (5, 10, 20)]
    assert all(fit.converged for fit in trained)
    losses = [fit.mse for fit in trained]
    assert losses[0] > losses[1] > losses[2]
    for size, loss in zip((5, 10, 20), losses):
        assert loss < 0.8 * study.random_codebook_mse(points, size, seed=0)


def test_fit_stops_when_the_loss_plateaus_and_reports_a_cap():
    points = make_blobs(num_factors=20, dim=4, points_per_factor=5, sigma=0.01, seed=1)

    def quantizer():
        torch.manual_seed(0)
        vq = VectorQuantizer(4, 8, 4, decay=0.9)
        set_identity_projection(vq, trainable=False)
        init_codebooks_from_data(vq, points, torch.Generator().manual_seed(0))
        return vq

    result = fit_quantizer(quantizer(), points, FitConfig(max_passes=1000, check_every=10, patience=10, tolerance=1e-4))
    assert result.converged and result.passes < 1000
    assert result.history[-1] <= result.history[0]
    assert result.mse == pytest.approx(result.history[-1], rel=1e-6)
    capped = fit_quantizer(quantizer(), points, FitConfig(max_passes=10, check_every=10, patience=10))
    assert not capped.converged and capped.passes == 10


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx({"mean": 2.5, "std": (5 / 3) ** 0.5})
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0}


def test_svq_sees_the_point_as_positions_of_contiguous_coordinates():
    points = torch.arange(2 * 8, dtype=torch.float32).view(2, 8).T[None, :, :, None]  # (1, D, N, 1)
    laid_out = study.spatial_layout(points, 4)  # (1, D/L, N, L)
    assert laid_out.shape == (1, 2, 2, 4)
    assert torch.equal(laid_out[0, :, 1, 3], points[0, 6:8, 1, 0])


def test_the_command_writes_the_summary_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "QUICK", TINY)
    out = tmp_path / "static-prior"
    assert main(["study", "static-prior", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("config", "loss", "random_baseline", "convergence", "vq_loss_vs_dim", "dvq_vs_vq", "claims", "wall_seconds"):
        assert key in summary
    assert len(summary["vq_loss_vs_dim"]) == 2 * 2  # D x K
    assert len(summary["dvq_vs_vq"]) == len(study.METHODS) == 6  # one D, six methods
    assert summary["convergence"]["fits"] == summary["convergence"]["converged"]
    for row in summary["vq_loss_vs_dim"]:
        assert row["mse"]["mean"] < row["random"]["mean"]
    compare = {row["method"]: row for row in summary["dvq_vs_vq"]}
    assert compare["coupled"]["codebooks"] == 4 and compare["svq"]["codebooks"] == 1
    # DVQ trains its projections and decoder, and beats VQ at equal K by a margin on every seed.
    assert all(dvq < 0.6 * vq for dvq, vq in zip(compare["dvq"]["per_seed"], compare["vq"]["per_seed"]))
    claims = {claim["claim"]: claim["held"] for claim in summary["claims"]}
    assert claims["(b) N_G=70: DVQ below VQ (K=10)"] is True
    # The DQ paper's point: M codebooks on one shared projection waste their capacity.
    assert claims["(b) N_G=70: DVQ below coupled DQ (L=4 on one projection, K=10)"] is True
    assert isinstance(claims["(b) N_G=70: DVQ below SVQ (4 positions, one K=10 codebook)"], bool)
    markdown = (out / "summary.md").read_text()
    assert "| 70 | 8 |" in markdown and "## Claims" in markdown
    assert "coupled DQ" in markdown and "SVQ" in markdown
    for name in ("vq_loss_vs_dim.png", "dvq_vs_vq.png", "convergence.png"):
        with Image.open(out / name) as image:
            assert image.width > 300 and image.height > 200


@pytest.mark.parametrize("flag", ["--seeds", "--threads"])
def test_bad_counts_exit_2_with_one_line(tmp_path, capsys, flag):
    out = tmp_path / "static-prior"
    assert main(["study", "static-prior", flag, "0", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dqcodec: error:") and flag in error
    assert error.count("\n") == 1
    assert not out.exists()


def test_a_grid_the_study_cannot_run_is_refused():
    with pytest.raises(DQCodecError, match="not divisible"):
        study._check(replace(study.StudyConfig(), compare_dims=(6,)))
    with pytest.raises(DQCodecError, match="K\\+"):
        study._check(replace(study.StudyConfig(), large_size=80))
