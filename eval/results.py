"""Rate-distortion results in CompressAI's JSON layout: reading curves, naming anchors, writing files.

The layout (as in ``../shared/anchors/kodak``)::

    {"name": str, "description": str,
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...],
                 "encoding_time": [...], "decoding_time": [...]}}

one list entry per RD point, each the mean over the images. Files written by ``dqcodec eval``
add ``kind``, ``quality``, ``images``, ``software`` and a ``per_image`` section beside these.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.metrics import ms_ssim_db
from dqcodec.paths import anchors_dir

METRICS = ("psnr", "ms-ssim")


@dataclass(frozen=True)
class RDCurve:
    """One codec's RD points, read from a results file."""

    name: str  # legend label
    kind: str  # "dqcodec", "classical" or "anchor" (published figures)
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]  # dB, mean over images
    ms_ssim: tuple[float, ...]  # in [0, 1], mean over images; empty when the file has none
    path: Path

    def metric(self, metric: str) -> tuple[float, ...]:
        """The quality values for ``metric``: PSNR in dB, or MS-SSIM in dB (``-10 log10(1 - x)``)."""
        if metric == "psnr":
            return self.psnr
        if metric == "ms-ssim":
            if not self.ms_ssim:
                raise DQCodecError(f"{self.path} has no 'ms-ssim-rgb' results")
            return tuple(ms_ssim_db(value) for value in self.ms_ssim)
        raise DQCodecError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def resolve_curve_path(name_or_path: str) -> Path:
    """A results file: ``name_or_path`` itself if it exists, else the published anchor of that name.

    ``jpeg`` and ``jpeg.json`` both name ``<anchors>/jpeg.json`` (see :func:`dqcodec.paths.anchors_dir`).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    anchor = anchors_dir() / (name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json")
    if anchor.is_file():
        return anchor
    raise DQCodecError(f"no results file {name_or_path!r} (neither a file nor an anchor in {anchors_dir()})")


def load_curve(name_or_path: str | Path) -> RDCurve:
    """Read an RD curve from a CompressAI-layout JSON file or a published anchor's name."""
    path = resolve_curve_path(str(name_or_path))
    try:
        content = json.loads(path.read_text())
        results = content["results"]
        bpp = tuple(float(value) for value in results["bpp"])
        psnr = tuple(float(value) for value in results["psnr-rgb"])
        ms_ssim = tuple(float(value) for value in results.get("ms-ssim-rgb", ()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DQCodecError(f"{path} is not an RD results file in CompressAI's layout ({error!r})") from None
    if len(psnr) != len(bpp) or (ms_ssim and len(ms_ssim) != len(bpp)):
        raise DQCodecError(f"{path}: 'bpp', 'psnr-rgb' and 'ms-ssim-rgb' have different lengths")
    is_anchor = path.resolve().parent == anchors_dir().resolve()
    kind = "anchor" if is_anchor else content.get("kind", "anchor")
    return RDCurve(content.get("name", path.stem), kind, bpp, psnr, ms_ssim, path)


def write_results(path: Path, content: dict) -> None:
    """Write one results file (JSON, indented) through a temporary name, so no half file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    temporary.replace(path)
