"""``dqcodec train --arch NAME`` (and its alias ``train-shvq``): train or resume a codec
checkpoint of any registered architecture, and export it as a model.

The options are made from three dataclasses: :class:`~dqcodec.train.loop.LoopConfig`, the
architecture's config (e.g. :class:`~dqcodec.models.codec_net.CodecConfig`) and its recipe's
options (:mod:`dqcodec.train.recipes`); each field's metadata gives its help and flag.
"""

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

from dqcodec.codec.errors import DQCodecError

# Settings that a resumed run may change (a lower --lr on resume is a fine-tuning phase of the same
# run); every other one must match the run folder's run.json.
_RESUMABLE_CHANGES = {"steps", "validate_every", "checkpoint_every", "validation_images", "device", "threads", "max_minutes",
                      "learning_rate", "average_decay"}


def _sources(arch: str) -> dict[str, type]:
    """The dataclasses whose fields are the options of ``--arch arch``: group -> dataclass."""
    from dqcodec.models.registry import ARCHITECTURES
    from dqcodec.train.loop import LoopConfig
    from dqcodec.train.recipes import RECIPES

    recipe = RECIPES[arch]
    return {"loop": LoopConfig, "config": ARCHITECTURES[recipe.architecture].config, "options": recipe.options}


def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


_METAVARS = {Path: "PATH", float: "X", int: "N", str: "TEXT"}


def _value_type(item: dataclasses.Field):
    text = str(item.type)
    return Path if "Path" in text else float if "float" in text else int if "int" in text else str


def add_train_arguments(parser: argparse.ArgumentParser, default_arch: str = "dq") -> None:
    from dqcodec.train.recipes import RECIPES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dqcodec train --arch dq --out runs/dq-q2 --lambda 0.012 --export dq-q2 --quality 2\n"
        "  dqcodec train --arch shvq --out runs/shvq-q2 --lambda 0.006 --steps 300 --export shvq-q2 --quality 2\n"
        "  dqcodec train --arch dq --init-from dq-q3 --out runs/refit-q3 --export dq-q3 --quality 3\n"
        "Re-running the same command resumes from OUT/state.* (weights, Adam, step, RNG).\n"
        "Options marked [fresh start only] are refused with --init-from."
    )
    parser.add_argument("--arch", choices=sorted(RECIPES), default=default_arch,
                        help=f"architecture to train (default {default_arch})")
    seen: set[str] = set()
    for arch in sorted(RECIPES, key=lambda name: name != default_arch):
        sources = _sources(arch)
        if arch == default_arch:
            group = parser.add_argument_group("training loop (every architecture)")
            _add_fields(group, sources["loop"], seen, RECIPES[arch].loop_defaults)
        group = parser.add_argument_group(f"--arch {arch}: architecture and recipe")
        shared = [_flag(f) for f in (*dataclasses.fields(sources["config"]), *dataclasses.fields(sources["options"]))
                  if f.name in seen]
        if shared:
            group.description = "also: " + ", ".join(shared)
        _add_fields(group, sources["config"], seen)
        _add_fields(group, sources["options"], seen)
        if arch != default_arch and RECIPES[arch].loop_defaults:
            defaults = ", ".join(f"{_flag(f)} {RECIPES[arch].loop_defaults[f.name]}" for f in dataclasses.fields(sources["loop"])
                                 if f.name in RECIPES[arch].loop_defaults)
            group.description = (group.description + "; " if group.description else "") + f"loop defaults: {defaults}"
    _add_export_arguments(parser)


def add_train_shvq_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser, default_arch="shvq")


def _add_fields(group, source: type, seen: set[str], defaults: dict | None = None) -> None:
    """One option per dataclass field not yet added and not measured by the recipe itself (metadata
    ``measured``); unset options stay absent from the namespace."""
    for item in dataclasses.fields(source):
        if item.name in seen or item.metadata.get("measured"):  # a measured field is no option
            continue
        seen.add(item.name)
        default = (defaults or {}).get(item.name, item.default)
        suffix = " [fresh start only]" if item.metadata.get("init_only") else ""
        shown = "" if default is None else f" (default {default})"
        value_type = _value_type(item)
        group.add_argument(_flag(item), dest=item.name, type=value_type, default=argparse.SUPPRESS,
                           metavar=_METAVARS[value_type], choices=item.metadata.get("choices"),
                           required=item.name == "out", help=item.metadata.get("help", "") + shown + suffix)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.models.registry import ARCHITECTURES
    from dqcodec.train.checkpoint import load_start_model
    from dqcodec.train.data import default_train_dir
    from dqcodec.train.loop import export, train
    from dqcodec.train.recipes import RECIPES

    recipe = RECIPES[args.arch]
    sources = _sources(args.arch)
    given = {key: value for key, value in vars(args).items() if key not in ("command", "arch")}
    _refuse_foreign_options(args.arch, given)
    if args.export and args.quality is None:
        raise DQCodecError("--export needs --quality")
    loop_values = {**recipe.loop_defaults, **_pick(sources["loop"], given)}
    loop = sources["loop"](**loop_values)
    loop.data = loop.data or default_train_dir()
    if not loop.data.is_dir():
        raise DQCodecError(f"training data folder not found: {loop.data}")
    if loop.device not in ("cpu", "cuda") or (loop.device == "cuda" and not torch.cuda.is_available()):
        raise DQCodecError(f"--device {loop.device}: use cpu, or cuda on a machine with a CUDA GPU")
    if loop.steps < 0 or loop.batch_size < 1 or loop.crop < 1:
        raise DQCodecError("--steps must not be negative, --batch-size and --crop must be positive")
    if not 0.0 <= loop.average_decay < 1.0:
        raise DQCodecError(f"--average-decay {loop.average_decay}: use 0 (no average) or a decay below 1, e.g. 0.999")
    options = sources["options"](**_pick(sources["options"], given))
    config_given = _pick(sources["config"], given)
    if loop.init_from is not None:
        net, start_info = load_start_model(loop.init_from, ARCHITECTURES[recipe.architecture].network)
        changed = _apply_init_from(net, recipe, sources, config_given, given)
    else:
        try:
            config = sources["config"](**{**recipe.config_defaults(options), **config_given})
        except ValueError as error:  # a config that checks its own values (e.g. dqae's per-level lists)
            raise DQCodecError(str(error)) from None
        torch.manual_seed(loop.seed)  # the initial weights of a fresh network follow --seed
        net, start_info, changed = ARCHITECTURES[recipe.architecture].network(config), None, ()
    if getattr(net.config, "rate_lambda", 1.0) <= 0:  # codecs; a likelihood model (dqae) has no lambda
        raise DQCodecError("--lambda must be positive")
    if loop.batch_size < getattr(net, "num_levels", 1):  # a family (hdq-family) trains every level in every batch
        raise DQCodecError(f"--batch-size {loop.batch_size}: the family needs at least one crop per level ({net.num_levels})")
    _check_run_folder(loop, args.arch, net.config, options)
    torch.set_num_threads(loop.threads)
    started = time.time()
    net = train(net, recipe, options, loop, fresh=loop.init_from is None, changed=changed)
    if args.export:
        history = {"init_from": {"model": start_info["name"], "changed": {name: getattr(net.config, name) for name in changed},
                                 "training": start_info.get("training", {})}} if start_info else {}
        for level_args, level in _exports(args, recipe, net):
            if not hasattr(level, "compress"):
                level_args.measure_images = 0  # a likelihood model (dqae) writes no files to measure on Kodak
            export_and_measure(level_args, recipe.summarize(level.config), started,
                               lambda stem, info, level=level: export(level, recipe, options, loop, stem, info,
                                                                      args.share_weights), history)
    return 0


def _exports(args: argparse.Namespace, recipe, net) -> list[tuple[argparse.Namespace, object]]:
    """(export arguments, network) of each model ``--export`` writes: the network as NAME, or a
    family's levels (``Recipe.export_levels``) as NAME-q<quality>, NAME-q<quality + 1>, ..."""
    if recipe.export_levels is None:
        return [(args, net)]
    return [(argparse.Namespace(**{**vars(args), "export": f"{args.export}-q{args.quality + offset}",
                                   "quality": args.quality + offset}), level)
            for offset, level in enumerate(recipe.export_levels(net))]


def run_train_shvq(args: argparse.Namespace) -> int:
    return run_train(args)


def _flags(source: type, names) -> str:
    return ", ".join(_flag(item) for item in dataclasses.fields(source) if item.name in names)


def _pick(source: type, given: dict) -> dict:
    names = {item.name for item in dataclasses.fields(source)}
    return {key: value for key, value in given.items() if key in names}


def _refuse_foreign_options(arch: str, given: dict) -> None:
    """An option of another architecture is an error, not silently ignored."""
    known = {item.name for source in _sources(arch).values() for item in dataclasses.fields(source)}
    export = {"export", "family", "quality", "weights_dir", "measure_images", "share_weights"}
    foreign = sorted(key for key in given if key not in known | export)
    if foreign:
        raise DQCodecError(f"--{foreign[0].replace('_', '-')} is not an option of --arch {arch}")


def _apply_init_from(net, recipe, sources: dict, config_given: dict, given: dict) -> tuple[str, ...]:
    """Honour the architecture options given with --init-from, or refuse them in one line;
    returns the names of the config fields that changed."""
    changed = []
    for name, value in config_given.items():
        current = getattr(net.config, name)
        if value == current:
            continue
        changed.append(name)
        if name not in recipe.mutable:
            flag = _flag(next(f for f in dataclasses.fields(sources["config"]) if f.name == name))
            raise DQCodecError(f"{flag} {value} differs from the --init-from model's {current}; "
                               f"only {_flags(sources['config'], recipe.mutable)} can change when starting from a model")
        getattr(net, f"set_{name}")(value)
    for item in dataclasses.fields(sources["options"]):
        if item.metadata.get("init_only") and item.name in given:
            raise DQCodecError(f"{_flag(item)} acts on a fresh start only; the --init-from model is already initialised")
    return tuple(changed)


def _check_run_folder(loop, arch: str, config, options) -> None:
    """Write OUT/run.json on the first run; a later run of the same folder must say the same,
    except for the settings in _RESUMABLE_CHANGES (so --steps can be raised to train on) and for
    settings that dqcodec gained after the run started (absent from its run.json)."""
    settings = {"arch": arch, "config": dataclasses.asdict(config), "options": dataclasses.asdict(options),
                "loop": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(loop).items()}}
    path = loop.out / "run.json"
    if path.is_file() and Path(f"{loop.out / 'state'}.safetensors").is_file():
        before = json.loads(path.read_text())
        for group in ("config", "options", "loop"):
            for key, value in settings[group].items():
                if key not in _RESUMABLE_CHANGES and key != "out" and key in before[group] and before[group][key] != value:
                    raise DQCodecError(f"{loop.out} was started with {key} = {before[group].get(key)!r}, not {value!r}; "
                                       "use a new --out to change it")
        if before["arch"] != arch:
            raise DQCodecError(f"{loop.out} holds a --arch {before['arch']} run, not {arch}")
    loop.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def export_and_measure(args: argparse.Namespace, description: str, started: float, export, history: dict) -> None:
    """Export as model ``args.export`` (``export(stem, info)``), then write the run time and the
    measured Kodak figures into its JSON."""
    import torch

    from dqcodec.models.registry import WEIGHTS_DIR

    info = {
        "name": args.export,
        "family": args.family or args.arch,
        "quality": args.quality,
        "description": description,
        "training": {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", **history},
    }
    stem = (args.weights_dir or WEIGHTS_DIR) / args.export
    try:
        export(stem, info)
    except ValueError as error:  # --share-weights that name another network's transforms
        raise DQCodecError(f"--export {args.export}: {error}") from None
    model = json.loads(Path(f"{stem}.json").read_text())
    model["training"]["minutes_this_run"] = round((time.time() - started) / 60, 1)
    if args.measure_images > 0:
        figures = measure_on_kodak(stem, args.measure_images)
        model["kodak"] = figures
        print(f"{args.export}: Kodak {figures['bpp']:.4f} bpp, {figures['psnr']:.2f} dB PSNR, "
              f"MS-SSIM {figures['ms_ssim']:.4f} ({figures['images']} images, real files)")
    Path(f"{stem}.json").write_text(json.dumps(model, indent=2) + "\n")


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--export", metavar="NAME", default=None,
                       help="export the result as model NAME and measure it on Kodak (--arch hdq-family: its levels as NAME-q<QUALITY>, NAME-q<QUALITY+1>, ...)")
    group.add_argument("--family", default=None, help="model family for --export (default: the --arch name)")
    group.add_argument("--quality", type=int, default=None, help="quality level for --export")
    group.add_argument("--weights-dir", type=Path, default=None,
                       help="where --export writes NAME.safetensors/.json (default: the package's shipped models)")
    group.add_argument("--share-weights", metavar="SHARED", default=None,
                       help="store the transforms once, in SHARED.safetensors beside the model, for the levels of a family "
                            "refitted from one network (hdq); the file is written by the first level and checked by the others")
    group.add_argument("--measure-images", type=int, default=24,
                       help="Kodak images to measure the exported model on (default 24, all; 0 skips)")


def measure_on_kodak(stem: Path, count: int = 24) -> dict:
    """Mean bpp (real file bytes), PSNR-RGB and MS-SSIM of checkpoint ``stem`` on Kodak."""
    from dqcodec.eval.ours import our_codec
    from dqcodec.eval.rd import load_images, sweep
    from dqcodec.paths import kodak_dir

    images = load_images(kodak_dir(), count)
    results = sweep(our_codec(f"{stem}.json"), images)["results"]
    return {
        "images": len(images),
        "bpp": results["bpp"][0],
        "psnr": results["psnr-rgb"][0],
        "ms_ssim": results["ms-ssim-rgb"][0],
    }
