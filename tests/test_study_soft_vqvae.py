"""The soft VQ-VAE study: its metrics, data, model, training loop and command on a tiny configuration."""

import json

import pytest
import torch

from dqcodec.codec.cli import main
from dqcodec.eval.studies import commands as studies
from dqcodec.eval.studies.autoencoder_training import AutoencoderTrainConfig, train_autoencoder
from dqcodec.eval.studies.latent_metrics import (
    clustering_accuracy,
    kmeans,
    linear_probe_accuracy,
    normalized_mutual_information,
    principal_components,
)
from dqcodec.eval.studies.toy_autoencoder import BOTTLENECKS, ToyAutoencoder
from dqcodec.eval.studies.toy_shapes import SHAPES, make_shapes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as the study runs: small models on a busy 2-core machine run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def only_this_study(monkeypatch):
    """The ``dqcodec study`` parser with this study alone, so that these tests do not depend on
    whether the other studies' modules (imported to build the parser) are present."""
    monkeypatch.setattr(studies, "STUDIES", {"soft-vqvae": studies.STUDIES["soft-vqvae"]})


def _blobs(per_class: int, centres: torch.Tensor, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(per_class)
    points = centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=generator)
    return points, labels


def test_perfect_clustering_under_permuted_labels_scores_one():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    permutation = torch.tensor([2, 3, 1, 0])
    assert clustering_accuracy(labels, permutation[labels]) == pytest.approx(1.0)
    assert normalized_mutual_information(labels, permutation[labels]) == pytest.approx(1.0)


def test_clustering_accuracy_counts_the_best_matching():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clusters = torch.tensor([1, 1, 0, 0, 0, 0])  # cluster 1 -> class 0 (2 right), cluster 0 -> class 1 (3 right)
    assert clustering_accuracy(labels, clusters) == pytest.approx(5 / 6)


def test_nmi_of_independent_labelings_is_near_zero():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (20000,), generator=generator)
    clusters = torch.randint(0, 5, (20000,), generator=generator)
    assert normalized_mutual_information(labels, clusters) < 0.01
    # A labeling that is a coarsening of the other shares some but not all information.
    assert 0.3 < normalized_mutual_information(labels, labels // 2) < 0.9


def test_kmeans_recovers_separated_blobs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points, labels = _blobs(50, centres, 0.5, seed=1)
    clusters = kmeans(points, 4, torch.Generator().manual_seed(0), restarts=3)
    assert clustering_accuracy(labels, clusters) == pytest.approx(1.0)
    same = kmeans(points, 4, torch.Generator().manual_seed(0), restarts=3)
    assert torch.equal(clusters, same)


def test_linear_probe_separates_separable_data_and_not_noise():
    centres = torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    train_x, train_y = _blobs(40, centres, 0.7, seed=2)
    test_x, test_y = _blobs(40, centres, 0.7, seed=3)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) > 0.95
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(4))]
    noise_x = torch.randn(120, 3, generator=torch.Generator().manual_seed(5))
    assert linear_probe_accuracy(noise_x, shuffled, test_x, test_y) < 0.7


def test_principal_components_find_the_long_axis():
    generator = torch.Generator().manual_seed(6)
    points = torch.randn(500, 3, generator=generator) * torch.tensor([10.0, 1.0, 0.1])
    projected = principal_components(points, 2)
    assert projected.shape == (500, 2)
    assert projected[:, 0].var() > 20 * projected[:, 1].var() > 20 * 20 * projected.new_tensor(0.01)


def test_shapes_are_balanced_reproducible_images():
    images, labels = make_shapes(60, seed=3, size=12)
    assert images.shape == (60, 1, 12, 12) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.bincount(labels, minlength=len(SHAPES)).tolist() == [10] * len(SHAPES)
    again, _ = make_shapes(60, seed=3, size=12)
    assert torch.equal(images, again)
    assert not torch.equal(make_shapes(60, seed=4, size=12)[0], images)


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_toy_autoencoder_trains_and_exposes_latents(bottleneck):
    torch.manual_seed(0)
    images, _ = make_shapes(64, seed=0, size=8)
    model = ToyAutoencoder(bottleneck, image_size=8, latent_dim=4, codebook_size=8, hidden=32)
    with torch.no_grad():
        before = ((model(images).reconstruction - images) ** 2).mean()
    train_autoencoder(model, images, AutoencoderTrainConfig(steps=60, batch_size=32, learning_rate=3e-3),
                      torch.Generator().manual_seed(0), progress=False)
    assert not model.training
    with torch.no_grad():
        out = model(images)
        latent, quantized = model.encoder_latent(images), model.quantized_latent(images)
    assert out.reconstruction.shape == images.shape
    assert ((out.reconstruction - images) ** 2).mean() < before
    assert latent.shape == quantized.shape == (64, 4)
    if bottleneck == "ae":
        assert torch.equal(latent, quantized)
    else:
        assert len(torch.unique(quantized, dim=0)) <= 8  # codewords only


def _run_tiny(out, *extra):
    return main(["study", "soft-vqvae", "--out", str(out), "--seeds", "2", "--steps", "10",
                 "--train-samples", "72", "--test-samples", "36", *extra])


def test_study_writes_summary_and_plots(tmp_path, only_this_study):
    assert _run_tiny(tmp_path) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["seeds"] == 2 and summary["config"]["threads"] == 1
    assert set(summary["metrics"]) == set(BOTTLENECKS)
    for bottleneck in BOTTLENECKS:
        metrics = summary["metrics"][bottleneck]
        assert {"kmeans_accuracy", "nmi", "probe_accuracy", "reconstruction_nmse"} <= set(metrics)
        assert len(summary["per_seed"][bottleneck]["kmeans_accuracy"]) == 2
        assert 0 <= metrics["kmeans_accuracy"]["mean"] <= 1 and metrics["nmi"]["std"] >= 0
    assert "kmeans_accuracy_quantized" in summary["metrics"]["soft-vqvae"]
    assert "kmeans_accuracy_quantized" not in summary["metrics"]["ae"]
    claim = summary["claim_soft_clusters_better_than_vq"]
    assert isinstance(claim["holds"], bool) and claim["kmeans_accuracy"]["seeds"] == 2
    markdown = (tmp_path / "summary.md").read_text()
    assert "| soft VQ-VAE |" in markdown and "| VQ-VAE |" in markdown and "±" in markdown
    for name in ("metrics.png", "latents.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--steps", "-3"], "--steps must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--test-samples", "5"], "--test-samples must be at least"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, only_this_study, arguments, message):
    assert main(["study", "soft-vqvae", "--out", str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("dqcodec: error: ") and message in error
    assert not (tmp_path / "out").exists()
