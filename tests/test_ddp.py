"""Data-parallel training: ``torchrun`` with 2 processes (gloo, CPU) follows one process with the whole batch."""

import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from test_hdq import tiny_run


def test_two_processes_agree_with_one(tmp_path, training_images):
    # The synthesis gains are measured once, at the start (--gain-every 100): each process measures
    # them on its own share, and the tiny lambda of tiny_run keeps that from steering the codes.
    # Photographs only (--synthetic-share 0): the flat areas of synthetic crops leave some
    # gradients at the size of float rounding, where Adam's first steps (about lr * sign(g)) turn
    # the two sums' different orders into weight differences of order lr (measured: up to 8e-5
    # in 22 tensors after 3 steps with the mix; none without it).
    def run(out, processes):
        args = tiny_run(out, training_images, 3, "--gain-every", "100", "--synthetic-share", "0")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "dqcodec.codec.cli", *args]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return load_file(out / "state.safetensors")

    one, two = run(tmp_path / "one", 1), run(tmp_path / "two", 2)
    weights = [key for key in one if key.startswith("model.") and "synthesis_gains" not in key]
    assert len(weights) > 20
    for key in weights:
        assert np.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key
    log = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3  # only process 0 writes the log
