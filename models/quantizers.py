"""Vector quantizers that turn latent tensors into code indices and back.

Every quantizer follows the contract of DESIGN.md: ``forward(z)`` returns a
:class:`QuantizerOutput` (straight-through ``quantized``, ``indices``, ``loss``, statistics),
``quantize(z) -> indices`` and ``dequantize(indices) -> z_hat`` are exact inverses in the sense
a codec needs: assigning the codewords of ``i`` gives back ``i`` (for a quantizer with
projections this holds in the projected space: ``assign(lookup(i)) == i`` with no rate term),
and ``dequantize(quantize(z))`` equals the hard output of ``forward``.

The hard, EMA-codebook quantizers live here; the soft ones (SHVQ, the soft VQ-VAE's Bayesian
estimator) are in :mod:`dqcodec.models.soft_quantizers`.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dqcodec.models.lloyd import nearest_codes, squared_distances

# A new guard code (:meth:`CodebookQuantizer.place_guard_codes`) starts at this share of its
# codebook's mean count, so the training-time ECVQ rule seldom picks it for photographs.
GUARD_SHARE = 1e-2


def lookup_codes(codebooks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(M, K, D) codebooks and (B, M, H', W') indices into them -> (B, M, D, H', W') codewords."""
    b, m, h, w = indices.shape
    flat = indices.permute(1, 0, 2, 3).reshape(m, -1)
    codes = torch.gather(codebooks, 1, flat[..., None].expand(-1, -1, codebooks.shape[2]))
    return codes.view(m, b, h, w, codebooks.shape[2]).permute(1, 0, 4, 2, 3)


def slice_vectors(slices: torch.Tensor) -> torch.Tensor:
    """(B, M, D, H', W') slices -> (M, B*H'*W', D): the vectors each codebook quantizes."""
    b, m, d, h, w = slices.shape
    return slices.permute(1, 0, 3, 4, 2).reshape(m, b * h * w, d)


@dataclass
class QuantizerOutput:
    """What a quantizer's forward pass returns.

    quantized: codewords in the quantizer's output layout — (B, M*D, H, W) for the projected
        quantizers (DQ, VQ, coupled DQ), the input's (B, C, H, W) for the others —
        straight-through to the (projected) input when training; the soft quantizers give
        their soft (SHVQ: soft-gradient) output there.
    indices: (B, M, H', W') int64 code indices, M = number of codebooks (or index planes).
    loss: scalar, beta * commitment for the EMA quantizers (codebooks move by EMA); the
        soft quantizers' own regulariser (SHVQ: the soft entropy term).
    perplexity: (M,) exp(entropy) of each codebook's usage in this batch.
    bits: (B,) -log2 p of the indices under the quantizer's rate model (marginal code
        probabilities), the rate that the entropy-constrained assignment traded against; with
        ``rate_gradient`` its gradient is that of the soft rate (see ``CodebookQuantizer``).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    bits: torch.Tensor


def perplexity(indices: torch.Tensor, size: int) -> torch.Tensor:
    """(B, M, H, W) indices of ``size`` codes -> (M,) exp(entropy) of each plane's code usage.

    Between 1 (one code used) and ``size`` (all used equally often); the entropy is in nats
    over all B*H*W indices of the plane.
    """
    planes = indices.transpose(0, 1).reshape(indices.shape[1], -1)  # (M, B*H*W)
    counts = torch.zeros(planes.shape[0], size, device=indices.device)
    usage = counts.scatter_add_(1, planes, torch.ones_like(planes, dtype=counts.dtype)) / planes.shape[1]
    return torch.exp(-(usage * torch.log(usage.clamp_min(1e-12))).sum(-1))


class CodebookQuantizer(nn.Module):
    """M EMA codebooks of K codes of dimension D, shared by the hard quantizers below.

    A subclass says how the feature tensor becomes the vectors to quantize (``project``:
    (B, C, H, W) -> (B, M, D, H', W'), vector (b, h', w') of slice m goes to codebook m) and
    how codewords in that layout become its output (``assemble``); everything else — the
    assignment, the codebooks' EMA updates, dead-code re-initialisation, the rate model and
    the straight-through output — is this class.

    Codebooks follow the EMA updates of VQ-VAE (decay ``gamma``, Laplace smoothing ``eps``):
        N_k <- gamma N_k + (1 - gamma) n_k,  m_k <- gamma m_k + (1 - gamma) sum_{i in k} x_i,
        c_k = m_k / N_k.
    Codes whose EMA count falls below ``dead_code_threshold`` are re-initialised to random
    inputs of the current batch.

    Assignment is entropy-constrained (ECVQ, Chou, Lookabaugh & Gray 1989): index
    argmin_k ||x - c_k||^2 + lambda * (-log2 p_k), with p_k the codebook's EMA usage. With
    ``rate_lambda = 0`` (the default) this is nearest-neighbour VQ; a codec sets lambda to
    trade squared error (in latent units) for bits.

    The hard rate has no gradient, so an encoder trained on (distortion + lambda * bits) only
    ever lowers distortion, and its latents spread until they cost more bits. With
    ``rate_gradient`` (and lambda > 0) the training pass's ``bits`` keep their hard value but
    take the gradient of the *soft* rate: the expected bits under the Gibbs distribution of
    the ECVQ cost, p(k | x) proportional to exp(-(||x - c_k||^2 + lambda * bits_k) / lambda),
    so the encoder learns to move latents towards cheaper codes.
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        code_dim: int,
        rate_lambda: float = 0.0,
        decay: float = 0.99,
        eps: float = 1e-5,
        beta: float = 0.25,
        dead_code_threshold: float = 1e-3,
        rate_gradient: bool = False,
    ):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.rate_lambda = rate_lambda
        self.decay = decay
        self.eps = eps
        self.beta = beta
        self.dead_code_threshold = dead_code_threshold
        self.rate_gradient = rate_gradient
        codebooks = torch.randn(num_codebooks, codebook_size, code_dim)
        self.register_buffer("codebooks", codebooks)
        self.register_buffer("ema_counts", torch.full((num_codebooks, codebook_size), 1.0 / codebook_size))
        self.register_buffer("ema_sums", codebooks / codebook_size)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, D, H', W') vectors to quantize."""
        raise NotImplementedError

    def assemble(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, M, D, H', W') codewords (or straight-through slices) -> the quantizer's output."""
        raise NotImplementedError

    def code_bits(self) -> torch.Tensor:
        """(M, K) -log2 of each code's EMA usage probability (the ECVQ rate term)."""
        probs = self.ema_counts / self.ema_counts.sum(dim=1, keepdim=True)
        return -torch.log2(probs.clamp_min(1e-9))

    def assign(self, slices: torch.Tensor, rate_lambda: float | None = None) -> torch.Tensor:
        """(B, M, D, H', W') slices -> (B, M, H', W') indices by the entropy-constrained rule at
        ``rate_lambda`` (None: the quantizer's own; 0: the nearest code in use)."""
        b, m, _, h, w = slices.shape
        vectors = slice_vectors(slices)  # (M, N, D)
        rate_lambda = self.rate_lambda if rate_lambda is None else rate_lambda
        code_cost = torch.zeros_like(self.ema_counts)
        if rate_lambda > 0:
            code_cost = rate_lambda * self.code_bits()
        # Codes pruned from a finished model (zero usage) are never assigned.
        code_cost = code_cost.masked_fill(self.ema_counts <= 0, float("inf"))
        indices, _ = nearest_codes(vectors, self.codebooks, code_cost)
        return indices.view(m, b, h, w).transpose(0, 1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, H', W') indices -> (B, M, D, H', W') codewords."""
        return lookup_codes(self.codebooks, indices)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, H', W') int64 indices."""
        return self.assign(self.project(z))

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, H', W') indices -> quantized features in the layout of ``assemble``."""
        return self.assemble(self.lookup(indices))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """(B, C, H, W) features -> QuantizerOutput; in training mode the codebooks move first."""
        slices = self.project(z)
        indices = self.assign(slices.detach())
        if self.training:
            self._ema_update(slices.detach(), indices)
        codes = self.lookup(indices)
        commitment = F.mse_loss(slices, codes.detach())
        quantized = slices + (codes - slices).detach()
        b, m = indices.shape[:2]
        bits = torch.gather(
            self.code_bits()[None].expand(b, -1, -1), 2, indices.reshape(b, m, -1)
        ).sum(dim=(1, 2))
        if self.training and self.rate_gradient and self.rate_lambda > 0:
            soft = self.soft_bits(slices)
            bits = bits + soft - soft.detach()
        return QuantizerOutput(
            quantized=self.assemble(quantized),
            indices=indices,
            loss=self.beta * commitment,
            perplexity=perplexity(indices, self.codebook_size),
            bits=bits,
        )

    def soft_bits(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, M, D, H', W') slices -> (B,) expected bits under the Gibbs distribution of the
        ECVQ cost at temperature ``rate_lambda`` (differentiable in the slices)."""
        b, m, _, h, w = slices.shape
        vectors = slice_vectors(slices)
        code_bits = self.code_bits().masked_fill(self.ema_counts <= 0, 1e4)  # pruned codes: never likely
        cost = squared_distances(vectors, self.codebooks) / self.rate_lambda + code_bits[:, None, :]  # (M, N, K)
        expected = (torch.softmax(-cost, dim=-1) * code_bits[:, None, :]).sum(-1)  # (M, N)
        return expected.view(m, b, h * w).sum(dim=(0, 2))

    @torch.no_grad()
    def place_guard_codes(
        self, exact: list[np.ndarray], spread: list[np.ndarray], gaps: np.ndarray, in_use: np.ndarray,
        limit: int | None = None,
    ) -> np.ndarray:
        """Make codebook m hold the (G, D) values ``exact[m]`` and a code within ``gaps[m] / 2`` of
        every (F, D) value of ``spread[m]``; returns the (M, K) bool mask of the codes that serve
        them, which code pruning must keep. Codes not ``in_use`` (M, K) are free slots. Used for
        the codes that flat colours need (``BlockCodec.guard_codes``, ``HierarchicalDQCodec.guard_codes``).

        An exact value moves the nearest code in use onto it when that one lies within a quarter
        of the codebook's gap (and serves no other guard value), else it takes a free slot, or
        when there is none the slot of the least used code that serves no guard value; a spread
        value takes a free slot when no code lies within half the gap (and is left out when there
        is none). With a ``limit``, no value takes a new slot once that many codes of its
        codebook serve guard values (the first values first). New codes get a small count
        (``GUARD_SHARE`` of a uniform share), so the training-time ECVQ rule seldom picks them
        for photographs.
        """
        codebooks = self.codebooks.detach().double().cpu().numpy().copy()
        counts = self.ema_counts.detach().double().cpu().numpy().copy()
        in_use = in_use.copy()
        guard = np.zeros_like(in_use)
        for m in range(len(codebooks)):
            codes, free = codebooks[m], list(np.flatnonzero(~in_use[m]))
            new_count = GUARD_SHARE * counts[m].mean()

            def nearest(value: np.ndarray) -> tuple[int, float]:
                candidates = np.flatnonzero(in_use[m])
                distances = np.linalg.norm(codes[candidates] - value, axis=1)
                if not len(candidates):
                    return -1, np.inf
                return int(candidates[distances.argmin()]), float(distances.min())

            def add(value: np.ndarray, replace: bool) -> None:
                if limit is not None and guard[m].sum() >= limit:
                    return
                if free:
                    slot = free.pop(0)
                elif replace:
                    slot = int(np.where(guard[m], np.inf, counts[m]).argmin())
                else:
                    return
                codes[slot], counts[m, slot], in_use[m, slot], guard[m, slot] = value, new_count, True, True

            for value in exact[m]:
                slot, distance = nearest(value)
                if distance <= 1e-9 * max(1.0, gaps[m]):
                    guard[m, slot] = True
                elif distance <= gaps[m] / 4 and not guard[m, slot]:  # a code already on a guard value stays
                    codes[slot], guard[m, slot] = value, True
                else:
                    add(value, replace=True)
            for value in spread[m]:
                slot, distance = nearest(value)
                if distance <= gaps[m] / 2:
                    guard[m, slot] = True
                else:
                    add(value, replace=False)
        self.load_codebooks(torch.from_numpy(codebooks).to(self.codebooks), torch.from_numpy(counts).to(self.ema_counts))
        return guard

    @torch.no_grad()
    def prune(self, usage: torch.Tensor) -> None:
        """Sort each codebook's codes by ``usage`` (M, K), most used first; drop unused ones.

        Dropped codes get a zero EMA count, which keeps them out of every later assignment.
        The sort is stable, so pruning again by the same usage leaves the codes where they are
        (levels that share a network keep identical coarse codes).
        """
        order = usage.argsort(dim=1, descending=True, stable=True)
        self.load_codebooks(self.codebooks.gather(1, order[..., None].expand(-1, -1, self.code_dim)), usage.gather(1, order))

    @torch.no_grad()
    def load_codebooks(self, codebooks: torch.Tensor, counts: torch.Tensor) -> None:
        """Set the (M, K, D) codebooks and their EMA state from (M, K) code usage ``counts``.

        The counts are the EMA counts as they are (any scale; the rate term uses their shares,
        and a code with count 0 is out of use), the EMA sums follow as codebooks * counts.
        """
        self.codebooks.copy_(codebooks)
        self.ema_counts.copy_(counts)
        self.ema_sums.copy_(self.codebooks * self.ema_counts[..., None])

    @torch.no_grad()
    def _ema_update(self, slices: torch.Tensor, indices: torch.Tensor) -> None:
        m = slices.shape[1]
        flat = slice_vectors(slices)  # (M, N, D)
        one_hot = F.one_hot(indices.permute(1, 0, 2, 3).reshape(m, -1), self.codebook_size).to(flat.dtype)
        counts = one_hot.sum(dim=1)  # (M, K)
        sums = torch.einsum("mnk,mnd->mkd", one_hot, flat)
        if dist.is_available() and dist.is_initialized():  # data-parallel: the statistics of the whole batch
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_counts.sum(dim=1, keepdim=True)
        smoothed = (self.ema_counts + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebooks.copy_(self.ema_sums / smoothed[..., None])
        self._reinit_dead_codes(flat)

    def _reinit_dead_codes(self, flat: torch.Tensor) -> None:
        """Move codes with (almost) no EMA usage onto random inputs of this batch.

        Under an entropy-constrained assignment rarely used codes are expected (they are the
        expensive ones), so the threshold is relative to a uniform share, and re-initialised
        codes start with that share so that the rate term does not kill them again at once.
        """
        share = self.ema_counts / self.ema_counts.sum(dim=1, keepdim=True)
        dead = share < self.dead_code_threshold / self.codebook_size
        if not dead.any():
            return
        m_idx, k_idx = dead.nonzero(as_tuple=True)
        picks = torch.randint(0, flat.shape[1], (len(m_idx),), device=flat.device)
        new_codes = flat[m_idx, picks]
        self.codebooks[m_idx, k_idx] = new_codes
        fresh_count = self.ema_counts.sum(dim=1)[m_idx] * self.dead_code_threshold / self.codebook_size
        self.ema_counts[m_idx, k_idx] = fresh_count
        self.ema_sums[m_idx, k_idx] = new_codes * fresh_count[:, None]


class DepthwiseQuantizer(CodebookQuantizer):
    """Depthwise quantization (DQ): M codebooks, each quantizing its own D-dim projection.

    The feature tensor (B, C, H, W) goes through M separate 1x1 projections to D channels
    each (stored as one C -> M*D 1x1 convolution, which is the same thing), slice m is
    replaced by its nearest codeword in codebook m (K codes of dimension D), and the M
    slices are concatenated back to (B, M*D, H, W):
        x_m = W_m z,  q_m = argmin_k ||x_m - c_{m,k}||^2,  z_hat = [c_{1,q_1}, ..., c_{M,q_M}].
    With M = 1 this is plain VQ (van den Oord et al. 2017) on a learned projection.
    """

    def __init__(self, in_channels: int, num_codebooks: int, codebook_size: int, code_dim: int, **kwargs):
        """``kwargs``: the options of :class:`CodebookQuantizer` (rate_lambda, decay, eps, beta,
        dead_code_threshold)."""
        # Built before the codebooks so that a seeded model draws the same initial weights.
        projection = nn.Conv2d(in_channels, self._projection_channels(num_codebooks, code_dim), kernel_size=1)
        super().__init__(num_codebooks, codebook_size, code_dim, **kwargs)
        self.projection = projection

    @staticmethod
    def _projection_channels(num_codebooks: int, code_dim: int) -> int:
        """Output channels of the 1x1 projection: a D-dim slice for each codebook."""
        return num_codebooks * code_dim

    @property
    def out_channels(self) -> int:
        return self.num_codebooks * self.code_dim

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, D, H, W) slices to quantize."""
        b, _, h, w = z.shape
        return self.projection(z).view(b, self.num_codebooks, self.code_dim, h, w)

    def assemble(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, M, D, H, W) -> (B, M*D, H, W), the slices concatenated along channels."""
        b, m, d, h, w = codes.shape
        return codes.reshape(b, m * d, h, w)


class VectorQuantizer(DepthwiseQuantizer):
    """Plain VQ: one codebook of K codes over a D-dim 1x1 projection (DQ with M = 1)."""

    def __init__(self, in_channels: int, codebook_size: int, code_dim: int, **kwargs):
        super().__init__(in_channels, 1, codebook_size, code_dim, **kwargs)


class CoupledDepthwiseQuantizer(DepthwiseQuantizer):
    """The DQ paper's VQ baseline: M codebooks applied to one shared D-dim projection.

    One 1x1 projection x = W z (C -> D) is quantized independently by each of the M
    codebooks and the M codewords are concatenated, so the output has the same (B, M*D, H, W)
    shape, the same number of codebooks and the same index tensor as DQ, and an ablation
    swaps one for the other with nothing else changed:
        x = W z,  q_m = argmin_k ||x - c_{m,k}||^2,  z_hat = [c_{1,q_1}, ..., c_{M,q_M}].
    The only difference from DQ is that all codebooks see the same vector instead of M
    decoupled projections. With M = 1 it is exactly ``VectorQuantizer``.
    """

    @staticmethod
    def _projection_channels(num_codebooks: int, code_dim: int) -> int:
        """Output channels of the 1x1 projection: one D-dim vector for all codebooks."""
        return code_dim

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, D, H, W): the one projection, seen by every codebook."""
        shared = self.projection(z)
        b, d, h, w = shared.shape
        return shared[:, None].expand(b, self.num_codebooks, d, h, w)


def _check_divisible(name: str, value: int, divisor: int, divisor_name: str) -> None:
    if value % divisor:
        raise ValueError(f"{name} = {value} is not divisible by {divisor_name} = {divisor}")


class SpatialQuantizer(CodebookQuantizer):
    """Spatial vector quantization (SVQ), the DVQ paper's spatial-split baseline.

    Instead of one vector per position, vectors are cut along the spatial axis: the channels
    are split into M groups of C/M, and each non-overlapping p x p patch of a group, flattened,
    is one vector of dimension D = (C/M) * p * p, quantized by the group's codebook:
        v_{m,i,j} = vec(z[group m, p*i : p*i + p, p*j : p*j + p]),
        q_{m,i,j} = argmin_k ||v_{m,i,j} - c_{m,k}||^2.
    Indices are (B, M, H/p, W/p); the output is rebuilt to the input's shape (B, C, H, W).
    M = C gives one codebook per channel over p x p pixel patches.
    """

    def __init__(self, in_channels: int, num_codebooks: int, codebook_size: int, patch_size: int, **kwargs):
        _check_divisible("in_channels", in_channels, num_codebooks, "num_codebooks")
        super().__init__(num_codebooks, codebook_size, in_channels // num_codebooks * patch_size**2, **kwargs)
        self.in_channels = in_channels
        self.patch_size = patch_size

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, M, (C/M)*p*p, H/p, W/p) patch vectors."""
        b, _, h, w = z.shape
        _check_divisible("height", h, self.patch_size, "patch_size")
        _check_divisible("width", w, self.patch_size, "patch_size")
        # pixel_unshuffle orders channels as (c, row, col), so each group's patch is contiguous.
        patches = F.pixel_unshuffle(z, self.patch_size)
        return patches.view(b, self.num_codebooks, self.code_dim, h // self.patch_size, w // self.patch_size)

    def assemble(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, M, (C/M)*p*p, H/p, W/p) -> (B, C, H, W)."""
        b, m, d, h, w = codes.shape
        return F.pixel_shuffle(codes.reshape(b, m * d, h, w), self.patch_size)


class ProductQuantizer(SpatialQuantizer):
    """Product quantization (Jegou et al. 2011), the DVQ paper's channel-split baseline.

    The C channels are split into M contiguous slices of D = C / M channels with no learned
    projection, and slice m is quantized by codebook m:
        z = [z_1, ..., z_M],  q_m = argmin_k ||z_m - c_{m,k}||^2,  z_hat = [c_{1,q_1}, ..., c_{M,q_M}].
    The output has the input's shape (B, C, H, W); the straight-through gradient reaches z.
    It is SVQ with 1 x 1 patches: every vector is one position of one channel group.
    """

    def __init__(self, in_channels: int, num_codebooks: int, codebook_size: int, **kwargs):
        super().__init__(in_channels, num_codebooks, codebook_size, patch_size=1, **kwargs)
