"""Hostile input (issue 11, items 3-5): decompression bombs, streams that end early or late,
fuzzing, and the CLI's edges (closed pipes, full devices, batch outputs over their inputs).

The stream checks are run for every architecture behind the codec-model interface: both
shipped ones (DQ, SHVQ) and the two-level toy of ``test_codec_interface``, whose fine level
reads the coarse one as side information.
"""

import io
import json
import os
import random
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

import dqcodec
from dqcodec.codec import api, cli
from dqcodec.codec.cli import main
from dqcodec.codec.container import Header, pack, unpack
from dqcodec.codec.fuzz import FINDINGS, FuzzConfig, Seed, _Worker, check_input, fuzz, mutate
from dqcodec.codec.limits import DEFAULT_MAX_PIXELS, ENVIRONMENT_VARIABLE, max_pixels
from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.models import registry
from test_cli_errors import FakeStream, assert_one_error, install_fake_api, sample_png
from test_codec_interface import ToyConfig, ToyTwoLevelCodec

RNG = np.random.default_rng(11)
PIXELS = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)
ARCHITECTURES = ["dq-q1", "shvq-q1"]  # DQCodecNet and SHVQCodecNet


@pytest.fixture(autouse=True)
def no_limit_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def with_streams(data: bytes, streams: list[bytes]) -> bytes:
    header, _ = unpack(data)
    return pack(header, streams)


def bomb(model: str, width: int, height: int) -> bytes:
    """A header claiming ``width`` x ``height`` with empty streams (47 bytes for a 5-letter name)."""
    net, _, fingerprint = registry.load_model(model)
    header = Header(model, fingerprint, width, height, 3, 8, net.padding_multiple)
    return pack(header, [b""] * len(net.levels(net.padding_multiple, net.padding_multiple)))


# ---- the pixel limit ---------------------------------------------------------------------------


def test_the_default_limit_lets_camera_photos_through():
    assert max_pixels() == DEFAULT_MAX_PIXELS >= 9504 * 6336  # a 61 MP full-frame sensor


def test_the_limit_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1000")
    assert max_pixels() == 1000 and max_pixels(5) == 5
    for setting in ("abc", "0", "-3", "1e9"):
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, setting)
        with pytest.raises(dqcodec.DQCodecError, match=ENVIRONMENT_VARIABLE):
            max_pixels()
    for limit in (0, -1, 2.5, True):
        with pytest.raises(dqcodec.DQCodecError, match="max_pixels"):
            max_pixels(limit)


def test_encode_refuses_an_image_over_the_limit_from_its_header_alone():
    # A PNG cut where its pixel data begins: only the header can be read, yet the limit speaks first.
    png = png_bytes(np.zeros((2000, 3000), np.uint8))
    header_only = png[: png.index(b"IDAT") + 20]
    with pytest.raises(dqcodec.DQCodecError) as caught:
        dqcodec.encode(header_only, max_pixels=10**6)
    message = str(caught.value)
    assert "3000x2000" in message and "--max-pixels 6000000" in message and f"{ENVIRONMENT_VARIABLE}=6000000" in message
    with pytest.raises(dqcodec.DQCodecError, match="corrupt or truncated"):
        dqcodec.encode(header_only, max_pixels=6 * 10**6)  # allowed: now the missing pixels are the problem


def test_encode_and_decode_obey_the_argument_and_the_environment(monkeypatch):
    data = dqcodec.encode(PIXELS, model="dq-q1")
    for call in (lambda: dqcodec.encode(PIXELS, model="dq-q1", max_pixels=959), lambda: dqcodec.decode(data, 959),
                 lambda: api.inspect(data, max_pixels=959)):
        with pytest.raises(dqcodec.DQCodecError, match="more than the limit of 959"):
            call()
    assert dqcodec.decode(data, max_pixels=960).size == (40, 24)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "959")
    with pytest.raises(dqcodec.DQCodecError, match="limit"):
        dqcodec.decode(data)
    assert dqcodec.decode(data, max_pixels=960).size == (40, 24)  # the argument wins


def test_the_cli_option_and_variable(tmp_path, capsys, monkeypatch):
    (tmp_path / "in.png").write_bytes(png_bytes(PIXELS))
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", tmp_path / "x.dqc", "--max-pixels", 959)
    assert_one_error(status, stderr, "40x24", "--max-pixels 960", ENVIRONMENT_VARIABLE)
    assert os.listdir(tmp_path) == ["in.png"]
    status, _, stderr = run(capsys, "encode", tmp_path / "in.png", "-o", tmp_path / "out", "--max-pixels", 959)
    assert_one_error(status, stderr, "in.png", "--max-pixels 960")
    assert run(capsys, "encode", tmp_path / "in.png", tmp_path / "x.dqc", "-m", "dq-q1")[0] == 0
    for command in (["decode", tmp_path / "x.dqc", tmp_path / "x.png"], ["info", tmp_path / "x.dqc"]):
        status, stdout, stderr = run(capsys, *command, "--max-pixels", 100)
        assert_one_error(status, stderr, ".dqc file", "--max-pixels 960")
        assert stdout == "" and not (tmp_path / "x.png").exists()
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, "100")
        assert_one_error(*run(capsys, *command)[::2], "limit of 100")
        assert run(capsys, *command, "--max-pixels", 960)[0] == 0
        monkeypatch.delenv(ENVIRONMENT_VARIABLE)
        (tmp_path / "x.png").unlink(missing_ok=True)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "many")
    assert_one_error(*run(capsys, "info", tmp_path / "x.dqc")[::2], ENVIRONMENT_VARIABLE, "'many'")
    for bad in ("0", "-5", "lots"):
        with pytest.raises(SystemExit) as caught:
            main(["decode", str(tmp_path / "x.dqc"), str(tmp_path / "y.png"), "--max-pixels", bad])
        assert caught.value.code == 2 and "positive integer" in capsys.readouterr().err


# ---- streams that end early or late ------------------------------------------------------------


def test_the_47_byte_bomb_is_refused_at_once(tmp_path, capsys):
    data = bomb("dq-q3", 8192, 8192)
    assert len(data) == 47
    (tmp_path / "bomb.dqc").write_bytes(data)
    status, _, stderr = run(capsys, "decode", tmp_path / "bomb.dqc", tmp_path / "out.png")  # over the default limit
    assert_one_error(status, stderr, "8192x8192", "--max-pixels 67108864")
    registry.load_model("dq-q3")  # what follows is the stream check, not model loading
    start = time.perf_counter()
    status, _, stderr = run(capsys, "decode", tmp_path / "bomb.dqc", tmp_path / "out.png", "--max-pixels", 2**26)
    assert time.perf_counter() - start < 1.0
    assert_one_error(status, stderr, "ends before the image is decoded")
    assert os.listdir(tmp_path) == ["bomb.dqc"]


@pytest.mark.parametrize("model", ARCHITECTURES)
def test_a_stream_must_be_used_up_exactly(model):
    data = dqcodec.encode(PIXELS, model=model)
    (stream,) = unpack(data)[1]
    assert len(stream) >= 8
    assert np.array_equal(np.asarray(dqcodec.decode(data)), np.asarray(dqcodec.decode(with_streams(data, [stream]))))
    cases = {  # a stream cut short may also steer the decoder somewhere no symbol leads
        "ends before|invalid": [b"", stream[:4], stream[:-4], stream[: 4 * (len(stream) // 8)]],
        "left after": [stream + bytes(4), stream + b"\xff" * 8],
    }
    for fragment, streams in cases.items():
        for damaged in streams:
            for call in (dqcodec.decode, api.inspect):
                with pytest.raises(dqcodec.DQCodecError, match=fragment):
                    call(with_streams(data, [damaged]))
    with pytest.raises(dqcodec.DQCodecError, match="ends before"):
        dqcodec.decode(bomb(model, 768, 512))


def test_the_generic_loop_checks_every_level_of_a_two_level_codec():
    net = ToyTwoLevelCodec(ToyConfig()).double()
    image = torch.from_numpy(PIXELS[:16, :32].astype(np.float64) / 255).permute(2, 0, 1)[None]
    levels = net.compress(image)
    net.coarse_entropy.set_codes(torch.linspace(0, 1, 16)[None, :, None].repeat(3, 1, 1), torch.ones(3, 16))
    net.coarse_entropy.fit([(levels[0].indices, {})])
    net.fine_entropy.fit([(levels[1].indices, {"coarse": levels[0].indices})])
    specs = net.levels(16, 32)
    streams = [api._encode_level(spec, level, levels[:i]) for i, (spec, level) in enumerate(zip(specs, levels))]

    def decode_all(streams):
        decoded = []
        for spec, stream in zip(specs, streams):
            decoded.append(api._decode_level(spec, stream, decoded))
        return decoded

    for original, decoded in zip(levels, decode_all(streams)):
        assert np.array_equal(original.indices, decoded.indices)
    for i in range(2):
        for damaged, fragment in ((b"", "ends before"), (streams[i][:-4], "ends before"),
                                  (streams[i] + bytes(4), "left after")):
            with pytest.raises(dqcodec.DQCodecError, match=fragment):
                decode_all([damaged if j == i else s for j, s in enumerate(streams)])


def test_the_range_decoder_stops_as_soon_as_its_stream_runs_out(monkeypatch):
    monkeypatch.setattr(RangeDecoder, "CHUNK", 1000)
    tables = RNG.integers(1, 1000, (200_000, 16)).astype(np.int32)
    rows = np.arange(len(tables))  # a table of its own for every symbol
    symbols = RNG.integers(0, 16, 200_000)
    encoder = RangeEncoder()
    encoder.encode(symbols, tables, rows)
    stream = encoder.to_bytes()
    decoder = RangeDecoder(stream)
    assert np.array_equal(decoder.decode(tables, rows), symbols)
    decoder.finish()
    for cut in (0, 4, 8, len(stream) // 3, len(stream) - 4):
        decoder = RangeDecoder(stream[:cut])
        with pytest.raises(dqcodec.DQCodecError, match="ends before"):
            decoder.decode(tables, rows)
        # One chunk past the end at most: 1000 symbols of at most 14 bits each.
        assert decoder._mirror.pos()[0] < cut // 4 + 1000 * 14 // 32
    changed = bytearray(stream)
    changed[-4] ^= 0x01  # the lowest bit of the last word: symbols may decode the same, the check sees it
    decoder = RangeDecoder(bytes(changed))
    with pytest.raises(dqcodec.DQCodecError):
        decoder.decode(tables, rows)
        decoder.finish()


# ---- fuzzing -----------------------------------------------------------------------------------


def test_mutations_are_deterministic_for_a_seed():
    seeds = [Seed(model, dqcodec.encode(PIXELS, model=model)) for model in ARCHITECTURES]
    one, two = random.Random(5), random.Random(5)
    assert [mutate(one, seeds) for _ in range(300)] == [mutate(two, seeds) for _ in range(300)]


def test_the_oracle_calls_other_exceptions_findings(monkeypatch):
    data = dqcodec.encode(PIXELS, model="dq-q1")
    assert check_input(data)["kind"] == "decoded"
    assert check_input(data[:-1] + bytes([data[-1] ^ 1]))["kind"] == "refused"
    with monkeypatch.context() as patch:
        patch.setattr(api, "inspect", lambda data: (_ for _ in ()).throw(IndexError("boom")))
        result = check_input(data)
        assert result["kind"] == "exception" and "IndexError: boom" in result["message"]
    with monkeypatch.context() as patch:
        patch.setattr(api, "decode", lambda data: Image.new("RGB", (3, 3)))
        assert check_input(data)["kind"] == "wrong_size"
    with monkeypatch.context() as patch:
        patch.setattr(api, "inspect", lambda data: (_ for _ in ()).throw(dqcodec.DQCodecError("no")))
        assert check_input(data)["kind"] == "inconsistent"
    with monkeypatch.context() as patch:
        patch.setattr(api, "decode", lambda data: (_ for _ in ()).throw(RuntimeError("bug")))
        assert check_input(data)["kind"] == "exception"


def test_the_worker_reports_hangs_and_crashes_and_is_restarted():
    data = dqcodec.encode(PIXELS, model="dq-q1")
    worker = _Worker(models=[])  # nothing to load: starts in a moment
    try:
        first = worker._process
        assert worker.request("check", data, timeout=0.001) is None  # over its budget: a hang
        assert not first.is_alive() and worker._process is not first
        worker._process.kill()
        with pytest.raises(EOFError, match="worker died"):
            worker.request("check", data, timeout=60)
        assert worker._process.is_alive()
    finally:
        worker.close()


def test_the_fuzz_command_checks_its_options(tmp_path, capsys):
    for option in (["--inputs", "-1"], ["--budget", "0"]):
        assert_one_error(*run(capsys, "fuzz", "--out", tmp_path, *option)[::2], option[0])
    assert os.listdir(tmp_path) == []


def test_a_short_fuzz_run_finds_nothing(tmp_path):
    summary = fuzz(FuzzConfig(inputs=200, seed=0, out=tmp_path, models=("dq-q1", "shvq-q1"), progress=False))
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["inputs"] == 200 and summary["finished"]
    assert {kind: summary["outcomes"][kind] for kind in FINDINGS} == dict.fromkeys(FINDINGS, 0), summary["findings"]
    assert summary["outcomes"]["decoded"] + summary["outcomes"]["refused"] == 200
    assert summary["outcomes"]["decoded"] > 0 and len(summary["outcomes_by_mutation"]) >= 10
    assert any("ends before" in message for message in summary["refusals_by_message"])
    assert os.listdir(tmp_path / "findings") == []


# ---- CLI edges: closed pipes, full devices, batch outputs over inputs -----------------------------


class FailingStream(FakeStream):
    """stdout whose writes fail like a pipe whose reader has gone, or a full device."""

    encoding = "utf-8"

    def __init__(self, error: OSError):
        super().__init__()
        self.error = error
        self.buffer = types.SimpleNamespace(write=self._fail, flush=lambda: None)

    def _fail(self, data):
        raise self.error

    def write(self, text):
        raise self.error

    def flush(self):
        pass


@pytest.mark.parametrize(
    "error, fragment",
    [(BrokenPipeError(32, "Broken pipe"), "output pipe closed"), (OSError(28, "No space left on device"), "No space left")],
    ids=["closed pipe", "full device"],
)
@pytest.mark.parametrize("command", ["models", "models --json", "info", "info --json", "decode -"])
def test_output_failures_are_one_line(tmp_path, monkeypatch, capsys, error, fragment, command):
    install_fake_api(monkeypatch)
    (tmp_path / "in.dqc").write_bytes(sys.modules["dqcodec.codec.api"].encode(PIXELS))
    name, *rest = command.split()
    argv = [name, str(tmp_path / "in.dqc"), *rest] if name != "models" else [name, *rest]
    monkeypatch.setattr(sys, "stdout", FailingStream(error))
    status = main(argv)
    assert_one_error(status, capsys.readouterr().err, fragment)


def test_any_command_printing_to_a_closed_pipe_is_one_line(monkeypatch, capsys):
    chatty = types.ModuleType("chatty")
    chatty.add_chatty_arguments = lambda parser: None
    chatty.run_chatty = lambda args: print("a line of output")
    monkeypatch.setitem(sys.modules, "chatty", chatty)
    monkeypatch.setitem(cli.COMMANDS, "chatty", ("chatty", "chatty", "prints"))
    monkeypatch.setattr(sys, "stdout", FailingStream(BrokenPipeError(32, "Broken pipe")))
    assert_one_error(main(["chatty"]), capsys.readouterr().err, "output pipe closed")


@pytest.mark.parametrize("device", ["closed pipe", "/dev/full"])
@pytest.mark.parametrize("command", ["models --json", "decode -"])
def test_real_descriptors_that_fail(tmp_path, monkeypatch, capsys, device, command):
    """The same through a real file descriptor: a pipe whose read end is closed, /dev/full."""
    install_fake_api(monkeypatch)
    (tmp_path / "in.dqc").write_bytes(sys.modules["dqcodec.codec.api"].encode(PIXELS))
    if device == "closed pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)
        stream = open(write_end, "w")
    elif os.path.exists(device):
        stream = open(device, "w")
    else:
        pytest.skip(f"no {device} here")
    name, *rest = command.split()
    argv = [name, str(tmp_path / "in.dqc"), *rest] if name == "decode" else [name, *rest]
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        status = main(argv)
    finally:
        stream.close()  # the failed data was flushed into /dev/null, so closing succeeds
    assert_one_error(status, capsys.readouterr().err, "output pipe closed" if device == "closed pipe" else "No space")


def test_batch_mode_never_writes_over_an_input(tmp_path, capsys, monkeypatch):
    install_fake_api(monkeypatch)
    (tmp_path / "pic.dqc").write_bytes(sample_png())  # a PNG with the wrong extension
    (tmp_path / "other.png").write_bytes(sample_png())
    os.symlink(tmp_path / "pic.dqc", tmp_path / "link.dqc")
    for inputs, folder in ((["pic.dqc"], "."), (["other.png", "pic.dqc"], "."), (["link.dqc"], "."),
                           (["other.png", "sub/../pic.dqc"], "sub/..")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path)
        status, _, stderr = run(capsys, "encode", *inputs, "-o", folder)
        assert_one_error(status, stderr, "would be overwritten by its output")
        assert (tmp_path / "pic.dqc").read_bytes() == sample_png()
        assert sorted(os.listdir(tmp_path)) == ["link.dqc", "other.png", "pic.dqc", "sub"]
    assert run(capsys, "encode", "pic.dqc", "other.png", "-o", "sub")[0] == 0  # elsewhere it is fine
    assert sorted(os.listdir(tmp_path / "sub")) == ["other.dqc", "pic.dqc"]
