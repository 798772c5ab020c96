"""The model registry: storage by architecture, checkpoints beside shipped models, coding copies."""

import numpy as np
import torch
from safetensors.numpy import load_file

import dqcodec
from dqcodec.codec.container import unpack
from dqcodec.models import registry

PIXELS = np.random.default_rng(5).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)


def _altered_copy_of_dq_q1(stem) -> None:
    """dq-q1 with one table entry changed, saved as a checkpoint that is also named dq-q1."""
    net, info, _ = registry.load_checkpoint(registry.WEIGHTS_DIR / "dq-q1")
    with torch.no_grad():
        net.entropy.frequencies[3, 1, 0, 0] += 7
    registry.save_model(net, stem, {k: v for k, v in info.items() if k not in ("architecture", "config")})


def test_storage_narrows_integer_tables_and_compresses_them(tmp_path):
    _altered_copy_of_dq_q1(tmp_path / "copy")
    arrays = load_file(tmp_path / "copy.safetensors")
    shipped = load_file(registry.WEIGHTS_DIR / "dq-q1.safetensors")  # saved before the compression: plain uint16
    assert arrays["entropy.frequencies"].dtype == np.uint8 and arrays["entropy.frequencies"].ndim == 1
    assert arrays["entropy.frequencies"].nbytes < shipped["entropy.frequencies"].nbytes / 2
    assert arrays["entropy.code_class"].dtype == np.uint8 and arrays["analysis.linear.weight"].dtype == np.float32
    net, _, _ = registry.load_checkpoint(tmp_path / "copy")
    assert net.entropy.frequencies[3, 1, 0, 0] == registry.load_checkpoint(registry.WEIGHTS_DIR / "dq-q1")[0].entropy.frequencies[3, 1, 0, 0] + 7


def test_a_checkpoint_never_stands_in_for_a_shipped_model(tmp_path, monkeypatch):
    _altered_copy_of_dq_q1(tmp_path / "dq-q1")
    monkeypatch.chdir(tmp_path)  # a dq-q1.json in the current folder must not shadow the shipped dq-q1
    shipped = dqcodec.encode(PIXELS, model="dq-q1")
    checkpoint = dqcodec.encode(PIXELS, model=str(tmp_path / "dq-q1.json"))
    shipped_header, checkpoint_header = unpack(shipped)[0], unpack(checkpoint)[0]
    assert shipped_header.model == checkpoint_header.model == "dq-q1"
    assert shipped_header.fingerprint == registry.load_model("dq-q1")[2] != checkpoint_header.fingerprint
    # Both decode in this process, each with its own weights.
    assert dqcodec.decode(shipped).size == dqcodec.decode(checkpoint).size == (40, 24)


def test_coding_leaves_the_loaded_runtime_as_it_was():
    runtime, _, _ = registry.load_model("dq-q3")
    arrays = [runtime.code_values, *runtime.synthesis, *(a for pair in runtime.slice_transforms for a in pair)]
    before = [array.copy() for array in arrays]
    dqcodec.decode(dqcodec.encode(PIXELS, model="dq-q3"))
    assert all(np.array_equal(a, b) and a.dtype == np.float64 and not a.flags.writeable for a, b in zip(arrays, before))


def test_a_damaged_weights_file_is_a_value_error_naming_it(tmp_path):
    import shutil

    import pytest

    for suffix in (".json", ".safetensors"):
        shutil.copy(f"{registry.WEIGHTS_DIR / 'dq-q1'}{suffix}", tmp_path / f"dq-q1{suffix}")
    weights = tmp_path / "dq-q1.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # cut short, as an interrupted copy leaves it
    with pytest.raises(ValueError, match="dq-q1.safetensors is damaged"):
        registry.read_model(tmp_path / "dq-q1")
    registry.clear_cache()
    with pytest.raises(dqcodec.DQCodecError):
        dqcodec.encode(PIXELS, model=str(tmp_path / "dq-q1.json"))
