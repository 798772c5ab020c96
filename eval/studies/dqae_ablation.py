"""``dqcodec study dqae-ablation``: DQ against coupled VQ over codebook size K and count M (DQ paper,
appendix Tables 1-2 and Fig. 5).

For every K in {32, 128, 512}, M in {1, 3, 5, 10}, quantizer (DQ: a projection per codebook;
coupled VQ: M codebooks on one shared projection) and output head (MSE, 256-way cross-entropy), a
one-level DQ-AE with otherwise identical networks, steps and seed is trained on the local 32x32
patch data set (:mod:`dqcodec.eval.studies.dqae_training`) and measured on its held-out patches:

- L2: mean squared error per sub-pixel of the head's mean image, 8-bit code values squared;
- bits/dim, reconstruction term only: -log2 p(x | codes) / dims (the paper's figure);
- honest bits/dim: plus the code indices' bits under the context index prior fitted on the codes
  of training patches (:mod:`dqcodec.eval.likelihood`).

With M = 1 both quantizers are the same (one codebook on one projection, the same parameters
drawn from the same seed), so that cell is trained once and shown in both columns.

The default configuration is small (16-channel networks, short training, 512 held-out
patches) so that it finishes on 2 CPU cores within 30 minutes; ``--full`` is the
paper-sized one for a GPU. Writes ``summary.json``, ``summary.md`` (a table per head) and
``ablation.png`` (L2 and bits/dim against M, one line per K and quantizer; the paper's Fig. 5).
"""

import argparse
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.likelihood import encode_images, encode_indices, fit_index_prior, split_likelihood
from dqcodec.eval.studies.dqae_training import TrainSettings, add_run_options, load_patch_sets, train_dqae
from dqcodec.eval.studies.report import frame_panel, pyplot, save_figure, write_summary
from dqcodec.models.dqae import DQAEConfig, parse_levels
from dqcodec.paths import data_dir

QUANTIZER_NAMES = {"dq": "DQ", "vq": "coupled VQ"}
HEAD_NAMES = {"mse": "MSE head", "categorical": "cross-entropy head"}
MEASURES = {"squared_error": "L2 (MSE, 8-bit values²)", "reconstruction_bits_per_dim": "bits/dim, reconstruction term only",
            "bits_per_dim": "bits/dim, honest (+ index bits)"}


@dataclass
class AblationConfig:
    """The grid, the networks and the training every cell shares; written to summary.json."""

    codebook_sizes: tuple[int, ...] = (32, 128, 512)
    codebook_counts: tuple[int, ...] = (1, 3, 5, 10)
    heads: tuple[str, ...] = ("mse", "categorical")
    code_dim: int = 8
    channels: int = 16
    residual_blocks: int = 1
    residual_channels: int = 8
    mse_steps: int = 300
    categorical_steps: int = 40
    batch_size: int = 16
    crop: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    patch_size: int = 32
    fit_images: int = 512
    test_images: int = 512
    threads: int = 1
    device: str = "cpu"


# The paper-sized configuration (for a GPU: --full --device cuda).
FULL = AblationConfig(code_dim=32, channels=128, residual_blocks=2, residual_channels=32, mse_steps=5000,
                      categorical_steps=5000, batch_size=64, crop=32, learning_rate=2e-4, fit_images=8192, test_images=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AblationConfig()
    parser.add_argument("--full", action="store_true",
                        help="the paper-sized configuration (128-channel networks, 5000 steps of 64 whole patches per "
                             "cell, all test patches): hours on a GPU (--device cuda), not for these CPUs")
    parser.add_argument("--codebook-sizes", default=",".join(map(str, defaults.codebook_sizes)), metavar="K,K,...",
                        help="codebook sizes K of the grid (default %(default)s)")
    parser.add_argument("--codebook-counts", default=",".join(map(str, defaults.codebook_counts)), metavar="M,M,...",
                        help="codebook counts M of the grid (default %(default)s)")
    parser.add_argument("--heads", default=",".join(defaults.heads), metavar="HEAD,...",
                        help="output heads: mse and/or categorical (default %(default)s)")
    parser.add_argument("--mse-steps", type=int, default=None, metavar="N",
                        help=f"training steps of each MSE-head cell (default {defaults.mse_steps}; {FULL.mse_steps} with --full)")
    parser.add_argument("--categorical-steps", type=int, default=None, metavar="N",
                        help=f"training steps of each cross-entropy cell (default {defaults.categorical_steps}; "
                             f"{FULL.categorical_steps} with --full)")
    add_run_options(parser, "dqae-ablation", "the trained cells", defaults.threads, defaults.device)


def _config(args: argparse.Namespace) -> AblationConfig:
    """The configuration the options ask for; DQCodecError (one line) for a bad value."""
    base = FULL if args.full else AblationConfig()
    try:
        sizes, counts = parse_levels(args.codebook_sizes, "--codebook-sizes"), parse_levels(args.codebook_counts, "--codebook-counts")
    except ValueError as error:
        raise DQCodecError(str(error)) from None
    heads = tuple(args.heads.split(","))
    if not heads or any(head not in HEAD_NAMES for head in heads):
        raise DQCodecError(f"--heads must be mse and/or categorical, not {args.heads!r}")
    config = dataclasses.replace(
        base, codebook_sizes=tuple(sizes), codebook_counts=tuple(counts), heads=heads, threads=args.threads, device=args.device,
        mse_steps=base.mse_steps if args.mse_steps is None else args.mse_steps,
        categorical_steps=base.categorical_steps if args.categorical_steps is None else args.categorical_steps,
    )
    if min(config.mse_steps, config.categorical_steps) < 1 or config.threads < 1:
        raise DQCodecError("--mse-steps, --categorical-steps and --threads must be at least 1")
    return config


def cells(config: AblationConfig) -> list[tuple[str, int, int, str]]:
    """(head, K, M, quantizer) of every trained cell (M = 1 once: DQ and coupled VQ coincide there)."""
    return [(head, size, count, quantizer) for head in config.heads for size in config.codebook_sizes
            for count in config.codebook_counts for quantizer in (("dq",) if count == 1 else ("dq", "vq"))]


def measure_cell(config: AblationConfig, patches, head: str, size: int, count: int, quantizer: str, work: Path) -> dict:
    """Train one cell (or reuse its finished run) and measure it on the held-out patches.

    The measurement is kept in the run folder (``measured.json``) and reused by a later run of
    the study on the same patches, so that a study split over processes (e.g. ``--heads mse``
    and ``--heads categorical`` side by side) is gathered by one more run at no cost.
    """
    run = work / f"{head}-{quantizer}-K{size}-M{count}"
    measured = {"fit_images": len(patches.fit), "test_images": len(patches.test)}
    if (run / "measured.json").is_file():
        kept = json.loads((run / "measured.json").read_text())
        if kept["patches"] == measured:
            return kept["cell"]
    started = time.perf_counter()
    network = DQAEConfig(codebook_sizes=str(size), codebook_counts=str(count), code_dim=config.code_dim, quantizer=quantizer,
                         channels=config.channels, residual_blocks=config.residual_blocks,
                         residual_channels=config.residual_channels, head=head)
    steps = config.mse_steps if head == "mse" else config.categorical_steps
    settings = TrainSettings(steps, config.batch_size, config.crop, config.learning_rate, config.seed, config.threads, config.device)
    net, seconds = train_dqae(network, patches, settings, run)
    priors = fit_index_prior(net, encode_indices(net, patches.fit, desc="encoding fit patches"))
    test = split_likelihood(priors, encode_images(net, patches.test, desc="encoding test patches"))
    cell = {"head": head, "K": size, "M": count, "quantizer": quantizer, "steps": steps, "training_seconds": round(seconds, 1),
            # training (when this run did it) and measuring
            "cell_seconds": round(time.perf_counter() - started, 1), **test.as_dict()}
    (run / "measured.json").write_text(json.dumps({"patches": measured, "cell": cell}) + "\n")
    return cell


def table(results: list[dict]) -> dict:
    """head -> K -> M -> quantizer -> measured cell (the M = 1 cell under both quantizers)."""
    grid: dict = {}
    for cell in results:
        for quantizer in (("dq", "vq") if cell["M"] == 1 else (cell["quantizer"],)):
            grid.setdefault(cell["head"], {}).setdefault(cell["K"], {}).setdefault(cell["M"], {})[quantizer] = cell
    return grid


def claims(grid: dict) -> dict:
    """The paper's claim, per head and measure: DQ below coupled VQ at every M >= 3 of the grid."""
    verdicts = {}
    for head, by_size in grid.items():
        for measure in MEASURES:
            compared = [(size, count, pair["dq"][measure], pair["vq"][measure])
                        for size, by_count in by_size.items() for count, pair in by_count.items() if count >= 3]
            below = [cell for cell in compared if cell[2] < cell[3]]
            verdicts[f"{head}/{measure}"] = {
                "dq_below_vq": len(below), "cells": len(compared), "holds": bool(compared) and len(below) == len(compared),
                "exceptions": [{"K": k, "M": m, "dq": dq, "vq": vq} for k, m, dq, vq in compared if dq >= vq],
            }
    return verdicts


def _markdown(config: AblationConfig, results: list[dict], grid: dict, verdicts: dict, patches_info: dict,
              wall_seconds: float) -> str:
    steps = {"mse": f"MSE head {config.mse_steps} steps", "categorical": f"cross-entropy head {config.categorical_steps} steps"}
    # A cell trained or measured by an earlier run of the study is reused; its own times are what it cost.
    training = sum(cell["training_seconds"] for cell in results) / 60
    lines = [
        "# DQ-AE ablation: DQ vs coupled VQ over K and M (DQ paper, appendix Tables 1-2, Fig. 5)",
        "",
        f"One-level DQ-AE (stride 4: 8x8 codes per 32x32 patch), {config.channels} channels, {config.residual_blocks} "
        f"residual block(s) of {config.residual_channels}, D = {config.code_dim}; trained on {patches_info['data']} "
        f"({patches_info['train_images']} training patches; random {config.crop} px crops, batches of {config.batch_size}, "
        f"Adam {config.learning_rate}, seed {config.seed}); {', '.join(steps[head] for head in config.heads)} per cell; "
        f"{config.device}, {config.threads} torch thread(s) per process; summed over the {len(results)} trained cells "
        f"{training:.1f} min of training (this run of the study: "
        f"{wall_seconds / 60:.1f} min wall, reusing the cells already in its --work folder).",
        "",
        f"Measured on {patches_info['test_images']} held-out test-split patches (whole 32x32). L2 = MSE per sub-pixel "
        "in 8-bit values²; bits/dim \"recon.\" = -log2 p(x | codes) / dims, the reconstruction term only (the paper's "
        "figure); \"honest\" adds the code indices' bits under the context index prior fitted on the codes of "
        f"{patches_info['fit_images']} training patches. M = 1: DQ and coupled VQ are the same quantizer (trained once).",
    ]
    for head, by_size in grid.items():
        lines += ["", f"## {HEAD_NAMES[head]}", "",
                  "| K | M | L2 DQ | L2 VQ | recon. bits/dim DQ | recon. VQ | honest bits/dim DQ | honest VQ |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for size, by_count in by_size.items():
            for count, pair in by_count.items():
                dq, vq = pair["dq"], pair["vq"]
                lines.append(f"| {size} | {count} | {dq['squared_error']:.1f} | {vq['squared_error']:.1f} | "
                             f"{dq['reconstruction_bits_per_dim']:.3f} | {vq['reconstruction_bits_per_dim']:.3f} | "
                             f"{dq['bits_per_dim']:.3f} | {vq['bits_per_dim']:.3f} |")
    lines += ["", "## The paper's claim: DQ below coupled VQ in L2 and bits/dim at every M >= 3", ""]
    for key, verdict in verdicts.items():
        head, measure = key.split("/")
        state = "holds" if verdict["holds"] else "does not hold"
        lines.append(f"- {HEAD_NAMES[head]}, {MEASURES[measure]}: **{state}** (DQ below VQ in {verdict['dq_below_vq']} of "
                     f"{verdict['cells']} cells)")
    return "\n".join(lines)


def _plot(grid: dict, path: Path) -> None:
    plt = pyplot()
    heads = list(grid)
    figure, axes = plt.subplots(len(heads), len(MEASURES), figsize=(4.6 * len(MEASURES), 3.8 * len(heads)), squeeze=False)
    for row, head in enumerate(heads):
        for column, (measure, title) in enumerate(MEASURES.items()):
            axis = axes[row, column]
            for index, (size, by_count) in enumerate(grid[head].items()):
                counts = list(by_count)
                for quantizer, style in (("dq", "-o"), ("vq", "--s")):
                    axis.plot(counts, [by_count[m][quantizer][measure] for m in counts], style, color=plt.cm.tab10(index),
                              label=f"{QUANTIZER_NAMES[quantizer]}, K={size}")
            axis.set_xticks(counts)
            frame_panel(axis, "codebooks M", title, f"{HEAD_NAMES[head]}: {title}", legend_size=7)
    save_figure(figure, path)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    patches = load_patch_sets(args.data or data_dir(), config.patch_size, config.fit_images, config.test_images)
    results = run_cells(config, patches, args.work)
    wall_seconds = time.perf_counter() - started
    write_report(config, results, patches.describe(), wall_seconds, Path(args.out))
    print(f"dqae-ablation study: wrote {Path(args.out) / 'summary.md'} ({wall_seconds / 60:.1f} min)")
    return 0


def run_cells(config: AblationConfig, patches, work: Path) -> list[dict]:
    """Every cell of the grid, trained (or reused from ``work``) and measured."""
    return [measure_cell(config, patches, *cell, work) for cell in tqdm(cells(config), desc="dqae-ablation cells", unit="cell")]


def write_report(config: AblationConfig, results: list[dict], patches_info: dict, wall_seconds: float, out: Path) -> None:
    grid = table(results)
    verdicts = claims(grid)
    summary = {"study": "dqae-ablation", "paper": "Depthwise Quantization (DQ-AE), appendix Tables 1-2 and Fig. 5",
               "config": asdict(config), "data": patches_info, "measures": MEASURES, "cells": results,
               "claim_dq_below_coupled_vq_at_m_ge_3": verdicts, "wall_seconds": round(wall_seconds, 1)}
    write_summary(out, summary, _markdown(config, results, grid, verdicts, patches_info, wall_seconds))
    _plot(grid, out / "ablation.png")
