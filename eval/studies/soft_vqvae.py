"""``dqcodec study soft-vqvae``: do soft VQ-VAE latents cluster better than VQ-VAE's?

A miniature of the clustering / classification study of Wu & Flierl, "Vector
Quantization-Based Regularization for Autoencoders" (AAAI 2020). Identical MLP autoencoders
with three bottlenecks — none (AE), VQ-VAE (:class:`VectorQuantizer`, EMA codebook) and soft
VQ-VAE (:class:`BayesianSoftQuantizer`) — are trained on a labelled synthetic set of shape
images (:mod:`dqcodec.eval.studies.toy_shapes`; the label is never used in training). For every
seed and bottleneck, on the held-out images:

- k-means (k = number of classes) clustering accuracy (Hungarian matching) and NMI of
  z_e, the encoder's latent — the continuous vector the bottleneck quantizes (for VQ-VAE after
  the quantizer's learned 1x1 projection, which acts as the encoder's last linear layer).
  The paper's authors cluster the encoder output too (``output_encoder['z_mean']`` in their
  MNIST notebook).
- the same two on z_hat, the hard codeword the decoder sees at inference (VQ bottlenecks);
- a linear probe: logistic regression fitted on the training images' z_e, accuracy on the
  held-out z_e;
- the normalised reconstruction error (eval mode) and the codebook perplexity on held-out
  images.

Writes ``summary.json``, ``summary.md`` (mean ± sample std over seeds), ``metrics.png`` (bars
with std error bars), ``latents.png`` (2-D PCA of the held-out z_e per bottleneck, first seed)
and ``samples.png`` (examples of each class).
"""

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.studies.autoencoder_training import AutoencoderTrainConfig, train_autoencoder
from dqcodec.eval.studies.latent_metrics import (
    clustering_accuracy,
    kmeans,
    linear_probe_accuracy,
    normalized_mutual_information,
    principal_components,
)
from dqcodec.eval.studies.report import mean_std, pyplot, save_figure, write_summary
from dqcodec.eval.studies.toy_autoencoder import BOTTLENECKS, ToyAutoencoder
from dqcodec.eval.studies.toy_shapes import SHAPES, make_shapes

LABELS = {"ae": "AE", "vqvae": "VQ-VAE", "soft-vqvae": "soft VQ-VAE"}
# metric key -> column title; the z_hat metrics exist for the VQ bottlenecks only.
METRICS = {
    "kmeans_accuracy": "k-means acc. (z_e)",
    "nmi": "NMI (z_e)",
    "probe_accuracy": "linear probe acc. (z_e)",
    "kmeans_accuracy_quantized": "k-means acc. (z_hat)",
    "nmi_quantized": "NMI (z_hat)",
    "reconstruction_nmse": "recon. NMSE (eval)",
    "perplexity": "code perplexity",
}
PLOTTED = ["kmeans_accuracy", "nmi", "probe_accuracy", "kmeans_accuracy_quantized", "nmi_quantized"]
TRAIN_DATA_SEED, TEST_DATA_SEED = 1000, 2000  # the data set is fixed; seeds vary the models


@dataclass
class StudyConfig:
    """The study's knobs; every one is written to summary.json."""

    seeds: int = 5
    steps: int = 3000
    train_samples: int = 4000
    test_samples: int = 2000
    image_size: int = 16
    latent_dim: int = 16
    codebook_size: int = 32
    noise_std: float = 0.1
    beta: float = 0.25
    batch_size: int = 128
    learning_rate: float = 1e-3
    kmeans_restarts: int = 10
    threads: int = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = StudyConfig()
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="model seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps per model (default: %(default)s)")
    parser.add_argument(
        "--train-samples", type=int, default=defaults.train_samples,
        help="training images, also the linear probe's training set (default: %(default)s)",
    )
    parser.add_argument(
        "--test-samples", type=int, default=defaults.test_samples,
        help="held-out images that are clustered and probed (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads (default: %(default)s)")


def _config(args: argparse.Namespace) -> StudyConfig:
    """Check the command-line values (DQCodecError, one line, for a bad one) and build the config."""
    minimums = {
        "--seeds": (args.seeds, 1),
        "--steps": (args.steps, 1),
        "--threads": (args.threads, 1),
        "--train-samples": (args.train_samples, 2 * len(SHAPES)),
        "--test-samples": (args.test_samples, 2 * len(SHAPES)),
    }
    for name, (value, minimum) in minimums.items():
        if value < minimum:
            raise DQCodecError(f"{name} must be at least {minimum}, got {value}")
    return StudyConfig(
        seeds=args.seeds,
        steps=args.steps,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        batch_size=min(StudyConfig.batch_size, args.train_samples),
        threads=args.threads,
    )


def _evaluate(
    model: ToyAutoencoder, data: dict[str, torch.Tensor], seed: int, restarts: int
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of one trained model on the held-out set, and its held-out z_e (N, D)."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(SHAPES)
    with torch.no_grad():
        train_latent = model.encoder_latent(data["train_images"])
        test_latent = model.encoder_latent(data["test_images"])
        out = model(data["test_images"])
    labels = data["test_labels"]
    clusters = kmeans(test_latent, num_classes, generator, restarts=restarts)
    metrics = {
        "kmeans_accuracy": clustering_accuracy(labels, clusters),
        "nmi": normalized_mutual_information(labels, clusters),
        "probe_accuracy": linear_probe_accuracy(train_latent, data["train_labels"], test_latent, labels),
        "reconstruction_nmse": float(((out.reconstruction - data["test_images"]) ** 2).mean() / data["test_images"].var()),
    }
    if model.quantizer is not None:
        with torch.no_grad():
            quantized = model.quantized_latent(data["test_images"])
        # k-means needs k distinct points; with fewer used codes the clusters are the codes.
        codes = torch.unique(quantized, dim=0, return_inverse=True)[1]
        if int(codes.max()) + 1 > num_classes:
            codes = kmeans(quantized, num_classes, generator, restarts=restarts)
        metrics["kmeans_accuracy_quantized"] = clustering_accuracy(labels, codes)
        metrics["nmi_quantized"] = normalized_mutual_information(labels, codes)
        metrics["perplexity"] = float(out.perplexity)
    return metrics, test_latent


def _claim(per_seed: dict[str, dict[str, list[float]]]) -> dict:
    """Soft VQ-VAE vs VQ-VAE on k-means accuracy and NMI of z_e, paired by seed."""
    result = {}
    for metric in ("kmeans_accuracy", "nmi"):
        soft, hard = np.asarray(per_seed["soft-vqvae"][metric]), np.asarray(per_seed["vqvae"][metric])
        result[metric] = {
            "soft_vqvae_mean": float(soft.mean()),
            "vqvae_mean": float(hard.mean()),
            "mean_difference": float((soft - hard).mean()),
            "seeds_soft_better": int((soft > hard).sum()),
            "seeds": len(soft),
        }
    result["holds"] = all(result[m]["mean_difference"] > 0 for m in ("kmeans_accuracy", "nmi"))
    return result


def _markdown(config: StudyConfig, stats: dict, claim: dict, wall_seconds: float) -> str:
    header = "| bottleneck | " + " | ".join(METRICS.values()) + " |"
    rule = "| --- |" + " ---: |" * len(METRICS)
    rows = []
    for bottleneck in BOTTLENECKS:
        cells = []
        for metric in METRICS:
            entry = stats[bottleneck].get(metric)
            cells.append("—" if entry is None else f"{entry['mean']:.3f} ± {entry['std']:.3f}")
        rows.append(f"| {LABELS[bottleneck]} | " + " | ".join(cells) + " |")
    verdict = "holds" if claim["holds"] else "does not hold"
    accuracy, nmi = claim["kmeans_accuracy"], claim["nmi"]
    return "\n".join(
        [
            "# soft VQ-VAE study (Wu & Flierl, AAAI 2020), in miniature",
            "",
            f"{len(SHAPES)}-class synthetic shapes ({', '.join(SHAPES)}), {config.image_size}×{config.image_size}, "
            f"{config.train_samples} training / {config.test_samples} held-out images; MLP autoencoders, "
            f"D = {config.latent_dim}, K = {config.codebook_size}, {config.steps} Adam steps of {config.batch_size}; "
            f"mean ± sample std over {config.seeds} seeds; {config.threads} torch thread(s), {wall_seconds:.0f} s wall.",
            "",
            "z_e = the encoder's latent, the vector the bottleneck quantizes (VQ-VAE: after its 1×1 projection); "
            "z_hat = the hard codeword the decoder sees at inference. Clustering: k-means, k = number of classes, "
            f"best of {config.kmeans_restarts} k-means++ restarts, Hungarian-matched accuracy; "
            "probe: logistic regression on training z_e.",
            "",
            header,
            rule,
            *rows,
            "",
            f"Claim \"soft VQ-VAE latents (z_e) cluster better than VQ-VAE's\": **{verdict}** here — "
            f"k-means accuracy {accuracy['soft_vqvae_mean']:.3f} vs {accuracy['vqvae_mean']:.3f} "
            f"(soft better in {accuracy['seeds_soft_better']}/{accuracy['seeds']} seeds), "
            f"NMI {nmi['soft_vqvae_mean']:.3f} vs {nmi['vqvae_mean']:.3f} "
            f"(soft better in {nmi['seeds_soft_better']}/{nmi['seeds']} seeds).",
        ]
    )


def _plot_metrics(stats: dict, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(BOTTLENECKS)
    positions = np.arange(len(PLOTTED))
    for index, bottleneck in enumerate(BOTTLENECKS):
        means = [stats[bottleneck].get(m, {"mean": math.nan})["mean"] for m in PLOTTED]
        stds = [stats[bottleneck].get(m, {"std": 0.0})["std"] for m in PLOTTED]
        axis.bar(positions + (index - 1) * width, means, width, yerr=stds, capsize=3, label=LABELS[bottleneck])
    axis.set_xticks(positions, [METRICS[m] for m in PLOTTED], fontsize=9)
    axis.set_ylim(0, 1)
    axis.set_ylabel("score (mean ± std over seeds)")
    axis.set_title("Latent quality on held-out shapes: AE vs VQ-VAE vs soft VQ-VAE")
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    save_figure(figure, path, dpi=120)


def _plot_latents(latents: dict[str, torch.Tensor], labels: torch.Tensor, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(BOTTLENECKS), figsize=(4.2 * len(BOTTLENECKS), 4.2))
    for axis, bottleneck in zip(axes, BOTTLENECKS):
        points = principal_components(latents[bottleneck]).numpy()
        for index, shape in enumerate(SHAPES):
            members = (labels == index).numpy()
            axis.scatter(points[members, 0], points[members, 1], s=4, alpha=0.6, label=shape, color=plt.cm.tab10(index))
        axis.set_title(f"{LABELS[bottleneck]}: z_e, PCA (seed 0)")
        axis.set_xlabel("PC 1")
        axis.set_ylabel("PC 2")
    axes[-1].legend(markerscale=3, fontsize=8, loc="best")
    save_figure(figure, path)


def _plot_samples(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int = 8) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(len(SHAPES), per_class, figsize=(per_class * 0.8, len(SHAPES) * 0.85))
    for row, shape in enumerate(SHAPES):
        members = (labels == row).nonzero()[:per_class, 0]
        for column in range(per_class):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(members):
                axis.imshow(images[members[column], 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(shape, fontsize=8, loc="left")
    save_figure(figure, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    train_images, train_labels = make_shapes(config.train_samples, TRAIN_DATA_SEED, config.image_size)
    test_images, test_labels = make_shapes(config.test_samples, TEST_DATA_SEED, config.image_size)
    data = {"train_images": train_images, "train_labels": train_labels, "test_images": test_images, "test_labels": test_labels}
    train_config = AutoencoderTrainConfig(config.steps, config.batch_size, config.learning_rate)

    per_seed = {bottleneck: {} for bottleneck in BOTTLENECKS}
    first_latents = {}
    runs = [(seed, bottleneck) for seed in range(config.seeds) for bottleneck in BOTTLENECKS]
    for seed, bottleneck in tqdm(runs, desc="soft-vqvae study"):
        torch.manual_seed(seed)  # the same initial encoder/decoder weights for every bottleneck
        model = ToyAutoencoder(
            bottleneck, config.image_size, config.latent_dim, config.codebook_size, noise_std=config.noise_std, beta=config.beta
        )
        train_autoencoder(model, train_images, train_config, torch.Generator().manual_seed(seed))
        metrics, test_latent = _evaluate(model, data, seed, config.kmeans_restarts)
        for name, value in metrics.items():
            per_seed[bottleneck].setdefault(name, []).append(value)
        if seed == 0:
            first_latents[bottleneck] = test_latent
    wall_seconds = time.perf_counter() - start

    stats = {b: {name: mean_std(values) for name, values in per_seed[b].items()} for b in BOTTLENECKS}
    claim = _claim(per_seed)
    summary = {
        "study": "soft-vqvae",
        "paper": "Wu & Flierl, Vector Quantization-Based Regularization for Autoencoders, AAAI 2020",
        "config": asdict(config),
        "data": {"classes": list(SHAPES), "train_seed": TRAIN_DATA_SEED, "test_seed": TEST_DATA_SEED},
        "latents": {
            "z_e": "encoder latent: the vector the bottleneck quantizes (VQ-VAE: after its 1x1 projection)",
            "z_hat": "hard codeword the decoder sees at inference (VQ bottlenecks only)",
        },
        "std": "sample standard deviation over seeds (ddof = 1)",
        "metrics": stats,
        "per_seed": per_seed,
        "claim_soft_clusters_better_than_vq": claim,
        "wall_seconds": wall_seconds,
    }
    out = Path(args.out)
    write_summary(out, summary, _markdown(config, stats, claim, wall_seconds))
    _plot_metrics(stats, out / "metrics.png")
    _plot_latents(first_latents, test_labels, out / "latents.png")
    _plot_samples(test_images, test_labels, out / "samples.png")
    print(f"soft-vqvae study: wrote {out / 'summary.md'} ({wall_seconds:.0f} s)")
    return 0
