"""The ``dqcodec`` command: one argparse sub-command per task.

Each sub-command lives in the module that owns its work; this file only knows the names, a
one-line summary, and where to find ``add_<fn>_arguments(parser)`` and ``run_<fn>(args) -> int``.
A module is imported only when its sub-command runs (or its ``--help`` is asked for), so
``dqcodec decode`` does not pay for importing the training or evaluation code.
"""

import argparse
import importlib
import sys

from dqcodec.codec.errors import DQCodecError, output_error

# name -> (module, function stem, summary)
COMMANDS = {
    "encode": ("dqcodec.codec.commands", "encode", "compress images to .dqc files"),
    "decode": ("dqcodec.codec.commands", "decode", "decompress a .dqc file to PNG (or the format OUT names)"),
    "info": ("dqcodec.codec.commands", "info", "show what a .dqc file holds: model, size, bpp, bits"),
    "models": ("dqcodec.codec.commands", "models", "list the shipped models with their Kodak bpp / PSNR"),
    "fuzz": ("dqcodec.codec.fuzz", "fuzz", "feed mutated .dqc files to decode and info; count what happens"),
    "train": ("dqcodec.train.commands", "train", "train a codec checkpoint of any architecture (--arch, resumable) and export it"),
    "train-shvq": ("dqcodec.train.commands", "train_shvq", "alias of 'train --arch shvq'"),
    "fit-tables": ("dqcodec.train.fit_tables", "fit_tables",
                   "count trained hdq models' context tables anew (more crops, the current contexts); networks unchanged"),
    "tune-synthesis": ("dqcodec.train.tune_synthesis", "tune_synthesis",
                       "tune a trained hdq family's synthesis to the codes its encoder sends; rates stay"),
    "plot-training": ("dqcodec.train.training_log", "plot_training", "plot a training run's loss, bpp and PSNR against steps and wall time"),
    "eval": ("dqcodec.eval.commands", "eval", "rate-distortion sweep of codecs on an image folder"),
    "bdrate": ("dqcodec.eval.commands", "bdrate", "Bjontegaard delta rate of RD curves against an anchor"),
    "plot": ("dqcodec.eval.commands", "plot", "plot RD curves (PSNR and MS-SSIM vs bpp)"),
    "compare": ("dqcodec.eval.commands", "compare", "side-by-side crops of ours, JPEG and HEVC at matched bpp"),
    "bench": ("dqcodec.eval.commands", "bench", "encode/decode speed on Kodak next to compressai's hyperprior"),
    "content": ("dqcodec.eval.commands", "content", "flat colours, saturated photos and synthetic images through each model"),
    "likelihood": ("dqcodec.train.likelihood_command", "likelihood",
                   "bits/dim of a DQ-AE run or model: reconstruction term only, index bits, honest total"),
    "export-lossless": ("dqcodec.train.lossless_export", "export_lossless",
                        "make a lossless codec model of a trained DQ-AE (logistic-mixture head) for 'encode --lossless'"),
    "study": ("dqcodec.eval.studies.commands", "study",
              "reproduce a paper's study (static-prior, channel-density, soft-vqvae, dqae-ablation, dqae-codes)"),
}


def _build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dqcodec",
        description="dqcodec: a learned vector-quantized image codec. "
        "Run 'dqcodec COMMAND --help' for the options of one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, stem, summary) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if name == selected:
            module = importlib.import_module(module_name)
            getattr(module, f"add_{stem}_arguments")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dqcodec`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = _build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    module_name, stem, _ = COMMANDS[args.command]
    try:
        module = importlib.import_module(module_name)
        status = int(getattr(module, f"run_{stem}")(args) or 0)
        try:
            sys.stdout.flush()  # here, not at exit, so that a failed write is reported as one line
        except OSError as error:
            raise output_error(error) from None
        return status
    except BrokenPipeError as error:  # any command printing to a reader that stopped early
        print(f"dqcodec: error: {output_error(error)}", file=sys.stderr)
        return 2
    except DQCodecError as error:
        print(f"dqcodec: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dqcodec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
