"""``dqcodec study NAME``: the papers' own studies, reproduced, one module each.

Every study module has ``add_arguments(parser)`` and ``run(args) -> int`` and writes, under
its ``--out`` folder (default ``results/<name>``), ``summary.json``, ``summary.md`` (the
markdown table) and PNG plots, through :func:`write_summary`.
"""

import argparse
import importlib
import json
from pathlib import Path

# name -> (module, one-line summary)
STUDIES = {
    "static-prior": (
        "dqcodec.eval.study_static_prior",
        "DVQ paper: VQ loss vs D and DVQ vs VQ on Gaussian-blob data with N_G latent factors",
    ),
    "channel-density": (
        "dqcodec.eval.study_channel_density",
        "DQ paper, Table 2: DQ along channels vs along space on our codec's encoder features",
    ),
    "soft-vqvae": (
        "dqcodec.eval.study_soft_vqvae",
        "soft VQ-VAE paper: AE / VQ-VAE / soft VQ-VAE latents, clustering accuracy, NMI, linear probe",
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


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported only when a study plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, dpi: int = 110) -> None:
    """Lay out ``figure``, write it to ``path`` (PNG) and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)


def write_summary(out: Path, summary: dict, markdown: str) -> None:
    """Write ``out/summary.json`` and ``out/summary.md`` (creating ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown.rstrip() + "\n")
