"""Training images: file lists, whole images, and random crops with flips."""

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqcodec.paths import IMAGE_SUFFIXES, bsds_dir


def default_train_dir() -> Path:
    """BSDS500 (train, val and test may all be used to train codecs; never Kodak)."""
    return bsds_dir()


def is_held_out(path: Path) -> bool:
    """True for images that training must never see: Kodak (the test set) and the validation
    split of ``photos/`` (every tenth file by name: ``*-010.jpg``, ``*-020.jpg``, ...)."""
    if "kodak" in (part.lower() for part in path.parts):
        return True
    number = path.stem.rsplit("-", 1)[-1]
    return path.parent.name == "photos" and number.isdigit() and int(number) % 10 == 0


def image_files(folder: Path) -> list[Path]:
    """The training images under ``folder`` (recursively, held-out ones left out), sorted for
    reproducibility; e.g. the data folder gives BSDS500 and the training split of the photos."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not is_held_out(p))
    if not files:
        raise FileNotFoundError(f"no images found under {folder}")
    return files


def load_rgb(path: Path, block: int = 1) -> np.ndarray:
    """(H, W, 3) uint8, cropped to whole ``block`` x ``block`` tiles."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[0] // block * block, pixels.shape[1] // block * block
    return pixels[:height, :width]


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float() / 255.0  # a writable copy


class RandomCrops:
    """Batches of random crops (B, 3, S, S) in [0, 1] with random horizontal flips.

    The decoded images are held in memory (BSDS500 is ~230 MB as uint8); the generator makes
    the sequence of batches reproducible and its state can be saved to resume training.
    """

    def __init__(self, images: Sequence[np.ndarray], crop: int, batch_size: int, generator: torch.Generator):
        """images: (H, W, 3) uint8 arrays (a list, or an (N, S, S, 3) array); those smaller than
        ``crop`` are left out."""
        self.images = [image for image in images if min(image.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop}")
        self.crop = crop
        self.batch_size = batch_size
        self.generator = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.generator))

    def batch(self) -> torch.Tensor:
        crops = []
        for _ in range(self.batch_size):
            image = self.images[self._randint(len(self.images))]
            top = self._randint(image.shape[0] - self.crop + 1)
            left = self._randint(image.shape[1] - self.crop + 1)
            crop = image[top : top + self.crop, left : left + self.crop]
            if self._randint(2):
                crop = crop[:, ::-1]
            crops.append(to_tensor(crop))
        return torch.cat(crops)


class ImageFolder:
    """The training data of the codec recipes: the images under ``folder`` (``image_files``),
    drawn as :class:`RandomCrops`.

    Training data for :func:`dqcodec.train.loop.train` is any object with ``files`` (the image
    files a recipe's ``initialise`` and ``finish`` read; may be empty), ``describe()`` (one line
    for the model's JSON) and ``batches(crop, batch_size, generator)`` (an object whose ``batch()``
    gives the next (B, 3, crop, crop) batch in [0, 1]); see also
    :mod:`dqcodec.train.likelihood_data`.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @functools.cached_property
    def files(self) -> list[Path]:
        return image_files(self.folder)

    def describe(self) -> str:
        name = self.folder.name if self.folder.is_absolute() else str(self.folder)
        return f"{name} ({len(self.files)} images)"

    def batches(self, crop: int, batch_size: int, generator: torch.Generator) -> RandomCrops:
        return RandomCrops([load_rgb(path) for path in self.files], crop, batch_size, generator)
