"""Output heads of a likelihood model: distributions p(x | codes) over 8-bit images.

A head turns the decoder's parameter tensor (B, ``channels``, H, W) into -log2 p(x | codes) of
8-bit RGB images x (B, 3, H, W), given in [0, 1] as value / 255. Every head is a proper
distribution over the 256 values of each sub-pixel, so the bits are an honest code length:

- :class:`GaussianHead` ("mse"): a Gaussian of fixed standard deviation around the predicted
  mean, discretized to the 256 bins (the end bins take the tails). It is trained on the mean
  squared error, as the DQ paper's MSE head: away from the end bins, the Gaussian's negative
  log-likelihood is about that error scaled by 1 / (2 sigma^2 ln 2) bits, plus a constant.
- :class:`CategoricalHead` ("categorical"): a 256-way softmax per sub-pixel, trained on the
  cross-entropy.
- :class:`LogisticMixtureHead` ("logistic_mixture"): the discretized logistic mixture of
  PixelCNN++ (Salimans et al. 2017): K components shared by the three channels of a pixel, green
  and blue means linear in the earlier channels' values, trained on its negative log-likelihood.

``bits(parameters, image)`` is the (B,) code length of each image in bits; ``objective(parameters,
image, bits)`` the training loss per sub-pixel (MSE of [0, 1] values for the Gaussian head, bits
per sub-pixel, read from ``bits``, for the others); ``mean`` the expected image (the
reconstruction); ``log_probs`` the (B, 3, H, W, 256) natural-log table of every value of each
sub-pixel, given the true values of the earlier channels of its pixel (what a range coder codes
the pixels with). Computations run in float32 at least (outside autocast).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

VALUES = 256  # 8-bit sub-pixels
HALF_BIN = 0.5 / (VALUES - 1)  # half a bin in [0, 1] units
LN2 = math.log(2.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012)."""
    return torch.where(x > -LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_bin_probability(values: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor | float, log_cdf) -> torch.Tensor:
    """log P(value) of 8-bit ``values`` (in [0, 1], as v / 255) under a symmetric location-scale
    distribution (``log_cdf`` of the standard one, F(-u) = 1 - F(u)) discretized to 256 bins:
    value 0 takes (-inf, 0.5/255], value 255 takes [254.5/255, inf), the others their bin.

    Stable in both tails: an interior bin is mirrored so that both of its edges lie below the
    centre, where log F is accurate; every branch stays finite (no inf in the gradients).
    Shapes broadcast; the result has their common shape, natural log.
    """
    lower = (values - HALF_BIN - centre) / scale
    upper = (values + HALF_BIN - centre) / scale
    mirrored = lower + upper > 0
    low, high = torch.where(mirrored, -upper, lower), torch.where(mirrored, -lower, upper)
    log_high = log_cdf(high)
    interior = log_high + _log1mexp((log_cdf(low) - log_high).clamp_max(-1e-12))
    first = log_cdf(upper)
    last = log_cdf(-lower)
    return torch.where(values <= HALF_BIN, first, torch.where(values >= 1 - HALF_BIN, last, interior))


def _all_values(like: torch.Tensor) -> torch.Tensor:
    """(256,) the 8-bit values as v / 255, in the dtype and on the device of ``like``."""
    return torch.arange(VALUES, dtype=like.dtype, device=like.device) / (VALUES - 1)


class GaussianHead(nn.Module):
    """Discretized Gaussian of fixed ``sigma`` (in 8-bit code values) around the predicted mean.

    Parameters (B, 3, H, W): the mean in [0, 1] units (not clamped; the end bins hold the tails).
    """

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma / (VALUES - 1)  # [0, 1] units
        self.channels = 3

    def log_probs(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        mean = parameters.float()[..., None]
        return log_bin_probability(_all_values(mean), mean, self.sigma, torch.special.log_ndtr)

    def bits(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        log_p = log_bin_probability(image.float(), parameters.float(), self.sigma, torch.special.log_ndtr)
        return -log_p.flatten(1).sum(1) / LN2

    def objective(self, parameters: torch.Tensor, image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Mean squared error of [0, 1] values (the DQ paper's MSE head), not the bits."""
        return F.mse_loss(parameters.float(), image.float())

    def mean(self, parameters: torch.Tensor) -> torch.Tensor:
        return parameters.float()


class CategoricalHead(nn.Module):
    """256-way softmax per sub-pixel. Parameters (B, 3 * 256, H, W): logits, channel-major
    (channel c's 256 logits are parameters[:, 256 c : 256 (c + 1)])."""

    def __init__(self):
        super().__init__()
        self.channels = 3 * VALUES

    @staticmethod
    def _logits(parameters: torch.Tensor) -> torch.Tensor:
        b, _, h, w = parameters.shape
        return parameters.float().view(b, 3, VALUES, h, w)

    @staticmethod
    def _targets(image: torch.Tensor) -> torch.Tensor:
        return (image.float() * (VALUES - 1)).round().long().clamp(0, VALUES - 1)

    def log_probs(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self._logits(parameters), dim=2).permute(0, 1, 3, 4, 2)

    def bits(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        nats = F.cross_entropy(self._logits(parameters).transpose(1, 2), self._targets(image), reduction="none")
        return nats.flatten(1).sum(1) / LN2

    def objective(self, parameters: torch.Tensor, image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in bits per sub-pixel (from ``bits``, this head's bits of the batch)."""
        return bits.mean() / image[0].numel()

    def mean(self, parameters: torch.Tensor) -> torch.Tensor:
        probabilities = F.softmax(self._logits(parameters), dim=2)
        return torch.einsum("bcvhw,v->bchw", probabilities, _all_values(probabilities))


class LogisticMixtureHead(nn.Module):
    """Discretized mixture of ``components`` logistics per pixel (PixelCNN++).

    Parameters (B, 10 K, H, W) for K components, in this order along the channel axis: K mixture
    logits, then 3 K means, 3 K log-scales and 3 K coupling coefficients, each (3, K) channel-major.
    Values live in [-1, 1] as in PixelCNN++ (x' = 2 x - 1; bins of width 2 / 255). Per component k:
        mu_r = m_r,  mu_g = m_g + tanh(a) x'_r,  mu_b = m_b + tanh(b) x'_r + tanh(c) x'_g,
    log-scales clamped below at -7, and p(x) = sum_k pi_k prod_c P_k(x_c | mu_c, s_c).
    """

    MIN_LOG_SCALE = -7.0

    def __init__(self, components: int = 10):
        super().__init__()
        self.components = components
        self.channels = 10 * components

    def _split(self, parameters: torch.Tensor):
        """(logits (B, K, H, W), means, log_scales, coefficients (B, 3, K, H, W) each)."""
        b, _, h, w = parameters.shape
        k = self.components
        parameters = parameters.float()
        logits = parameters[:, :k]
        rest = parameters[:, k:].view(b, 3, 3, k, h, w)
        return logits, rest[:, 0], rest[:, 1].clamp_min(self.MIN_LOG_SCALE), torch.tanh(rest[:, 2])

    @staticmethod
    def _centres(means: torch.Tensor, coefficients: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, K, H, W) means of each channel given the earlier channels' values ([-1, 1] units)."""
        signed = (2 * image.float() - 1)[:, :, None]  # (B, 3, 1, H, W)
        red, green = signed[:, 0], signed[:, 1]
        return torch.stack([
            means[:, 0],
            means[:, 1] + coefficients[:, 0] * red,
            means[:, 2] + coefficients[:, 1] * red + coefficients[:, 2] * green,
        ], dim=1)

    def _component_log_probs(self, parameters: torch.Tensor, image: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """log P_k(values | earlier channels of ``image``): values broadcast against (B, 3, K, H, W)."""
        _, means, log_scales, coefficients = self._split(parameters)
        centres = self._centres(means, coefficients, image)
        # In [0, 1] units: centre (mu' + 1) / 2, scale s' / 2.
        return log_bin_probability(values, (centres + 1) / 2, torch.exp(log_scales) / 2, F.logsigmoid)

    def log_probs(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = self._split(parameters)[0]
        values = _all_values(logits)
        per_value = self._component_log_probs(parameters, image, values.view(-1, 1, 1, 1, 1, 1)).movedim(0, -1)
        # The weight of component k for channel c is its posterior given the true earlier channels.
        truth = self._component_log_probs(parameters, image, image.float()[:, :, None])  # (B, 3, K, H, W)
        earlier = torch.cumsum(truth, dim=1) - truth
        weights = F.log_softmax(F.log_softmax(logits, dim=1)[:, None] + earlier, dim=2)  # (B, 3, K, H, W)
        return torch.logsumexp(weights[..., None] + per_value, dim=2)

    def bits(self, parameters: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = self._split(parameters)[0]
        truth = self._component_log_probs(parameters, image, image.float()[:, :, None])  # (B, 3, K, H, W)
        log_p = torch.logsumexp(F.log_softmax(logits, dim=1) + truth.sum(dim=1), dim=1)  # (B, H, W)
        return -log_p.flatten(1).sum(1) / LN2

    def objective(self, parameters: torch.Tensor, image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in bits per sub-pixel (from ``bits``, this head's bits of the batch)."""
        return bits.mean() / image[0].numel()

    def mean(self, parameters: torch.Tensor) -> torch.Tensor:
        """E[x] in [0, 1], the channel couplings applied to the earlier channels' component means."""
        logits, means, _, coefficients = self._split(parameters)
        weights = F.softmax(logits, dim=1)[:, None]  # (B, 1, K, H, W)
        red = means[:, 0]
        green = means[:, 1] + coefficients[:, 0] * red
        blue = means[:, 2] + coefficients[:, 1] * red + coefficients[:, 2] * green
        signed = (weights * torch.stack([red, green, blue], dim=1)).sum(dim=2)
        return (signed.clamp(-1, 1) + 1) / 2


HEADS = ("mse", "categorical", "logistic_mixture")


def make_head(name: str, gaussian_sigma: float, components: int) -> nn.Module:
    """The head called ``name`` (one of :data:`HEADS`)."""
    if name == "mse":
        return GaussianHead(gaussian_sigma)
    if name == "categorical":
        return CategoricalHead()
    if name == "logistic_mixture":
        return LogisticMixtureHead(components)
    raise ValueError(f"unknown head {name!r}; use one of {', '.join(HEADS)}")
