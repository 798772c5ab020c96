"""The evaluation sub-commands of ``dqcodec``: eval, bdrate, plot, compare, bench, content.

Each has ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` (see
:mod:`dqcodec.codec.cli`). Heavy libraries (torch, matplotlib, pillow-heif) are imported only
when a command runs, so ``--help`` stays fast.
"""

import argparse
import json
import sys
from pathlib import Path

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.results import RDCurve, load_curve
from dqcodec.eval.runner import RDCodec
from dqcodec.models.interface import MAX_RATE_LAMBDA
from dqcodec.paths import data_dir, kodak_dir

METRIC_TITLES = {"psnr": "PSNR-RGB", "ms-ssim": "MS-SSIM-RGB (dB)"}


def resolve_codec(name: str) -> RDCodec:
    """The codec that ``name`` means: a classical codec, one of our model families or models, or a
    checkpoint path."""
    from dqcodec.eval.classical import CLASSICAL_CODECS
    from dqcodec.eval.ours import family_names, our_codec

    if name in CLASSICAL_CODECS:
        return CLASSICAL_CODECS[name]
    try:
        codec = our_codec(name)
    except DQCodecError as error:
        raise DQCodecError(f"unknown codec {name!r} (classical: {', '.join(CLASSICAL_CODECS)}; {error})") from None
    if codec is None:
        raise DQCodecError(
            f"unknown codec {name!r}: not a classical codec ({', '.join(CLASSICAL_CODECS)}), "
            f"a dqcodec family ({', '.join(family_names())}), a shipped model name or an existing checkpoint path"
        )
    return codec


def _check_counts(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise DQCodecError("--limit must be at least 1")
    if args.threads < 1:
        raise DQCodecError("--threads must be at least 1")


def _software(kind: str) -> dict[str, str]:
    import importlib.metadata

    import torch

    versions = {"dqcodec": importlib.metadata.version("dqcodec"), "torch": torch.__version__}
    if kind == "classical":
        from dqcodec.eval.classical import software_versions

        versions.update(software_versions())
    return versions


# ---------------------------------------------------------------- eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codec", action="append", required=True, metavar="NAME",
        help="codec to sweep (repeatable): a dqcodec model family (all its levels), a model name, a checkpoint "
        "path, a folder of checkpoints of one family (all its levels), or jpeg, jpeg444, webp, jpeg2000, avif, avif420, hevc, hevc420, bpg, jpegxl",
    )
    parser.add_argument("--images", type=Path, default=None, metavar="DIR", help=f"image folder (default: {kodak_dir()})")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="folder for the results, one <codec>.json each (default: results/<name of the image folder>)",
    )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default: 1)")
    parser.add_argument(
        "--lambdas", type=float, nargs="+", default=None, metavar="L",
        help="for dqcodec models: encode each at every one of these encoder trade-offs (encode --lambda) "
        "instead of at its own; the results go to <codec>-lambdas.json",
    )


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.eval.ours import at_lambdas
    from dqcodec.eval.rd import load_images, sweep
    from dqcodec.eval.results import write_results

    images_dir = args.images or kodak_dir()
    out_dir = args.out or Path("results") / images_dir.name
    _check_counts(args)
    if args.lambdas and not all(0 < value <= MAX_RATE_LAMBDA for value in args.lambdas):  # also refuses nan
        raise DQCodecError(f"--lambdas must be numbers above 0 and at most {MAX_RATE_LAMBDA:g}")
    torch.set_num_threads(args.threads)

    codecs = []
    for name in args.codec:
        codec = resolve_codec(name)
        if args.lambdas:
            if codec.kind != "dqcodec":
                raise DQCodecError(f"--lambdas applies to dqcodec models, not to {name!r}")
            codec = at_lambdas(codec, args.lambdas)
        reason = codec.unavailable_reason()
        if reason is None:
            codecs.append(codec)
        else:
            print(f"dqcodec eval: skipping {name}: {reason}", file=sys.stderr)
    if not codecs:
        raise DQCodecError("none of the requested codecs can run here")
    images = load_images(images_dir, args.limit)

    for codec in codecs:
        content = sweep(codec, images)
        content["images"] = {"folder": str(images_dir), "count": len(images)}
        content["threads"] = args.threads
        content["software"] = _software(codec.kind)
        path = out_dir / f"{codec.name}.json"
        write_results(path, content)
        results = content["results"]
        print(f"{codec.label}: {path}")
        for point, bpp, psnr, ms_ssim in zip(codec.points, results["bpp"], results["psnr-rgb"], results["ms-ssim-rgb"]):
            print(f"  {point!s:>12}  {bpp:7.4f} bpp  {psnr:6.2f} dB  MS-SSIM {ms_ssim:.4f}")
    return 0


# ---------------------------------------------------------------- bdrate


def add_bdrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "curves", nargs="+", metavar="TEST.json",
        help="results files to measure (or names of published anchors, e.g. vtm)",
    )
    parser.add_argument(
        "--anchor", action="append", required=True, metavar="A.json",
        help="anchor curve (repeatable): a results file or a published anchor's name, e.g. jpeg, "
        "bpg_444_x265_ycbcr, compressai-bmshj2018-hyperprior_mse_cpu",
    )
    parser.add_argument("--metric", choices=("psnr", "ms-ssim", "both"), default="psnr", help="quality axis (default: psnr)")
    parser.add_argument(
        "--bd-psnr", action="store_true",
        help="tabulate the Bjontegaard quality delta (dB of PSNR, or of MS-SSIM in dB) instead of BD-rate",
    )
    parser.add_argument("--json", action="store_true", help="print JSON records (both deltas) instead of markdown tables")


def bdrate_records(tests: list[RDCurve], anchors: list[RDCurve], metrics: list[str]) -> list[dict]:
    """One record per (metric, test, anchor): BD-rate (%) and BD-metric (dB), or why it has none."""
    from dqcodec.eval.bdrate import bd_metric, bd_rate

    records = []
    for metric in metrics:
        for test in tests:
            for anchor in anchors:
                record = {"metric": metric, "test": test.name, "test_file": str(test.path),
                          "anchor": anchor.name, "anchor_file": str(anchor.path)}
                try:
                    arguments = (anchor.bpp, anchor.metric(metric), test.bpp, test.metric(metric))
                    record.update(bd_rate_percent=bd_rate(*arguments), bd_metric_db=bd_metric(*arguments), error=None)
                except DQCodecError as error:
                    record.update(bd_rate_percent=None, bd_metric_db=None, error=str(error))
                records.append(record)
    return records


def _signed(value: float, digits: int) -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0, so an exact tie never prints as "-0.0".
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def format_bdrate_tables(records: list[dict], quality_delta: bool = False) -> str:
    """Markdown: one table per metric, a row per test curve, a column per anchor.

    Cells hold BD-rate in %, or with ``quality_delta`` the BD quality difference in dB.
    """
    blocks = []
    for metric in dict.fromkeys(record["metric"] for record in records):
        rows = [record for record in records if record["metric"] == metric]
        # Curves are told apart by name and file: two results files of one codec (this run's and
        # an earlier one's) have the same name and must not share a column.
        anchors = _curve_labels([(record["anchor"], record["anchor_file"]) for record in rows])
        tests = _curve_labels([(record["test"], record["test_file"]) for record in rows])
        if quality_delta:
            heading = f"BD-{METRIC_TITLES[metric]} (dB, positive = better than the anchor at equal rate)"
        else:
            heading = f"BD-rate over {METRIC_TITLES[metric]} (%, negative = fewer bits than the anchor at equal quality)"
        lines = [
            heading,
            "",
            "| codec | " + " | ".join(anchors.values()) + " |",
            "| --- |" + " ---: |" * len(anchors),
        ]
        for test, test_label in tests.items():
            cells = []
            for anchor in anchors:
                record = next(r for r in rows if (r["test"], r["test_file"]) == test
                              and (r["anchor"], r["anchor_file"]) == anchor)
                if record["error"]:
                    cells.append("n/a")
                elif quality_delta:
                    cells.append(_signed(record["bd_metric_db"], 2))
                else:
                    cells.append(_signed(record["bd_rate_percent"], 1))
            lines.append(f"| {test_label} | " + " | ".join(cells) + " |")
        notes = [f"n/a: {r['test']} vs {r['anchor']}: {r['error']}" for r in rows if r["error"]]
        blocks.append("\n".join(lines + ([""] + notes if notes else [])))
    return "\n\n".join(blocks)


def _curve_labels(curves: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(name, file) of each curve, in first-seen order -> its label: the name, or "name (file)"
    where two files carry the same name."""
    distinct = list(dict.fromkeys(curves))
    names = [name for name, _ in distinct]
    return {(name, file): name if names.count(name) == 1 else f"{name} ({file})" for name, file in distinct}


def run_bdrate(args: argparse.Namespace) -> int:
    tests = [load_curve(name) for name in args.curves]
    anchors = [load_curve(name) for name in args.anchor]
    metrics = ["psnr", "ms-ssim"] if args.metric == "both" else [args.metric]
    records = bdrate_records(tests, anchors, metrics)
    print(json.dumps(records, indent=2) if args.json else format_bdrate_tables(records, args.bd_psnr))
    return 0


# ---------------------------------------------------------------- plot


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    from dqcodec.eval.plot import DEFAULT_ANCHORS

    parser.add_argument("curves", nargs="+", metavar="RESULTS.json", help="results files written by 'dqcodec eval'")
    parser.add_argument(
        "--anchor", action="append", default=None, metavar="NAME",
        help=f"published anchor to draw (repeatable; default: {', '.join(DEFAULT_ANCHORS)})",
    )
    parser.add_argument("--no-anchors", action="store_true", help="draw no published anchors")
    parser.add_argument("--dataset", default="Kodak", help="data set name for the titles (default: Kodak)")
    parser.add_argument("--max-bpp", type=float, default=2.0, help="right end of the bpp axis (default: 2)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/kodak"), metavar="DIR",
        help="folder for rd_psnr.{png,svg} and rd_ms-ssim.{png,svg} (default: results/kodak)",
    )


def run_plot(args: argparse.Namespace) -> int:
    from dqcodec.eval.plot import DEFAULT_ANCHORS, plot_rd

    anchor_names = [] if args.no_anchors else (args.anchor or list(DEFAULT_ANCHORS))
    curves = [load_curve(name) for name in args.curves] + [load_curve(name) for name in anchor_names]
    for metric in ("psnr", "ms-ssim"):
        drawable = [curve for curve in curves if metric == "psnr" or curve.ms_ssim]
        for path in plot_rd(drawable, metric, args.dataset, args.out / f"rd_{metric}", args.max_bpp):
            print(path)
    return 0


# ---------------------------------------------------------------- compare


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image", type=Path, default=None, metavar="PATH", help="image to compare (default: Kodak's kodim23.png)"
    )
    parser.add_argument("--model", default=None, help="dqcodec model name or checkpoint (default: the default model)")
    parser.add_argument(
        "--codec", action="append", default=None, metavar="NAME",
        help="classical codec to match in bpp (repeatable; default: jpeg and hevc)",
    )
    parser.add_argument("--crop", type=int, nargs=3, default=None, metavar=("LEFT", "TOP", "SIZE"),
                        help="crop window in pixels (default: a 256-pixel square in the middle)")
    parser.add_argument("--scale", type=int, default=2, help="enlargement of the crops (default: 2)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="output PNG (default: results/kodak/compare_<image>.png)")


def run_compare(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from dqcodec.eval import metrics
    from dqcodec.eval.classical import get_classical
    from dqcodec.eval.compare import Crop, Panel, centred_crop, draw_comparison, matched_panel
    from dqcodec.eval.ours import default_model_name, run_model

    image_path = args.image or kodak_dir() / "kodim23.png"
    if not image_path.is_file():
        raise DQCodecError(f"image {image_path} does not exist")
    with Image.open(image_path) as image:
        pixels = np.asarray(image.convert("RGB"))
    codecs = [get_classical(name) for name in (args.codec or ["jpeg", "hevc"])]

    model = args.model or default_model_name()
    ours = run_model(pixels, model)
    height, width = pixels.shape[:2]
    ours_bpp = metrics.bpp(len(ours.data), height, width)
    panels = [
        Panel("original", pixels, None, None),
        Panel(f"dqcodec {model}", ours.decoded, ours_bpp, metrics.psnr(pixels, ours.decoded)),
    ]
    panels += [matched_panel(codec, pixels, ours_bpp) for codec in codecs]
    crop = Crop(*args.crop) if args.crop else centred_crop(pixels, 256)
    out_path = args.out or Path("results/kodak") / f"compare_{image_path.stem}.png"
    print(draw_comparison(panels, crop, image_path.name, out_path, args.scale))
    return 0


# ---------------------------------------------------------------- bench


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=None, metavar="DIR", help=f"image folder (default: {kodak_dir()})")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="torch threads for both codecs (default: 2)")
    parser.add_argument("--model", default=None, help="dqcodec model name or checkpoint (default: the default model)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the timings as JSON here")
    parser.add_argument(
        "--large", type=_image_size, nargs="+", default=None, metavar="SIZE",
        help="instead: time and peak memory of images of these sizes (megapixels at 3:2, or WxH; mosaics of "
        "the --images), coded in tiles next to whole, each call in a fresh process, and the seams "
        "(e.g. --large 1 6 24 8192x8192)",
    )
    parser.add_argument("--tile-size", type=int, default=None, metavar="N",
                        help="with --large: the tile size of the tiled arm (default: the codec's)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="with --large: tiles coded at once (default: %(default)s)")


def _image_size(text: str) -> str:
    from dqcodec.eval.large import parse_size

    try:
        parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected megapixels (e.g. 24) or WxH (e.g. 8192x8192), got {text!r}") from None
    return text


def run_bench(args: argparse.Namespace) -> int:
    if args.large is not None:
        if args.workers < 1:
            raise DQCodecError("--workers must be at least 1")
        from dqcodec.eval.large import run_large_bench

        return run_large_bench(args)

    import torch

    from dqcodec.eval.rd import load_images
    from dqcodec.eval.ours import default_model_name
    from dqcodec.eval.speed import format_table, time_both

    _check_counts(args)
    torch.set_num_threads(args.threads)
    images = load_images(args.images or kodak_dir(), args.limit)
    ours, baseline = time_both(images, args.model or default_model_name())
    print(format_table(ours, baseline, args.threads, len(images)))
    if args.json:
        codecs = [
            {
                "codec": timings.codec,
                "encode_median_s": timings.encode_median,
                "decode_median_s": timings.decode_median,
                "encode_s": timings.encode_seconds,
                "decode_s": timings.decode_seconds,
            }
            for timings in (ours, baseline)
        ]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "images": len(images), "codecs": codecs}, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------- content


def add_content_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codec", action="append", default=None, metavar="NAME",
        help="a dqcodec model family (all its levels), a model name or a checkpoint path (repeatable; "
        "default: every shipped model)",
    )
    parser.add_argument(
        "--photo", action="append", default=None, metavar="FILE[:FACTOR]",
        help="a photograph of the data folder's photos/ with its saturation multiplied by FACTOR (default 1; "
        "repeatable; default: budgie-010.jpg:2, budgie-010.jpg:4, unsplash-010.jpg)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/content"), metavar="DIR",
                        help="folder for summary.json and summary.md (default: results/content)")
    parser.add_argument("--stem", default="summary", help="file names in --out (default: summary)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default: 1)")


def _photo(spec: str):
    from dqcodec.eval.content_report import SaturatedPhoto

    name, _, factor = spec.partition(":")
    try:
        return SaturatedPhoto(name, float(factor) if factor else 1.0)
    except ValueError:
        raise DQCodecError(f"--photo {spec}: FACTOR must be a number") from None


def run_content(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.eval.content_report import DEFAULT_PHOTOS, measure, write_report
    from dqcodec.eval.ours import list_models

    if args.threads < 1:
        raise DQCodecError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    models = []
    for name in args.codec or [m["name"] for m in list_models()]:
        codec = resolve_codec(name)
        if codec.kind != "dqcodec":
            raise DQCodecError(f"--codec {name}: not a dqcodec model, family or checkpoint")
        models.extend(codec.points)
    photos = [_photo(spec) for spec in args.photo] if args.photo else list(DEFAULT_PHOTOS)
    for photo in photos:
        path = data_dir() / "photos" / photo.name
        if not path.is_file():
            raise DQCodecError(f"photo not found: {path}")
    report = measure(models, photos, log=lambda line: print(line, file=sys.stderr))
    for path in write_report(report, args.out, args.stem):
        print(path)
    return 0
