"""Large images: time and peak memory of tiled coding next to whole-image coding, and the seams.

``dqcodec bench --large 1 6 24 8192x8192`` builds a photograph of each size (megapixels at
3:2, or width x height) as a
mosaic of the Kodak images, codes it with the default tiling and whole (``--tile-size 0``, as
release 0.2.0 did) and prints, per size and arm, seconds and peak resident memory of encoding
(image file in -> .dqc bytes) and decoding (.dqc bytes -> image), and the seam measurement.

Every run is a fresh process (``python -m dqcodec.eval.large``), so its peak is its own: the
child loads torch and the model, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
does the one timed call, and reports the peak (VmHWM) with the resident size before the call
(torch and the model: what any run pays). The decoded pixels go back for the seam measurement
after the peak is read.

Seams (:func:`seam_report`): PSNR of the pixels within ``band`` pixels of a tile border next to
that of the pixels farther away, for the tiled and the whole-image decode of the same image; if
tiles showed seams, the tiled band would fall below the whole-image band. Also the mean step
error across the tile borders (|decoded step - original step| between the two pixels that meet
there) next to the same across the other 8-pixel block borders.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dqcodec.eval.metrics import psnr_from_mse
from dqcodec.eval.rd import load_images


def mosaic(images: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """A (height, width, 3) uint8 photograph made of ``images`` (turned to landscape), placed in
    rows of equal cells in turn and cut at the border."""
    landscape = [image if image.shape[1] >= image.shape[0] else np.rot90(image) for image in images]
    cell_height, cell_width = min(i.shape[0] for i in landscape), min(i.shape[1] for i in landscape)
    rows, columns = -(-height // cell_height), -(-width // cell_width)
    out = np.empty((rows * cell_height, columns * cell_width, 3), dtype=np.uint8)
    for row in range(rows):
        for column in range(columns):
            image = landscape[(row * columns + column) % len(landscape)][:cell_height, :cell_width]
            out[row * cell_height : (row + 1) * cell_height, column * cell_width : (column + 1) * cell_width] = image
    return np.ascontiguousarray(out[:height, :width])


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` (pixels) or megapixels (``"24"``: a 3:2 image of about 24 million pixels, sides
    multiples of 8) -> (width, height). Raises ValueError for anything else."""
    if "x" in text:
        width, height = (int(part) for part in text.split("x"))
    else:
        height = round((max(float(text), 0.0) * 1e6 / 1.5) ** 0.5 / 8) * 8
        width = round(1.5 * height / 8) * 8
    if width < 1 or height < 1:
        raise ValueError(f"not an image size: {text!r}")
    return width, height


# ---- one measured call, in its own process ------------------------------------------------------


def _memory(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: resident now; VmHWM: the peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux 4.0+); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _child(argv: list[str]) -> None:
    """``python -m dqcodec.eval.large {encode,decode} IN OUT --model M [--tile-size N] [--workers W]
    [--pixels NPY]``: one timed call; prints a JSON line {seconds, peak_bytes, before_bytes}."""
    parser = argparse.ArgumentParser(prog="python -m dqcodec.eval.large")
    parser.add_argument("action", choices=("encode", "decode"))
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pixels", default=None, help="decode: save the decoded pixels here (.npy)")
    args = parser.parse_args(argv)

    from dqcodec.codec import api
    from dqcodec.models import registry

    registry.load_model(api.resolve_model_name(model=args.model))
    options = {"max_pixels": 2**26, "workers": args.workers}
    before = _memory("VmRSS")
    exact_peak = _reset_peak()
    start = time.perf_counter()
    if args.action == "encode":
        data = api.encode(args.source, model=args.model, tile_size=args.tile_size, **options)
    else:
        image = api.decode(args.source, **options)
    seconds = time.perf_counter() - start
    peak = _memory("VmHWM")
    if args.action == "encode":
        Path(args.target).write_bytes(data)
    elif args.pixels:
        np.save(args.pixels, np.asarray(image.convert("RGB")))
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "before_bytes": before, "exact_peak": exact_peak}))


@dataclass
class Run:
    """One measured call: wall seconds and resident memory in bytes (peak during the call, and
    before it, after torch and the model were loaded)."""

    seconds: float
    peak_bytes: int
    before_bytes: int


def measure(action: str, source: Path, target: Path, model: str, tile_size: int | None, workers: int,
            threads: int, pixels: Path | None = None) -> Run:
    """Run one ``encode`` or ``decode`` in a fresh process with ``threads`` torch (OpenMP)
    threads and return its :class:`Run`."""
    command = [sys.executable, "-m", "dqcodec.eval.large", action, str(source), str(target), "--model", model,
               "--workers", str(workers)]
    if tile_size is not None:
        command += ["--tile-size", str(tile_size)]
    if pixels is not None:
        command += ["--pixels", str(pixels)]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    return Run(facts["seconds"], facts["peak_bytes"], facts["before_bytes"])


# ---- seams ---------------------------------------------------------------------------------------


def border_mask(height: int, width: int, stride: int, band: int) -> np.ndarray:
    """(height, width) bool: True within ``band`` pixels of a tile border (every ``stride`` pixels)."""
    rows = np.arange(height) % stride
    columns = np.arange(width) % stride
    near_rows = (np.minimum(rows, stride - rows) < band) & (np.arange(height) >= band)
    near_columns = (np.minimum(columns, stride - columns) < band) & (np.arange(width) >= band)
    return near_rows[:, None] | near_columns[None, :]


def _psnr(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> float | None:
    if not mask.any():
        return None
    error = original[mask].astype(np.float64) - decoded[mask].astype(np.float64)
    return psnr_from_mse(float(np.mean(error**2)))


def _step_error(original: np.ndarray, decoded: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> float | None:
    """Mean |decoded step - original step| between pixel p-1 and p, at the given rows (steps
    down) and columns (steps across); None where there are none."""
    errors = []
    for positions, axis in ((rows, 0), (columns, 1)):
        if len(positions):
            steps = [np.take(image, positions, axis=axis).astype(np.float64)
                     - np.take(image, positions - 1, axis=axis) for image in (decoded, original)]
            errors.append(np.abs(steps[0] - steps[1]).reshape(-1))
    return float(np.concatenate(errors).mean()) if errors else None


def seam_report(original: np.ndarray, tiled: np.ndarray, whole: np.ndarray, stride: int, band: int = 4) -> dict:
    """Seam visibility of ``tiled`` (tiles starting every ``stride`` pixels) against ``whole``.

    Returns PSNR (dB) of the border band (pixels within ``band`` of a tile border) and of the
    rest, for both decodes, and the mean step error across the tile borders and across the
    other block borders (every 8 pixels), for both decodes.
    """
    height, width, _ = original.shape
    near = border_mask(height, width, stride, band)
    report = {"stride": stride, "band": band, "band_pixels": int(near.sum())}
    tile_rows, tile_columns = np.arange(stride, height, stride), np.arange(stride, width, stride)
    block_rows = np.setdiff1d(np.arange(8, height, 8), tile_rows)
    block_columns = np.setdiff1d(np.arange(8, width, 8), tile_columns)
    for name, decoded in (("tiled", tiled), ("whole", whole)):
        report[name] = {
            "psnr_border_band": _psnr(original, decoded, near),
            "psnr_interior": _psnr(original, decoded, ~near),
            "psnr": _psnr(original, decoded, np.ones_like(near)),
            "step_error_tile_borders": _step_error(original, decoded, tile_rows, tile_columns),
            "step_error_block_borders": _step_error(original, decoded, block_rows, block_columns),
        }
    return report


# ---- the benchmark ------------------------------------------------------------------------------


def run_large(sizes: list[tuple[int, int]], model: str, tile_size: int, workers: int, threads: int, kodak: Path,
              folder: Path) -> list[dict]:
    """For each (width, height): the mosaic photograph, coded tiled (``tile_size``) and whole,
    each call measured in its own process; returns one dict per size."""
    pictures = [image.pixels for image in load_images(kodak)]
    results = []
    for width, height in sizes:
        original = mosaic(pictures, width, height)
        source = folder / f"photo-{width}x{height}.png"
        Image.fromarray(original).save(source, compress_level=1)
        entry = {"width": width, "height": height, "megapixels": width * height / 1e6}
        decoded = {}
        for arm, size in (("tiled", tile_size), ("whole", 0)):
            coded = folder / f"photo-{width}x{height}-{arm}.dqc"
            pixels = folder / f"photo-{width}x{height}-{arm}.npy"
            encoded = measure("encode", source, coded, model, size, workers, threads)
            decoded_run = measure("decode", coded, folder / "unused", model, None, workers, threads, pixels)
            decoded[arm] = np.load(pixels)
            pixels.unlink()
            entry[arm] = {"encode": asdict(encoded), "decode": asdict(decoded_run), "bytes": coded.stat().st_size,
                          "bpp": 8 * coded.stat().st_size / (width * height)}
            coded.unlink()
        entry["seams"] = seam_report(original, decoded["tiled"], decoded["whole"], tile_size)
        source.unlink()
        results.append(entry)
    return results


def format_large(results: list[dict], model: str, tile_size: int, workers: int, threads: int) -> str:
    """Markdown tables: time and peak memory per size and arm, then the seam measurement."""
    lines = [
        f"Model {model}, {workers} worker(s), {threads} torch thread(s); each call a fresh process. "
        f"Peak RSS is the whole process (torch and the model included: 'before' is what it held "
        f"before the call).",
        "",
        "| image | coding | encode s | s/MP | peak RSS MB | decode s | s/MP | peak RSS MB | bpp |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in results:
        megapixels = entry["megapixels"]
        for arm, label in (("tiled", f"tiles of {tile_size}"), ("whole", "whole image")):
            encode, decode = entry[arm]["encode"], entry[arm]["decode"]
            lines.append(
                f"| {entry['width']}x{entry['height']} ({megapixels:.1f} MP) | {label} "
                f"| {encode['seconds']:.1f} | {encode['seconds'] / megapixels:.2f} "
                f"| {encode['peak_bytes'] / 2**20:.0f} (before {encode['before_bytes'] / 2**20:.0f}) "
                f"| {decode['seconds']:.1f} | {decode['seconds'] / megapixels:.2f} "
                f"| {decode['peak_bytes'] / 2**20:.0f} (before {decode['before_bytes'] / 2**20:.0f}) "
                f"| {entry[arm]['bpp']:.4f} |"
            )
    lines += [
        "",
        "Seams: PSNR (dB) within 4 px of a tile border vs farther away; mean step error (8-bit levels) "
        "across tile borders vs across the other 8-px block borders.",
        "",
        "| image | coding | PSNR border band | PSNR interior | PSNR all | step error tile borders | step error block borders |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in results:
        for arm in ("tiled", "whole"):
            seams = entry["seams"][arm]
            cells = [seams[key] for key in ("psnr_border_band", "psnr_interior", "psnr", "step_error_tile_borders",
                                            "step_error_block_borders")]
            lines.append(f"| {entry['width']}x{entry['height']} | {arm} | "
                         + " | ".join("-" if cell is None else f"{cell:.2f}" for cell in cells) + " |")
    return "\n".join(lines)


def run_large_bench(args) -> int:
    """``dqcodec bench --large MP [MP ...]``: print (and with --json write) the large-image tables."""
    from dqcodec.codec.tiles import DEFAULT_TILE_SIZE
    from dqcodec.eval.ours import default_model_name
    from dqcodec.paths import kodak_dir

    model = args.model or default_model_name()
    tile_size = args.tile_size or DEFAULT_TILE_SIZE
    with tempfile.TemporaryDirectory(prefix="dqcodec-large-") as folder:
        results = run_large([parse_size(size) for size in args.large], model, tile_size, args.workers, args.threads, args.images or kodak_dir(),
                            Path(folder))
    print(format_large(results, model, tile_size, args.workers, args.threads))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        facts = {"model": model, "tile_size": tile_size, "workers": args.workers, "threads": args.threads,
                 "sizes": results}
        args.json.write_text(json.dumps(facts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    _child(sys.argv[1:])
