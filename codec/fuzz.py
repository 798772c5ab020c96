"""Fuzzing the decoder: mutated .dqc files through ``dqcodec.decode`` and ``api.inspect``.

The contract under test: every input ends in an image of the size its header states (and the
same facts from ``inspect``) or in a ``DQCodecError``. Anything else is a *finding*: another
exception, a worker process that dies (a crash in native code), an input that runs over its
time budget (a hang), an image of the wrong size, or ``decode`` and ``inspect`` disagreeing.

Inputs are mutations of valid files: small synthetic images (16x16 to 300x24, RGB and
grayscale) coded with the shipped models, as one tile (format version 1), in two tiles (format
version 2), and rewritten as one tile in version 2. A random flip would almost always be caught by the
CRC32, so most mutations recompute it and reach the checks behind it: bit flips, byte
rewrites, truncations, insertions, deletions, splices of two files, header fields rewritten to
absurd or plausible values (size, padding, stream count and lengths, version, name length), a
file relabelled as another model, streams swapped between files, streams flipped, cut,
extended or emptied; a few mutations are stacked.

Inputs run in a worker process, so a crash or a hang is observed (and the worker restarted)
rather than taking the fuzzer down. The run is deterministic for a seed: the same inputs in the
same order, whatever happens to the worker.
"""

import json
import multiprocessing
import os
import random
import re
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqcodec.codec.errors import DQCodecError

# The .dqc layout (see dqcodec.codec.container), written here without validation so that the
# fuzzer can produce what ``container.pack`` refuses. Offsets after the model name; version 1
# ends with n_streams, version 2 with tile_size, overlap and levels (streams per tile).
_NAME_LENGTH_OFFSET = 5
_GEOMETRY_AFTER_NAME = 6  # magic (4), version, name_len
_FINGERPRINT = 16
_COMMON_FIELDS = {"width": (16, "<I"), "height": (20, "<I"), "channels": (24, "<B"), "bit_depth": (25, "<B"),
                  "padding": (26, "<B")}
_GEOMETRY_FIELDS = {
    1: {**_COMMON_FIELDS, "n_streams": (27, "<B")},
    2: {**_COMMON_FIELDS, "tile_size": (27, "<H"), "overlap": (29, "<H"), "levels": (31, "<B")},
}
_GEOMETRY_SIZE = {1: 28, 2: 32}
_U16_VALUES = (0, 1, 8, 16, 64, 128, 129, 255, 256, 257, 264, 512, 1024, 2048, 32768, 32769, 65535)
_U32_VALUES = (0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 4095, 4096, 8000, 8191, 8192, 8193,
               32767, 32768, 32769, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1)
_U8_VALUES = (0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 254, 255)
_SEED_SIZES = ((16, 16), (64, 48), (17, 9), (33, 40), (48, 64), (24, 24), (300, 24))
# The widest seed is also coded in tiles: two of the smallest size, the second 44 pixels wide.
_TILED_SEED_TILE_SIZE = 256

# Kinds of outcome; the first two are the contract, the rest are findings.
DECODED, REFUSED = "decoded", "refused"
FINDINGS = ("crash", "hang", "exception", "wrong_size", "inconsistent")
MAX_RECORDED_FINDINGS = 100


@dataclass
class FuzzConfig:
    """One fuzzing run; ``out`` receives ``summary.json`` and ``findings/`` (the inputs that failed)."""

    inputs: int = 1000
    seed: int = 0
    out: Path = Path("results/fuzz")
    budget_seconds: float = 10.0  # per input, decode and inspect together
    models: tuple[str, ...] = ()  # empty: every shipped model
    progress: bool = True


@dataclass
class Seed:
    """A valid file to mutate and the model that wrote it."""

    model: str
    data: bytes


# ---- seed images -------------------------------------------------------------------------------


def seed_images() -> list[np.ndarray]:
    """Small deterministic images, (H, W, 3) or (H, W) uint8: smooth, noisy, flat, grayscale, edges."""
    rng = np.random.default_rng(2024)
    images = []
    for i, (width, height) in enumerate(_SEED_SIZES):
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
        smooth = 128 + 100 * np.sin(cols / (3 + i)) * np.cos(rows / (4 + i))
        pixels = np.stack([smooth, 255 - smooth, (rows * 255 / height)], axis=-1)
        pixels += rng.normal(0, 6 * i, pixels.shape)
        if i == 2:
            pixels[:] = (0, 255, 0)  # flat saturated colour
        if i == 3:
            pixels[rows.astype(int) % 8 < 4] = 255  # hard edges
        image = np.clip(pixels, 0, 255).astype(np.uint8)
        images.append(image[:, :, 0] if i == 4 else image)
    return images


def seed_files(models: list[str]) -> list[tuple[str, bytes]]:
    """(model, .dqc bytes) of every seed image coded with every model: each as one tile (version
    1), that file rewritten in version 2, and the widest image in two tiles (version 2)."""
    from dqcodec.codec import api

    files = []
    for model in models:
        for image in seed_images():
            data = api.encode(image, model=model)
            files += [(model, data), (model, _as_version_2(data))]
            if image.shape[1] > _TILED_SEED_TILE_SIZE:
                files.append((model, api.encode(image, model=model, tile_size=_TILED_SEED_TILE_SIZE)))
    return files


def _as_version_2(data: bytes) -> bytes:
    """A version-1 file (one tile) in the version-2 layout: tile_size 0, overlap 0."""
    geometry, _, lengths = _layout(data)
    end = geometry + _GEOMETRY_SIZE[1]
    body = data[:4] + b"\x02" + data[5 : end - 1] + struct.pack("<HHB", 0, 0, len(lengths)) + data[end:-4]
    return _seal(body)


# ---- the worker (a separate process) -----------------------------------------------------------


def _worker(connection) -> None:
    """Answer requests until the pipe closes: ("warm", models) -> None once the models are
    loaded (or the error message), ("seeds", models) -> [(model, bytes)], ("check", data) -> an
    outcome dict (see :func:`check_input`). The codec is imported on first use."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS / torch thread: the fuzzer shares the machine
    while True:
        try:
            request, payload = connection.recv()
        except EOFError:
            return
        if request == "warm":
            try:
                if payload:
                    from dqcodec.codec import api
                    from dqcodec.models import registry

                    for model in payload:
                        registry.load_model(api.resolve_model_name(model=model))
                connection.send(None)
            except DQCodecError as error:  # an unknown model name: the message goes back
                connection.send(str(error))
        elif request == "seeds":
            connection.send(seed_files(payload))
        else:
            connection.send(check_input(payload))


def check_input(data: bytes) -> dict:
    """Run ``decode`` and then ``inspect`` on ``data``; returns {"kind": one of "decoded",
    "refused" or a finding, "message": the error or what was wrong, "seconds": both calls}."""
    from dqcodec.codec import api
    from dqcodec.codec.container import unpack

    start = time.perf_counter()
    results = []
    for call in (api.decode, api.inspect):
        if call is api.inspect and results[0][0] == REFUSED:
            break  # inspect reads the file as decode does: it would refuse it again, for the same reason
        try:
            value = call(data)
        except DQCodecError as error:
            results.append((REFUSED, str(error)))
        except Exception as error:  # the finding this harness exists for
            frames = traceback.extract_tb(error.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            results.append(("exception", f"{call.__name__}: {type(error).__name__}: {error} (at {where})"))
        else:
            header, _ = unpack(data)
            if call is api.decode:
                size, mode = value.size, value.mode
                expected = ((header.width, header.height), "L" if header.channels == 1 else "RGB")
                ok = (size, mode) == expected
                problem = f"decode gave {mode} {size[0]}x{size[1]}, the header says {expected}"
            else:
                ok = (value["width"], value["height"]) == (header.width, header.height)
                problem = f"inspect gave {value['width']}x{value['height']}, the header says {header.width}x{header.height}"
            results.append((DECODED, "") if ok else ("wrong_size", problem))
    seconds = time.perf_counter() - start
    kinds = {kind for kind, _ in results}
    for finding in ("exception", "wrong_size"):
        if finding in kinds:
            message = next(message for kind, message in results if kind == finding)
            return {"kind": finding, "message": message, "seconds": seconds}
    if len(kinds) > 1:
        return {"kind": "inconsistent", "message": f"decode {results[0][0]}, inspect {results[1]}", "seconds": seconds}
    return {"kind": results[0][0], "message": results[0][1], "seconds": seconds}


class _Worker:
    """The worker process, restarted (and its models loaded again, outside any time budget)
    after a crash or a hang."""

    def __init__(self, models: list[str]):
        self._models = models
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()
        child.close()
        problem = self.request("warm", self._models, timeout=None)
        if problem is not None:
            self.close()
            raise DQCodecError(problem)

    def request(self, request: str, payload, timeout: float | None):
        """The worker's answer; None if it did not answer within ``timeout`` seconds (then it
        is killed and restarted). Raises EOFError if it died (it is restarted)."""
        try:
            self._connection.send((request, payload))
            if self._connection.poll(timeout):
                return self._connection.recv()
        except (EOFError, OSError):
            self._process.join()
            status = self._process.exitcode
            self._restart()
            raise EOFError(f"worker died (exit status {status})") from None
        self._restart()
        return None

    def _restart(self) -> None:
        self._process.kill()
        self._process.join()
        self._connection.close()
        self._start()

    def close(self) -> None:
        self._connection.close()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ---- mutations ---------------------------------------------------------------------------------


def _seal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _version(data: bytes) -> int:
    return 2 if data[4] == 2 else 1


def _layout(data: bytes) -> tuple[int, int, list[int]]:
    """(geometry offset, payload offset, stream lengths) of a valid file."""
    from dqcodec.codec.tiles import Tiling

    version = _version(data)
    geometry = _GEOMETRY_AFTER_NAME + data[_NAME_LENGTH_OFFSET]
    fields = {name: struct.unpack_from(form, data, geometry + offset)[0]
              for name, (offset, form) in _GEOMETRY_FIELDS[version].items()}
    if version == 1:
        count = fields["n_streams"]
    else:
        tiling = Tiling(fields["width"], fields["height"], fields["tile_size"], fields["overlap"])
        count = fields["levels"] * len(tiling)
    lengths_offset = geometry + _GEOMETRY_SIZE[version]
    lengths = list(struct.unpack_from(f"<{count}I", data, lengths_offset))
    return geometry, lengths_offset + 4 * count, lengths


def _rebuild(data: bytes, streams: list[bytes] | None = None, prefix: bytes | None = None) -> bytes:
    """``data`` (a valid file) with other streams and/or another header up to the stream
    count (magic .. n_streams or levels), lengths and CRC made consistent (the stream count of
    a version-1 header follows the streams; a version-2 header's tile grid is kept as it is)."""
    geometry, payload, lengths = _layout(data)
    head = prefix if prefix is not None else data[: geometry + _GEOMETRY_SIZE[_version(data)]]
    if streams is None:
        offsets = np.cumsum([payload, *lengths])
        streams = [data[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]
    if _version(head) == 1:
        head = head[:-1] + bytes([len(streams) & 0xFF])
    return _seal(head + b"".join(struct.pack("<I", len(s)) for s in streams) + b"".join(streams))


def _streams(data: bytes) -> list[bytes]:
    _, payload, lengths = _layout(data)
    offsets = np.cumsum([payload, *lengths])
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]


def _flip_bits(rng: random.Random, blob: bytes, count: int) -> bytes:
    if not blob:
        return blob
    out = bytearray(blob)
    for _ in range(count):
        position = rng.randrange(8 * len(out))
        out[position // 8] ^= 1 << (position % 8)
    return bytes(out)


def _mutate_once(rng: random.Random, data: bytes, seeds: list[Seed]) -> tuple[str, bytes]:
    """One mutation of the valid file ``data``: (its name, the new bytes)."""
    body = data[:-4]
    geometry, payload, lengths = _layout(data)
    kind = rng.choices(
        ["bit-flip", "bit-flip-raw", "byte-set", "truncate", "insert", "delete", "splice", "header-field",
         "geometry", "model-swap", "stream-swap", "stream-flip", "stream-cut", "stream-extend", "stream-empty"],
        weights=[10, 2, 6, 5, 5, 4, 5, 12, 8, 8, 8, 14, 6, 4, 3],
    )[0]
    if kind == "bit-flip":
        return kind, _seal(_flip_bits(rng, body, rng.choice((1, 1, 2, 3, 8))))
    if kind == "bit-flip-raw":
        return kind, _flip_bits(rng, data, rng.choice((1, 2)))
    if kind == "byte-set":
        out = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        return kind, _seal(bytes(out))
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return kind, (_seal(body[:cut]) if rng.random() < 0.7 else data[:cut])
    if kind == "insert":
        position = rng.randrange(len(body) + 1)
        extra = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 16))))
        return kind, _seal(body[:position] + extra + body[position:])
    if kind == "delete":
        start = rng.randrange(len(body))
        return kind, _seal(body[:start] + body[start + rng.choice((1, 4, 8, 32)) :])
    if kind == "splice":
        other = rng.choice(seeds).data[:-4]
        return kind, _seal(body[: rng.randrange(len(body) + 1)] + other[rng.randrange(len(other) + 1) :])
    if kind == "header-field":
        out = bytearray(body)
        fields = _GEOMETRY_FIELDS[_version(data)]
        target = rng.choice(["version", "name_len", *fields, "length"])
        if target == "version":
            out[4] = rng.choice(_U8_VALUES)
        elif target == "name_len":
            out[_NAME_LENGTH_OFFSET] = rng.choice(_U8_VALUES)
        elif target == "length":
            index = rng.randrange(len(lengths))
            offset = geometry + _GEOMETRY_SIZE[_version(data)] + 4 * index
            struct.pack_into("<I", out, offset, rng.choice(_U32_VALUES))
        else:
            offset, form = fields[target]
            values = {"<I": _U32_VALUES, "<H": _U16_VALUES, "<B": _U8_VALUES}[form]
            struct.pack_into(form, out, geometry + offset, rng.choice(values))
        return f"{kind}:{target}", _seal(bytes(out))
    if kind == "geometry":
        out = bytearray(data[: geometry + _GEOMETRY_SIZE[_version(data)]])
        width, height = struct.unpack_from("<II", out, geometry + _FINGERPRINT)
        change = rng.choice(["swap", "double", "half", "nudge", "large"])
        if change == "swap":
            width, height = height, width
        elif change == "double":
            width, height = 2 * width, 2 * height
        elif change == "half":
            width, height = max(1, width // 2), max(1, height // 2)
        elif change == "nudge":
            width, height = max(1, width + rng.randint(-9, 9)), max(1, height + rng.randint(-9, 9))
        else:
            width, height = rng.choice((640, 1024, 4000, 8000)), rng.choice((480, 768, 3000, 8000))
        struct.pack_into("<II", out, geometry + _FINGERPRINT, width, height)
        return f"{kind}:{change}", _rebuild(data, prefix=bytes(out))
    if kind == "model-swap":
        other = rng.choice(seeds).data
        other_geometry = _GEOMETRY_AFTER_NAME + other[_NAME_LENGTH_OFFSET]
        identity = other[4:other_geometry] + other[other_geometry : other_geometry + _FINGERPRINT]
        prefix = data[:4] + identity + data[geometry + _FINGERPRINT : geometry + _GEOMETRY_SIZE[_version(data)]]
        return kind, _rebuild(data, prefix=prefix)
    streams = _streams(data)
    index = rng.randrange(len(streams))
    if kind == "stream-swap":
        donor = _streams(rng.choice(seeds).data)
        streams[index] = donor[rng.randrange(len(donor))]
    elif kind == "stream-flip":
        streams[index] = _flip_bits(rng, streams[index], rng.choice((1, 1, 2, 4)))
    elif kind == "stream-cut":
        streams[index] = streams[index][: max(0, len(streams[index]) - 4 * rng.randint(1, 3))]
    elif kind == "stream-extend":
        streams[index] += rng.choice((bytes(4), b"\xff" * 4, bytes(rng.randrange(256) for _ in range(8))))
    else:
        streams[index] = b""
    return kind, _rebuild(data, streams=streams)


def mutate(rng: random.Random, seeds: list[Seed]) -> tuple[str, bytes]:
    """A mutated input: one mutation of a seed file, or (one time in eight) two or three stacked
    (each after the first applied where the file is still valid enough to find its fields)."""
    data = rng.choice(seeds).data
    kind, mutated = _mutate_once(rng, data, seeds)
    if rng.random() < 0.125:
        kinds = [kind]
        for _ in range(rng.randint(1, 2)):
            try:
                _layout(mutated)
                kind, mutated = _mutate_once(rng, mutated, seeds)
            except (IndexError, struct.error, ValueError):
                break  # the layout is too broken to locate fields
            kinds.append(kind)
        kind = "+".join(kinds)
    return kind, mutated


# ---- the run -----------------------------------------------------------------------------------


def _message_class(message: str) -> str:
    """A refusal's message with numbers and names abstracted, to count refusals by reason."""
    message = re.sub(r"'[^']*'", "'...'", message)
    message = re.sub(r"\d[\d,]*", "N", message)
    return message[:120]


def fuzz(config: FuzzConfig) -> dict:
    """Run ``config.inputs`` mutated inputs; write ``summary.json`` (every 1000 inputs and at the
    end) and each finding's input under ``config.out``; return the summary."""
    from tqdm import tqdm

    from dqcodec.models.registry import model_names

    models = list(config.models) or model_names()
    out = Path(config.out)
    started = time.perf_counter()
    worker = _Worker(models)
    try:
        (out / "findings").mkdir(parents=True, exist_ok=True)
        seeds = [Seed(model, data) for model, data in worker.request("seeds", models, timeout=None)]
        rng = random.Random(config.seed)
        tally = _Tally()
        bar = tqdm(range(config.inputs), desc="fuzzing", unit="input", disable=None if config.progress else True)
        for index in bar:
            kind, data = mutate(rng, seeds)
            try:
                result = worker.request("check", data, timeout=config.budget_seconds)
            except EOFError as error:
                result = {"kind": "crash", "message": str(error), "seconds": None}
            if result is None:
                result = {"kind": "hang", "message": f"over the {config.budget_seconds:g} s budget", "seconds": None}
            if result["kind"] in FINDINGS:
                path = out / "findings" / f"{index:07d}-{result['kind']}.dqc"
                path.write_bytes(data)
                result["file"] = str(path)
            tally.add(index, kind, result)
            if result["kind"] in FINDINGS:
                bar.set_postfix(findings=tally.findings)
            if (index + 1) % 1000 == 0:
                _write_json(out / "summary.json", tally.summary(config, models, len(seeds), time.perf_counter() - started))
        summary = tally.summary(config, models, len(seeds), time.perf_counter() - started)
        _write_json(out / "summary.json", summary)
    finally:
        worker.close()
    return summary


class _Tally:
    """Counts of outcomes, refusal reasons and mutations, and the findings' details."""

    def __init__(self):
        self.inputs = 0
        self.outcomes: Counter = Counter()
        self.refusals: Counter = Counter()
        self.by_mutation: dict[str, Counter] = {}
        self.recorded: list[dict] = []
        self.seconds: list[float] = []

    @property
    def findings(self) -> int:
        return sum(self.outcomes[kind] for kind in FINDINGS)

    def add(self, index: int, mutation: str, result: dict) -> None:
        self.inputs += 1
        kind = result["kind"]
        self.outcomes[kind] += 1
        group = "stacked" if "+" in mutation else mutation
        self.by_mutation.setdefault(group, Counter())[kind] += 1
        if result["seconds"] is not None:
            self.seconds.append(result["seconds"])
        if kind == REFUSED:
            self.refusals[_message_class(result["message"])] += 1
        elif kind in FINDINGS and len(self.recorded) < MAX_RECORDED_FINDINGS:
            self.recorded.append({"input": index, "mutation": mutation, "kind": kind,
                                  "message": result["message"], "file": result["file"]})

    def summary(self, config: FuzzConfig, models: list[str], seed_files: int, elapsed: float) -> dict:
        from importlib.metadata import version

        seconds = self.seconds
        command = f"dqcodec fuzz --inputs {config.inputs} --seed {config.seed} --out {config.out}"
        if config.budget_seconds != FuzzConfig.budget_seconds:
            command += f" --budget {config.budget_seconds:g}"
        command += "".join(f" --model {model}" for model in config.models)
        return {
            "command": command,
            "finished": self.inputs == config.inputs,
            "inputs": self.inputs,
            "seed": config.seed,
            "budget_seconds_per_input": config.budget_seconds,
            "models": models,
            "seed_files": seed_files,
            "outcomes": {kind: self.outcomes.get(kind, 0) for kind in (DECODED, REFUSED, *FINDINGS)},
            "crashes": self.outcomes.get("crash", 0),
            "hangs": self.outcomes.get("hang", 0),
            "exceptions_other_than_dqcodecerror": self.outcomes.get("exception", 0),
            "findings": self.recorded,
            "refusals_by_message": dict(self.refusals.most_common()),
            "outcomes_by_mutation": {kind: dict(counts) for kind, counts in sorted(self.by_mutation.items())},
            "seconds": round(elapsed, 1),
            "seconds_per_input": {
                "mean": round(float(np.mean(seconds)), 4) if seconds else None,
                "median": round(float(np.median(seconds)), 4) if seconds else None,
                "max": round(max(seconds), 3) if seconds else None,
            },
            "software": {name: version(name) for name in ("dqcodec", "constriction", "numpy")},
        }


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


# ---- the command -------------------------------------------------------------------------------


def add_fuzz_arguments(parser) -> None:
    """Arguments of ``dqcodec fuzz``."""
    parser.add_argument("--inputs", type=int, default=FuzzConfig.inputs, metavar="N", help="inputs to try (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=FuzzConfig.seed, metavar="S", help="random seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=FuzzConfig.out, metavar="DIR",
                        help="where summary.json and findings/ go (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=FuzzConfig.budget_seconds, metavar="SECONDS",
                        help="time budget per input; over it counts as a hang (default: %(default)s)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="code the seed files with this model (repeatable; default: every shipped model)")


def run_fuzz(args) -> int:
    """Run the fuzzer; 0 if every input ended in an image or a DQCodecError, else 1."""
    if args.inputs < 0:
        raise DQCodecError("--inputs must be at least 0")
    if not args.budget > 0:
        raise DQCodecError("--budget must be more than 0 seconds")
    config = FuzzConfig(inputs=args.inputs, seed=args.seed, out=args.out, budget_seconds=args.budget,
                        models=tuple(args.model))
    summary = fuzz(config)
    counts = ", ".join(f"{kind} {count}" for kind, count in summary["outcomes"].items())
    print(f"{summary['inputs']} inputs in {summary['seconds']} s: {counts}; {args.out / 'summary.json'}")
    findings = sum(summary["outcomes"][kind] for kind in FINDINGS)
    if findings:
        print(f"dqcodec: {findings} findings, inputs in {args.out / 'findings'}", file=sys.stderr)
    return 1 if findings else 0

