"""The rate-distortion sweep: every image through a codec at each of its RD points.

Per image and point it measures bpp from the real bytes, PSNR-RGB, MS-SSIM, and encode and
decode seconds; each point's means over the images make one RD point of a CompressAI-layout
results file (see :mod:`dqcodec.eval.results`), with the per-image values kept beside them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval import metrics
from dqcodec.eval.runner import RDCodec
from dqcodec.paths import IMAGE_SUFFIXES

_RESULT_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")


@dataclass(frozen=True)
class EvalImage:
    """One image of the evaluation set."""

    name: str  # file stem, the key of the per-image results
    pixels: np.ndarray  # (H, W, 3) uint8 RGB


def load_images(folder: Path, limit: int | None = None) -> list[EvalImage]:
    """The images of ``folder`` in name order (the first ``limit`` of them), as 8-bit RGB.

    Raises:
        DQCodecError: for a missing or empty folder, or an image too small for MS-SSIM.
    """
    if not folder.is_dir():
        raise DQCodecError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise DQCodecError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        if min(pixels.shape[:2]) <= metrics.MS_SSIM_MIN_SIDE:
            raise DQCodecError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]}: MS-SSIM needs both sides above "
                f"{metrics.MS_SSIM_MIN_SIDE} pixels"
            )
        images.append(EvalImage(path.stem, pixels))
    return images


def sweep(codec: RDCodec, images: list[EvalImage], progress: bool = True) -> dict:
    """Run ``codec`` at each of its points on every image.

    Returns:
        The results file content: ``name``, ``description``, ``kind``, ``quality`` (the points and
        what they mean), ``results`` (lists over points of the per-image means of ``bpp``,
        ``psnr-rgb`` (dB), ``ms-ssim-rgb``, ``encoding_time`` and ``decoding_time`` (seconds),
        plus ``estimated_bpp`` (the model's -log2 p) for codecs that report it) and ``per_image``
        (image name -> the same lists for that image alone).
    """
    per_image = {image.name: {key: [] for key in _RESULT_KEYS} for image in images}
    with tqdm(total=len(codec.points) * len(images), desc=codec.name, unit="img", disable=not progress) as bar:
        for point in codec.points:
            # The first call may load a model or a library; keep that out of the timings.
            codec.run(images[0].pixels, point)
            for image in images:
                coded = codec.run(image.pixels, point)
                height, width = image.pixels.shape[:2]
                values = per_image[image.name]
                values["bpp"].append(metrics.bpp(len(coded.data), height, width))
                values["psnr-rgb"].append(metrics.psnr(image.pixels, coded.decoded))
                values["ms-ssim-rgb"].append(metrics.ms_ssim(image.pixels, coded.decoded))
                values["encoding_time"].append(coded.encode_seconds)
                values["decoding_time"].append(coded.decode_seconds)
                if coded.estimated_bits is not None:
                    values.setdefault("estimated_bpp", []).append(coded.estimated_bits / (height * width))
                bar.update()
    keys = per_image[images[0].name].keys()
    means = {
        key: [float(np.mean([per_image[image.name][key][index] for image in images])) for index in range(len(codec.points))]
        for key in keys
    }
    return {
        "name": codec.label,
        "description": codec.description,
        "kind": codec.kind,
        "quality": {"parameter": codec.parameter, "values": list(codec.points)},
        "results": means,
        "per_image": per_image,
    }
