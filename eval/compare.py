"""Visual comparison: crops of the original and of each codec's output at matched bpp, side by side.

A reference codec (dqcodec's model) sets the rate; every other codec is run at the quality
setting whose file size comes closest to that rate on the same image, found by bisection over
its settings (file size grows monotonically with quality for these encoders).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval import metrics
from dqcodec.eval.runner import RDCodec

# Settings searched for each classical codec, ordered from the lowest to the highest rate.
MATCH_SETTINGS = {
    "jpeg": tuple(range(1, 101)),
    "jpeg444": tuple(range(1, 101)),
    "webp": tuple(range(0, 101)),
    "jpeg2000": tuple(range(600, 3, -1)),
    "avif": tuple(range(0, 101)),
    "avif420": tuple(range(0, 101)),
    "hevc": tuple(range(0, 101)),
    "hevc420": tuple(range(0, 101)),
    "bpg": tuple(range(51, -1, -1)),
    "jpegxl": tuple(range(0, 101)),
}


@dataclass(frozen=True)
class Panel:
    """One decoded image and the caption facts about it."""

    title: str
    pixels: np.ndarray  # (H, W, 3) uint8, the whole image
    bpp: float | None  # None for the original
    psnr: float | None  # dB on the whole image; None for the original


@dataclass(frozen=True)
class Crop:
    """A square window of the image, in pixels."""

    left: int
    top: int
    size: int


def coded_panel(codec: RDCodec, image: np.ndarray, point, title: str) -> Panel:
    """Run ``codec`` at ``point`` on ``image`` ((H, W, 3) uint8) and caption the result."""
    coded = codec.run(image, point)
    height, width = image.shape[:2]
    return Panel(title, coded.decoded, metrics.bpp(len(coded.data), height, width), metrics.psnr(image, coded.decoded))


def matched_panel(codec: RDCodec, image: np.ndarray, target_bpp: float) -> Panel:
    """``codec`` on ``image`` at the setting of :data:`MATCH_SETTINGS` whose bpp is closest to ``target_bpp``."""
    if codec.name not in MATCH_SETTINGS:
        raise DQCodecError(f"codec {codec.name!r} cannot be matched in bpp; choose from {', '.join(MATCH_SETTINGS)}")
    settings = MATCH_SETTINGS[codec.name]
    tried: dict[int, Panel] = {}

    def panel_at(index: int) -> Panel:
        if index not in tried:
            tried[index] = coded_panel(codec, image, settings[index], f"{codec.label} @ {settings[index]}")
        return tried[index]

    # Bisection for the first setting whose rate reaches the target, then the closer of it and its predecessor.
    low, high = 0, len(settings) - 1
    while low < high:
        middle = (low + high) // 2
        if panel_at(middle).bpp < target_bpp:
            low = middle + 1
        else:
            high = middle
    candidates = [panel_at(index) for index in (low - 1, low) if index >= 0]
    best = min(candidates, key=lambda panel: abs(panel.bpp - target_bpp))
    if best is tried.get(0) and best.bpp > target_bpp:
        return Panel(best.title + " (its lowest rate)", best.pixels, best.bpp, best.psnr)
    return best


def centred_crop(image: np.ndarray, size: int) -> Crop:
    """The ``size`` × ``size`` window in the middle of ``image`` (clipped to the image)."""
    height, width = image.shape[:2]
    size = min(size, height, width)
    return Crop((width - size) // 2, (height - size) // 2, size)


def draw_comparison(panels: list[Panel], crop: Crop, title: str, out_path: Path, scale: int = 2) -> Path:
    """Write one PNG with the crop of every panel side by side, each captioned with bpp and PSNR.

    Crops are enlarged ``scale`` times with nearest-neighbour sampling so artefacts stay visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = panels[0].pixels.shape[:2]
    if crop.left < 0 or crop.top < 0 or crop.left + crop.size > width or crop.top + crop.size > height:
        raise DQCodecError(f"crop {crop} does not fit in the {width}x{height} image")
    dpi = 100
    panel_inches = crop.size * scale / dpi
    figure, axes = plt.subplots(
        1, len(panels), figsize=(panel_inches * len(panels), panel_inches + 0.9), dpi=dpi, squeeze=False
    )
    for axis, panel in zip(axes[0], panels):
        window = panel.pixels[crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]
        axis.imshow(window, interpolation="nearest")
        caption = panel.title
        if panel.bpp is not None:
            caption += f"\n{panel.bpp:.3f} bpp, {panel.psnr:.2f} dB"
        axis.set_title(caption, fontsize=9)
        axis.set_axis_off()
    figure.suptitle(f"{title} — crop {crop.size}×{crop.size} at ({crop.left}, {crop.top}), ×{scale}; PSNR on the whole image")
    figure.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=dpi)
    plt.close(figure)
    return out_path
