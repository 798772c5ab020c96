"""The DQ-AE likelihood model: shapes, output heads, DQ against coupled VQ, and ``dqcodec train --arch dqae``
(progressive over image sizes, on the patch and CIFAR-10 data sets). Tiny configurations only."""

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dqcodec.codec.cli import main
from dqcodec.models.dqae import DQAE, DQAEConfig
from dqcodec.models.likelihood_heads import CategoricalHead, GaussianHead, LogisticMixtureHead
from dqcodec.models.registry import load_checkpoint

TINY = {"codebook_sizes": "16,8", "codebook_counts": "3,2", "code_dim": 4, "channels": 16, "residual_blocks": 1,
        "residual_channels": 8, "mixture_components": 3}
TINY_FLAGS = ["--codebook-sizes", "16,8", "--codebook-counts", "3,2", "--code-dim", "4", "--channels", "16",
              "--residual-blocks", "1", "--residual-channels", "8", "--mixture-components", "3"]


def _images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) 8-bit images in [0, 1]: smooth patterns plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    base = 128 + 90 * np.sin(cols / 5.0 + rng.uniform(0, 6, (count, 3, 1, 1))) * np.cos(rows / 7.0)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).round()
    return torch.from_numpy(pixels).float() / 255


@pytest.mark.parametrize(("levels", "first_stride"), [(("16,8", "3,2"), 4), (("8,8,4", "1,2,3"), 2)])
def test_every_level_has_its_indices_and_every_head_its_bits(levels, first_stride):
    torch.manual_seed(0)
    sizes, counts = levels
    for head in ("mse", "categorical", "logistic_mixture"):
        net = DQAE(DQAEConfig(**{**TINY, "codebook_sizes": sizes, "codebook_counts": counts, "first_stride": first_stride,
                                 "head": head}))
        image = _images(2, 32)
        out = net(image)
        strides = [first_stride * 2**level for level in range(net.num_levels)]
        expected = [(2, int(m), 32 // s, 32 // s) for m, s in zip(counts.split(","), strides, strict=True)]
        assert [tuple(i.shape) for i in out.indices] == expected
        assert all(int(i.max()) < int(k) for i, k in zip(out.indices, sizes.split(","), strict=True))
        assert out.bits.shape == (2,) and torch.isfinite(out.bits).all() and (out.bits > 0).all()
        assert out.reconstruction.shape == image.shape and torch.isfinite(out.objective)
        assert out.statistics["bits_per_dim"] == pytest.approx(out.bits.mean().item() / image[0].numel(), rel=1e-5)
        (out.objective + out.quantizer_loss).backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="multiples of"):
        net(_images(1, 36))


def test_encode_and_bits_from_indices_match_the_evaluation_pass():
    torch.manual_seed(1)
    net = DQAE(DQAEConfig(**TINY, head="logistic_mixture"))
    net.train()
    net(_images(4, 32, seed=1))  # seeds and moves the codebooks
    net.eval()
    image = _images(2, 32, seed=2)
    with torch.no_grad():
        out = net(image)
        indices = net.encode(image)
        assert all(torch.equal(a, b) for a, b in zip(indices, out.indices, strict=True))
        assert torch.allclose(net.bits(image, indices), out.bits, rtol=1e-5)


def _check_table(head, parameters, image):
    """log_probs is a distribution over the 256 values and agrees with bits at the true values."""
    table = head.log_probs(parameters, image)  # (B, 3, H, W, 256)
    assert torch.allclose(torch.logsumexp(table.double(), dim=-1), torch.zeros(()).double(), atol=1e-4)
    values = (image * 255).round().long()
    at_truth = table.gather(-1, values[..., None])[..., 0]
    assert torch.allclose(-at_truth.flatten(1).sum(1) / np.log(2), head.bits(parameters, image), rtol=1e-4)


def test_categorical_head_is_a_softmax_per_sub_pixel():
    head = CategoricalHead()
    image = _images(2, 8)
    values = (image * 255).round().long()
    perfect = torch.nn.functional.one_hot(values, 256).permute(0, 1, 4, 2, 3).float().reshape(2, 768, 8, 8) * 50.0
    assert head.bits(perfect, image).max() < 1e-6  # one-hot-perfect: ~0 bits
    assert torch.allclose(head.mean(perfect), image, atol=1e-6)
    uniform = torch.zeros(2, 768, 8, 8)
    assert torch.allclose(head.bits(uniform, image), torch.full((2,), 8.0 * 3 * 64))  # 8 bits per sub-pixel
    _check_table(head, torch.randn(2, 768, 8, 8), image)


def test_logistic_mixture_is_a_distribution_over_the_256_values():
    torch.manual_seed(2)
    head = LogisticMixtureHead(components=10)
    image = _images(2, 4)
    image[0, :, 0, 0] = 0.0  # the end bins hold the tails
    image[0, :, 0, 1] = 1.0
    parameters = torch.randn(2, 100, 4, 4) * 2
    _check_table(head, parameters, image)
    # A sharp component on the truth: the bin (half-width 1/255) spans +-4.3 scales of e^-7, 0.039 bits.
    sharp = torch.zeros(2, 100, 4, 4)
    sharp[:, 0] = 20.0  # mixture logits: component 0
    sharp[:, 10:40:10] = 2 * image - 1  # means of component 0, channels r, g, b
    sharp[:, 40:70] = -7.0  # log-scales
    assert head.bits(sharp, image).max() / 48 < 0.04 and torch.allclose(head.mean(sharp), image, atol=1e-4)
    extreme = torch.cat([torch.zeros(2, 10, 4, 4), torch.full((2, 30, 4, 4), 40.0), torch.full((2, 60, 4, 4), -7.0)], 1)
    extreme.requires_grad_(True)
    bits = head.bits(extreme, image)  # centres far outside [-1, 1]: every bin in the far tail
    bits.sum().backward()
    assert torch.isfinite(bits).all() and torch.isfinite(extreme.grad).all()


def test_gaussian_head_is_a_discretized_gaussian_trained_on_mse():
    head = GaussianHead(sigma=8.0)
    image = _images(2, 8)
    _check_table(head, torch.rand(2, 3, 8, 8), image)
    # Inside [0, 255], a bin of a sigma = 8 Gaussian centred on the truth: about -log2(1 / (8 sqrt(2 pi))) bits.
    inside = image.clamp(0.2, 0.8)
    assert head.bits(inside, inside).mean() / 192 == pytest.approx(np.log2(8 * np.sqrt(2 * np.pi)), abs=0.01)
    shifted = image + 0.1
    assert head.objective(shifted, image, head.bits(shifted, image)) == pytest.approx(0.01, rel=1e-4)


def test_dq_and_coupled_vq_share_everything_but_the_quantizer():
    dq, vq = DQAE(DQAEConfig(**TINY)), DQAE(DQAEConfig(**TINY, quantizer="vq"))
    dq_state, vq_state = dq.state_dict(), vq.state_dict()
    assert dq_state.keys() == vq_state.keys()
    differ = sorted(key for key in dq_state if dq_state[key].shape != vq_state[key].shape)
    assert differ == [f"quantizers.{level}.projection.{name}" for level in (0, 1) for name in ("bias", "weight")]
    assert type(dq.quantizers[0]).__name__ == "DepthwiseQuantizer" and type(vq.quantizers[0]).__name__ == "CoupledDepthwiseQuantizer"
    assert dq(_images(1, 32)).indices[0].shape == vq(_images(1, 32)).indices[0].shape


def test_runs_under_bfloat16_autocast():
    net = DQAE(DQAEConfig(**TINY, head="categorical"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_images(2, 32))
    assert out.bits.dtype == torch.float32 and torch.isfinite(out.bits).all()


def _train(out, data, steps, *extra) -> list[str]:
    return ["train", "--arch", "dqae", "--out", str(out), "--data", str(data), *TINY_FLAGS, "--batch-size", "2",
            "--threads", "1", "--steps", str(steps), "--checkpoint-every", "1", *extra]


def test_progressive_training_continues_the_32px_model_at_64px(tmp_path, training_images):
    weights = tmp_path / "models"
    export = ["--weights-dir", str(weights), "--quality", "1"]
    assert main(_train(tmp_path / "run32", training_images, 2, "--dataset", "images", "--head", "categorical",
                       "--export", "dqae-32", *export)) == 0
    assert main(_train(tmp_path / "run64", training_images, 2, "--dataset", "images", "--init-from",
                       str(weights / "dqae-32"), "--crop", "64", "--export", "dqae-64", *export)) == 0
    small, _, _ = load_checkpoint(weights / "dqae-32")
    large, info, _ = load_checkpoint(weights / "dqae-64")
    assert small.config == large.config and small.config.head == "categorical"
    assert info["training"]["crop"] == 64 and info["training"]["init_from"]["model"] == "dqae-32"
    assert bool(large.codebooks_seeded)  # the 64 px run kept the codebooks of the 32 px one
    before, after = small.joint_decoder[2].weight.detach(), large.joint_decoder[2].weight.detach()
    fresh = DQAE(DQAEConfig(**TINY, head="categorical")).joint_decoder[2].weight.detach()
    assert 0 < (after - before).abs().max() < 1e-2 < (fresh - before).abs().max()  # trained on, from the 32 px weights
    log = [json.loads(line) for line in (tmp_path / "run64" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["bits_per_dim"]) for r in log)
    assert main(_train(tmp_path / "bad", training_images, 1, "--init-from", str(weights / "dqae-32"),
                       "--codebook-sizes", "32,8")) == 2


def test_trains_on_cifar10_batches_and_resumes(tmp_path, capsys):
    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    assert main(_train(tmp_path / "run", folder, 1, "--dataset", "cifar10")) == 0
    assert main(_train(tmp_path / "run", folder, 2, "--dataset", "cifar10")) == 0
    assert "at step 1" in capsys.readouterr().out
    assert main(_train(tmp_path / "straight", folder, 2, "--dataset", "cifar10")) == 0
    resumed, straight = (load_file(tmp_path / name / "state.safetensors") for name in ("run", "straight"))
    assert resumed.keys() == straight.keys() and all(np.array_equal(resumed[k], straight[k]) for k in resumed)
    assert main(_train(tmp_path / "big", folder, 1, "--dataset", "cifar10", "--crop", "64")) == 2
    assert "larger than" in capsys.readouterr().err
