"""A codec network in torch as a coding runtime: for architectures without a numpy runtime.

The neural codecs (e.g. :mod:`dqcodec.models.hdq_codec`, convolutional transforms) are coded by
the network itself, in the dtype the network names (``coding_dtype``; float64 by default), so
that decoded pixels do not depend on the machine's threading: float32 convolutions differ by
~1e-9 between thread counts, enough to flip a rounded 8-bit pixel now and then. A network that
must decode faster than float64 allows names float32: its indices stay exact (they never pass
through the network), only such rare pixel flips remain (README says how rare). Needs torch
(``pip install "dqcodec[train]"``); the registry names this runtime in the entries of such
architectures (:mod:`dqcodec.models.registry`).
"""

import numpy as np
import torch

from dqcodec.models import registry
from dqcodec.models.interface import CompressedLevels, LevelSpec


class TorchRuntime:
    """A model file's network (in its ``coding_dtype``, eval mode, never modified after) with
    numpy in and out."""

    def __init__(self, arrays: dict[str, np.ndarray], info: dict):
        """``arrays``: the model file's tensors as stored; ``info``: its JSON description."""
        network = registry.build_network(arrays, info, f"model {info['name']!r}")
        self.dtype = getattr(network, "coding_dtype", torch.float64)
        self.network = network.to(self.dtype)
        self.lossless = bool(getattr(self.network, "lossless", False))  # decodes to the original pixels

    @property
    def padding_multiple(self) -> int:
        return self.network.padding_multiple

    @property
    def tile_overlap(self) -> int:
        return int(getattr(self.network, "tile_overlap", self.network.padding_multiple))

    @property
    def default_tile_size(self) -> int | None:
        """The network's own default tile size, if it asks for one (``None``: the codec's)."""
        return getattr(self.network, "default_tile_size", None)

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        return self.network.levels(height, width)

    @torch.no_grad()
    def compress(self, image: np.ndarray, rate_lambda: float | None = None) -> CompressedLevels:
        """(B, 3, H, W) float64 image in [0, 1] -> the network's levels of indices, chosen with
        ``rate_lambda`` (pixel units; None: the model's own, and the only choice of a lossless model)."""
        pixels = torch.from_numpy(image).to(self.dtype)
        if rate_lambda is None:
            return self.network.compress(pixels)
        return self.network.compress(pixels, rate_lambda)

    @torch.no_grad()
    def decompress(self, levels: CompressedLevels) -> np.ndarray:
        """Levels of indices -> (B, 3, H, W) float64 image clamped to [0, 1]."""
        return self.network.decompress(levels).double().numpy()
