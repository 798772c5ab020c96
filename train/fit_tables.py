"""``dqcodec fit-tables``: count trained hdq models' context tables anew; their networks stay.

An hdq model's index tables are counted at export, over ``--table-crops`` training crops (the
hdq recipe's ``finish``, :func:`~dqcodec.train.recipes._fit_hdq_tables`: guard codes for flat
colours, codes sorted by use, then two rounds of counting). This command runs that step again
on models that are already trained: over more crops (tables counted from more data code new
images in fewer bits), or to give a model saved before the entropy model's contexts changed the
tables of the current design (its tables cannot be read by the current code, so they are
dropped before the network loads).
The transforms and the coarse level are untouched; the fine codebooks keep their codes, sorted
by use (unused ones dropped, as at export). ``--refinement-size`` gives the models a refinement
level (:mod:`~dqcodec.models.refinement`) of that many codes per fine codebook, or takes it away
(0); without it a model keeps its own size, and its refinement codes are fitted anew.

The levels of a family that share their transforms (``shared_weights`` in their JSON) also share
the coarse level's tables, so they are refitted together: every model is written to a temporary
folder first and moved into place only when all of them are done, and the shared file is written
anew and checked against each level, as at export.
"""

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from dqcodec.codec.errors import DQCodecError

REFIT_CLAUSE = "; context tables counted anew (dqcodec fit-tables)"  # what a refit adds to a model's recipe
MAX_REFINEMENT_SIZE = 256  # refinement codes per fine codebook (the tables grow with it)


def add_fit_tables_arguments(parser: argparse.ArgumentParser) -> None:
    from dqcodec.paths import data_dir
    from dqcodec.train.recipes import HDQOptions

    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL",
                        help="hdq model files without extension (e.g. models/weights/hdq-q3), rewritten in place; give all "
                             "the levels that share one transforms file together")
    parser.add_argument("--crops", type=int, default=1536,
                        help=f"training crops of {HDQOptions.fit_crop} px to count the tables over (default 1536; an "
                             f"export counts over {HDQOptions.table_crops})")
    parser.add_argument("--backoff", type=int, default=256,
                        help="contexts seen fewer times than this in those crops take their codebook's table (default "
                             "256: with 1536 crops, on hdq-q3's Kodak indices, as few bits as 64 for about 0.4 MB less "
                             "tables)")
    parser.add_argument("--data", type=Path, default=data_dir(),
                        help="training images (default: the data folder, BSDS500 and the photos' training split)")
    parser.add_argument("--refinement-size", type=int, default=None,
                        help="codes per fine codebook of the refinement level, fitted on the same crops (0: none; "
                             "default: as each model has)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--measure-images", type=int, default=24,
                        help="Kodak images to measure each refitted model on, written into its JSON (default 24; 0 skips)")


def run_fit_tables(args: argparse.Namespace) -> int:
    import torch

    if args.crops < 8:
        raise DQCodecError(f"--crops {args.crops}: need at least 8")
    if args.backoff < 0:
        raise DQCodecError(f"--backoff {args.backoff}: need 0 or more")
    if args.threads < 1:
        raise DQCodecError(f"--threads {args.threads}: need at least 1")
    if args.refinement_size is not None and not 0 <= args.refinement_size <= MAX_REFINEMENT_SIZE:
        raise DQCodecError(f"--refinement-size {args.refinement_size}: need 0 to {MAX_REFINEMENT_SIZE}")
    torch.set_num_threads(args.threads)
    files = training_files(args.data)
    stems = model_stems(args.models)

    def refit(stem: Path, out: Path) -> None:
        refit_model(stem, out, files, args.crops, args.backoff, args.refinement_size)

    write_in_place(stems, refit, ".fit-tables-", "refitted")
    measure_into_json(stems, args.measure_images)
    return 0


def training_files(data: Path) -> list[Path]:
    """The training images under ``data``; DQCodecError (one line) when there are none."""
    from dqcodec.train.data import image_files

    try:
        return image_files(data)
    except FileNotFoundError as error:
        raise DQCodecError(f"--data: {error}") from None


def model_stems(models: list[Path]) -> list[Path]:
    """MODEL arguments -> model stems (a .json or .safetensors suffix dropped); DQCodecError
    (one line) when one has no JSON or a level sharing a transforms file with one is not given."""
    stems = [Path(str(stem).removesuffix(".json").removesuffix(".safetensors")) for stem in models]
    for stem in stems:
        if not Path(f"{stem}.json").is_file():
            raise DQCodecError(f"{stem}.json: no such model file")
    check_whole_families(stems)
    return stems


def write_in_place(stems: list[Path], write, prefix: str, what: str) -> None:
    """Rewrite the models ``stems``: ``write(stem, out)`` saves each as ``out`` in a staging folder
    (named ``prefix``...) beside it, and all are moved into place only when every one is
    written, so an error leaves the models as they were. ``what``: the models' adjective in the
    error message."""
    staging = {}
    try:
        for folder in {stem.parent.resolve() for stem in stems}:
            staging[folder] = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        for stem in stems:
            write(stem, staging[stem.parent.resolve()] / stem.name)
        for folder, staged in staging.items():
            for path in staged.iterdir():
                os.replace(path, folder / path.name)
    except OSError as error:
        raise DQCodecError(f"cannot write the {what} models ({error})") from None
    finally:
        for staged in staging.values():
            shutil.rmtree(staged, ignore_errors=True)


def measure_into_json(stems: list[Path], count: int) -> None:
    """Measure each model of ``stems`` on ``count`` Kodak images (none when 0) and write the
    figures into its JSON (``kodak``)."""
    from dqcodec.train.commands import measure_on_kodak

    for stem in stems if count > 0 else []:
        model = json.loads(Path(f"{stem}.json").read_text())
        model["kodak"] = figures = measure_on_kodak(stem, count)
        Path(f"{stem}.json").write_text(json.dumps(model, indent=2) + "\n")
        print(f"{stem.name}: Kodak {figures['bpp']:.4f} bpp, {figures['psnr']:.2f} dB PSNR, "
              f"MS-SSIM {figures['ms_ssim']:.4f} ({figures['images']} images, real files)")


def refit_model(stem: Path, out: Path, files: list[Path], crops: int, backoff: int,
                refinement_size: int | None = None) -> None:
    """Load hdq model ``stem`` without its tables, count them over ``crops`` crops of ``files``
    (contexts seen fewer than ``backoff`` times take their codebook's table; the other options
    as its training recorded them, else hdq's defaults), with a refinement level of
    ``refinement_size`` codes (None: the model's own) and save it as ``out``, with its shared
    weights (if any) beside ``out``."""
    from dqcodec.models.registry import save_model
    from dqcodec.train.checkpoint import load_hdq_without_tables
    from dqcodec.train.recipes import RECIPES

    recipe = RECIPES["hdq"]
    net, info = load_hdq_without_tables(stem, str(stem), "fit-tables counts the tables of hdq models")
    if refinement_size is not None:
        net.set_refinement_size(refinement_size)
    training = info.get("training", {})
    recorded = {item.name: training[item.name] for item in dataclasses.fields(recipe.options) if item.name in training}
    options = dataclasses.replace(recipe.options(**recorded), table_crops=crops, table_backoff=backoff)
    recipe.finish(net, options, files)  # the export's table step
    training = {**training, "table_crops": crops, "table_backoff": backoff}
    training["recipe"] = (f"{recipe_without_refit(training.get('recipe', ''))}{REFIT_CLAUSE} over {crops} crops of "
                          f"{options.fit_crop} px, contexts seen fewer than {options.table_backoff} times backed off "
                          "to their codebook's table"
                          + (f", and a refinement level of {net.config.refinement_size} codes per fine codebook fitted on "
                             "them" if net.refinement is not None else ""))
    kept = {key: value for key, value in info.items() if key not in ("architecture", "config", "shared_weights", "kodak")}
    try:
        save_model(net, out, {**kept, "training": training}, shared=info.get("shared_weights"))
    except ValueError as error:
        raise DQCodecError(f"{stem}: {error}") from None


def recipe_without_refit(recipe: str) -> str:
    """A model's recipe without the clause of an earlier refit (a refitted model says so once, last,
    with the latest counts), keeping what came after it, e.g. a synthesis tuning."""
    before, refitted, after = recipe.partition(REFIT_CLAUSE)
    return before + ("; " + after.split("; ", 1)[1] if refitted and "; " in after else "")


def check_whole_families(stems: list[Path]) -> None:
    """Raise DQCodecError unless every model beside one of ``stems`` that shares its transforms
    file is among ``stems``: the refit writes that file anew (its coarse tables change), which
    would change the levels left out."""
    given = {stem.resolve() for stem in stems}
    for stem in stems:
        shared = _shared_weights(Path(f"{stem}.json"))
        if not shared:
            continue
        for path in sorted(stem.parent.glob("*.json")):
            if _shared_weights(path) == shared and path.with_suffix("").resolve() not in given:
                raise DQCodecError(f"{path.with_suffix('')} shares {shared}.safetensors with {stem}: give all the levels "
                                   "that share it in one command")


def _shared_weights(path: Path) -> str | None:
    """The shared weights file that model JSON ``path`` names; None when it names none or is unreadable
    (a damaged model is reported when it loads)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info.get("shared_weights") if isinstance(info, dict) else None
