"""Speed benchmark: dqcodec's default model next to compressai's bmshj2018 hyperprior, same run.

Both codecs see the same images on the same machine with the same torch thread count, image by
image in turns; the report gives median seconds per image and the ratios, as the project's
measurement conventions ask. The hyperprior runs with random weights: its speed does not depend on training.
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


def time_both(images: list[EvalImage], model: str) -> tuple[Timings, Timings]:
    """Encode and decode every image with dqcodec's API and ``model`` (a shipped model or a
    checkpoint) and with compressai's hyperprior (:class:`Hyperprior`), image by image, the two
    codecs taking turns to go first: a slow spell of a shared machine then slows both, not one
    codec's whole run. Returns (ours, the hyperprior's) timings."""
    hyperprior = Hyperprior()
    run_model(images[0].pixels, model)  # loads the model: not part of the per-image cost
    hyperprior.run(images[0].pixels)  # first-call allocations are not part of the per-image cost
    ours, baseline = [], []  # (encode, decode) seconds per image

    def run_ours(pixels: np.ndarray) -> None:
        run = run_model(pixels, model)
        ours.append((run.encode_seconds, run.decode_seconds))

    def run_baseline(pixels: np.ndarray) -> None:
        baseline.append(hyperprior.run(pixels))

    for index, image in enumerate(images):
        for run in (run_ours, run_baseline) if index % 2 == 0 else (run_baseline, run_ours):
            run(image.pixels)
    return (Timings(f"dqcodec {model}", [e for e, _ in ours], [d for _, d in ours]),
            Timings(BASELINE, [e for e, _ in baseline], [d for _, d in baseline]))


class Hyperprior:
    """compressai's ``bmshj2018_hyperprior`` (quality 3, random weights), timed from the uint8
    array to the entropy-coded strings and back to a uint8 array, including the padding to a
    multiple of 64 pixels the network needs."""

    def __init__(self):
        from compressai.zoo import bmshj2018_hyperprior

        self.network = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
        self.network.update()

    def run(self, pixels: np.ndarray) -> tuple[float, float]:
        """(H, W, 3) uint8 image -> (encode, decode) wall-clock seconds."""
        import torch
        import torch.nn.functional as F

        height, width = pixels.shape[:2]
        start = time.perf_counter()
        x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0) / 255
        x = F.pad(x, (0, -width % 64, 0, -height % 64))
        with torch.no_grad():
            compressed = self.network.compress(x)
        encode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            x_hat = self.network.decompress(compressed["strings"], compressed["shape"])["x_hat"]
        # Down to the (H, W, 3) uint8 array, as dqcodec's decoder hands its image over.
        x_hat[0, :, :height, :width].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return encode_seconds, time.perf_counter() - start


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
