"""Speed benchmark: dqcodec's default model next to compressai's bmshj2018 hyperprior, same run.

Both codecs see the same images on the same machine with the same torch thread count; the
report gives median seconds per image and the ratios, as the project's measurement conventions
ask. The hyperprior runs with random weights: its speed does not depend on training.
"""

import statistics
import time
from dataclasses import dataclass

import numpy as np

from dqcodec.eval.ours import run_model
from dqcodec.eval.rd import EvalImage

BASELINE = "compressai bmshj2018_hyperprior, quality 3, random weights"


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds per image of one codec."""

    codec: str
    encode_seconds: list[float]
    decode_seconds: list[float]

    @property
    def encode_median(self) -> float:
        return statistics.median(self.encode_seconds)

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode_seconds)


def time_ours(images: list[EvalImage], model: str) -> Timings:
    """Encode and decode every image with dqcodec's API and the shipped model ``model``."""
    run_model(images[0].pixels, model)  # loads the model: not part of the per-image cost
    runs = [run_model(image.pixels, model) for image in images]
    return Timings(
        f"dqcodec {model}",
        [run.encode_seconds for run in runs],
        [run.decode_seconds for run in runs],
    )


def time_hyperprior(images: list[EvalImage]) -> Timings:
    """Compress and decompress every image with compressai's ``bmshj2018_hyperprior`` (quality 3).

    Timed from the uint8 array to the entropy-coded strings and back to a uint8 array,
    including the padding to a multiple of 64 pixels the network needs.
    """
    import torch
    import torch.nn.functional as F
    from compressai.zoo import bmshj2018_hyperprior

    network = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    network.update()

    def compress(pixels: np.ndarray) -> dict:
        height, width = pixels.shape[:2]
        x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0) / 255
        x = F.pad(x, (0, -width % 64, 0, -height % 64))
        with torch.no_grad():
            return network.compress(x)

    def decompress(compressed: dict, height: int, width: int) -> np.ndarray:
        with torch.no_grad():
            x_hat = network.decompress(compressed["strings"], compressed["shape"])["x_hat"]
        x_hat = x_hat[0, :, :height, :width].clamp(0, 1).mul(255).round().to(torch.uint8)
        return x_hat.permute(1, 2, 0).numpy()

    compress(images[0].pixels)  # first-call allocations are not part of the per-image cost
    encode_seconds, decode_seconds = [], []
    for image in images:
        height, width = image.pixels.shape[:2]
        start = time.perf_counter()
        compressed = compress(image.pixels)
        encode_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        decompress(compressed, height, width)
        decode_seconds.append(time.perf_counter() - start)
    return Timings(BASELINE, encode_seconds, decode_seconds)


def format_table(ours: Timings, baseline: Timings, threads: int, image_count: int) -> str:
    """A markdown table of median seconds per image and the ratios ours / baseline."""
    lines = [
        f"Median seconds per image over {image_count} images, CPU, torch.set_num_threads({threads}).",
        "",
        "| codec | encode (s) | decode (s) |",
        "| --- | ---: | ---: |",
    ]
    for timings in (ours, baseline):
        lines.append(f"| {timings.codec} | {timings.encode_median:.3f} | {timings.decode_median:.3f} |")
    lines.append(
        f"| ratio ours / baseline | {ours.encode_median / baseline.encode_median:.2f}× "
        f"| {ours.decode_median / baseline.decode_median:.2f}× |"
    )
    return "\n".join(lines)
