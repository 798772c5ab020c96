"""``dqcodec tune-synthesis``: tune a trained hdq family's synthesis to the codes its encoder sends.

Training quantizes the fine latent by ECVQ at marginal rates (``HierarchicalDQCodec.forward``),
while the encoder of a file chooses its codes under the context tables, after a step of decoder
feedback (:meth:`~dqcodec.models.hdq_codec.HierarchicalDQCodec.compress`), and adds the
refinement codes of a level that has them: the synthesis never saw the codes it decodes. This
step encodes training crops once with every level's real encoder, then trains the synthesis'
nonlinear branch and the coarse synthesis to decode those codes: mean squared error over the
pixels the network draws (the painted flat blocks left out), Adam with a cosine schedule, the
levels in turn. The analysis, the linear path, the codebooks,
the tables and the synthesis gains stay, so the encoder's choices move only through the
feedback's decoded guess and the rates hardly move.

The levels of a family share one synthesis (``shared_weights``), so they are tuned together and
rewritten in place when all are done, as ``fit-tables`` does. ``--work`` keeps the crops' codes
(``codes.npz``) and the training state (``state.pt``: the trained weights, the optimizer, the
step and the random generator, saved every ``--save-every`` steps); the same command again
resumes from them.
"""

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

from dqcodec.codec.errors import DQCodecError

TUNE_CLAUSE = "; synthesis tuned to the encoder's codes (dqcodec tune-synthesis)"  # what a tuning adds to a recipe


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """What a tuning run does; each run is appended to each model's JSON (``synthesis_tuning``)."""

    crops: int = 384  # training crops encoded by every level
    crop: int = 256  # px, a multiple of 64
    batch_size: int = 8
    steps: int = 2000
    learning_rate: float = 1e-4  # peak of the cosine schedule
    seed: int = 0


def add_tune_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    from dqcodec.paths import data_dir

    defaults = TuneOptions()
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL",
                        help="hdq model files without extension (e.g. models/weights/hdq-q3), rewritten in place; give all "
                             "the levels that share one transforms file")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the encoded crops and the training state; the same command resumes from it")
    parser.add_argument("--crops", type=int, default=defaults.crops,
                        help=f"training crops that every level encodes (default {defaults.crops})")
    parser.add_argument("--crop", type=int, default=defaults.crop,
                        help=f"crop size in px, a multiple of 64 (default {defaults.crop})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"Adam steps of {defaults.batch_size} crops, one level each, the levels in turn "
                             f"(default {defaults.steps})")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help=f"peak learning rate, cosine to zero over the steps (default {defaults.learning_rate})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the crops and of their order (default {defaults.seed}; another seed, other crops)")
    parser.add_argument("--save-every", type=int, default=100, help="steps between saved states (default 100)")
    parser.add_argument("--data", type=Path, default=data_dir(),
                        help="training images (default: the data folder, BSDS500 and the photos' training split)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--measure-images", type=int, default=24,
                        help="Kodak images to measure each tuned model on, written into its JSON (default 24; 0 skips)")


def run_tune_synthesis(args: argparse.Namespace) -> int:
    import torch

    from dqcodec.train.fit_tables import measure_into_json, model_stems, training_files

    options = TuneOptions(crops=args.crops, crop=args.crop, steps=args.steps, learning_rate=args.learning_rate,
                          seed=args.seed)
    if args.crop < 64 or args.crop % 64:
        raise DQCodecError(f"--crop {args.crop}: need a multiple of 64")
    for name, value, least in (("--crops", args.crops, options.batch_size), ("--steps", args.steps, 1),
                               ("--save-every", args.save_every, 1), ("--threads", args.threads, 1)):
        if value < least:
            raise DQCodecError(f"{name} {value}: need at least {least}")
    if not 0 < args.learning_rate < 1:
        raise DQCodecError(f"--learning-rate {args.learning_rate}: need a value between 0 and 1")
    torch.set_num_threads(args.threads)
    files = training_files(args.data)
    stems = model_stems(args.models)
    family = load_family(stems)
    start = time.time()
    tuner = SynthesisTuner(family, options, args.work)
    tuner.encode_crops(files)
    tuner.train(args.save_every)
    save_family(family, stems, options, (time.time() - start) / 60)
    measure_into_json(stems, args.measure_images)
    return 0


@dataclasses.dataclass
class Family:
    """The loaded levels (networks in eval mode, their JSON info); the levels share the first
    one's synthesis and coarse synthesis modules."""

    nets: list
    infos: list[dict]

    @property
    def base(self):
        return self.nets[0]


def load_family(stems: list[Path]) -> Family:
    """Load the hdq levels ``stems``; DQCodecError (one line) when one is not an hdq model, cannot
    be loaded, or they do not share one transforms file."""
    from dqcodec.models.registry import load_checkpoint

    nets, infos = [], []
    for stem in stems:
        try:
            net, info, _ = load_checkpoint(stem)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DQCodecError(f"{stem}: cannot load the model ({error})") from None
        if info["architecture"] != "HierarchicalDQCodec":
            raise DQCodecError(f"{stem} is a {info['architecture']} model; tune-synthesis tunes hdq models")
        nets.append(net)
        infos.append(info)
    shared = {info.get("shared_weights") for info in infos}
    if len(stems) > 1 and (len(shared) != 1 or None in shared or len({stem.parent.resolve() for stem in stems}) != 1):
        raise DQCodecError("tune-synthesis: give the levels of one family (one folder, one shared transforms file)")
    for net in nets[1:]:
        net.synthesis, net.coarse_synthesis = nets[0].synthesis, nets[0].coarse_synthesis
    return Family(nets, infos)


class SynthesisTuner:
    """Encodes the crops once (:meth:`encode_crops`) and trains the family's synthesis on them
    (:meth:`train`), keeping both in ``work``."""

    def __init__(self, family: Family, options: TuneOptions, work: Path):
        self.family = family
        self.options = options
        self.work = Path(work)
        self.codes: dict | None = None
        base = family.base
        self.parameters = list(base.synthesis.layers.parameters()) + list(base.coarse_synthesis.parameters())

    def encode_crops(self, files: list[Path]) -> None:
        """Encode ``options.crops`` random training crops with every level's encoder, or read
        them from ``work/codes.npz`` when a run with the same levels and options wrote them."""
        import numpy as np
        import torch
        from tqdm import tqdm

        from dqcodec.models.flat_blocks import flat_block_colours
        from dqcodec.models.refinement import REFINE

        path = self.work / "codes.npz"
        names = [info["name"] for info in self.family.infos]
        # "painted": one mask per crop (the flat blocks are the image's, the same at every level).
        refined = [net.config.refinement_size for net in self.family.nets]
        signature = json.dumps({"levels": names, "crops": self.options.crops, "crop": self.options.crop,
                                "seed": self.options.seed, "painted": "per crop",
                                **({"refinement": refined} if any(refined) else {})})
        if path.is_file():
            with np.load(path) as stored:
                if str(stored["signature"]) != signature:
                    raise DQCodecError(f"{path} holds the codes of another run; give another --work")
                self.codes = {key: stored[key] for key in stored.files}
            return
        generator = torch.Generator().manual_seed(self.options.seed)
        batch = self.options.batch_size
        crops = _crop_source(files, self.family.infos[0], self.options.crop, batch, generator)
        images, coarse, fine, refine, painted = [], [], [], [], []
        for _ in tqdm(range(self.options.crops // batch), desc="encoding crops", unit="batch"):
            x = crops.batch()
            images.append((x * 255).round().to(torch.uint8).numpy())
            with torch.no_grad():
                latent = self.family.base.analyse(x)
                levels = [dict((level.name, level.indices) for level in net.compress(x, latent=latent))
                          for net in self.family.nets]
            coarse.append(np.stack([level["coarse"] for level in levels], axis=1).astype(np.uint16))
            fine.append(np.stack([level["fine"] for level in levels], axis=1).astype(np.uint16))
            if any(refined):  # a level without a refinement level gets zeros, code 0 being the zero residual
                refine.append(np.stack([level.get(REFINE, np.zeros_like(level["fine"])) for level in levels],
                                       axis=1).astype(np.uint16))
            painted.append(flat_block_colours(levels[0]["flat"])[0])
        self.codes = {"signature": np.array(signature), "images": np.concatenate(images),
                      "coarse": np.concatenate(coarse), "fine": np.concatenate(fine), "painted": np.concatenate(painted)}
        if refine:
            self.codes["refine"] = np.concatenate(refine)
        self.work.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".partial.npz")
        np.savez(staged, **self.codes)
        os.replace(staged, path)

    def loss(self, rows, level: int):
        """Mean squared error of level ``level``'s decoding of the encoded crops ``rows`` (a
        numpy index array), over the pixels the network draws."""
        import torch
        import torch.nn.functional as F

        net = self.family.nets[level]
        images = torch.from_numpy(self.codes["images"][rows]).float() / 255
        slices = net.fine_quantizer.lookup(torch.from_numpy(self.codes["fine"][rows, level].astype("int64")))
        if net.refinement is not None:  # the decoder's slice is the fine code plus its refinement code
            slices = slices + net.refinement.lookup(torch.from_numpy(self.codes["refine"][rows, level].astype("int64")))
        fine = net.fine_quantizer.assemble(slices)
        coarse = net.coarse_quantizer.dequantize(torch.from_numpy(self.codes["coarse"][rows, level].astype("int64")))
        drawn = 1.0 - F.interpolate(torch.from_numpy(self.codes["painted"][rows])[:, None].float(),
                                    scale_factor=images.shape[-1] // self.codes["painted"].shape[-1], mode="nearest")
        error = (self.family.base.reconstruct(fine, coarse) - images).pow(2) * drawn
        return error.sum() / (drawn.sum() * 3).clamp_min(1.0)

    def train(self, save_every: int) -> None:
        """Adam on the synthesis' nonlinear branch and the coarse synthesis for ``options.steps``
        steps (cosine schedule), resuming from ``work/state.pt``; the networks end rounded to
        their storage precision, in eval mode."""
        import numpy as np
        import torch
        from tqdm import tqdm

        from dqcodec.models.registry import round_to_storage

        base = self.family.base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(self.parameters, lr=self.options.learning_rate)
        rng = np.random.default_rng(self.options.seed)
        step = 0
        state_path = self.work / "state.pt"
        if state_path.is_file():
            state = torch.load(state_path, weights_only=False)
            if state["options"] != dataclasses.asdict(self.options):
                raise DQCodecError(f"{state_path} is the state of a run with other options; give another --work")
            with torch.no_grad():
                for parameter, value in zip(self.parameters, state["parameters"]):
                    parameter.copy_(value)
            optimizer.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["rng"]
            step = state["step"]
        count, levels = len(self.codes["images"]), len(self.family.nets)
        base.train()
        progress = tqdm(range(step, self.options.steps), initial=step, total=self.options.steps, desc="tuning",
                        unit="step")
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = self.options.learning_rate * 0.5 * (1 + math.cos(math.pi * step / self.options.steps))
            loss = self.loss(rng.choice(count, self.options.batch_size, replace=False), step % levels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.set_postfix(psnr=f"{-10 * math.log10(max(loss.item(), 1e-12)):.2f}")
            if (step + 1) % save_every == 0 or step + 1 == self.options.steps:
                self._save_state(state_path, optimizer, rng, step + 1)
        base.eval()
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        for net in self.family.nets:
            round_to_storage(net)

    def _save_state(self, path: Path, optimizer, rng, step: int) -> None:
        import torch

        staged = path.with_suffix(".partial")
        torch.save({"options": dataclasses.asdict(self.options), "step": step, "rng": rng.bit_generator.state,
                    "parameters": [parameter.detach().clone() for parameter in self.parameters],
                    "optimizer": optimizer.state_dict()}, staged)
        os.replace(staged, path)


def _crop_source(files: list[Path], info: dict, crop: int, batch: int, generator):
    """Random crops of ``files`` mixed as the model's training recorded (saturated copies and
    synthetic content, ``synthetic_share``)."""
    from dqcodec.train.data import RandomCrops, fitting_images, load_fitting_image

    share = info.get("training", {}).get("synthetic_share", 0.0)
    return RandomCrops([load_fitting_image(image) for image in fitting_images(files, share)], crop, batch, generator)


def save_family(family: Family, stems: list[Path], options: TuneOptions, minutes: float) -> None:
    """Rewrite the levels ``stems`` with the tuned synthesis, all or none
    (:func:`~dqcodec.train.fit_tables.write_in_place`), each with this tuning recorded after
    any before it."""
    from dqcodec.models.registry import save_model
    from dqcodec.train.fit_tables import write_in_place

    levels = {stem: (net, info) for stem, net, info in zip(stems, family.nets, family.infos)}

    def write(stem: Path, out: Path) -> None:
        net, info = levels[stem]
        training = dict(info.get("training", {}))
        # Each tuning continues from the last one, so each is recorded, in order.
        training["recipe"] = (f"{training.get('recipe', '')}{TUNE_CLAUSE}: {options.steps} Adam steps (peak "
                              f"learning rate {options.learning_rate:g}, cosine) on {options.crops} crops of "
                              f"{options.crop} px (seed {options.seed}) as the levels' encoders code them, the "
                              "synthesis' nonlinear branch and the coarse synthesis only")
        training["synthesis_tuning"] = [*training.get("synthesis_tuning", []),
                                        {**dataclasses.asdict(options), "minutes": round(minutes, 1)}]
        kept = {key: value for key, value in info.items() if key not in ("architecture", "config", "shared_weights", "kodak")}
        try:
            save_model(net, out, {**kept, "training": training}, shared=info.get("shared_weights"))
        except ValueError as error:
            raise DQCodecError(f"{stem}: {error}") from None

    write_in_place(stems, write, ".tune-synthesis-", "tuned")
