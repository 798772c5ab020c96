"""``dqcodec export-lossless RUN OUT``: a trained DQ-AE as a lossless codec model.

RUN is what ``dqcodec likelihood`` reads (a ``dqcodec train --arch dqae`` run folder or an
exported DQ-AE model) with the logistic-mixture head. The command fits the index prior exactly as
``dqcodec likelihood`` does (the codes of the same ``--fit-images`` training images, the same
fixed subset) and writes ``OUT.safetensors`` + ``OUT.json`` of architecture ``LosslessDQAE``
(:mod:`dqcodec.models.dqae_lossless`): the network, the fitted priors and the integer lookup
tables of the pixel coder. ``dqcodec encode --lossless --model OUT.json`` then codes with it,
and its files are the size of the honest bits/dim that ``dqcodec likelihood`` reports.
"""

import argparse
import re
from pathlib import Path

from dqcodec.codec.errors import DQCodecError


def add_export_lossless_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN",
                        help="a 'dqcodec train --arch dqae' run folder, or an exported DQ-AE model (path, .json optional)")
    parser.add_argument("out", type=Path, metavar="OUT", help="stem of the model files to write (OUT.safetensors, OUT.json)")
    parser.add_argument("--name", default=None, metavar="NAME",
                        help="the model's name, written into its files (default: OUT's file name)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="folder of the training data (default: the run's; the shared data for an exported model)")
    parser.add_argument("--fit-images", type=int, default=8192, metavar="N",
                        help="training images whose codes fit the index prior (the subset 'dqcodec likelihood' uses; "
                             "default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default %(default)s)")


def run_export_lossless(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.eval.likelihood import encode_indices, fit_index_prior
    from dqcodec.models.dqae_lossless import lossless_model
    from dqcodec.models.registry import save_model
    from dqcodec.paths import data_dir
    from dqcodec.train.likelihood_command import SPLITS, load_dqae_run, load_split
    from dqcodec.train.likelihood_data import fixed_subset

    for name in ("fit_images", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise DQCodecError(f"--{name.replace('_', '-')} must be at least 1")
    name = args.name or args.out.name
    if not re.fullmatch(r"[a-z0-9._-]{1,64}", name):
        raise DQCodecError(f"model name {name!r} must be 1-64 characters of [a-z0-9._-] (it is written into every file)")
    torch.set_num_threads(args.threads)
    net, settings = load_dqae_run(args.run)
    if net.config.head != "logistic_mixture":
        raise DQCodecError(f"{args.run} has the {net.config.head} head; lossless coding needs logistic_mixture")
    dataset = settings["dataset"]
    if dataset not in SPLITS:
        raise DQCodecError(f"the run trained on --dataset {dataset}, which has no fixed training split to fit the prior on")
    folder = args.data or Path(settings["data"] or data_dir())
    training = fixed_subset(load_split(dataset, folder, settings["crop"], SPLITS[dataset][0]), args.fit_images)
    priors = fit_index_prior(net, encode_indices(net, training, args.batch_size, desc="encoding training codes"))
    model = lossless_model(net, priors)
    description = (f"lossless DQ-AE from {settings['source']} (step {settings['steps']}); index prior fitted on the codes "
                   f"of {len(training)} {dataset} training images")
    info = {"name": name, "family": "dqae-lossless", "quality": 0, "description": description,
            "training": {"dataset": dataset, "crop": settings["crop"], "steps": settings["steps"],
                         "fit_images": len(training)}}
    try:
        save_model(model, args.out, info)
    except ValueError as error:
        raise DQCodecError(str(error)) from None
    print(f"wrote {args.out}.safetensors and {args.out}.json ({description})")
    return 0
