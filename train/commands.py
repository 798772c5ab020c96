"""``dqcodec train`` and ``dqcodec train-shvq``: train (or resume) a DQ or SHVQ codec checkpoint
and export it as a shipped model."""

import argparse
import json
import platform
import time
from pathlib import Path

from dqcodec.codec.errors import DQCodecError


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example: dqcodec train --out runs/dq-q2 --lambda 0.01 --steps 0 --export dq-q2 --quality 2\n"
        "Re-running the same command resumes from runs/dq-q2/state.* (weights, Adam, RNG)."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, required=True, help="run folder for the resumable state")
    parser.add_argument("--lambda", dest="rate_lambda", type=float, required=True,
                        help="rate-distortion trade-off: squared error (pixel values in [0,1], summed) per bit; "
                        "smaller means more bits and higher quality")
    parser.add_argument("--data", type=Path, default=None, help="folder of training images (default: BSDS500)")
    parser.add_argument("--block", type=int, default=8, help="block size P (default 8)")
    parser.add_argument("--codebooks", type=int, default=192, help="number of codebooks M (default 192)")
    parser.add_argument("--codebook-size", type=int, default=64, help="codes per codebook K (default 64)")
    parser.add_argument("--code-dim", type=int, default=1, help="dimension D of each codebook's slice (default 1)")
    parser.add_argument("--predicted-codebooks", type=int, default=3,
                        help="first codebooks coded with neighbour-predicted (DPCM-like) contexts (default 3)")
    parser.add_argument("--postfilter", type=int, default=0, help="channels of the residual post-filter CNN (0: none)")
    parser.add_argument("--init-samples", type=int, default=60_000, help="latent blocks for the ECVQ initialisation")
    parser.add_argument("--ecvq-iterations", type=int, default=15, help="entropy-constrained Lloyd iterations")
    parser.add_argument("--steps", type=int, default=0, help="Adam fine-tuning steps in total (default 0)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128, help="training crop size in pixels")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from an exported model (path without extension) with a fresh optimizer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    _add_export_arguments(parser, "dq")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.models.codec_net import CodecConfig
    from dqcodec.train.data import default_train_dir
    from dqcodec.train.loop import TrainConfig, export, train

    if args.export and args.quality is None:
        raise DQCodecError("--export needs --quality")
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        out=args.out,
        codec=CodecConfig(
            block=args.block,
            num_codebooks=args.codebooks,
            codebook_size=args.codebook_size,
            code_dim=args.code_dim,
            rate_lambda=args.rate_lambda,
            postfilter_channels=args.postfilter,
            predicted_codebooks=args.predicted_codebooks,
        ),
        data=args.data or default_train_dir(),
        init_from=args.init_from,
        init_samples=args.init_samples,
        ecvq_iterations=args.ecvq_iterations,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        learning_rate=args.lr,
        seed=args.seed,
    )
    if not config.data.is_dir():
        raise DQCodecError(f"training data folder not found: {config.data}")
    started = time.time()
    net = train(config)
    if args.export:
        description = f"DQ block codec, M={args.codebooks} K={args.codebook_size} D={args.code_dim}, lambda={args.rate_lambda}"
        export_and_measure(args, description, lambda stem, info: export(net, config, stem, info), started)
    return 0


def add_train_shvq_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "example: dqcodec train-shvq --out runs/shvq-q2 --lambda 0.006 --steps 300 --export shvq-q2 --quality 2\n"
        "Stage 1 is the block PCA (the unquantized linear autoencoder's optimum); stage 2 trains the soft-to-hard\n"
        "quantizer with the soft entropy term. Re-running the same command resumes from runs/shvq-q2/state.*."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, required=True, help="run folder for the resumable state")
    parser.add_argument("--lambda", dest="rate_lambda", type=float, required=True,
                        help="rate-distortion trade-off: squared error (pixel values in [0,1], summed) per bit; "
                        "smaller means more bits and higher quality")
    parser.add_argument("--data", type=Path, default=None, help="folder of training images (default: BSDS500)")
    parser.add_argument("--block", type=int, default=8, help="block size P (default 8)")
    parser.add_argument("--centres", type=int, default=128, help="centres L shared by all channels (default 128)")
    parser.add_argument("--predicted-codebooks", type=int, default=3,
                        help="first channels coded with neighbour-predicted (DPCM-like) contexts (default 3)")
    parser.add_argument("--kmeans-blocks", type=int, default=20_000, help="training blocks for the k-means centres")
    parser.add_argument("--kmeans-iterations", type=int, default=10, help="k-means iterations from the uniform grid")
    parser.add_argument("--steps", type=int, default=1000, help="soft-to-hard Adam steps in total (default 1000)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64, help="training crop size in pixels (default 64)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--sigma-start", type=float, default=2.0, help="soft assignment hardness at the first step")
    parser.add_argument("--sigma-end", type=float, default=200.0, help="hardness at the last step (geometric schedule)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start stage 2 from an exported SHVQ model (path without extension), fresh optimizer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    _add_export_arguments(parser, "shvq")


def run_train_shvq(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.models.shvq_codec import SHVQCodecConfig
    from dqcodec.train.data import default_train_dir
    from dqcodec.train.shvq import SHVQTrainConfig, export, train

    if args.export and args.quality is None:
        raise DQCodecError("--export needs --quality")
    if args.rate_lambda <= 0 or args.centres < 2 or args.steps < 0:
        raise DQCodecError("--lambda must be positive, --centres at least 2 and --steps not negative")
    torch.set_num_threads(args.threads)
    config = SHVQTrainConfig(
        out=args.out,
        codec=SHVQCodecConfig(
            block=args.block,
            num_centres=args.centres,
            rate_lambda=args.rate_lambda,
            predicted_codebooks=args.predicted_codebooks,
        ),
        data=args.data or default_train_dir(),
        init_from=args.init_from,
        kmeans_blocks=args.kmeans_blocks,
        kmeans_iterations=args.kmeans_iterations,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        learning_rate=args.lr,
        sigma_start=args.sigma_start,
        sigma_end=args.sigma_end,
        seed=args.seed,
    )
    if not config.data.is_dir():
        raise DQCodecError(f"training data folder not found: {config.data}")
    started = time.time()
    net = train(config)
    if args.export:
        description = f"SHVQ block codec, L={args.centres} shared centres, 1x1 patches, lambda={args.rate_lambda}"
        export_and_measure(args, description, lambda stem, info: export(net, config, stem, info), started)
    return 0


def export_and_measure(args: argparse.Namespace, description: str, export, started: float) -> None:
    """Export as model ``args.export`` (``export(stem, info)``), then write the run time and the
    measured Kodak figures into its JSON."""
    import torch

    from dqcodec.models.registry import WEIGHTS_DIR

    info = {
        "name": args.export,
        "family": args.family,
        "quality": args.quality,
        "description": description,
        "training": {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"},
    }
    stem = (args.weights_dir or WEIGHTS_DIR) / args.export
    export(stem, info)
    model = json.loads(Path(f"{stem}.json").read_text())
    model["training"]["minutes_this_run"] = round((time.time() - started) / 60, 1)
    if args.measure_images > 0:
        figures = measure_on_kodak(stem, args.measure_images)
        model["kodak"] = figures
        print(f"{args.export}: Kodak {figures['bpp']:.4f} bpp, {figures['psnr']:.2f} dB PSNR, "
              f"MS-SSIM {figures['ms_ssim']:.4f} ({figures['images']} images, real files)")
    Path(f"{stem}.json").write_text(json.dumps(model, indent=2) + "\n")


def _add_export_arguments(parser: argparse.ArgumentParser, family: str) -> None:
    parser.add_argument("--export", metavar="NAME", default=None,
                        help="export the result as shipped model NAME and measure it on Kodak")
    parser.add_argument("--family", default=family, help=f"model family for --export (default {family})")
    parser.add_argument("--quality", type=int, default=None, help="quality level for --export")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where --export writes NAME.safetensors/.json (default: the package's shipped models)")
    parser.add_argument("--measure-images", type=int, default=24,
                        help="Kodak images to measure the exported model on (default 24, all; 0 skips)")


def measure_on_kodak(stem: Path, count: int = 24) -> dict:
    """Mean bpp (real file bytes), PSNR-RGB and MS-SSIM of checkpoint ``stem`` on Kodak."""
    from dqcodec.eval.ours import our_codec
    from dqcodec.eval.rd import load_images, sweep
    from dqcodec.paths import kodak_dir

    images = load_images(kodak_dir(), count)
    results = sweep(our_codec(f"{stem}.json"), images)["results"]
    return {
        "images": len(images),
        "bpp": results["bpp"][0],
        "psnr": results["psnr-rgb"][0],
        "ms_ssim": results["ms-ssim-rgb"][0],
    }
