"""The codec-model interface: a new architecture is a module plus a registry entry, nothing else.

The toy below is a two-level codec (a 4x downsampled image, then the full-resolution residual,
whose entropy model reads the decoded coarse level as side information), registered through the
interface alone, trained by ``dqcodec train --arch``, exported, and coded by ``dqcodec
encode/decode`` without any change to ``codec/`` or ``train/loop.py``.
"""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dqcodec.codec.cli import main
from dqcodec.codec.container import unpack
from dqcodec.models import registry
from dqcodec.models.entropy import ContextIndexModel, quantize_table
from dqcodec.models.interface import CodecOutput, CodingStep, IndexLevel, LevelSpec, level_bits
from dqcodec.train import recipes

LEVELS = 16  # symbols per level


class CoarseConditionedModel(nn.Module):
    """Fine-level tables per channel, chosen by the co-located coarse index (4 buckets)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.register_buffer("frequencies", torch.ones(channels, 4, LEVELS, dtype=torch.int32))

    def coding_steps(self, shape):
        for channel in range(shape[1]):
            yield CodingStep(channel, 0, np.ones(shape[2:], dtype=bool))

    def _contexts(self, step, side) -> np.ndarray:
        coarse = side["coarse"][:, step.codebook].repeat(self.factor, axis=1).repeat(self.factor, axis=2)
        return (coarse * 4 // LEVELS)[:, step.mask].reshape(-1)

    def step_tables(self, indices, step, side):
        return self.frequencies[step.codebook].numpy(), self._contexts(step, side)

    def bits(self, indices, side):
        return level_bits(self, indices, side)

    def fit(self, index_batches):
        counts = np.zeros(tuple(self.frequencies.shape))
        for indices, side in index_batches:
            for step in self.coding_steps(indices.shape):
                np.add.at(counts[step.codebook], (self._contexts(step, side), step.symbols(indices)), 1)
        self.frequencies.copy_(torch.from_numpy(quantize_table(counts + 0.1)))


@dataclass
class ToyConfig:
    factor: int = field(default=4, metadata={"help": "downsampling of the coarse level"})
    rate_lambda: float = field(default=0.01, metadata={"help": "squared pixel error per bit", "flag": "--lambda"})


class ToyTwoLevelCodec(nn.Module):
    """Coarse: 4x average-pooled image on 16 levels; fine: the residual on 16 levels of step 1/32."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.residual_gain = nn.Parameter(torch.ones(()))  # something for the loop to train
        self.coarse_entropy = ContextIndexModel(3, LEVELS)
        self.fine_entropy = CoarseConditionedModel(3, config.factor)

    @property
    def padding_multiple(self) -> int:
        return self.config.factor

    def levels(self, height, width):
        f = self.config.factor
        return [LevelSpec("coarse", (3, height // f, width // f), self.coarse_entropy),
                LevelSpec("fine", (3, height, width), self.fine_entropy)]

    def _coarse(self, image):
        indices = (F.avg_pool2d(image, self.config.factor) * (LEVELS - 1)).round().clamp(0, LEVELS - 1)
        return indices, F.interpolate(indices / (LEVELS - 1), scale_factor=self.config.factor, mode="nearest")

    def _fine(self, image, prediction):
        return (self.residual_gain * (image - prediction) * 32 + LEVELS // 2).round().clamp(0, LEVELS - 1)

    def forward(self, image):
        _, prediction = self._coarse(image)
        scaled = self.residual_gain * (image - prediction) * 32 + LEVELS // 2
        fine = scaled + (scaled.round().clamp(0, LEVELS - 1) - scaled).detach()
        reconstruction = prediction + (fine - LEVELS // 2) / 32
        bits = torch.full((image.shape[0],), 4.0 * image[0].numel())
        return CodecOutput(reconstruction, bits, torch.zeros(()), {})

    @torch.no_grad()
    def compress(self, image):
        coarse, prediction = self._coarse(image)
        fine = self._fine(image, prediction)
        return [IndexLevel("coarse", coarse.long().numpy()), IndexLevel("fine", fine.long().numpy())]

    @torch.no_grad()
    def decompress(self, levels):
        coarse, fine = (torch.from_numpy(level.indices).to(self.residual_gain.dtype) for level in levels)
        prediction = F.interpolate(coarse / (LEVELS - 1), scale_factor=self.config.factor, mode="nearest")
        return (prediction + (fine - LEVELS // 2) / 32).clamp(0, 1)


def _fit_toy_tables(net, options, files):
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))[:32, :32].copy()).permute(2, 0, 1)[None] / 255.0
              for p in files]
    levels = [net.compress(image) for image in images]
    usage = torch.ones(3, LEVELS)
    net.coarse_entropy.set_codes(torch.linspace(0, 1, LEVELS)[None, :, None].repeat(3, 1, 1), usage)
    net.coarse_entropy.fit((coarse.indices, {}) for coarse, _ in levels)
    net.fine_entropy.fit((fine.indices, {"coarse": coarse.indices}) for coarse, fine in levels)


@dataclass
class ToyOptions:
    pass


@pytest.fixture
def toy_architecture(monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "ToyTwoLevelCodec", registry.Architecture(ToyTwoLevelCodec, ToyConfig))
    monkeypatch.setitem(recipes.RECIPES, "toy", recipes.Recipe(
        architecture="ToyTwoLevelCodec", options=ToyOptions, initialise=lambda *args: None,
        finish=_fit_toy_tables, describe=lambda *args: "toy", estimate="4 bits per value"))


def test_a_toy_architecture_trains_exports_and_codes_through_the_interface(tmp_path, training_images, toy_architecture):
    weights = tmp_path / "w"
    assert main(["train", "--arch", "toy", "--out", str(tmp_path / "run"), "--data", str(training_images),
                 "--steps", "2", "--batch-size", "2", "--crop", "32", "--validation-images", "0", "--threads", "1",
                 "--export", "toy-q1", "--quality", "1", "--weights-dir", str(weights), "--measure-images", "0"]) == 0
    source = training_images / "train0.png"
    assert main(["encode", str(source), str(tmp_path / "t.dqc"), "--model", str(weights / "toy-q1")]) == 0
    assert main(["decode", str(tmp_path / "t.dqc"), str(tmp_path / "t.png")]) == 0
    header, streams = unpack((tmp_path / "t.dqc").read_bytes())
    assert header.model == "toy-q1" and header.padding == 4 and len(streams) == 2
    original = np.asarray(Image.open(source), dtype=float)
    decoded = np.asarray(Image.open(tmp_path / "t.png"), dtype=float)
    assert decoded.shape == original.shape
    assert 10 * np.log10(255**2 / np.mean((original - decoded) ** 2)) > 25


def test_the_fine_level_reads_the_coarse_level_as_side_information(toy_architecture):
    net = ToyTwoLevelCodec(ToyConfig())
    with torch.no_grad():
        net.fine_entropy.frequencies[:, 0, 0] = 1000  # bucket 0 of the coarse level: symbol 0 likely
    indices = np.zeros((1, 3, 8, 8), dtype=np.int64)
    dark, bright = np.zeros((1, 3, 2, 2), dtype=np.int64), np.full((1, 3, 2, 2), LEVELS - 1)
    assert net.fine_entropy.bits(indices, {"coarse": dark}) < net.fine_entropy.bits(indices, {"coarse": bright})
