"""Fixtures shared by the test modules."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def training_images(tmp_path) -> Path:
    """A folder of three 64×80 RGB PNGs (smooth sinusoidal patterns plus noise) for tiny training runs."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        rows, cols = np.mgrid[0:64, 0:80]
        base = 128 + 100 * np.sin((cols + 7 * i) / 6.0)[..., None] * np.cos(rows / 9.0)[..., None]
        pixels = np.clip(base + rng.normal(0, 8, size=(64, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"train{i}.png")
    return folder
