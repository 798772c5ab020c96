"""Soft quantizers: soft-to-hard VQ (SHVQ) and the soft VQ-VAE's Bayesian estimator.

Both are trained through a soft (differentiable) assignment and quantize hard at inference,
so they keep the contract of :mod:`dqcodec.models.quantizers`: ``quantize(z) -> indices``,
``dequantize(indices) -> z_hat``, ``dequantize(quantize(z))`` equal to the eval-mode forward
output, and ``quantize(dequantize(i)) == i`` for valid indices.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dqcodec.models.lloyd import lloyd, sample_centres, squared_distances
from dqcodec.models.quantizers import QuantizerOutput, perplexity


@dataclass
class SoftQuantizerOutput(QuantizerOutput):
    """A :class:`QuantizerOutput` plus the soft output.

    soft: (B, C, H, W) soft-quantized features sum_j phi_j(z) c_j, with gradients; its gap to
        ``quantized`` (the hard one) shows how far the annealing of sigma has come.
    """

    soft: torch.Tensor


class SoftToHardQuantizer(nn.Module):
    """Soft-to-hard vector quantization (SHVQ, Agustsson et al., NeurIPS 2017).

    Each channel is cut into non-overlapping p_h x p_w patches, flattened to vectors z of
    dimension P = p_h p_w, and all of them share one set of L centres c_1..c_L (a P-dim
    codebook). Indices are (B, C, H/p_h, W/p_w): one index plane per channel.

    Soft assignment (paper eq. 6):  phi(z) = softmax(-sigma [||z - c_1||^2, ..., ||z - c_L||^2]),
    soft quantization  Q~(z) = sum_j phi_j(z) c_j,  hard quantization  Q(z) = c_{argmin_j ||z - c_j||}.
    In training the output is hard in the forward pass with the soft gradient,
    Q~(z) + sg(Q(z) - Q~(z)); in eval mode (and in ``quantize``) it is hard.

    Rate (paper eq. 8): the entropy of the symbols is estimated on the mini-batch by the
    cross-entropy H(p, q) = -sum_j p_j log2 q_j, where p is the hard histogram of the batch's
    indices (no gradient) and q the soft histogram q_j = mean over the batch of phi_j(z),
    through which the gradient flows. ``loss`` is H(p, q) in bits per symbol; ``bits`` is the
    same estimate per image, -sum log2 q_{index} over the image's symbols, so that
    ``bits.mean() == loss * symbols_per_image``. The caller weights it (the paper's beta).

    sigma, the hardness, is a buffer (saved with the model) that training raises by the fixed
    schedule ``anneal(step)``; as sigma grows the soft assignment becomes one-hot and soft
    equals hard.
    """

    def __init__(
        self,
        num_centres: int,
        patch_height: int = 1,
        patch_width: int = 1,
        sigma: float = 1.0,
        sigma_growth: float = 1.0,
        sigma_max: float = 1e7,
    ):
        super().__init__()
        self.num_centres = num_centres
        self.patch_height = patch_height
        self.patch_width = patch_width
        self.sigma_init = sigma
        self.sigma_growth = sigma_growth
        self.sigma_max = sigma_max
        self.centres = nn.Parameter(torch.randn(num_centres, patch_height * patch_width))
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    def vectors(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/p_h, W/p_w, p_h*p_w) patch vectors, row-major in the patch."""
        b, c, h, w = z.shape
        ph, pw = self.patch_height, self.patch_width
        if h % ph or w % pw:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {ph}x{pw}")
        patches = z.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 2, 4, 3, 5)
        return patches.reshape(b, c, h // ph, w // pw, ph * pw)

    def image(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W', p_h*p_w) patch vectors -> (B, C, H'*p_h, W'*p_w); inverse of ``vectors``."""
        b, c, h, w, _ = vectors.shape
        ph, pw = self.patch_height, self.patch_width
        patches = vectors.reshape(b, c, h, w, ph, pw).permute(0, 1, 2, 4, 3, 5)
        return patches.reshape(b, c, h * ph, w * pw)

    def distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """(..., P) vectors -> (..., L) squared distances to the centres."""
        return squared_distances(vectors, self.centres)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, C, H/p_h, W/p_w) int64 indices of the nearest centres."""
        return self.distances(self.vectors(z)).argmin(dim=-1)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W') indices -> (B, C, H'*p_h, W'*p_w) centres."""
        return self.image(self.centres[indices])

    def forward(self, z: torch.Tensor) -> SoftQuantizerOutput:
        """(B, C, H, W) features -> SoftQuantizerOutput (``perplexity`` per channel, (C,))."""
        vectors = self.vectors(z)
        distances = self.distances(vectors)  # (B, C, H', W', L)
        indices = distances.argmin(dim=-1)
        hard = self.centres[indices]
        assignments = torch.softmax(-self.sigma * distances, dim=-1)
        soft = assignments @ self.centres
        quantized = soft + (hard - soft).detach() if self.training else hard

        soft_histogram = assignments.mean(dim=(0, 1, 2, 3))
        hard_histogram = F.one_hot(indices, self.num_centres).float().mean(dim=(0, 1, 2, 3))
        code_bits = -torch.log2(soft_histogram.clamp_min(1e-12))  # (L,)
        return SoftQuantizerOutput(
            quantized=self.image(quantized),
            indices=indices,
            loss=(hard_histogram * code_bits).sum(),
            perplexity=perplexity(indices, self.num_centres),
            bits=code_bits[indices].sum(dim=(1, 2, 3)),
            soft=self.image(soft),
        )

    @torch.no_grad()
    def anneal(self, step: int) -> float:
        """Fixed schedule sigma(t) = min(sigma_0 * growth^t, sigma_max); returns the new sigma."""
        self.sigma.fill_(min(self.sigma_init * self.sigma_growth**step, self.sigma_max))
        return float(self.sigma)

    @torch.no_grad()
    def init_centres_kmeans(self, z: torch.Tensor, iterations: int = 25, start: torch.Tensor | None = None) -> None:
        """Set the centres by k-means (:func:`~dqcodec.models.lloyd.lloyd`) on the patch vectors of
        latents z (B, C, H, W).

        Starts from ``start`` (L, P) when given, else from L distinct random vectors of z (drawn
        with torch's global generator); a centre that loses all its vectors keeps its place. (A
        codec starts from a uniform grid, so that the few vectors in the tails keep centres of
        their own.)
        """
        vectors = self.vectors(z.detach()).reshape(-1, self.centres.shape[1])
        if start is None:
            start = sample_centres(vectors[None], self.num_centres)[0]
        self.centres.copy_(lloyd(vectors, start.to(vectors), iterations).centres)


class BayesianSoftQuantizer(nn.Module):
    """The soft VQ-VAE bottleneck (Wu & Flierl, AAAI 2020): a Bayesian estimator over a codebook.

    The C channels are split into M slices of D = C/M (M = 1: one D = C vector per position),
    each with a codebook of K centroids mu_k and learned log-variances log s_k^2 (one per
    centroid, isotropic). In training the latent is corrupted by Gaussian noise,
    z' = z + n, n ~ N(0, noise_std^2 I), and the output is the posterior mean (the MMSE
    estimate of the centroid given z'), with a uniform prior p(mu_k) = 1/K:
        p(mu_k | z') = N(z'; mu_k, s_k^2 I) / sum_j N(z'; mu_j, s_j^2 I),
        z_hat = sum_k mu_k p(mu_k | z').
    Everything is differentiable, so z, the centroids and the log-variances learn by gradient.
    At inference (and in ``quantize``) there is no noise and the index is the MAP centroid,
    argmax_k p(mu_k | z), output mu_k.

    Regulariser returned as ``loss`` (our reading of the paper's eq. 27, whose reconstruction
    term -log p(x | z_hat) is the caller's): a VQ-VAE style pair with the posterior mean in
    place of the nearest codeword,
        ||sg(z') - z_hat||^2 + beta ||z - sg(z_hat)||^2,
    the first fitting the estimator (centroids, variances) to the noisy latents, the second
    committing the encoder to it. ``bits`` is the rate under the uniform prior, log2 K per
    index.

    ``quantize(dequantize(i)) == i`` holds whenever every centroid is its own MAP region,
    which is always so with equal variances (the initialisation); a centroid whose own
    position is claimed by a tighter neighbour can never be emitted by ``quantize``.
    """

    def __init__(
        self,
        in_channels: int,
        codebook_size: int,
        num_codebooks: int = 1,
        noise_std: float = 0.1,
        beta: float = 0.25,
        init_log_variance: float = 0.0,
    ):
        super().__init__()
        if in_channels % num_codebooks:
            raise ValueError(f"in_channels = {in_channels} is not divisible by num_codebooks = {num_codebooks}")
        self.in_channels = in_channels
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.code_dim = in_channels // num_codebooks
        self.noise_std = noise_std
        self.beta = beta
        self.codebooks = nn.Parameter(torch.randn(num_codebooks, codebook_size, self.code_dim))
        self.log_variances = nn.Parameter(torch.full((num_codebooks, codebook_size), float(init_log_variance)))

    def vectors(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, M, H, W, D) vectors, one per slice and position."""
        b, _, h, w = z.shape
        return z.reshape(b, self.num_codebooks, self.code_dim, h, w).permute(0, 1, 3, 4, 2)

    def image(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W, D) -> (B, M*D, H, W); inverse of ``vectors``."""
        b, m, h, w, d = vectors.shape
        return vectors.permute(0, 1, 4, 2, 3).reshape(b, m * d, h, w)

    def log_posterior(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W, D) vectors -> (B, M, H, W, K) log p(mu_k | z) under the uniform prior."""
        b, m, h, w, d = vectors.shape
        squared = squared_distances(vectors.reshape(b, m, h * w, d), self.codebooks).view(b, m, h, w, -1)
        variances = self.log_variances.exp()[:, None, None, :]
        # log N(z; mu_k, s_k^2 I) up to a constant shared by all k; the uniform prior cancels.
        log_likelihood = -0.5 * squared / variances - 0.5 * self.code_dim * self.log_variances[:, None, None, :]
        return torch.log_softmax(log_likelihood, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W) indices -> (B, M, H, W, D) centroids."""
        planes = torch.arange(self.num_codebooks, device=indices.device)[None, :, None, None]
        return self.codebooks[planes, indices]

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, H, W) int64 MAP indices (no noise)."""
        return self.log_posterior(self.vectors(z)).argmax(dim=-1)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W) indices -> (B, C, H, W) centroids."""
        return self.image(self.lookup(indices))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """(B, C, H, W) features -> QuantizerOutput: posterior mean in training, MAP centroid in eval."""
        vectors = self.vectors(z)
        noisy = vectors + self.noise_std * torch.randn_like(vectors) if self.training else vectors
        log_posterior = self.log_posterior(noisy)
        indices = log_posterior.argmax(dim=-1)
        if self.training:
            estimate = torch.einsum("bmhwk,mkd->bmhwd", log_posterior.exp(), self.codebooks)
        else:
            estimate = self.lookup(indices)
        loss = F.mse_loss(estimate, noisy.detach()) + self.beta * F.mse_loss(vectors, estimate.detach())
        b, m, h, w = indices.shape
        bits = torch.full((b,), m * h * w * math.log2(self.codebook_size), device=z.device)
        return QuantizerOutput(
            quantized=self.image(estimate),
            indices=indices,
            loss=loss,
            perplexity=perplexity(indices, self.codebook_size),
            bits=bits,
        )
