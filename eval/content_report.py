"""Content beyond the photographs a codec was trained on, measured with real files.

Three measurements for each model (``dqcodec content``): how far flat colours come back off (the
RGB cube's 8 corners, greys and random colours; the largest error of any pixel and channel, in
8-bit code values), bpp and PSNR on photographs with saturated colours next to Pillow's JPEG at
the same bpp, and bpp and PSNR on the synthetic test images of :mod:`dqcodec.content`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dqcodec import content
from dqcodec.eval.classical import jpeg
from dqcodec.eval.metrics import psnr
from dqcodec.eval.ours import run_model
from dqcodec.paths import data_dir

JPEG_QUALITIES = tuple(range(5, 100, 5))
RANDOM_COLOURS = 64


@dataclass(frozen=True)
class SaturatedPhoto:
    """A photograph of ``photos/`` with its saturation multiplied by ``factor`` (1: as it is)."""

    name: str
    factor: float

    @property
    def label(self) -> str:
        return self.name if self.factor == 1 else f"{self.name} saturation x{self.factor:g}"

    def pixels(self) -> np.ndarray:
        image = np.asarray(Image.open(data_dir() / "photos" / self.name).convert("RGB"))
        return image if self.factor == 1 else content.saturate(image, self.factor)


# Validation-split photographs (never trained on): a flower on a green background, with its
# saturation doubled and quadrupled, and a hot-air balloon of saturated colours as it is.
DEFAULT_PHOTOS = (SaturatedPhoto("budgie-010.jpg", 2.0), SaturatedPhoto("budgie-010.jpg", 4.0),
                  SaturatedPhoto("unsplash-010.jpg", 1.0))


def random_colours(count: int = RANDOM_COLOURS, seed: int = 0) -> list[tuple[int, int, int]]:
    """``count`` uniformly drawn 8-bit RGB colours (reproducible for a seed)."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in colour) for colour in rng.integers(0, 256, size=(count, 3))]


def flat_error(model: str, colour: tuple[int, int, int], height: int = 24, width: int = 40) -> int:
    """Largest |decoded - colour| over the pixels and channels of a flat image through ``model``."""
    decoded = run_model(content.flat(colour, height, width), model).decoded
    return int(np.abs(decoded.astype(np.int64) - np.asarray(colour)).max())


def flat_colour_errors(model: str) -> dict[str, int]:
    """Per named flat colour (:data:`dqcodec.content.FLAT_COLOURS`) its largest error, and under
    ``random-N`` the largest over N random colours."""
    errors = {name: flat_error(model, colour) for name, colour in content.FLAT_COLOURS.items()}
    errors[f"random-{RANDOM_COLOURS}"] = max(flat_error(model, colour, 16, 16) for colour in random_colours())
    return errors


def jpeg_curve(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, PSNR) of Pillow's JPEG (4:2:0) at ``JPEG_QUALITIES``, by increasing bpp."""
    pixels = image.shape[0] * image.shape[1]
    points = sorted((8 * len(coded.data) / pixels, psnr(image, coded.decoded))
                    for coded in (jpeg(image, quality) for quality in JPEG_QUALITIES))
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def psnr_at(curve: tuple[np.ndarray, np.ndarray], bpp: float) -> float | None:
    """A curve's PSNR at ``bpp`` (linear in log bpp), None outside its range."""
    rates, values = curve
    if not rates[0] <= bpp <= rates[-1]:
        return None
    return float(np.interp(np.log(bpp), np.log(rates), values))


def coded_figures(image: np.ndarray, model: str) -> dict:
    coded = run_model(image, model)
    return {"bpp": 8 * len(coded.data) / (image.shape[0] * image.shape[1]), "psnr": psnr(image, coded.decoded)}


def measure(models: list[str], photos=DEFAULT_PHOTOS, synthetic_size: int = 128, log=print) -> dict:
    """Every measurement for ``models`` (model names or checkpoint paths)."""
    report = {"flat_colours": {}, "saturated_photos": {}, "synthetic": {}}
    for model in models:
        report["flat_colours"][model] = flat_colour_errors(model)
        log(f"{model}: flat colours, largest error {max(report['flat_colours'][model].values())}")
    for photo in photos:
        image = photo.pixels()
        curve = jpeg_curve(image)
        entry = {"size": [image.shape[1], image.shape[0]],
                 "jpeg": {"bpp": curve[0].tolist(), "psnr": curve[1].tolist()}, "models": {}}
        for model in models:
            figures = coded_figures(image, model)
            figures["jpeg_psnr_at_bpp"] = psnr_at(curve, figures["bpp"])
            entry["models"][model] = figures
            log(f"{photo.label}, {model}: {figures['bpp']:.3f} bpp, {figures['psnr']:.2f} dB")
        report["saturated_photos"][photo.label] = entry
    images = content.test_set(synthetic_size)
    for model in models:
        report["synthetic"][model] = {name: coded_figures(image, model) for name, image in images.items()
                                      if not name.startswith("flat-")}
    return report


def _name(model: str) -> str:
    return Path(model).stem if model.endswith((".json", ".safetensors")) else model


def markdown(report: dict) -> str:
    """The report's tables in Markdown."""
    lines = ["# Content beyond photographs", "",
             "## Flat colours: largest error of any pixel and channel (8-bit code values)", ""]
    models = list(report["flat_colours"])
    colours = list(next(iter(report["flat_colours"].values())))
    lines += ["| model | " + " | ".join(colours) + " |", "| --- |" + " ---: |" * len(colours)]
    for model in models:
        lines.append(f"| {_name(model)} | " + " | ".join(str(v) for v in report["flat_colours"][model].values()) + " |")
    lines += ["", "## Photographs with saturated colours (real files)", "",
              "| photo | model | bpp | PSNR (dB) | Pillow JPEG 4:2:0 at that bpp (dB) |",
              "| --- | --- | ---: | ---: | ---: |"]
    for label, entry in report["saturated_photos"].items():
        for model, figures in entry["models"].items():
            jpeg_psnr = figures["jpeg_psnr_at_bpp"]
            jpeg_text = "outside JPEG's range" if jpeg_psnr is None else f"{jpeg_psnr:.2f}"
            lines.append(f"| {label} | {_name(model)} | {figures['bpp']:.3f} | {figures['psnr']:.2f} | {jpeg_text} |")
    lines += ["", "## Synthetic images: PSNR in dB (bpp)", ""]
    names = list(next(iter(report["synthetic"].values())))
    lines += ["| model | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for model, figures in report["synthetic"].items():
        cells = [f"{figures[name]['psnr']:.1f} ({figures[name]['bpp']:.2f})" for name in names]
        lines.append(f"| {_name(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path, stem: str = "summary") -> tuple[Path, Path]:
    """Write ``out/<stem>.json`` and ``out/<stem>.md``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
