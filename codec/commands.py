"""The ``encode``, ``decode``, ``info`` and ``models`` sub-commands of ``dqcodec``.

``codec/cli.py`` calls ``add_<name>_arguments(parser)`` to build each sub-command and
``run_<name>(args) -> int`` to run it; a ``DQCodecError`` raised here becomes
``dqcodec: error: <message>`` and exit status 2. The codec API is imported only when a command
runs, so ``--help`` stays fast; no command here imports torch (the block codecs run in numpy).
"""

import argparse
import io
import json
import os
import sys
from pathlib import Path

from dqcodec.codec.container import unpack
from dqcodec.codec.errors import DQCodecError, output_error
from dqcodec.codec.imageio import check_output_path, output_format, read_bytes, save_image, write_bytes_atomic
from dqcodec.codec.limits import DEFAULT_MAX_PIXELS, ENVIRONMENT_VARIABLE, check_pixels
from dqcodec.codec.tiles import DEFAULT_TILE_SIZE, MIN_TILE_SIZE
from dqcodec.models.interface import MAX_RATE_LAMBDA

STDIO = "-"  # as IN: read standard input; as OUT: write standard output

_QUALITY_HELP = (
    "quality level of the default family, an integer from 1 (fewest bits) up; see 'dqcodec models' "
    "(default: its middle level)"
)
_MODEL_HELP = "a shipped model by name, e.g. dq-q3; see 'dqcodec models'"
_MAX_PIXELS_HELP = (
    f"refuse images of more than N pixels, a guard against decompression bombs "
    f"(default: ${ENVIRONMENT_VARIABLE}, else {DEFAULT_MAX_PIXELS:,})"
)


def _positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=_positive_integer, metavar="N", help=_MAX_PIXELS_HELP)


def _add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        metavar="PATH",
        help="model files outside the package (e.g. a lossless DQ-AE) that may have made the file; "
        "the file's model is still found by its name and fingerprint",
    )


def _add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_integer,
        default=1,
        metavar="N",
        help="code N tiles of a large image at once, in N processes (default: %(default)s); "
        "the output does not depend on it",
    )


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dqcodec encode``."""
    parser.usage = (
        "dqcodec encode IN OUT [--quality Q | --model NAME]\n"
        "       dqcodec encode IN [IN ...] -o DIR [--quality Q | --model NAME]"
    )
    parser.description = (
        "Compress images to .dqc files. IN is an image file (PNG, JPEG, TIFF, WebP, BMP, PPM,\n"
        "HEIC, ...). Grayscale stays grayscale; alpha is composited on white and 16-bit input\n"
        "is reduced to 8 bits, each with a note on stderr. An existing OUT is replaced; with\n"
        "-o DIR, an output that would replace one of the inputs is refused before anything is written."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dqcodec encode photo.png photo.dqc\n"
        "  dqcodec encode photo.png photo.dqc --quality 2\n"
        "  dqcodec encode shots/*.jpg -o compressed/      # writes compressed/<name>.dqc each\n"
        "  cat photo.png | dqcodec encode - - > photo.dqc  # '-' is stdin / stdout"
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="IN OUT, or with -o the input images ('-' reads stdin, or writes stdout as OUT)",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        metavar="DIR",
        help="encode every PATH into DIR/<name>.dqc (DIR is created if missing)",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("-q", "--quality", type=int, metavar="Q", help=_QUALITY_HELP)
    choice.add_argument("-m", "--model", metavar="NAME", help=_MODEL_HELP)
    parser.add_argument(
        "--lossless",
        action="store_true",
        help="decode back to every original pixel: needs --model, a lossless DQ-AE model made by 'dqcodec "
        "export-lossless' (needs the full install); 16-bit or transparent images are refused",
    )
    parser.add_argument(
        "--lambda",
        dest="rate_lambda",
        type=_rate_lambda,
        default=None,
        metavar="L",
        help="the encoder's rate-distortion trade-off in place of the model's own, for rates between the "
        "levels: squared error of [0, 1] RGB values per bit, smaller spends more bits (the levels' own are "
        "listed by 'dqcodec models'; an hdq level scales it for each image by the image's error, at most "
        "2x either way); the file decodes with the same model",
    )
    _add_max_pixels_argument(parser)
    parser.add_argument(
        "--tile-size",
        type=_tile_size,
        default=None,
        metavar="N",
        help=f"code the image in tiles of N x N pixels, so that memory is bounded by a tile (default: "
        f"{DEFAULT_TILE_SIZE}, 256 for a lossless DQ-AE; a multiple of the model's padding from {MIN_TILE_SIZE} up; 0 codes the image whole)",
    )
    _add_workers_argument(parser)


def _rate_lambda(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= MAX_RATE_LAMBDA:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most {MAX_RATE_LAMBDA:g}, got {text!r}")
    return value


def _tile_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a number of pixels, got {text!r}")
    return value


def run_encode(args: argparse.Namespace) -> int:
    """Encode one image to OUT, or many into ``--output-dir``; returns the exit status."""
    if args.output_dir is not None:
        return _encode_many(args.paths, Path(args.output_dir), args.quality, args.model, args.max_pixels, _encoder_options(args))
    if len(args.paths) != 2:
        raise DQCodecError(
            "encode takes IN OUT (or several inputs with -o DIR), "
            f"got {len(args.paths)} path{'s' if len(args.paths) != 1 else ''}"
        )
    source, target = args.paths
    _check_target(source, target)
    from dqcodec.codec import api

    image = _read_stdin() if source == STDIO else source
    data, notes = api.encode_with_notes(
        image, quality=args.quality, model=args.model, max_pixels=args.max_pixels, **_encoder_options(args)
    )
    for note in notes:
        print(f"dqcodec: note: {note}", file=sys.stderr)
    if target == STDIO:
        _write_stdout(data)
    else:
        write_bytes_atomic(target, data)
    return 0


def _encoder_options(args: argparse.Namespace) -> dict:
    """The encoder's options beside the model: tiling, workers, --lossless and --lambda."""
    return {"tile_size": args.tile_size, "workers": args.workers, "lossless": args.lossless, "rate_lambda": args.rate_lambda}


def _encode_many(
    sources: list[str], folder: Path, quality: int | None, model: str | None, max_pixels: int | None, options: dict
) -> int:
    """Encode each source to ``folder/<stem>.dqc``, going on past bad files; 2 if any failed.

    Refused before anything is written: two sources with one target, and a target that is one
    of the sources (``pic.dqc`` that is in fact a PNG, encoded into its own folder).
    """
    if STDIO in sources:
        raise DQCodecError("'-' (stdin) cannot be used with -o DIR; name the input files")
    targets: dict[Path, str] = {}
    for source in sources:
        target = folder / (Path(source).stem + ".dqc")
        if target in targets:
            raise DQCodecError(f"{targets[target]} and {source} would both be written to {target}")
        targets[target] = source
    for target in targets:
        for source in sources:
            if _same_file(source, target):
                raise DQCodecError(f"{source} would be overwritten by its output {target}; choose another -o DIR")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DQCodecError(f"cannot create folder {folder}: {error.strerror or error}") from error
    check_output_path(next(iter(targets)))

    from tqdm import tqdm

    from dqcodec.codec import api

    failures = 0
    for target, source in tqdm(targets.items(), desc="encoding", unit="image", disable=None):
        try:
            data, notes = api.encode_with_notes(source, quality=quality, model=model, max_pixels=max_pixels, **options)
            write_bytes_atomic(target, data)
        except DQCodecError as error:
            failures += 1
            message = str(error)
            # Errors about the image already start with its path; others (model, quality) do not.
            if not message.startswith(f"{source}:"):
                message = f"{source}: {message}"
            tqdm.write(f"dqcodec: error: {message}", file=sys.stderr)
            continue
        for note in notes:
            tqdm.write(f"dqcodec: note: {source}: {note}", file=sys.stderr)
    return 2 if failures else 0


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dqcodec decode``."""
    parser.description = (
        "Decompress a .dqc file to an image. OUT's extension picks the format: .png .bmp\n"
        ".tif/.tiff .ppm/.pgm/.pnm .jpg/.jpeg (quality 95) .webp (lossless).\n"
        "An existing OUT is replaced."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dqcodec decode photo.dqc photo.png\n"
        "  dqcodec decode photo.dqc - > photo.png   # '-' writes PNG to stdout"
    )
    parser.add_argument("input", metavar="IN", help="the .dqc file ('-' reads stdin)")
    parser.add_argument("output", metavar="OUT", help="the image to write ('-' writes PNG to stdout)")
    _add_checkpoint_argument(parser)
    _add_max_pixels_argument(parser)
    _add_workers_argument(parser)


def run_decode(args: argparse.Namespace) -> int:
    """Decode IN to the image OUT; returns the exit status."""
    if args.output != STDIO:
        output_format(args.output)  # an unknown extension fails before any decoding
    _check_target(args.input, args.output)
    data = _read_input(args.input)
    _check_header(data, args.max_pixels)
    from dqcodec.codec import api

    image = api.decode(data, max_pixels=args.max_pixels, workers=args.workers, model=args.model)
    if args.output == STDIO:
        png = io.BytesIO()
        image.save(png, format="PNG")
        _write_stdout(png.getvalue())
    else:
        save_image(image, args.output)
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dqcodec info``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n  dqcodec info photo.dqc\n  dqcodec info photo.dqc --json"
    parser.add_argument("file", metavar="FILE", help="the .dqc file ('-' reads stdin)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _add_checkpoint_argument(parser)
    _add_max_pixels_argument(parser)


def run_info(args: argparse.Namespace) -> int:
    """Print what FILE holds: model, image size, bytes, bpp, real vs estimated bits."""
    data = _read_input(args.file)
    _check_header(data, args.max_pixels)
    from dqcodec.codec import api

    facts = api.inspect(data, max_pixels=args.max_pixels, model=args.model)
    if args.json:
        _print(json.dumps(facts, indent=2))
        return 0
    kind = "grayscale" if facts["channels"] == 1 else "RGB"
    rows = [
        ("file", args.file),
        ("model", f"{facts['model']} (family {facts['family']}, quality {facts['quality']})"),
        ("coding", "lossless (decodes to the original pixels)" if facts["lossless"] else "lossy"),
        ("image", f"{facts['width']} x {facts['height']} {kind}, {facts['bit_depth']}-bit original"),
        ("tiles", _describe_tiles(facts)),
        ("size", f"{facts['bytes']:,} bytes, {facts['bpp']:.4f} bpp"),
        (
            "bits",
            f"{facts['real_bits']:,} in the file, {facts['estimated_bits']:,.0f} estimated by the model "
            f"({facts['overhead_percent']:+.2f} % header and coder overhead)",
        ),
    ]
    _print("\n".join(f"{label:<6} {value}" for label, value in rows))
    return 0


def _describe_tiles(facts: dict) -> str:
    if facts["tiles"] == 1:
        return "1 (the whole image)"
    size = facts["tile_size"]
    return f"{facts['tiles']} of {size} x {size} pixels, neighbours sharing {facts['tile_overlap']}"


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``dqcodec models``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "bpp, PSNR and MS-SSIM are means over the 24 Kodak images, measured on real files.\n"
        "examples:\n  dqcodec models\n  dqcodec models --json"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")


def run_models(args: argparse.Namespace) -> int:
    """Print the shipped models, one per row, with their measured Kodak figures and the install
    that codes them (base, or train for a network that needs torch)."""
    from dqcodec.models.registry import list_models

    models = list_models()
    if args.json:
        _print(json.dumps(models, indent=2))
        return 0
    columns = [
        ("name", "name", "{}"),
        ("family", "family", "{}"),
        ("quality", "quality", "{}"),
        ("bpp", "bpp", "{:.3f}"),
        ("PSNR dB", "psnr", "{:.2f}"),
        ("MS-SSIM", "ms_ssim", "{:.4f}"),
        ("install", "install", "{}"),
        ("description", "description", "{}"),
    ]
    cells = [[title for title, _, _ in columns]]
    for model in models:
        cells.append(["-" if model.get(key) is None else form.format(model[key]) for _, key, form in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    _print("\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells))
    from dqcodec.codec.api import DEFAULT_FAMILY

    levels = sorted(model["quality"] for model in models if model["family"] == DEFAULT_FAMILY)
    if levels:  # else an install without the default family's models
        _print(f"\ndefault family: {DEFAULT_FAMILY} (--quality N picks {DEFAULT_FAMILY}-qN, N from {levels[0]} to "
               f"{levels[-1]}; with neither --quality nor --model, the middle level)")
    return 0


def _check_target(source: str, target: str) -> None:
    """Fail before any slow work if ``target`` cannot be written or would destroy ``source``."""
    if target == STDIO:
        if sys.stdout.isatty():
            raise DQCodecError(
                "refusing to write binary data to a terminal; redirect stdout or name an output file"
            )
        return
    check_output_path(target)
    if source != STDIO and os.path.exists(source) and os.path.exists(target) and os.path.samefile(source, target):
        raise DQCodecError(f"{target} is the input file; choose another output name")


def _same_file(first, second) -> bool:
    """Whether two paths name one file (hard and symbolic links included) or would."""
    if os.path.exists(first) and os.path.exists(second):
        return os.path.samefile(first, second)
    return Path(first).resolve() == Path(second).resolve()


def _check_header(data: bytes, max_pixels: int | None) -> None:
    """Refuse a damaged .dqc file or one over the pixel limit before the codec and its model
    are loaded; the API checks the same again."""
    header, _ = unpack(data)
    check_pixels(header.width, header.height, ".dqc file", max_pixels)


def _read_input(path: str) -> bytes:
    return _read_stdin() if path == STDIO else read_bytes(path)


def _read_stdin() -> bytes:
    if sys.stdin.isatty():
        raise DQCodecError("'-' reads standard input, but it is a terminal; pipe a file in or name one")
    return sys.stdin.buffer.read()


def _print(text: str) -> None:
    """Print ``text`` and a newline to stdout, as :func:`_write_stdout` writes."""
    _write_stdout(f"{text}\n".encode(getattr(sys.stdout, "encoding", None) or "utf-8", errors="replace"))


def _write_stdout(data: bytes) -> None:
    """Write ``data`` to stdout; a reader that stopped early (``| head``) or a full device
    (``> /dev/full``) becomes one ``DQCodecError``."""
    remaining = memoryview(data)
    try:
        sys.stdout.flush()  # whatever was printed before goes first
        # On a pipe whose reader has gone, write() can return a short count instead of raising;
        # loop so the loss shows up as BrokenPipeError.
        while remaining:
            written = sys.stdout.buffer.write(remaining)
            if not written:
                raise BrokenPipeError
            remaining = remaining[written:]
        sys.stdout.buffer.flush()
    except OSError as error:
        raise output_error(error) from None
