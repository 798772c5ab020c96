"""The one training loop of every codec architecture: seed, start, resume, step, checkpoint,
validate, export. What differs between architectures comes in a :class:`~dqcodec.train.recipes.Recipe`.

Objective: (SSE + lambda * bits) / pixels + quantizer loss, SSE over [0, 1] RGB values, bits the
network's rate estimate (``CodecOutput``), lambda the architecture's ``rate_lambda``; a recipe may
give its own (``Recipe.loss``, e.g. the DQ-AE's likelihood). The batches come from the recipe's
training data (``Recipe.data``: random crops of the images under ``--data`` unless it says
otherwise, e.g. CIFAR-10 or fixed patches). Every step
appends one JSON line to ``OUT/log.jsonl``; ``OUT/state.*`` (weights, Adam, step, RNGs) lets the
same command resume bit for bit on the same device.

Data-parallel training: started by ``torchrun --nproc-per-node N``, every process draws the same
global batch and trains on its share of it; DistributedDataParallel averages the gradients, the
quantizers sum their codebook statistics over the processes (``quantizers.CodebookQuantizer``),
and the buffers of process 0 are broadcast before every forward pass, so N processes follow one
process with the whole batch. Process 0 alone logs, validates, saves and exports. CUDA runs use
bfloat16 autocast and channels-last tensors. With ``--average-decay``, validation and export use a
moving average of the weights (``weight_average``), kept in the state with the live weights.
"""

import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dqcodec.eval.metrics import psnr, psnr_from_mse
from dqcodec.models.registry import round_to_storage, save_model
from dqcodec.paths import kodak_dir
from dqcodec.train.checkpoint import load_state, save_state
from dqcodec.train.data import load_rgb, to_tensor
from dqcodec.train.recipes import Recipe, option
from dqcodec.train.training_log import learning_rate_phases, read_log, throughput
from dqcodec.train.weight_average import WeightAverage


@dataclass
class LoopConfig:
    """Settings of the loop itself, the same for every architecture."""

    out: Path = option(None, "run folder: resumable state, log.jsonl, run.json")
    data: Path | None = option(None, "folder of training images (default: BSDS500)")
    init_from: Path | None = option(None, "start from an exported model (path without extension), fresh optimizer")
    steps: int = option(0, "Adam steps in total (resuming continues up to this number)")
    batch_size: int = option(8, "crops per step")
    crop: int = option(128, "training crop size in pixels")
    learning_rate: float = option(1e-4, "Adam learning rate", flag="--lr")
    validate_every: int = option(250, "steps between validations on the first Kodak images")
    checkpoint_every: int = option(100, "steps between saves of the resumable state")
    validation_images: int = option(4, "first N Kodak images for the validation")
    seed: int = option(0, "seed of the weights, crops and flips")
    device: str = option("cpu", "where to train (cuda: bfloat16 autocast)", choices=("cpu", "cuda"))
    threads: int = option(2, "torch CPU threads")
    max_minutes: float = option(0.0, "stop (saving the state) after this many minutes of training; 0: no limit")
    clip_grad_norm: float = option(0.0, "clip the gradient to this global norm before each step (0: no clipping)")
    average_decay: float = option(
        0.0, "keep a moving average of the weights with this decay per step (e.g. 0.999: over about 1 000 steps); "
        "validation and export use it; 0: no average")


def rd_loss(out, batch: torch.Tensor, rate_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, SSE): (SSE + lambda * bits) / pixels + quantizer loss for a (B, 3, H, W) batch."""
    pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
    sse = ((out.reconstruction.float() - batch) ** 2).sum()
    return (sse + rate_lambda * out.bits.float().sum()) / pixels + out.quantizer_loss.float(), sse


def train(net: nn.Module, recipe: Recipe, options, loop: LoopConfig, fresh: bool, log=print,
          changed: tuple[str, ...] = ()) -> nn.Module:
    """Train ``net`` for ``loop.steps`` in total, resuming from ``loop.out/state.*`` when it exists;
    returns the trained network (in train mode, on the CPU; with ``--average-decay``, holding the
    moving average of its weights, :mod:`~dqcodec.train.weight_average`). A new run first initialises a
    ``fresh`` network by the recipe, or adapts a network started from a model whose config
    fields ``changed`` (``Recipe.adapt``)."""
    rank, world = _distributed_rank()
    torch.manual_seed(loop.seed)
    generator = torch.Generator().manual_seed(loop.seed)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if loop.device == "cuda" else torch.device("cpu")
    data = recipe.data(options, loop)
    files = data.files
    loop.out.mkdir(parents=True, exist_ok=True)
    state_path = loop.out / "state"
    optimizer = torch.optim.Adam(net.parameters(), lr=loop.learning_rate)
    average = WeightAverage(net, loop.average_decay) if loop.average_decay > 0 else None
    if Path(f"{state_path}.safetensors").exists():
        step = load_state(state_path, net, optimizer, generator, average)
        saved_rate = optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:  # the saved state holds the learning rate it ran at
            group["lr"] = loop.learning_rate
        log(f"resumed {loop.out} at step {step}" + (f", learning rate {saved_rate:g} -> {loop.learning_rate:g}"
                                                     if saved_rate != loop.learning_rate else ""))
    else:
        if fresh:
            recipe.initialise(net, options, files, generator, log)
        elif changed:
            recipe.adapt(net, options, files, generator, log, changed)
        if average is not None:
            average.restart()
        step = 0
        if rank == 0:
            save_state(state_path, net, optimizer, step, generator, average)
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    net.to(device, memory_format=memory_format).train()
    _move_optimizer(optimizer, device)
    if average is not None:
        average.to(device)
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    crops = data.batches(loop.crop, loop.batch_size, generator) if step < loop.steps else None
    validation = sorted(kodak_dir().glob("*.png"))[: loop.validation_images] if rank == 0 else []
    started = time.time()
    log_file = open(loop.out / "log.jsonl", "a") if rank == 0 else None
    progress = tqdm(range(step, loop.steps), initial=step, total=loop.steps, desc="training", unit="step", disable=rank > 0)
    for step in progress:
        recipe.before_step(net, options, step, loop.steps, fresh)
        batch = crops.batch().chunk(world)[rank].to(device, memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(batch)
        loss, sse = recipe.loss(out, batch) if recipe.loss else rd_loss(out, batch, net.config.rate_lambda)
        optimizer.zero_grad()
        loss.backward()
        if loop.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), loop.clip_grad_norm)
        optimizer.step()
        if average is not None:
            average.update()
        done = step + 1
        out_of_time = loop.max_minutes > 0 and _agreed(time.time() - started > 60 * loop.max_minutes, device, world)
        if rank > 0:
            if out_of_time:
                break
            continue
        pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
        record = {"step": done, "seconds": round(time.time() - started, 3),
                  "learning_rate": optimizer.param_groups[0]["lr"],
                  **({"average_decay": loop.average_decay} if average is not None else {}), "loss": loss.item(),
                  "psnr": psnr_from_mse(sse.item() / (3 * pixels), peak=1.0),
                  "bpp_estimate": out.bits.float().sum().item() / pixels, **out.statistics}
        if done % loop.checkpoint_every == 0 or done == loop.steps or out_of_time:
            save_state(state_path, net, optimizer, done, generator, average)
        if validation and (done % loop.validate_every == 0 or done == loop.steps or out_of_time):
            with average.applied() if average is not None else nullcontext():
                record["validation"] = validate(net, validation)
            log(f"step {done}: Kodak[:{len(validation)}] PSNR {record['validation']['psnr']:.2f} dB, "
                f"~{record['validation']['bpp_estimate']:.3f} bpp ({recipe.estimate})")
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if out_of_time:
            log(f"stopped after {loop.max_minutes} minutes at step {done} (state saved)")
            break
    progress.close()
    if log_file is not None:
        log_file.close()
    if average is not None:
        average.copy_to_network()
        log(f"the network now holds the moving average of its weights (decay {loop.average_decay:g})")
    return net.cpu()


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _agreed(flag: bool, device: torch.device, world: int) -> bool:
    """``flag`` of process 0 on every process (they must stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


@torch.no_grad()
def validate(net: nn.Module, files: list[Path]) -> dict:
    """Mean PSNR (dB, decoded 8-bit RGB of the training pass) and bpp of the rate estimate."""
    net.eval()
    device = next(net.parameters()).device
    psnrs, bpps = [], []
    for path in files:
        pixels = load_rgb(path, net.padding_multiple)
        out = net(to_tensor(pixels).to(device))
        decoded = (out.reconstruction.float().clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).cpu().numpy()
        psnrs.append(psnr(pixels, decoded))
        bpps.append(out.bits.float().sum().item() / (pixels.shape[0] * pixels.shape[1]))
    net.train()
    return {"psnr": float(np.mean(psnrs)), "bpp_estimate": float(np.mean(bpps))}


def export(net: nn.Module, recipe: Recipe, options, loop: LoopConfig, stem: Path, info: dict,
           shared: str | None = None) -> None:
    """Finish the network for coding (the recipe's tables), then save it as model ``stem``
    (its shareable tensors in the shared weights file ``shared``, see ``registry.save_model``)."""
    net.eval()
    round_to_storage(net)
    data = recipe.data(options, loop)
    recipe.finish(net, options, data.files)
    logged = (loop.out / "log.jsonl").exists() and (loop.out / "log.jsonl").stat().st_size > 0  # 0 steps: nothing logged
    records = read_log(loop.out) if logged else []
    # The steps done, not the steps asked for: --max-minutes may have stopped the run early.
    steps = records[-1]["step"] if records else 0
    settings = {k: v for k, v in asdict(loop).items() if k not in ("out", "data", "init_from")} | {"steps": steps}
    if loop.init_from is None:
        described, used_options = recipe.describe(net, options, steps), asdict(options)
    else:
        described = f"started from the model in init_from; {steps} Adam steps; tables refitted"
        used_options = {f.name: getattr(options, f.name) for f in fields(options) if not f.metadata.get("init_only")}
    speed = throughput(records, loop.batch_size * loop.crop**2) if records else {}
    training = {"data": data.describe(), "recipe": described,
                **used_options, **settings, **info.get("training", {}),
                "learning_rate_phases": learning_rate_phases(records),
                "throughput": {**speed, "device": loop.device, "threads": loop.threads, "processes": _distributed_rank()[1]}}
    save_model(net, stem, {**info, "training": training}, shared)


def _move_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)
