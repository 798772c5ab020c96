"""The onnxruntime transforms of the hdq codec against its torch network."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dqcodec.models import registry
from dqcodec.models.conv_transforms import CoarseAnalysis, CoarseSynthesis, ConvAnalysis, ConvSynthesis
from dqcodec.models.onnx_transforms import OnnxTransforms
from dqcodec.paths import kodak_dir

KODIM05 = kodak_dir() / "kodim05.png"
TOLERANCE = 1e-4  # float32 rounding: the largest difference measured on Kodak crops was 2.4e-5


@pytest.fixture(scope="module")
def model() -> tuple[nn.Module, OnnxTransforms]:
    """hdq-q1's float32 torch network and the onnx transforms of the same stored (float16) arrays."""
    arrays, info, _ = registry.read_model(registry.WEIGHTS_DIR / "hdq-q1")  # the level's file merged with hdq-shared, as stored
    return registry.build_network(arrays, info), OnnxTransforms(arrays, threads=2)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """(2, 3, 128, 192) float32 crops of kodim05 in [0, 1]."""
    if not KODIM05.is_file():
        pytest.skip("Kodak images not found")
    pixels = np.asarray(Image.open(KODIM05).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    return np.stack([pixels[:, 64:192, 128:320], pixels[:, 320:448, 448:640]])


def _slices(net: nn.Module, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F, h, w) fine and (B, F_c, h/4, w/4) coarse slices of ``latent``, as the synthesis reads
    them (unquantized: the quantizers' nearest-code search would only add test time)."""
    fine = net.fine_quantizer.assemble(net.fine_quantizer.project(latent))
    coarse = net.coarse_quantizer.assemble(net.coarse_quantizer.project(net.coarse_analysis(latent)))
    return fine, coarse


@torch.no_grad()
def test_matches_torch_network(model, crops):
    net, transforms = model
    image = torch.from_numpy(crops[:1])
    latent = net.analyse(image)
    assert np.abs(transforms.analyse(crops[:1]) - latent.numpy()).max() < TOLERANCE
    coarse_latent = net.coarse_analysis(latent)
    assert np.abs(transforms.coarse_analyse(latent.numpy()) - coarse_latent.numpy()).max() < TOLERANCE
    fine, coarse = _slices(net, latent)
    reference = net.reconstruct(fine, coarse).numpy()
    decoded = transforms.reconstruct(fine.numpy(), coarse.numpy())
    assert decoded.shape == (1, 3, 128, 192)
    assert np.abs(decoded - reference).max() < TOLERANCE
    # The coarse slices move this crop's pixels by far more than the tolerance, so the
    # comparison above checks the coarse synthesis too.
    assert np.abs(transforms.reconstruct(fine.numpy(), 0 * coarse.numpy()) - reference).max() > 100 * TOLERANCE


@torch.no_grad()
def test_batch_matches_single_images(model, crops):
    net, transforms = model
    latents = transforms.analyse(crops)
    fine, coarse = (codes.numpy() for codes in _slices(net, torch.from_numpy(latents)))
    images = transforms.reconstruct(fine, coarse)
    for i in range(2):
        np.testing.assert_allclose(latents[i : i + 1], transforms.analyse(crops[i : i + 1]), atol=1e-5)
        np.testing.assert_allclose(images[i : i + 1], transforms.reconstruct(fine[i : i + 1], coarse[i : i + 1]), atol=1e-5)


@torch.no_grad()
def test_small_network_with_every_weight_random():
    """Layer structure and channel counts come from the arrays: a small network builds, and with
    no zero last layers (the trained model's start) and GDN parameters partly below their
    bounds every path counts in the comparison."""
    torch.manual_seed(0)
    transforms = nn.ModuleDict({
        "analysis": ConvAnalysis(8, 16), "coarse_analysis": CoarseAnalysis(16, 8, 12),
        "synthesis": ConvSynthesis(16, 8, 8), "coarse_synthesis": CoarseSynthesis(6, 8),
    })
    for name, parameter in transforms.named_parameters():
        # The GDN's beta and gamma are stored as square roots, bounded below (at 1e-3 and 2^-18).
        if name.endswith(".beta"):
            parameter.uniform_(0.5, 1.5)
        elif name.endswith(".gamma"):
            parameter.uniform_(-0.1, 0.5)
        elif parameter.abs().max() == 0:  # the residual branches' last layers
            parameter.normal_(0, 0.1)
    # Stored as float16 and loaded back as float32, as a model file is.
    arrays = {key: value.numpy().astype(np.float16) for key, value in transforms.state_dict().items()}
    transforms.load_state_dict({key: torch.from_numpy(value.astype(np.float32)) for key, value in arrays.items()})
    onnx = OnnxTransforms(arrays)

    def error(result: np.ndarray, reference: torch.Tensor) -> float:  # relative to the reference's largest value
        return np.abs(result - reference.numpy()).max() / reference.abs().max().item()

    image = torch.rand(2, 3, 64, 128)
    latent = transforms["analysis"](image)
    assert error(onnx.analyse(image.numpy()), latent) < TOLERANCE
    assert error(onnx.coarse_analyse(latent.numpy()), transforms["coarse_analysis"](latent)) < TOLERANCE
    fine, coarse = torch.randn(2, 16, 4, 8), torch.randn(2, 6, 1, 2)
    reference = transforms["synthesis"](torch.cat([fine, transforms["coarse_synthesis"](coarse)], dim=1))
    assert error(onnx.reconstruct(fine.numpy(), coarse.numpy()), reference) < TOLERANCE


def test_rejects_image_not_multiple_of_16(model):
    with pytest.raises(ValueError, match="multiples of 16"):
        model[1].analyse(np.zeros((1, 3, 64, 72), np.float32))


def test_imports_no_torch():
    code = "import sys, dqcodec.models.onnx_transforms; print(sorted({'torch', 'compressai'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
