"""``dqcodec likelihood RUN``: bits/dim of a DQ-AE, reconstruction term only and honest.

RUN is a training run folder of ``dqcodec train --arch dqae`` (its ``run.json`` and latest
``state.safetensors``: the weights as they are now, even while the run goes on) or an exported
DQ-AE model (``NAME.json`` + ``NAME.safetensors``, given with or without the extension). The
data set, its folder and the image size come from the run (an exported model stores the data set
and crop; its folder defaults to the shared data) and can be overridden.

For every split (patches: train/test; CIFAR-10: train/test; ImageNet32/64: train/val) the command
prints -log2 p(x | codes) / dims ("reconstruction term only", the DQ paper's figure), the index
bits per dim and the honest total (:mod:`dqcodec.eval.likelihood`). The index prior is fitted on
the codes of ``--fit-images`` training images; the "train" row is measured on exactly those
images, so its index bits are optimistic, the held-out row is the figure to quote.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dqcodec.codec.errors import DQCodecError

# data set -> (training split, held-out split)
SPLITS = {"patches": ("train", "test"), "cifar10": ("train", "test"), "imagenet": ("train", "val")}


def add_likelihood_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN",
                        help="a 'dqcodec train --arch dqae' run folder, or an exported DQ-AE model (path, .json optional)")
    parser.add_argument("--dataset", choices=tuple(SPLITS), default=None, help="data set (default: the run's)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="folder of the data set (default: the run's; the shared data for an exported model)")
    parser.add_argument("--size", type=int, default=None, metavar="N", help="patch size of --dataset patches (default: the run's crop)")
    parser.add_argument("--fit-images", type=int, default=8192, metavar="N",
                        help="training images whose codes fit the index prior (a fixed random subset; default %(default)s)")
    parser.add_argument("--test-images", type=int, default=0, metavar="N",
                        help="held-out images to measure (a fixed random subset; 0: all, the default)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default %(default)s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this JSON file")


def load_dqae_run(run: Path):
    """(network in eval mode, settings): settings has dataset, data (folder or None), crop, steps, source.

    Raises DQCodecError (one line) for anything that is not a DQ-AE run folder or model.
    """
    from safetensors.torch import load_file

    from dqcodec.models.dqae import DQAE, DQAEConfig
    from dqcodec.train.checkpoint import load_model_as

    if run.is_dir():
        settings_path, state_path = run / "run.json", run / "state.safetensors"
        if not settings_path.is_file() or not state_path.is_file():
            raise DQCodecError(f"{run} is not a training run folder (no run.json and state.safetensors)")
        settings = json.loads(settings_path.read_text())
        if settings.get("arch") != "dqae":
            raise DQCodecError(f"{run} holds a --arch {settings.get('arch')} run, not dqae")
        net = DQAE(DQAEConfig(**settings["config"]))
        tensors = load_file(str(state_path))
        net.load_state_dict({key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")})
        steps = json.loads((run / "state.json").read_text())["step"]
        return net.eval(), {"dataset": settings["options"]["dataset"], "data": settings["loop"]["data"],
                            "crop": settings["loop"]["crop"], "steps": steps, "source": f"run folder {run}"}
    stem = run.with_suffix("") if run.suffix in (".json", ".safetensors") else run
    net, info = load_model_as(stem, DQAE, f"{run} (not a run folder)", "a DQ-AE")
    training = info.get("training", {})
    return net, {"dataset": training.get("dataset", "patches"), "data": None, "crop": training.get("crop", 32),
                 "steps": training.get("steps"), "source": f"model {stem}"}


def load_split(dataset: str, folder: Path, size: int, split: str) -> np.ndarray:
    """(N, size, size, 3) uint8 images of one split of ``dataset`` (patches, cifar10, imagenet);
    raises DQCodecError (one line) when the folder does not hold it."""
    from dqcodec.train.likelihood_data import load_cifar10, load_downsampled_imagenet, load_patches

    try:
        if dataset == "patches":
            return load_patches(folder, size, split).images
        if dataset == "cifar10":
            return load_cifar10(folder, split).images
        return load_downsampled_imagenet(folder, split).images
    except (OSError, ValueError) as error:
        raise DQCodecError(str(error)) from None


def run_likelihood(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.eval.likelihood import encode_images, fit_index_prior, split_likelihood
    from dqcodec.paths import data_dir
    from dqcodec.train.likelihood_data import fixed_subset

    for name in ("fit_images", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise DQCodecError(f"--{name.replace('_', '-')} must be at least 1")
    if args.test_images < 0:
        raise DQCodecError("--test-images must not be negative")
    torch.set_num_threads(args.threads)
    net, settings = load_dqae_run(args.run)
    dataset = args.dataset or settings["dataset"]
    if dataset not in SPLITS:
        raise DQCodecError(f"the run trained on --dataset {dataset}, which has no fixed splits; give --dataset patches, cifar10 or imagenet")
    folder = args.data or Path(settings["data"] or data_dir())
    size = args.size or settings["crop"]
    if size % net.padding_multiple:
        raise DQCodecError(f"--size {size} is not a multiple of the model's {net.padding_multiple}")
    train_split, test_split = SPLITS[dataset]
    fit = encode_images(net, fixed_subset(load_split(dataset, folder, size, train_split), args.fit_images), args.batch_size,
                        desc=f"encoding {train_split}")
    held_out = encode_images(net, fixed_subset(load_split(dataset, folder, size, test_split), args.test_images), args.batch_size,
                             desc=f"encoding {test_split}")
    priors = fit_index_prior(net, fit.indices)
    results = {test_split: split_likelihood(priors, held_out).as_dict(), train_split: split_likelihood(priors, fit).as_dict()}
    report = {"run": str(args.run), "source": settings["source"], "steps": settings["steps"], "config": asdict(net.config),
              "dataset": dataset, "data": str(folder), "size": size if dataset == "patches" else None,
              "index_prior": (f"context index model per level (lower levels conditioned on the level above), fitted on the "
                              f"codes of {len(fit.reconstruction_bits)} {train_split}-split images"),
              "splits": results}
    print(f"{settings['source']} (step {settings['steps']}), {dataset} in {folder}"
          + (f", {size}x{size} patches" if dataset == "patches" else ""))
    print(f"index prior: {report['index_prior']}")
    print(f"{'split':<8} {'images':>7} {'recon. term only':>17} {'index bits':>11} {'honest':>8}   (bits/dim)")
    for split, figures in results.items():
        label = split if split == test_split else f"{split}*"
        print(f"{label:<8} {figures['images']:>7} {figures['reconstruction_bits_per_dim']:>17.4f} "
              f"{figures['index_bits_per_dim']:>11.4f} {figures['bits_per_dim']:>8.4f}")
    print(f"* the prior was fitted on these images' codes: their index bits are optimistic; quote the {test_split} row")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
