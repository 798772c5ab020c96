"""``dqcodec study lossless``: lossless .dqc files of a DQ-AE against their evaluated bits/dim and
against PNG, WebP lossless and JPEG XL lossless.

For a lossless DQ-AE model (``dqcodec export-lossless``) and two image sets — the local patch
test split (the DQ-AE patch data set's, a fixed random subset: the one ``dqcodec likelihood MODEL
--test-images N`` measures) and the first Kodak images — every image is coded to a real
``.dqc`` file, decoded and compared pixel for pixel. Per set:

- **evaluated**: the honest bits/dim of ``dqcodec likelihood`` on the same images: the float32
  head's -log2 p(x | codes) plus the code indices' bits under the model's index prior (the
  prior ``dqcodec likelihood`` fits: same training subset);
- **streams** and **file**: the real bytes, without and with the container (header, stream
  lengths, CRC), as bits/dim; the gap of the streams to the evaluated figure is what rounding
  the tables and the range coder cost;
- PNG (Pillow, optimize), WebP lossless (Pillow, method 6) and JPEG XL lossless (``cjxl -d 0``,
  where the binary is installed) of the same pixels;
- encode and decode seconds per image (in this process, the model loaded once, ``--threads``
  torch threads).

It also checks what the exactness rests on (:func:`determinism`): the float64 decoder's head
parameters of a 256 x 256 Kodak crop with 1 and 2 torch threads and alone or in a batch of two,
and the integers they round to.
"""

import argparse
import copy
import io
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


DEFAULT_MODEL = Path("runs/dqae-2level/model/dqae-k256-128-lossless.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, metavar="PATH",
                        help="a lossless DQ-AE model (dqcodec export-lossless; default %(default)s)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="the shared data folder (patches and kodak/; default: $DQCODEC_DATA or ../shared/data)")
    parser.add_argument("--patches", type=int, default=256, metavar="N", help="patch test images to code (default %(default)s)")
    parser.add_argument("--kodak", type=int, default=4, metavar="N", help="Kodak images to code, from kodim01 (default %(default)s)")
    parser.add_argument("--tile-size", type=int, default=None, metavar="N",
                        help="tile size of the Kodak files (default: dqcodec encode's); patches are one tile")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default %(default)s)")


def _classical_bytes(pixels: np.ndarray, folder: Path) -> dict[str, int | None]:
    """Bytes of PNG (optimize), WebP lossless (method 6) and JPEG XL lossless (None without cjxl)."""
    image = Image.fromarray(pixels)
    sizes = {}
    for name, options in (("png", {"format": "PNG", "optimize": True}),
                          ("webp", {"format": "WEBP", "lossless": True, "quality": 100, "method": 6})):
        buffer = io.BytesIO()
        image.save(buffer, **options)
        sizes[name] = buffer.tell()
    sizes["jxl"] = None
    if shutil.which("cjxl"):
        source, target = folder / "image.png", folder / "image.jxl"
        image.save(source)
        subprocess.run(["cjxl", str(source), str(target), "-d", "0", "--quiet"], check=True, capture_output=True)
        sizes["jxl"] = target.stat().st_size
    return sizes


def _evaluated_bits(net, images: np.ndarray) -> tuple[float, float]:
    """(reconstruction bits, index bits) of (N, H, W, 3) ``images`` as ``dqcodec likelihood``
    counts them: float32 head, indices under the model's stored priors."""
    from dqcodec.eval.likelihood import encode_images
    from dqcodec.models.dqae_lossless import level_name

    encoded = encode_images(net, images, batch_size=64, desc="evaluating")
    index_bits = 0.0
    for level, prior in enumerate(net.index_priors):
        side = {level_name(level + 1): encoded.indices[level + 1]} if level + 1 < net.num_levels else {}
        index_bits += prior.bits(encoded.indices[level], side)
    return float(encoded.reconstruction_bits.sum()), index_bits


def measure_set(name: str, images: list[np.ndarray], model: Path, net, tile_size: int | None) -> dict:
    """Code every image of one set; -> totals in bits/dim and per-image medians of the seconds."""
    from dqcodec.codec import api
    from dqcodec.codec.container import unpack

    dims = sum(image.size for image in images)
    totals = {"file": 0, "streams": 0, "png": 0, "webp": 0, "jxl": 0}
    encode_seconds, decode_seconds, exact = [], [], 0
    reconstruction = index = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for pixels in images:
            started = time.perf_counter()
            data = api.encode(pixels, model=str(model), lossless=True, tile_size=tile_size)
            encode_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            decoded = np.asarray(api.decode(data, model=str(model)))
            decode_seconds.append(time.perf_counter() - started)
            exact += int(np.array_equal(decoded, pixels))
            totals["file"] += 8 * len(data)
            totals["streams"] += 8 * sum(len(stream) for stream in unpack(data)[1])
            for codec, size in _classical_bytes(pixels, Path(folder)).items():
                totals[codec] = None if size is None or totals[codec] is None else totals[codec] + 8 * size
            bits = _evaluated_bits(net, pixels[None])
            reconstruction += bits[0]
            index += bits[1]
    evaluated = reconstruction + index
    per_dim = {key: (None if value is None else value / dims) for key, value in totals.items()}
    return {
        "set": name,
        "images": len(images),
        "decoded_exactly": exact,
        "evaluated_bits_per_dim": evaluated / dims,
        "evaluated_reconstruction_bits_per_dim": reconstruction / dims,
        "evaluated_index_bits_per_dim": index / dims,
        "stream_bits_per_dim": per_dim["streams"],
        "file_bits_per_dim": per_dim["file"],
        "streams_vs_evaluated_percent": 100 * (totals["streams"] - evaluated) / evaluated,
        "header_bytes_per_image": (totals["file"] - totals["streams"]) / 8 / len(images),
        "png_bits_per_dim": per_dim["png"],
        "webp_bits_per_dim": per_dim["webp"],
        "jxl_bits_per_dim": per_dim["jxl"],
        "encode_seconds_median": statistics.median(encode_seconds),
        "decode_seconds_median": statistics.median(decode_seconds),
    }


def determinism(net, crops: list[np.ndarray]) -> dict:
    """Max |difference| of the float64 head parameters of ``crops[0]`` (H, W, 3) uint8 under 2
    torch threads and in a batch with ``crops[1]``, against 1 thread alone; whether the code
    indices and the rounded integer parameters are equal."""
    import torch

    from dqcodec.models.mixture_tables import quantize_parameters

    network = copy.deepcopy(net).double()
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).double() / 255
    threads = torch.get_num_threads()
    runs = {}
    with torch.no_grad():
        for name, (count, images) in {"1 thread": (1, batch[:1]), "2 threads": (2, batch[:1]),
                                      "batch of 2": (1, batch)}.items():
            torch.set_num_threads(count)
            indices = network.encode(images)
            runs[name] = ([level[:1].numpy() for level in indices], network.head_parameters(indices)[:1].numpy())
    torch.set_num_threads(threads)
    weights = network.pixel_weight.numpy()
    reference_indices, reference = runs.pop("1 thread")
    rounded = quantize_parameters(reference, network.config.mixture_components, weights)
    checks = {}
    for name, (indices, parameters) in runs.items():
        other = quantize_parameters(parameters, network.config.mixture_components, weights)
        checks[name] = {
            "max_abs_parameter_difference": float(np.abs(parameters - reference).max()),
            "indices_equal": all(np.array_equal(a, b) for a, b in zip(indices, reference_indices, strict=True)),
            "integers_equal": all(np.array_equal(getattr(rounded, field), getattr(other, field))
                                  for field in ("weights", "centres", "log_scales", "couplings")),
        }
    return checks


def markdown(summary: dict) -> str:
    rows = ["| set | images | evaluated (honest) | streams | file (with header) | streams vs evaluated "
            "| PNG | WebP lossless | JPEG XL lossless | encode s | decode s | exact |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in summary["sets"]:
        jxl = "absent" if result["jxl_bits_per_dim"] is None else f"{result['jxl_bits_per_dim']:.3f}"
        rows.append(
            f"| {result['set']} | {result['images']} | {result['evaluated_bits_per_dim']:.4f} "
            f"| {result['stream_bits_per_dim']:.4f} | {result['file_bits_per_dim']:.4f} "
            f"| {result['streams_vs_evaluated_percent']:+.2f} % | {result['png_bits_per_dim']:.3f} "
            f"| {result['webp_bits_per_dim']:.3f} | {jxl} | {result['encode_seconds_median']:.2f} "
            f"| {result['decode_seconds_median']:.2f} | {result['decoded_exactly']}/{result['images']} |")
    checks = [f"- {name}: head parameters differ by at most {check['max_abs_parameter_difference']:.3g}; code indices "
              f"{'equal' if check['indices_equal'] else 'DIFFERENT'}; rounded integers "
              f"{'equal' if check['integers_equal'] else 'DIFFERENT'}" for name, check in summary["determinism"].items()]
    return "\n".join([
        "# Lossless .dqc files of a DQ-AE",
        "",
        f"Model: `{summary['model']}` ({summary['description']}). Bits per sub-pixel (bits/dim, 8-bit RGB); "
        f"'evaluated' is the honest bits/dim of `dqcodec likelihood` on the same images (float32 head + index prior); "
        f"seconds are medians per image, {summary['threads']} torch thread(s), the model loaded once; "
        f"JPEG XL: {summary['jxl']}. Kodak files in tiles of {summary['kodak_tile_size']} (0: whole), evaluated on "
        f"whole images; patches are one tile.",
        "",
        *rows,
        "",
        "Exactness (float64 decoder, 256 x 256 crops of the first two Kodak images, against 1 thread alone):",
        "",
        *checks,
        "",
        f"Reproduce: `{summary['command']}` ({summary['minutes']:.1f} min).",
    ])


def run(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.eval.studies.report import write_summary
    from dqcodec.models.dqae_lossless import LosslessDQAE
    from dqcodec.paths import data_dir
    from dqcodec.train.checkpoint import load_model_as
    from dqcodec.train.likelihood_data import fixed_subset, load_patches

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    stem = args.model.with_suffix("") if args.model.suffix == ".json" else args.model
    net, info = load_model_as(stem, LosslessDQAE, str(args.model), "a lossless DQ-AE (dqcodec export-lossless)")
    folder = args.data or data_dir()
    patches = fixed_subset(load_patches(folder, info["training"]["crop"], "test").images, args.patches)
    kodak = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((folder / "kodak").glob("*.png"))[: args.kodak]]
    sets = [measure_set(f"patches {info['training']['crop']} px (test split)", list(patches), args.model, net, None)]
    tile_size = net.default_tile_size if args.tile_size is None else args.tile_size
    if kodak:
        sets.append(measure_set("Kodak", kodak, args.model, net, tile_size))
    crops = [np.asarray(Image.open(path).convert("RGB"))[:256, :256] for path in sorted((folder / "kodak").glob("*.png"))[:2]]
    summary = {
        "model": str(args.model), "description": info.get("description", ""), "threads": args.threads,
        "jxl": "cjxl -d 0 (libjxl, default effort)" if shutil.which("cjxl") else "absent (no cjxl binary)",
        "kodak_tile_size": tile_size, "determinism": determinism(net, crops),
        "command": (f"dqcodec study lossless --model {args.model} --patches {args.patches} --kodak {args.kodak}"
                    + (f" --tile-size {args.tile_size}" if args.tile_size is not None else "")),
        "sets": sets, "minutes": (time.perf_counter() - started) / 60,
    }
    write_summary(args.out, summary, markdown(summary))
    print(markdown(summary))
    return 0
