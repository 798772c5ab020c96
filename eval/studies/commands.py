"""``dqcodec study NAME``: the papers' own studies, reproduced, one module each.

Every study module has ``add_arguments(parser)`` and ``run(args) -> int`` and writes, under
its ``--out`` folder (default ``results/<name>``), ``summary.json``, ``summary.md`` (the
markdown table) and PNG plots, through :mod:`dqcodec.eval.studies.report`.
"""

import argparse
import importlib
from pathlib import Path

# name -> (module, one-line summary)
STUDIES = {
    "static-prior": (
        "dqcodec.eval.studies.static_prior",
        "DVQ paper: VQ loss vs D and DVQ vs VQ, coupled DQ and SVQ on Gaussian-blob data with N_G latent factors",
    ),
    "channel-density": (
        "dqcodec.eval.studies.channel_density",
        "DQ paper, Table 2: DQ along channels vs along space on our codec's encoder features",
    ),
    "soft-vqvae": (
        "dqcodec.eval.studies.soft_vqvae",
        "soft VQ-VAE paper: AE / VQ-VAE / soft VQ-VAE latents, clustering accuracy, NMI, linear probe",
    ),
    "dqae-ablation": (
        "dqcodec.eval.studies.dqae_ablation",
        "DQ paper, appendix Tables 1-2 / Fig. 5: DQ vs coupled VQ over K x M, L2 and bits/dim on the local 32 px patches",
    ),
    "dqae-codes": (
        "dqcodec.eval.studies.dqae_codes",
        "DQ paper, Figs. 3-4: code entropy and mutual information between codebooks (DQ vs VQ), top/bottom-only decoding",
    ),
    "lossless": (
        "dqcodec.eval.studies.lossless",
        "lossless .dqc files of a DQ-AE: file size vs evaluated bits/dim, vs PNG, WebP and JPEG XL lossless, seconds",
    ),
}


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    studies = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, (module_name, summary) in STUDIES.items():
        sub = studies.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.add_argument(
            "--out", type=Path, default=Path("results") / name, metavar="DIR",
            help=f"folder for summary.json, summary.md and plots (default: results/{name})",
        )
        importlib.import_module(module_name).add_arguments(sub)


def run_study(args: argparse.Namespace) -> int:
    module_name, _ = STUDIES[args.study]
    return int(importlib.import_module(module_name).run(args) or 0)
