"""The quantizer contract (DESIGN.md) for DepthwiseQuantizer / VectorQuantizer."""

import torch

from dqcodec.models.quantizers import DepthwiseQuantizer, VectorQuantizer


def _quantizer(**kwargs) -> DepthwiseQuantizer:
    torch.manual_seed(0)
    options = dict(in_channels=6, num_codebooks=3, codebook_size=16, code_dim=2)
    options.update(kwargs)
    return DepthwiseQuantizer(**options)


def test_shapes_and_exact_inverses():
    quantizer = _quantizer().eval()
    z = torch.randn(2, 6, 5, 7)
    out = quantizer(z)
    assert out.quantized.shape == (2, 6, 5, 7)
    assert out.indices.shape == (2, 3, 5, 7)
    assert out.bits.shape == (2,)
    assert out.perplexity.shape == (3,)
    indices = quantizer.quantize(z)
    assert torch.equal(indices, out.indices)
    assert torch.allclose(quantizer.dequantize(indices), out.quantized)
    every = torch.randint(0, 16, (1, 3, 4, 4))
    assert torch.equal(quantizer.assign(quantizer.lookup(every)), every)


def test_straight_through_gradient_reaches_the_input_and_projection():
    quantizer = _quantizer()
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    out = quantizer(z)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert quantizer.projection.weight.grad.abs().sum() > 0


def test_ema_moves_codes_towards_their_inputs():
    quantizer = _quantizer(decay=0.5)
    z = torch.randn(4, 6, 8, 8)
    before = quantizer.codebooks.clone()
    quantizer.train()(z)
    assert not torch.equal(before, quantizer.codebooks)
    slices = quantizer.project(z).detach()
    error_before = ((slices - quantizer.lookup(quantizer.assign(slices))) ** 2).mean()
    for _ in range(20):
        quantizer(z)
    error_after = ((slices - quantizer.lookup(quantizer.assign(slices))) ** 2).mean()
    assert error_after < error_before


def test_dead_codes_are_reinitialised_onto_the_data():
    quantizer = _quantizer(dead_code_threshold=0.5)
    with torch.no_grad():
        quantizer.codebooks[:, 1:] = 1e6  # far from any input: never chosen
    quantizer.train()(torch.randn(2, 6, 8, 8))
    assert quantizer.codebooks.abs().max() < 1e3


def test_rate_term_moves_assignments_to_cheaper_codes():
    quantizer = _quantizer(rate_lambda=0.0).eval()
    with torch.no_grad():
        quantizer.ema_counts.copy_(torch.ones(3, 16))
        quantizer.ema_counts[:, 0] = 1e6  # code 0 is nearly free
    z = torch.randn(2, 6, 8, 8)
    plain = (quantizer.quantize(z) == 0).float().mean()
    quantizer.rate_lambda = 10.0
    constrained = (quantizer.quantize(z) == 0).float().mean()
    assert constrained > plain


def test_rate_gradient_keeps_the_hard_bits_and_pulls_latents_towards_cheap_codes():
    """With rate_gradient the training pass reports the same bits, and following -d bits / d z
    moves the slices towards the nearly free code 0, so fewer of them cost the expensive codes."""
    torch.manual_seed(0)
    # decay 1: the training pass leaves the codebooks and their usage as they are.
    hard, soft = (DepthwiseQuantizer(6, 3, 16, 2, rate_lambda=0.5, decay=1.0, rate_gradient=flag) for flag in (False, True))
    soft.load_state_dict(hard.state_dict())
    counts = torch.ones(3, 16)
    counts[:, 0] = 100.0
    for quantizer in (hard, soft):
        quantizer.load_codebooks(hard.codebooks.clone(), counts)
    z = torch.randn(2, 6, 8, 8, requires_grad=True)
    bits_hard, bits_soft = hard.eval()(z).bits, soft.train()(z).bits
    assert torch.allclose(bits_hard, bits_soft)
    bits_soft.sum().backward()
    assert z.grad.abs().sum() > 0
    assert hard(z).bits.grad_fn is None  # the hard rate alone has no gradient to give
    soft.eval()
    moved = (z - 0.05 * z.grad / z.grad.abs().max()).detach()
    assert soft(moved).bits.sum() < soft(z.detach()).bits.sum()


def test_pruned_codes_are_never_assigned():
    quantizer = _quantizer().eval()
    usage = torch.ones(3, 16)
    usage[:, 8:] = 0
    quantizer.prune(usage)
    assert quantizer.quantize(torch.randn(2, 6, 16, 16)).max() < 8


def test_one_codebook_is_plain_vq():
    torch.manual_seed(0)
    depthwise = DepthwiseQuantizer(6, 1, 16, 4).eval()
    torch.manual_seed(0)
    plain = VectorQuantizer(6, 16, 4).eval()
    z = torch.randn(2, 6, 5, 5)
    assert torch.equal(depthwise.quantize(z), plain.quantize(z))
    slices = plain.project(z)[:, 0].permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(slices, plain.codebooks[0]).argmin(dim=1)
    assert torch.equal(plain.quantize(z).reshape(-1), nearest)
