"""Training images: file lists, whole images, random crops with flips, and "fitting images"
(photographs plus saturation-boosted copies and synthetic content, :func:`fitting_images`)."""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqcodec.content import fitting_content, saturate
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


@dataclass(frozen=True)
class SaturatedPhoto:
    """A training photograph with its saturation multiplied by ``factor`` (loaded when used)."""

    path: Path
    factor: float


FittingImage = Path | SaturatedPhoto | np.ndarray


def load_fitting_image(image: FittingImage, block: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 of a fitting image, cropped to whole ``block`` x ``block`` tiles."""
    if isinstance(image, Path):
        return load_rgb(image, block)
    if isinstance(image, SaturatedPhoto):
        return saturate(load_rgb(image.path, block), image.factor)
    height, width = image.shape[0] // block * block, image.shape[1] // block * block
    return image[:height, :width]


def fitting_images(files: list[Path], synthetic_share: float) -> list[FittingImage]:
    """``files`` plus, when ``synthetic_share`` > 0, saturation-boosted copies (x2) of every
    round(1 / synthetic_share)-th file and as many synthetic images, taken in turn from
    :func:`dqcodec.content.fitting_content` (flat tiles, hue sweeps, gradients, text, screenshots)."""
    if synthetic_share <= 0:
        return list(files)
    saturated = [SaturatedPhoto(path, 2.0) for path in files[:: max(1, round(1 / synthetic_share))]]
    synthetic = fitting_content()
    return [*files, *saturated, *(synthetic[index % len(synthetic)] for index in range(len(saturated)))]


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
    """The training data of the codec recipes: the images under ``folder`` (``image_files``), with
    ``synthetic_share`` > 0 also saturation-boosted copies of some and synthetic content
    (:func:`fitting_images`), drawn as :class:`RandomCrops`.

    Training data for :func:`dqcodec.train.loop.train` is any object with ``files`` (the image
    files a recipe's ``initialise`` and ``finish`` read; may be empty), ``describe()`` (one line
    for the model's JSON) and ``batches(crop, batch_size, generator)`` (an object whose ``batch()``
    gives the next (B, 3, crop, crop) batch in [0, 1]); see also
    :mod:`dqcodec.train.likelihood_data`.
    """

    def __init__(self, folder: Path, synthetic_share: float = 0.0):
        self.folder = Path(folder)
        self.synthetic_share = synthetic_share

    @functools.cached_property
    def files(self) -> list[Path]:
        return image_files(self.folder)

    def describe(self) -> str:
        name = self.folder.name if self.folder.is_absolute() else str(self.folder)
        images = fitting_images(self.files, self.synthetic_share)
        mixed = len(images) - len(self.files)
        if not mixed:
            return f"{name} ({len(self.files)} images)"
        return (f"{name} ({len(self.files)} images) and {mixed} more: saturation-boosted (x2) copies of "
                f"{mixed // 2} of them and as many synthetic images")

    def batches(self, crop: int, batch_size: int, generator: torch.Generator) -> RandomCrops:
        images = fitting_images(self.files, self.synthetic_share)
        return RandomCrops([load_fitting_image(image) for image in images], crop, batch_size, generator)
