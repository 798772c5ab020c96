"""``dqcodec study dqae-codes``: how DQ and coupled VQ use their codebooks (DQ paper, Figs. 3 and 4).

Two 2-level DQ-AEs, identical but for the quantizer (DQ: a projection per codebook; coupled VQ:
M codebooks on one shared projection), same steps and seed, are trained on the local 32x32 patch
data set (:mod:`dqcodec.eval.studies.dqae_training`). On the held-out patches, per level
(:mod:`dqcodec.eval.code_statistics`, nats):

- the entropy of each codebook's code at each position over the images (Fig. 3, top panels),
  its mean over codebooks and positions, and each codebook's pooled entropy;
- the mutual information I(q_i; q_j) between codebooks at the same position (Fig. 3, bottom
  panels) and its mean over the pairs i != j;
- reconstructions from the top level only and from the bottom level only (the other level's
  quantized representation zeroed before the joint decoder; Fig. 4), and their L2 beside the
  full reconstruction's.

The paper's reading: DQ codes have higher entropy (the codebooks are used) and lower mutual
information (the codebooks carry different information) than coupled VQ's. Writes
``summary.json``, ``summary.md``, ``codes.png`` (entropy maps and MI matrices, both levels) and
``reconstructions.png``.
"""

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.code_statistics import mean_off_diagonal, mutual_information, position_entropy
from dqcodec.eval.likelihood import encode_images, to_batch
from dqcodec.eval.studies.dqae_training import TrainSettings, add_run_options, load_patch_sets, train_dqae
from dqcodec.eval.studies.report import pyplot, save_figure, write_summary
from dqcodec.models.dqae import DQAE, DQAEConfig
from dqcodec.paths import data_dir

QUANTIZER_NAMES = {"dq": "DQ", "vq": "coupled VQ"}
LEVEL_NAMES = ("bottom", "top")


@dataclass
class CodesConfig:
    """The two models and their training; written to summary.json."""

    codebook_sizes: str = "64,64"
    codebook_counts: str = "8,4"
    code_dim: int = 8
    channels: int = 32
    residual_blocks: int = 1
    residual_channels: int = 16
    head: str = "mse"
    steps: int = 600
    batch_size: int = 16
    crop: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    patch_size: int = 32
    test_images: int = 0  # 0: every test-split patch (MI needs many samples per K x K histogram)
    threads: int = 1
    device: str = "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CodesConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps of each model (default %(default)s)")
    parser.add_argument("--codebook-sizes", default=defaults.codebook_sizes, metavar="K,K",
                        help="K of the bottom and top level (default %(default)s)")
    parser.add_argument("--codebook-counts", default=defaults.codebook_counts, metavar="M,M",
                        help="M of the bottom and top level (default %(default)s)")
    add_run_options(parser, "dqae-codes", "the two models", defaults.threads, defaults.device)


def _config(args: argparse.Namespace) -> CodesConfig:
    config = CodesConfig(codebook_sizes=args.codebook_sizes, codebook_counts=args.codebook_counts, steps=args.steps,
                         threads=args.threads, device=args.device)
    if config.steps < 1 or config.threads < 1:
        raise DQCodecError("--steps and --threads must be at least 1")
    try:
        levels = _network(config, "dq").levels
    except ValueError as error:
        raise DQCodecError(str(error)) from None
    if len(levels) != 2:
        raise DQCodecError(f"--codebook-sizes and --codebook-counts must give 2 levels (bottom,top), not {len(levels)}")
    return config


def _network(config: CodesConfig, quantizer: str) -> DQAEConfig:
    return DQAEConfig(codebook_sizes=config.codebook_sizes, codebook_counts=config.codebook_counts, code_dim=config.code_dim,
                      quantizer=quantizer, channels=config.channels, residual_blocks=config.residual_blocks,
                      residual_channels=config.residual_channels, head=config.head)


def level_statistics(indices: np.ndarray, codebook_size: int) -> dict:
    """Entropy and mutual information of one level's (N, M, h, w) indices, in nats."""
    per_position = position_entropy(indices, codebook_size)
    information = mutual_information(indices, codebook_size)
    return {"position_entropy": per_position.tolist(), "mean_position_entropy": float(per_position.mean()),
            "codebook_entropy": np.diag(information).tolist(), "mean_codebook_entropy": float(np.diag(information).mean()),
            "max_entropy": float(np.log(codebook_size)), "mutual_information": information.tolist(),
            "mean_mutual_information": mean_off_diagonal(information), "samples_per_histogram": int(indices.size // indices.shape[1])}


@torch.no_grad()
def partial_reconstructions(net: DQAE, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """(N, S, S, 3) uint8 -> {"full", "top only", "bottom only"}: (N, 3, S, S) head-mean images in [0, 1]."""
    parts = {"full": None, "top only": (net.num_levels - 1,), "bottom only": (0,)}
    out = {name: [] for name in parts}
    for start in range(0, len(images), batch_size):
        indices = net.encode(to_batch(images[start : start + batch_size]))
        for name, levels in parts.items():
            out[name].append(net.head.mean(net.head_parameters(indices, levels)).clamp(0, 1).numpy())
    return {name: np.concatenate(batches) for name, batches in out.items()}


def measure_model(net: DQAE, test: np.ndarray) -> dict:
    """Code statistics of every level and the L2 of the full / top-only / bottom-only reconstructions."""
    encoded = encode_images(net, test, desc="encoding test patches")
    levels = {LEVEL_NAMES[level]: level_statistics(indices, net.quantizers[level].codebook_size)
              for level, indices in enumerate(encoded.indices)}
    truth = test.transpose(0, 3, 1, 2).astype(np.float64)
    errors = {name: float(((images * 255 - truth) ** 2).mean()) for name, images in partial_reconstructions(net, test).items()}
    return {"levels": levels, "squared_error": errors}


def _markdown(config: CodesConfig, results: dict, patches_info: dict, wall_seconds: float) -> str:
    lines = [
        "# DQ-AE code analysis: entropy and mutual information of the codes (DQ paper, Figs. 3-4)",
        "",
        f"2-level DQ-AE, K = [{config.codebook_sizes}], M = [{config.codebook_counts}] (bottom, top), D = {config.code_dim}, "
        f"{config.channels} channels, {config.head} head; DQ and coupled VQ with identical networks, {config.steps} steps of "
        f"{config.batch_size} random {config.crop} px crops, Adam {config.learning_rate}, seed {config.seed}; trained on "
        f"{patches_info['data']}; {config.device}, {config.threads} torch thread(s), {wall_seconds / 60:.1f} min wall.",
        "",
        f"Measured on {patches_info['test_images']} held-out test-split patches, in nats (plug-in estimates). Position "
        "entropy: of a codebook's code at one position over the images, mean over codebooks and positions. Codebook "
        "entropy: pooled over positions (the MI matrix's diagonal). MI: I(q_i; q_j) at the same position, mean over "
        "pairs i != j. L2: MSE per sub-pixel in 8-bit values².",
        "",
        "| quantizer | level | mean position entropy | mean codebook entropy (max ln K) | mean MI | training |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for quantizer, result in results.items():
        for level, stats in result["levels"].items():
            lines.append(f"| {QUANTIZER_NAMES[quantizer]} | {level} | {stats['mean_position_entropy']:.3f} | "
                         f"{stats['mean_codebook_entropy']:.3f} ({stats['max_entropy']:.3f}) | "
                         f"{stats['mean_mutual_information']:.3f} | {result['training_seconds'] / 60:.1f} min |")
    lines += ["", "| quantizer | L2 full | L2 top only | L2 bottom only |", "| --- | ---: | ---: | ---: |"]
    for quantizer, result in results.items():
        errors = result["squared_error"]
        lines.append(f"| {QUANTIZER_NAMES[quantizer]} | {errors['full']:.1f} | {errors['top only']:.1f} | "
                     f"{errors['bottom only']:.1f} |")
    lines += ["", "## The paper's reading: DQ codes have higher entropy and lower mutual information than VQ's", ""]
    for level in LEVEL_NAMES:
        dq, vq = results["dq"]["levels"][level], results["vq"]["levels"][level]
        higher = dq["mean_position_entropy"] > vq["mean_position_entropy"]
        lower = dq["mean_mutual_information"] < vq["mean_mutual_information"]
        lines.append(f"- {level} level: entropy DQ {dq['mean_position_entropy']:.3f} vs VQ {vq['mean_position_entropy']:.3f} "
                     f"nats (**{'held' if higher else 'did not hold'}**); mean MI DQ {dq['mean_mutual_information']:.3f} vs "
                     f"VQ {vq['mean_mutual_information']:.3f} nats (**{'held' if lower else 'did not hold'}**)")
    return "\n".join(lines)


def _plot_codes(results: dict, path: Path) -> None:
    """Per level: the two quantizers' entropy maps (codebooks x positions) and MI matrices."""
    plt = pyplot()
    figure, axes = plt.subplots(len(LEVEL_NAMES), 4, figsize=(17, 3.9 * len(LEVEL_NAMES)), squeeze=False)
    for row, level in enumerate(LEVEL_NAMES):
        stats = {quantizer: result["levels"][level] for quantizer, result in results.items()}
        entropy_top = max(s["max_entropy"] for s in stats.values())
        mi_top = max(max(max(r) for r in s["mutual_information"]) for s in stats.values())
        for column, quantizer in enumerate(stats):
            maps = np.asarray(stats[quantizer]["position_entropy"])
            image = axes[row, column].imshow(maps.reshape(len(maps), -1), aspect="auto", vmin=0, vmax=entropy_top, cmap="viridis")
            axes[row, column].set_title(f"{QUANTIZER_NAMES[quantizer]}, {level}: entropy per position (nats)", fontsize=9)
            axes[row, column].set_xlabel("position (row-major)")
            axes[row, column].set_ylabel("codebook")
            figure.colorbar(image, ax=axes[row, column])
            matrix = axes[row, column + 2].imshow(np.asarray(stats[quantizer]["mutual_information"]), vmin=0, vmax=mi_top,
                                                  cmap="magma")
            axes[row, column + 2].set_title(f"{QUANTIZER_NAMES[quantizer]}, {level}: MI between codebooks (nats)", fontsize=9)
            axes[row, column + 2].set_xlabel("codebook j")
            axes[row, column + 2].set_ylabel("codebook i")
            figure.colorbar(matrix, ax=axes[row, column + 2])
    save_figure(figure, path)


def _plot_reconstructions(pictures: dict, path: Path) -> None:
    """Rows: the shown test patches, then each quantizer's full / top-only / bottom-only reconstructions."""
    plt = pyplot()
    count = len(pictures["original"])
    rows = [("original", None, pictures["original"] / 255)]
    for quantizer, parts in ((q, pictures[q]) for q in QUANTIZER_NAMES):
        rows += [(f"{QUANTIZER_NAMES[quantizer]}: {name}", quantizer, images[:count].transpose(0, 2, 3, 1))
                 for name, images in parts.items()]
    figure, axes = plt.subplots(len(rows), count, figsize=(1.3 * count, 1.45 * len(rows)), squeeze=False)
    for row, (title, _, images) in enumerate(rows):
        for column in range(count):
            axes[row, column].imshow(images[column], interpolation="nearest")
            axes[row, column].axis("off")
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    save_figure(figure, path, dpi=100)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    patches = load_patch_sets(args.data or data_dir(), config.patch_size, 0, config.test_images)
    results, pictures = analyse(config, patches, args.work)
    wall_seconds = time.perf_counter() - started
    info = {**patches.describe(), "fit_images": None}
    summary = {"study": "dqae-codes", "paper": "Depthwise Quantization (DQ-AE), Figs. 3 and 4", "config": asdict(config),
               "data": info, "units": "nats", "models": results, "wall_seconds": round(wall_seconds, 1)}
    out = Path(args.out)
    write_summary(out, summary, _markdown(config, results, info, wall_seconds))
    _plot_codes(results, out / "codes.png")
    _plot_reconstructions(pictures, out / "reconstructions.png")
    print(f"dqae-codes study: wrote {out / 'summary.md'} ({wall_seconds / 60:.1f} min)")
    return 0


def analyse(config: CodesConfig, patches, work: Path) -> tuple[dict, dict]:
    """({quantizer: measurements}, {"original": 8 test patches (8, S, S, 3) uint8, quantizer: their full and
    partial reconstructions}) of the two trained models."""
    settings = TrainSettings(config.steps, config.batch_size, config.crop, config.learning_rate, config.seed, config.threads,
                             config.device)
    shown = patches.test[np.linspace(0, len(patches.test) - 1, 8).round().astype(int)]  # spread over the test images
    results, pictures = {}, {}
    for quantizer in QUANTIZER_NAMES:
        net, seconds = train_dqae(_network(config, quantizer), patches, settings, work / quantizer)
        results[quantizer] = {"training_seconds": round(seconds, 1), **measure_model(net, patches.test)}
        pictures[quantizer] = partial_reconstructions(net, shown)
    return results, {"original": shown, **pictures}
