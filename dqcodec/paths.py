"""Where dqcodec finds the shared data sets (Kodak, BSDS500), and which files in them are images."""

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent

# The endings (lower case, compared with ``path.suffix.lower()``) of the files that training
# and evaluation pick up as images from a folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"})


def data_dir() -> Path:
    """The data folder: ``$DQCODEC_DATA`` if set, else ``../shared/data`` beside the checkout.

    Falls back to ``./../shared/data`` relative to the working directory for installed copies.
    """
    if "DQCODEC_DATA" in os.environ:
        return Path(os.environ["DQCODEC_DATA"])
    for candidate in (_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return _REPO_ROOT.parent / "shared" / "data"


def kodak_dir() -> Path:
    """The 24 Kodak test images (never used for training)."""
    return data_dir() / "kodak"


def bsds_dir() -> Path:
    """BSDS500 (train/val/test sub-folders), the training images."""
    return data_dir() / "bsds500"


def anchors_dir() -> Path:
    """Published Kodak RD curves in CompressAI's JSON layout."""
    return data_dir().parent / "anchors" / "kodak"
