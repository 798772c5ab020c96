"""What the DQ-AE studies share: the local patch data loaded once, and one DQ-AE trained by the
project's training loop (:func:`dqcodec.train.loop.train` with the ``dqae`` recipe) on it.

Each model trains in its own run folder under the study's ``--work`` folder, so an interrupted
study resumes where it stopped (a finished model is loaded from its state, not retrained), and
each run's ``log.jsonl`` keeps its training curve.
"""

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dqcodec.codec.errors import DQCodecError
from dqcodec.models.dqae import DQAE, DQAEConfig
from dqcodec.train.likelihood_data import ArrayData, LabelledImages, fixed_subset, load_patches
from dqcodec.train.loop import LoopConfig, train
from dqcodec.train.recipes import RECIPES, DQAEOptions


@dataclass
class PatchSets:
    """The fixed patch data set's splits: (N, S, S, 3) uint8 each; ``fit`` is the subset of the
    training split whose codes fit the index prior, ``test`` the held-out images measured."""

    folder: Path
    size: int
    train: np.ndarray
    fit: np.ndarray
    test: np.ndarray

    def describe(self) -> dict:
        return {"data": f"{self.size}x{self.size} patches (fixed split) of the images under {self.folder}",
                "train_images": len(self.train), "fit_images": len(self.fit), "test_images": len(self.test)}


def add_run_options(parser: argparse.ArgumentParser, work: str, trained: str, threads: int, device: str) -> None:
    """The options both DQ-AE studies share: data folder, run folders (default ``runs/<work>``,
    holding the ``trained`` models), threads and device."""
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="folder of the training images (default: the shared data; Kodak is never read)")
    parser.add_argument("--work", type=Path, default=Path("runs") / work, metavar="DIR",
                        help=f"run folders of {trained}; a rerun resumes or reuses them (default %(default)s)")
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=device, help="where to train (default %(default)s)")


def load_patch_sets(folder: Path, size: int, fit_images: int, test_images: int) -> PatchSets:
    """Both splits of the patch data set; fixed random subsets for the prior fit and the test
    (0: all). Raises DQCodecError (one line) when the folder has no usable images."""
    try:
        train_images = load_patches(folder, size, "train").images
        test = load_patches(folder, size, "test").images
    except (OSError, ValueError) as error:
        raise DQCodecError(str(error)) from None
    return PatchSets(Path(folder), size, train_images, fixed_subset(train_images, fit_images, 1), fixed_subset(test, test_images, 2))


@dataclass
class TrainSettings:
    """How every model of a study trains (the same for all of them: steps, batches, seed)."""

    steps: int
    batch_size: int
    crop: int  # random crops of the training patches; the test patches are measured whole
    learning_rate: float
    seed: int
    threads: int
    device: str = "cpu"


def training_seconds(run: Path) -> float:
    """Seconds of training in ``run/log.jsonl``, summed over resumed segments."""
    total, last = 0.0, 0.0
    for line in (run / "log.jsonl").read_text().splitlines():
        seconds = json.loads(line)["seconds"]
        if seconds < last:  # a resumed segment starts its clock again
            total += last
        last = seconds
    return total + last


def train_dqae(config: DQAEConfig, patches: PatchSets, settings: TrainSettings, run: Path) -> tuple[DQAE, float]:
    """(trained network in eval mode, its training seconds): ``config`` trained in ``run`` (resumed
    or loaded when the folder already holds its state) on the training patches."""
    torch.manual_seed(settings.seed)  # the initial weights follow the seed, as in 'dqcodec train'
    net = DQAE(config)
    data = ArrayData(patches.describe()["data"], lambda: LabelledImages(patches.train, np.zeros(len(patches.train), np.int64)))
    recipe = dataclasses.replace(RECIPES["dqae"], data=lambda _options, _loop: data)
    loop = LoopConfig(out=run, data=patches.folder, steps=settings.steps, batch_size=settings.batch_size, crop=settings.crop,
                      learning_rate=settings.learning_rate, checkpoint_every=max(settings.steps, 1), validation_images=0,
                      seed=settings.seed, device=settings.device, threads=settings.threads)
    # Threads and device may change on a resume; everything that decides the model may not.
    training = {key: value for key, value in dataclasses.asdict(settings).items() if key not in ("threads", "device")}
    described = {"config": dataclasses.asdict(config), "training": training}
    if (run / "config.json").is_file() and json.loads((run / "config.json").read_text()) != described:
        raise DQCodecError(f"{run} holds a model of other settings; use another --work folder or remove it")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(described) + "\n")
    net = train(net, recipe, DQAEOptions(dataset="patches"), loop, fresh=True, log=lambda _message: None)
    return net.eval(), training_seconds(run)
