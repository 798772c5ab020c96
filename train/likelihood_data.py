"""Data sets of the likelihood experiments (DQ-AE): CIFAR-10, downsampled ImageNet and local patches.

Every loader returns :class:`LabelledImages`: ``images`` (N, S, S, 3) uint8 RGB and ``labels``
(N,) int64.

- :func:`load_cifar10`: the standard python batches (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``): pickled dicts with ``b'data'`` uint8 (N, 3072), each row the red, green and
  blue 32x32 planes in row-major order, and ``b'labels'`` (N ints, 0..9). The pickles are read
  with an unpickler that builds only dicts, lists, strings, numbers and numpy arrays, never any
  other object.
- :func:`load_downsampled_imagenet`: the ``.npz`` batches of ImageNet32/64
  (``train_data_batch_1.npz`` ... ``train_data_batch_10.npz``, ``val_data.npz``) with ``data``
  uint8 (N, 3 S S) in the same plane layout and ``labels`` 1..1000, returned as 0..999.
- :func:`load_patches`: the local stand-in for both, because neither can be downloaded here:
  S x S crops (32 or 64) of the training images under a folder (``image_files``: BSDS500 and the
  training split of ``photos/``; Kodak and the photos' validation split are never read). The
  split is by file and fixed: a file belongs to the **test** split when the first 8 hex digits of
  the SHA-256 of its path relative to the folder (POSIX form), read as a number, are 0 modulo
  10 (about a tenth of the files), to the training split otherwise. Crops sit on the grid of
  non-overlapping S x S tiles from the image's top-left corner; ``PATCH_PIXELS // S^2`` tiles
  per image (64 at 32 px, 16 at 64 px; all of them when the image has fewer) are drawn without
  replacement by numpy's PCG64 seeded from the same hash, so the patches are the same on every
  machine. Labels are the index of the source file in the sorted list of the split's files.

:func:`likelihood_training_data` wraps any of them (or plain image folders) as the training
data of ``dqcodec train --arch dqae`` (``--dataset``).
"""

import hashlib
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqcodec.codec.errors import DQCodecError
from dqcodec.train.data import ImageFolder, RandomCrops, image_files

CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
PATCH_PIXELS = 65_536  # pixels of patches taken from each image: 64 patches of 32 px, 16 of 64 px
TEST_SHARE = 10  # one file in this many is in the patch test split
DATASETS = ("patches", "cifar10", "imagenet", "images")


@dataclass
class LabelledImages:
    """``images`` (N, S, S, 3) uint8 RGB and ``labels`` (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def planes_to_images(data: np.ndarray) -> np.ndarray:
    """(N, 3 S S) uint8 rows of R, G, B planes -> (N, S, S, 3) uint8."""
    size = int(round((data.shape[-1] // 3) ** 0.5))
    if data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise ValueError(f"data of shape {data.shape} is not rows of 3 square planes")
    return np.ascontiguousarray(data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1))


class _ArrayUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only (what the CIFAR-10 batches hold)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name} from a data batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.shape != (len(labels), 3072):
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected ({len(labels)}, 3072)")
    return planes_to_images(data), labels


def load_cifar10(folder: Path, split: str = "train") -> LabelledImages:
    """CIFAR-10 from its python batches in ``folder`` (``cifar-10-batches-py``): the 50 000
    training images (``split="train"``) or the 10 000 test images (``"test"``), 32x32."""
    names = {"train": CIFAR_TRAIN, "test": CIFAR_TEST}.get(split)
    if names is None:
        raise ValueError(f"CIFAR-10 split must be train or test, not {split!r}")
    missing = [name for name in names if not (Path(folder) / name).is_file()]
    if missing:
        raise FileNotFoundError(f"no CIFAR-10 batch {missing[0]} in {folder}")
    images, labels = zip(*(_read_cifar_batch(Path(folder) / name) for name in names), strict=True)
    return LabelledImages(np.concatenate(images), np.concatenate(labels))


def load_downsampled_imagenet(folder: Path, split: str = "train", size: int | None = None) -> LabelledImages:
    """ImageNet32 or ImageNet64 from the ``.npz`` batches in ``folder``: ``train_data_batch_*.npz``
    (``split="train"``) or ``val_data.npz`` (``"val"``); ``size`` (32, 64), when given, is checked."""
    pattern = {"train": "train_data_batch_*.npz", "val": "val_data.npz"}.get(split)
    if pattern is None:
        raise ValueError(f"downsampled ImageNet split must be train or val, not {split!r}")
    paths = sorted(Path(folder).glob(pattern), key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if split == "train" else 0)
    if not paths:
        raise FileNotFoundError(f"no downsampled ImageNet batches ({pattern}) in {folder}")
    images, labels = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as batch:
            if "data" not in batch or "labels" not in batch:
                raise ValueError(f"{path}: not a downsampled ImageNet batch (no 'data' and 'labels')")
            images.append(planes_to_images(np.asarray(batch["data"], dtype=np.uint8)))
            labels.append(np.asarray(batch["labels"], dtype=np.int64).reshape(-1) - 1)
        if size is not None and images[-1].shape[1] != size:
            raise ValueError(f"{path}: images are {images[-1].shape[1]} px, not {size}")
    return LabelledImages(np.concatenate(images), np.concatenate(labels))


def _file_hash(path: Path, root: Path) -> int:
    relative = Path(path).relative_to(root).as_posix()
    return int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16)


def patch_split(path: Path, root: Path) -> str:
    """"test" or "train": the fixed split of the image file ``path`` under ``root``."""
    return "test" if _file_hash(path, root) % TEST_SHARE == 0 else "train"


def patch_files(root: Path, split: str) -> list[Path]:
    """The training images under ``root`` (see ``image_files``) in ``split`` ("train", "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"patch split must be train or test, not {split!r}")
    return [path for path in image_files(root) if patch_split(path, root) == split]


def image_patches(pixels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """(H, W, 3) image -> (n, size, size, 3) crops on its grid of non-overlapping tiles, n =
    min(PATCH_PIXELS // size^2, tiles), the tiles drawn without replacement by PCG64(seed)."""
    rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
    count = min(max(1, PATCH_PIXELS // size**2), rows * cols)
    tiles = np.random.Generator(np.random.PCG64(seed)).choice(rows * cols, size=count, replace=False)
    tiles.sort()
    return np.stack([pixels[r * size : (r + 1) * size, c * size : (c + 1) * size] for r, c in zip(*np.divmod(tiles, cols))])


def load_patches(root: Path, size: int, split: str = "train") -> LabelledImages:
    """The fixed patch data set: ``size`` x ``size`` crops of the images under ``root`` in
    ``split`` (see the module notes); labels are the source files' indices in ``patch_files``."""
    patches, labels = [], []
    for index, path in enumerate(patch_files(Path(root), split)):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        if min(pixels.shape[:2]) < size:
            continue
        crops = image_patches(pixels, size, _file_hash(path, Path(root)))
        patches.append(crops)
        labels.append(np.full(len(crops), index, dtype=np.int64))
    if not patches:
        raise FileNotFoundError(f"no image of at least {size}x{size} in the {split} split under {root}")
    return LabelledImages(np.concatenate(patches), np.concatenate(labels))


class ArrayBatches(RandomCrops):
    """:class:`RandomCrops` of (N, S, S, 3) uint8 ``images``, refusing a ``crop`` larger than S."""

    def __init__(self, images: np.ndarray, crop: int, batch_size: int, generator: torch.Generator):
        if crop > images.shape[1] or crop > images.shape[2]:
            raise ValueError(f"--crop {crop} is larger than the data set's {images.shape[1]}x{images.shape[2]} images")
        super().__init__(images, crop, batch_size, generator)


@dataclass
class ArrayData:
    """Training data held as an array data set (loaded when the batches are first asked for)."""

    name: str
    load: Callable[[], LabelledImages]
    files: tuple = ()  # image files for a recipe's initialise/finish (none for CIFAR, ImageNet)

    def describe(self) -> str:
        return self.name

    def batches(self, crop: int, batch_size: int, generator: torch.Generator) -> ArrayBatches:
        """Raises DQCodecError (one line) when the data set cannot be read or its images are smaller than ``crop``."""
        try:
            return ArrayBatches(self.load().images, crop, batch_size, generator)
        except (OSError, ValueError) as error:
            raise DQCodecError(str(error)) from None


def likelihood_training_data(dataset: str, folder: Path, size: int):
    """The training split of ``dataset`` in ``folder`` (its ``size`` x ``size`` patches for
    "patches") as training data for :func:`dqcodec.train.loop.train` (``files``, ``describe()``,
    ``batches(crop, batch_size, generator)``). Raises DQCodecError for an unknown data set or a
    patch folder without images."""
    folder = Path(folder)
    shown = folder.name if folder.is_absolute() else str(folder)
    if dataset == "images":
        return ImageFolder(folder)
    if dataset == "cifar10":
        return ArrayData(f"CIFAR-10 training batches in {shown}", lambda: load_cifar10(folder, "train"))
    if dataset == "imagenet":
        return ArrayData(f"downsampled ImageNet training batches in {shown}", lambda: load_downsampled_imagenet(folder, "train"))
    if dataset == "patches":
        try:
            files = patch_files(folder, "train")
        except FileNotFoundError as error:
            raise DQCodecError(str(error)) from None
        return ArrayData(f"{size}x{size} patches of the {len(files)} training-split images under {shown}",
                         lambda: load_patches(folder, size, "train"), tuple(files))
    raise DQCodecError(f"unknown data set {dataset!r}; use one of {', '.join(DATASETS)}")


def fixed_subset(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of ``count`` of (N, ...) ``images``, in their order (all of them
    for 0 or more than there are); the same ``seed`` picks the same images in every run."""
    if count <= 0 or count >= len(images):
        return images
    return images[np.sort(np.random.default_rng(seed).permutation(len(images))[:count])]
