"""The quantizer contract (DESIGN.md) for the coupled, product, spatial and soft quantizers."""

import pytest
import torch

from dqcodec.models.quantizers import (
    CoupledDepthwiseQuantizer,
    ProductQuantizer,
    SpatialQuantizer,
    VectorQuantizer,
)
from dqcodec.models.soft_quantizers import BayesianSoftQuantizer, SoftToHardQuantizer

# name -> (constructor, output shape, index shape) for a (2, 6, 4, 8) input.
FAMILY = {
    "coupled": (lambda: CoupledDepthwiseQuantizer(6, 3, 16, 4), (2, 12, 4, 8), (2, 3, 4, 8)),
    "product": (lambda: ProductQuantizer(6, 3, 16), (2, 6, 4, 8), (2, 3, 4, 8)),
    "spatial": (lambda: SpatialQuantizer(6, 2, 16, patch_size=2), (2, 6, 4, 8), (2, 2, 2, 4)),
    "shvq": (lambda: SoftToHardQuantizer(8, patch_height=2, patch_width=1), (2, 6, 4, 8), (2, 6, 2, 8)),
    "bayesian": (lambda: BayesianSoftQuantizer(6, 16, num_codebooks=2), (2, 6, 4, 8), (2, 2, 4, 8)),
}
HARD = ["coupled", "product", "spatial"]
# Quantizers whose output lives in the input's space, so quantize(dequantize(i)) is defined.
SAME_SPACE = ["product", "spatial", "shvq", "bayesian"]


def _make(name: str):
    torch.manual_seed(0)
    return FAMILY[name][0]()


def _latent(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("training", [True, False])
def test_shapes(name, training):
    quantizer = _make(name).train(training)
    _, output_shape, index_shape = FAMILY[name]
    out = quantizer(_latent(2, 6, 4, 8))
    assert out.quantized.shape == output_shape
    assert out.indices.shape == index_shape and out.indices.dtype == torch.int64
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.perplexity.shape == (index_shape[1],)
    assert out.bits.shape == (2,) and (out.bits > 0).all()


@pytest.mark.parametrize("name", FAMILY)
def test_dequantize_of_quantize_is_the_hard_forward_output(name):
    quantizer = _make(name).eval()
    z = _latent(2, 6, 4, 8)
    out = quantizer(z)
    indices = quantizer.quantize(z)
    assert torch.equal(indices, out.indices)
    # The EMA quantizers add a zero straight-through term, which may round in the last bit.
    torch.testing.assert_close(quantizer.dequantize(indices), out.quantized, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SAME_SPACE)
def test_quantize_of_dequantize_is_the_identity(name):
    quantizer = _make(name).eval()
    _, _, index_shape = FAMILY[name]
    size = quantizer.num_centres if name == "shvq" else quantizer.codebook_size
    every = torch.randint(0, size, index_shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(quantizer.quantize(quantizer.dequantize(every)), every)


def test_coupled_codewords_assign_to_themselves():
    quantizer = _make("coupled").eval()
    every = torch.randint(0, 16, (2, 3, 4, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(quantizer.assign(quantizer.lookup(every)), every)


@pytest.mark.parametrize("name", ["product", "spatial"])
def test_straight_through_gradient_is_the_identity(name):
    quantizer = _make(name).train()
    z = _latent(2, 6, 4, 8).requires_grad_()
    (gradient,) = torch.autograd.grad(quantizer(z).quantized.sum(), z)
    assert torch.equal(gradient, torch.ones_like(z))


def test_coupled_gradient_reaches_the_input_and_the_shared_projection():
    quantizer = _make("coupled").train()
    z = _latent(2, 6, 4, 8).requires_grad_()
    out = quantizer(z)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0
    assert quantizer.projection.weight.grad.abs().sum() > 0


def test_coupled_codebooks_all_quantize_the_same_vector():
    quantizer = _make("coupled").eval()
    with torch.no_grad():
        quantizer.codebooks[1:] = quantizer.codebooks[0]
    indices = quantizer.quantize(_latent(2, 6, 4, 8))
    assert torch.equal(indices[:, 1], indices[:, 0]) and torch.equal(indices[:, 2], indices[:, 0])


def test_coupled_with_one_codebook_is_vector_quantization():
    torch.manual_seed(0)
    coupled = CoupledDepthwiseQuantizer(6, 1, 16, 4, dead_code_threshold=0.5)
    torch.manual_seed(0)
    plain = VectorQuantizer(6, 16, 4, dead_code_threshold=0.5)
    z = _latent(2, 6, 4, 8)
    for _ in range(2):  # training steps: EMA and dead-code re-initialisation must agree too
        torch.manual_seed(3)
        ours = coupled(z)
        torch.manual_seed(3)
        theirs = plain(z)
        assert torch.equal(ours.indices, theirs.indices)
        assert torch.equal(ours.quantized, theirs.quantized)
        assert torch.equal(ours.loss, theirs.loss) and torch.equal(ours.bits, theirs.bits)
    assert torch.equal(coupled.codebooks, plain.codebooks)
    assert torch.equal(coupled.eval().quantize(z), plain.eval().quantize(z))


def test_product_quantizes_each_channel_slice_with_its_own_codebook():
    quantizer = _make("product").eval()
    z = _latent(2, 6, 4, 8)
    indices = quantizer.quantize(z)
    for m in range(3):
        vectors = z[:, 2 * m : 2 * m + 2].permute(0, 2, 3, 1).reshape(-1, 2)
        nearest = torch.cdist(vectors, quantizer.codebooks[m]).argmin(dim=1)
        assert torch.equal(indices[:, m].reshape(-1), nearest)


def test_spatial_vectors_are_patches_of_a_channel_group():
    quantizer = _make("spatial")
    z = _latent(2, 6, 4, 8)
    vectors = quantizer.project(z)  # (B, M, (C/M)*p*p, H/p, W/p)
    assert torch.equal(vectors[1, 1, :, 1, 2], z[1, 3:6, 2:4, 4:6].reshape(-1))
    with pytest.raises(ValueError, match="not divisible"):
        quantizer.project(_latent(1, 6, 3, 8))


@pytest.mark.parametrize("name", HARD)
def test_ema_moves_codes_towards_their_inputs(name):
    quantizer = _make(name).train()
    quantizer.decay = 0.5
    z = _latent(4, 6, 4, 8)
    slices = quantizer.project(z).detach()
    error_before = ((slices - quantizer.lookup(quantizer.assign(slices))) ** 2).mean()
    before = quantizer.codebooks.clone()
    for _ in range(10):
        quantizer(z)
    assert not torch.equal(before, quantizer.codebooks)
    error_after = ((slices - quantizer.lookup(quantizer.assign(slices))) ** 2).mean()
    assert error_after < error_before


@pytest.mark.parametrize("name", HARD)
def test_dead_codes_are_reinitialised_onto_the_data(name):
    quantizer = _make(name).train()
    quantizer.dead_code_threshold = 0.5
    with torch.no_grad():
        quantizer.codebooks[:, 1:] = 1e6  # far from any input: never chosen
    quantizer(_latent(2, 6, 4, 8))
    assert quantizer.codebooks.abs().max() < 1e3


def _shvq(sigma: float) -> SoftToHardQuantizer:
    quantizer = _make("shvq")
    quantizer.sigma.fill_(sigma)
    return quantizer


def test_shvq_forward_is_hard_with_the_soft_gradient():
    quantizer = _shvq(2.0).train()
    z = _latent(2, 6, 4, 8).requires_grad_()
    out = quantizer(z)
    torch.testing.assert_close(out.quantized, quantizer.dequantize(out.indices), rtol=0, atol=1e-6)
    assert not torch.allclose(out.soft, out.quantized)
    straight_through = torch.autograd.grad(out.quantized.sum(), z, retain_graph=True)[0]
    soft = torch.autograd.grad(out.soft.sum(), z, retain_graph=True)[0]
    assert torch.equal(straight_through, soft) and soft.abs().sum() > 0
    centre_gradient = torch.autograd.grad(out.quantized.sum(), quantizer.centres, retain_graph=True)[0]
    assert centre_gradient.abs().sum() > 0
    # The entropy term pulls on both the latents and the centres (through the soft histogram).
    entropy_gradients = torch.autograd.grad(out.loss, [z, quantizer.centres])
    assert all(gradient.abs().sum() > 0 for gradient in entropy_gradients)


def test_shvq_with_very_large_sigma_is_hard_vq():
    quantizer = _shvq(1e9).train()
    z = _latent(2, 6, 4, 8)
    out = quantizer(z)
    torch.testing.assert_close(out.soft, out.quantized, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.soft, quantizer.dequantize(quantizer.quantize(z)), rtol=0, atol=1e-6)
    # Soft histogram = hard histogram, so H(p, q) is the empirical entropy of the indices.
    usage = torch.bincount(out.indices.reshape(-1), minlength=8).float() / out.indices.numel()
    entropy = -(usage[usage > 0] * usage[usage > 0].log2()).sum()
    torch.testing.assert_close(out.loss, entropy)


def test_shvq_entropy_is_the_cross_entropy_of_hard_and_soft_histograms():
    quantizer = _shvq(1.0).train()
    z = _latent(2, 6, 4, 8)
    out = quantizer(z)
    assignments = torch.softmax(-quantizer.sigma * quantizer.distances(quantizer.vectors(z)), dim=-1)
    soft_histogram = assignments.reshape(-1, 8).mean(dim=0)
    hard_histogram = torch.bincount(out.indices.reshape(-1), minlength=8).float() / out.indices.numel()
    torch.testing.assert_close(out.loss, -(hard_histogram * soft_histogram.log2()).sum())
    symbols_per_image = out.indices[0].numel()
    torch.testing.assert_close(out.bits.mean(), out.loss * symbols_per_image)


def test_shvq_schedule_grows_sigma_up_to_its_cap():
    quantizer = SoftToHardQuantizer(4, sigma=2.0, sigma_growth=1.5, sigma_max=10.0)
    assert quantizer.anneal(0) == pytest.approx(2.0)
    assert quantizer.anneal(2) == pytest.approx(4.5)
    assert quantizer.anneal(100) == pytest.approx(10.0)


def test_shvq_kmeans_finds_the_clusters_of_the_latents():
    torch.manual_seed(0)
    quantizer = SoftToHardQuantizer(3, patch_height=1, patch_width=2)
    means = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -4.0]])
    labels = torch.arange(3).repeat(64)
    points = means[labels] + 0.1 * torch.randn(len(labels), 2)
    z = points.reshape(4, 1, 8, 12)  # consecutive pairs along the width are the 1x2 patches
    quantizer.init_centres_kmeans(z)
    found = quantizer.centres.detach()[torch.cdist(means, quantizer.centres.detach()).argmin(dim=1)]
    torch.testing.assert_close(found, means, rtol=0, atol=0.05)


def test_bayesian_output_is_the_posterior_mean_of_the_noisy_latent():
    quantizer = _make("bayesian").train()
    with torch.no_grad():
        quantizer.log_variances.normal_()
    z = _latent(1, 6, 1, 1)
    torch.manual_seed(4)
    out = quantizer(z)
    torch.manual_seed(4)
    noisy = z + quantizer.noise_std * torch.randn(1, 2, 1, 1, 3).permute(0, 1, 4, 2, 3).reshape(1, 6, 1, 1)
    for m in range(2):
        vector = noisy[0, 3 * m : 3 * m + 3, 0, 0]
        variances = quantizer.log_variances[m].exp()
        log_density = -0.5 * ((vector - quantizer.codebooks[m]) ** 2).sum(-1) / variances - 1.5 * variances.log()
        expected = (torch.softmax(log_density, dim=0)[:, None] * quantizer.codebooks[m]).sum(0)
        torch.testing.assert_close(out.quantized[0, 3 * m : 3 * m + 3, 0, 0], expected)


def test_bayesian_soft_gradients_reach_latents_centroids_and_variances():
    quantizer = _make("bayesian").train()
    z = _latent(2, 6, 4, 8).requires_grad_()
    out = quantizer(z)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0
    assert quantizer.codebooks.grad.abs().sum() > 0
    assert quantizer.log_variances.grad.abs().sum() > 0


def test_bayesian_adds_noise_in_training_only():
    quantizer = _make("bayesian")
    z = _latent(2, 6, 4, 8)
    assert not torch.equal(quantizer.train()(z).quantized, quantizer(z).quantized)
    assert torch.equal(quantizer.eval()(z).quantized, quantizer(z).quantized)


def test_bayesian_map_index_with_equal_variances_is_the_nearest_centroid():
    quantizer = _make("bayesian").eval()
    z = _latent(2, 6, 4, 8)
    indices = quantizer.quantize(z)
    vectors = z[:, :3].permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(indices[:, 0].reshape(-1), torch.cdist(vectors, quantizer.codebooks[0]).argmin(dim=1))
