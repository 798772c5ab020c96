"""Data sets of the likelihood experiments: CIFAR-10 and ImageNet32/64 files in their real formats
(written here, small), and the fixed patch data set of local images."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dqcodec.codec.errors import DQCodecError
from dqcodec.train.likelihood_data import (
    ArrayBatches,
    likelihood_training_data,
    load_cifar10,
    load_downsampled_imagenet,
    load_patches,
    patch_files,
    patch_split,
)

RNG = np.random.default_rng(3)


def _planes(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) -> (N, 3 S S): the R, G, B planes of each image, row-major, as the files hold them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_cifar(folder, per_batch: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir()
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = RNG.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": RNG.integers(0, 10, per_batch).tolist(),
                 b"data": _planes(images), b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (images, np.array(batch[b"labels"]))
    return written


def test_cifar10_batches_are_read_in_their_plane_layout(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    train = load_cifar10(tmp_path / "cifar-10-batches-py", "train")
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(train.images, expected)
    assert np.array_equal(train.labels, np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)]))
    assert np.array_equal(test.images, written["test_batch"][0]) and len(test) == 3


def test_cifar10_refuses_foreign_pickles_and_missing_batches(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder)

    class Sneaky:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Sneaky(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to build builtins.print"):
        load_cifar10(folder, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(folder, "train")


@pytest.mark.parametrize("size", [32, 64])
def test_downsampled_imagenet_batches_in_numeric_order_with_labels_from_zero(tmp_path, size):
    written = {}
    for name, count in (("train_data_batch_1", 2), ("train_data_batch_2", 3), ("train_data_batch_10", 1), ("val_data", 2)):
        images = RNG.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
        labels = RNG.integers(1, 1001, count)
        extra = {"mean": np.zeros(3 * size * size)} if name.startswith("train") else {}
        np.savez(tmp_path / f"{name}.npz", data=_planes(images), labels=labels.tolist(), **extra)
        written[name] = (images, labels)
    train = load_downsampled_imagenet(tmp_path, "train", size=size)
    order = ["train_data_batch_1", "train_data_batch_2", "train_data_batch_10"]
    assert np.array_equal(train.images, np.concatenate([written[name][0] for name in order]))
    assert np.array_equal(train.labels, np.concatenate([written[name][1] for name in order]) - 1)
    val = load_downsampled_imagenet(tmp_path, "val")
    assert val.images.shape == (2, size, size, 3) and np.array_equal(val.images, written["val_data"][0])
    with pytest.raises(ValueError, match=f"are {size} px"):
        load_downsampled_imagenet(tmp_path, "val", size=size * 2)


@pytest.fixture
def image_root(tmp_path):
    """bsds500/ and photos/ with 24 small images (one of them the photos' validation split) and Kodak."""
    root = tmp_path / "data"
    for folder, names, shape in (("bsds500/train", [f"{i}.jpg" for i in range(16)], (100, 140)),
                                 ("photos", [f"urban-{i:03d}.jpg" for i in range(5, 13)], (200, 260)),
                                 ("kodak", ["kodim01.png"], (64, 64))):
        (root / folder).mkdir(parents=True)
        for name in names:
            pixels = RNG.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / name, quality=95)
    return root


def test_patch_split_is_fixed_by_file_and_leaves_out_held_out_images(image_root):
    train, test = patch_files(image_root, "train"), patch_files(image_root, "test")
    assert not set(train) & set(test) and len(train) + len(test) == 23  # 24 images, one held out
    assert all("kodak" not in str(p) and p.name != "urban-010.jpg" for p in train + test)
    for path in train + test:  # the documented rule, computed independently
        digest = int(hashlib.sha256(path.relative_to(image_root).as_posix().encode()).hexdigest()[:8], 16)
        assert patch_split(path, image_root) == ("test" if digest % 10 == 0 else "train")
    assert test, "this fixture should put some file in the test split"


@pytest.mark.parametrize("size", [32, 64])
def test_patches_sit_on_the_tile_grid_and_are_the_same_every_time(image_root, size):
    patches = load_patches(image_root, size, "train")
    again = load_patches(image_root, size, "train")
    assert np.array_equal(patches.images, again.images) and np.array_equal(patches.labels, again.labels)
    files = patch_files(image_root, "train")
    for index, path in enumerate(files):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
        tiles = {pixels[r * size:(r + 1) * size, c * size:(c + 1) * size].tobytes() for r in range(rows) for c in range(cols)}
        mine = patches.images[patches.labels == index]
        assert len(mine) == min(65536 // size**2, rows * cols)
        assert all(patch.tobytes() in tiles for patch in mine)
    test = load_patches(image_root, size, "test")
    assert test.images.shape[1:] == (size, size, 3)
    assert not {p.tobytes() for p in test.images} & {p.tobytes() for p in patches.images}


def test_array_batches_are_reproducible_crops_of_the_images():
    images = RNG.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    first = ArrayBatches(images, 32, 4, torch.Generator().manual_seed(1)).batch()
    second = ArrayBatches(images, 32, 4, torch.Generator().manual_seed(1)).batch()
    assert first.shape == (4, 3, 32, 32) and torch.equal(first, second)
    originals = {torch.from_numpy(image).permute(2, 0, 1).float().div(255).numpy().tobytes() for image in images}
    flipped = {torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1).float().div(255).numpy().tobytes() for image in images}
    assert all(crop.numpy().tobytes() in originals | flipped for crop in first)
    assert ArrayBatches(images, 16, 2, torch.Generator()).batch().shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="larger than"):
        ArrayBatches(images, 64, 2, torch.Generator())


def test_training_data_of_each_data_set(tmp_path, image_root):
    _write_cifar(tmp_path / "cifar")
    cifar = likelihood_training_data("cifar10", tmp_path / "cifar", 32)
    assert cifar.files == () and "CIFAR-10" in cifar.describe()
    assert cifar.batches(32, 3, torch.Generator()).batch().shape == (3, 3, 32, 32)
    patches = likelihood_training_data("patches", image_root, 32)
    assert list(patches.files) == patch_files(image_root, "train") and "32x32 patches" in patches.describe()
    assert patches.batches(32, 2, torch.Generator()).batch().shape == (2, 3, 32, 32)
    with pytest.raises(DQCodecError, match="unknown data set"):
        likelihood_training_data("mnist", tmp_path, 32)
