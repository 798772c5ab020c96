"""A run's ``log.jsonl``: reading it, its throughput, and ``dqcodec plot-training RUN``.

Each training step appends one JSON line (``train.loop``): step, seconds since that invocation
started, learning rate (and the weight average's decay when it is kept), loss, the batch's
PSNR and estimated bpp, the architecture's statistics, and on
validation steps a ``validation`` dict (PSNR of the decoded 8-bit Kodak images and their
estimated bpp). A resumed run appends to the same file and its seconds start again from 0;
wall time here is the sum over invocations.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from dqcodec.codec.errors import DQCodecError


def read_log(run: Path) -> list[dict]:
    """The records of ``run/log.jsonl`` (or of the file ``run``), each with ``wall_seconds``
    (training time summed over the invocations up to that step). Steps logged after the last
    saved state of an invocation that was stopped are done again by the next one: only the
    redone records stay (the time of both is in ``wall_seconds``). Raises DQCodecError when
    the log is missing or unreadable."""
    path = run / "log.jsonl" if run.is_dir() else run
    try:
        lines = path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise DQCodecError(f"cannot read the training log {path}: {error}") from None
    if not records:
        raise DQCodecError(f"the training log {path} has no steps yet")
    offset, previous = 0.0, 0.0
    kept = []
    for record in records:
        if record["seconds"] < previous:  # a resumed invocation starts its clock again
            offset += previous
        previous = record["seconds"]
        record["wall_seconds"] = offset + record["seconds"]
        while kept and kept[-1]["step"] >= record["step"]:  # redone after resuming from an earlier state
            kept.pop()
        kept.append(record)
    return kept


def throughput(records: list[dict], pixels_per_step: int) -> dict:
    """Median training speed of the logged steps: steps/s and megapixels/s (crops x batch)."""
    durations = [b["seconds"] - a["seconds"] for a, b in zip(records, records[1:], strict=False)
                 if b["step"] == a["step"] + 1 and b["seconds"] > a["seconds"] and "validation" not in b]
    if not durations:
        return {}
    steps_per_second = 1.0 / float(np.median(durations))
    return {"steps_per_second": round(steps_per_second, 3),
            "megapixels_per_second": round(steps_per_second * pixels_per_step / 1e6, 3)}


def learning_rate_phases(records: list[dict]) -> list[dict]:
    """The runs of consecutive steps (of :func:`read_log`'s records) trained with one learning
    rate and weight average: steps, learning_rate (None where the log predates its logging),
    average_decay (when the weights were averaged) and minutes of training, in order."""
    phases: list[dict] = []
    for record in records:
        setting = {"learning_rate": record.get("learning_rate")}
        if "average_decay" in record:
            setting["average_decay"] = record["average_decay"]
        if not phases or phases[-1]["setting"] != setting:
            phases.append({"setting": setting, "steps": 0, "start": phases[-1]["end"] if phases else 0.0})
        phases[-1]["steps"] += 1
        phases[-1]["end"] = record["wall_seconds"]
    return [{"steps": phase["steps"], **phase["setting"], "minutes": round((phase["end"] - phase["start"]) / 60, 1)}
            for phase in phases]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 2 * window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training(records: list[dict], out: Path, title: str) -> None:
    """Loss, bpp and PSNR against steps (top row) and wall time in minutes (bottom row), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in records])
    minutes = np.array([r["wall_seconds"] for r in records]) / 60
    window = max(1, len(records) // 100)
    validated = [r for r in records if "validation" in r]
    panels = (("loss", "loss (SSE + lambda bits) / pixel"), ("bpp_estimate", "bpp (estimate)"), ("psnr", "PSNR (dB)"))
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for row, (x_all, x_label) in enumerate(((steps, "step"), (minutes, "training wall time (min)"))):
        for column, (key, label) in enumerate(panels):
            axis = axes[row, column]
            values = np.array([r[key] for r in records], dtype=float)
            axis.plot(x_all[window - 1 :] if len(values) >= 2 * window else x_all, _smooth(values, window),
                      color="#4363d8", linewidth=1, label=f"training batches (mean of {window})")
            if key in ("bpp_estimate", "psnr") and validated:
                x_val = [r["step"] if row == 0 else r["wall_seconds"] / 60 for r in validated]
                axis.plot(x_val, [r["validation"][key] for r in validated], "o-", color="#e6194b",
                          label="Kodak validation images")
            axis.set_xlabel(x_label)
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            if key == "loss":
                axis.set_yscale("log")
    axes[0, 2].legend(loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def add_plot_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder (or its log.jsonl) of 'dqcodec train'")
    parser.add_argument("-o", "--out", type=Path, default=None, help="PNG to write (default: RUN/training.png)")


def run_plot_training(args: argparse.Namespace) -> int:
    records = read_log(args.run)
    out = args.out or ((args.run if args.run.is_dir() else args.run.parent) / "training.png")
    last = records[-1]
    hours = last["wall_seconds"] / 3600
    plot_training(records, out, f"{args.run.resolve().name}: {last['step']} steps in {hours:.2f} h")
    print(f"{out}: {last['step']} steps, {hours:.2f} h of training")
    validated = [r for r in records if "validation" in r]
    if validated:
        v = validated[-1]["validation"]
        print(f"last validation (step {validated[-1]['step']}): {v['psnr']:.2f} dB at ~{v['bpp_estimate']:.3f} bpp (estimate)")
    return 0
