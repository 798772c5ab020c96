"""Integer frequency tables of 8-bit pixels under a discretized logistic mixture (numpy only).

A lossless file codes every sub-pixel with the distribution of the DQ-AE's logistic-mixture
head (:class:`~dqcodec.models.likelihood_heads.LogisticMixtureHead`, PixelCNN++): K components
per pixel, green and blue centres linear in the decoded red (and green) values. The decoder
must rebuild each table bit for bit (DESIGN.md, "Entropy coding: exactness first"), so the
head's float parameters are rounded once to integers (:func:`quantize_parameters`) and every
step after that is integer arithmetic over lookup tables (:func:`lookup_tables`) that the model
file stores, so no float operation of the decoder's machine enters a table:

- centres in 1/128 code values (``CENTRE_SCALE``), the channel couplings tanh(.) in 1/64
  (``COUPLING_SCALE``): a coupled centre, base + coupling * (2 x - 255), stays an integer;
- log-scales in 1/32 (``LOG_SCALE_STEP``), clamped to [-7, 7] ([-1, 1] units, as the head
  clamps below at -7); the table ``inverse_scale`` turns one into the slope that maps a distance
  in 1/128 code values to the logistic's argument in 1/1024 (``CDF_GRID``);
- the logistic CDF on that grid from -16 to 16, in units of 2**-24 (``cdf``);
- mixture logits in 1/16, weights exp(logit - max) from the table ``weight`` (2**16 for the
  largest component). Green's and blue's weights are the posterior given the decoded red (and
  green) value, renormalised to 2**16 by integer division.

A sub-pixel's table is 1 + floor(p(v) (2**16 - 256) / sum p), so every value has a frequency
of at least 1 and the row sums to at most 2**16, what :mod:`dqcodec.codec.rangecoder` takes.
The rounding costs a little rate against the float head (measured: ``results/lossless``).
"""

from dataclasses import dataclass

import numpy as np

VALUES = 256
CENTRE_SCALE = 128  # centres in 1/128 code values
COUPLING_SCALE = 64  # tanh couplings in 1/64; centre term coupling * (2 x - 255) is then in 1/128 code values
LOG_SCALE_STEP = 32  # log-scales ([-1, 1] units) in 1/32
LOG_SCALE_LIMIT = 7  # |log-scale| <= 7 (the head clamps below at -7)
LOGIT_STEP = 16  # mixture logits in 1/16
WEIGHT_BITS = 16  # mixture weights: the largest is 2**16
CDF_GRID = 1024  # the logistic's argument in 1/1024
CDF_LIMIT = 16  # the CDF table spans [-16, 16]
CDF_BITS = 24  # CDF values in units of 2**-24
SLOPE_BITS = 20  # inverse_scale is a fixed-point slope with 20 fraction bits
TABLE_TOTAL = 1 << 16  # row sum of the coder's tables (at most)
MAX_CENTRE = 512 * CENTRE_SCALE  # centres clamped to [-512, 512] code values beyond the 0..255 range
CHUNK = 4096  # pixels per block of table work (memory: CHUNK * K * 257 int64)


def lookup_tables() -> dict[str, np.ndarray]:
    """The integer lookup tables (computed once, at export, and stored in the model file).

    cdf: (2 * CDF_LIMIT * CDF_GRID + 1,) int64, round(2**24 sigmoid(i / CDF_GRID)), i from
        -CDF_LIMIT * CDF_GRID.
    inverse_scale: (2 * LOG_SCALE_LIMIT * LOG_SCALE_STEP + 1,) int64 slopes, for log-scale
        j / LOG_SCALE_STEP from -LOG_SCALE_LIMIT: round(2**20 CDF_GRID / (CENTRE_SCALE sigma)),
        sigma = exp(log-scale) * 127.5 the logistic's scale in code values.
    weight: (LOGIT_STEP * 32 + 1,) int64, round(2**16 exp(-j / LOGIT_STEP)).
    """
    grid = np.arange(-CDF_LIMIT * CDF_GRID, CDF_LIMIT * CDF_GRID + 1) / CDF_GRID
    cdf = np.round(np.ldexp(1.0 / (1.0 + np.exp(-grid)), CDF_BITS)).astype(np.int64)
    log_scales = np.arange(-LOG_SCALE_LIMIT * LOG_SCALE_STEP, LOG_SCALE_LIMIT * LOG_SCALE_STEP + 1) / LOG_SCALE_STEP
    sigma = np.exp(log_scales) * 127.5
    inverse_scale = np.round(np.ldexp(CDF_GRID / (CENTRE_SCALE * sigma), SLOPE_BITS)).astype(np.int64)
    weight = np.round(np.ldexp(np.exp(-np.arange(LOGIT_STEP * 32 + 1) / LOGIT_STEP), WEIGHT_BITS)).astype(np.int64)
    return {"cdf": cdf, "inverse_scale": inverse_scale, "weight": weight}


@dataclass(frozen=True)
class QuantizedMixture:
    """The head's parameters of B images, rounded to integers (numpy int64, H x W positions).

    weights: (B, K, H, W) prior mixture weights (largest 2**16).
    centres: (B, 3, K, H, W) uncoupled centres in 1/128 code values.
    log_scales: (B, 3, K, H, W) indices into ``inverse_scale``.
    couplings: (B, 3, K, H, W) tanh couplings in 1/64 (green<-red, blue<-red, blue<-green).
    """

    weights: np.ndarray
    centres: np.ndarray
    log_scales: np.ndarray
    couplings: np.ndarray


def quantize_parameters(parameters: np.ndarray, components: int, weight_table: np.ndarray) -> QuantizedMixture:
    """(B, 10 K, H, W) float head parameters (the order of ``LogisticMixtureHead``: K logits, then
    3 K means, 3 K log-scales, 3 K coupling pre-activations, each (3, K)) -> integers.

    The one float step of the pixel tables: what the decoder's network computes must round to
    the same integers (float64 network; tests/test_lossless.py checks threads, batches, processes).
    """
    b, _, h, w = parameters.shape
    k = components
    logits = parameters[:, :k]
    rest = parameters[:, k:].reshape(b, 3, 3, k, h, w)
    logit_steps = np.round(logits * LOGIT_STEP).astype(np.int64)
    below_max = np.minimum(logit_steps.max(axis=1, keepdims=True) - logit_steps, len(weight_table) - 1)
    centres = np.round((rest[:, 0] + 1.0) * (127.5 * CENTRE_SCALE))
    log_scales = np.round(np.clip(rest[:, 1], -LOG_SCALE_LIMIT, LOG_SCALE_LIMIT) * LOG_SCALE_STEP)
    return QuantizedMixture(
        weights=weight_table[below_max],
        centres=np.clip(centres, -MAX_CENTRE, MAX_CENTRE).astype(np.int64),
        log_scales=log_scales.astype(np.int64) + LOG_SCALE_LIMIT * LOG_SCALE_STEP,
        couplings=np.round(np.tanh(rest[:, 2]) * COUPLING_SCALE).astype(np.int64),
    )


class PixelTables:
    """Frequency tables of one image's sub-pixels, channel by channel, from its quantized mixture.

    Built from flattened positions: every array is (N, ...) over the N = B H W pixels.
    """

    def __init__(self, mixture: QuantizedMixture, tables: dict[str, np.ndarray]):
        def flat(array: np.ndarray) -> np.ndarray:  # (B, [3,] K, H, W) -> (N, [3,] K)
            return np.moveaxis(array, (-2, -1), (1, 2)).reshape(-1, *array.shape[1:-2])

        self._weights = flat(mixture.weights)
        self._centres = flat(mixture.centres)
        self._slopes = tables["inverse_scale"][flat(mixture.log_scales)]
        self._couplings = flat(mixture.couplings)
        self._cdf = tables["cdf"]

    def frequencies(self, channel: int, earlier: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 256) int64 tables of ``channel`` for pixels [start, stop).

        earlier: (n, channel) decoded values of the earlier channels (red; red and green) of
        those pixels, int64 in 0..255.
        """
        stop = len(self._weights) if stop is None else stop
        centres = self._coupled_centres(channel, earlier, start, stop)  # (n, 3, K)
        weights = self._posterior_weights(earlier, centres, start, stop)  # (n, K)
        # The mixture's CDF at the upper edges of 0..254 (the weighted sum of the components'),
        # with 0 below and the weights' sum above: its differences are the bins' masses, the end
        # bins taking the tails.
        cdf = np.einsum("nk,nkv->nv", weights, self._edge_cdf(centres[:, channel], self._slopes[start:stop, channel]))
        total = weights.sum(axis=1, keepdims=True) << CDF_BITS
        mass = np.diff(cdf, axis=1, prepend=0, append=total)
        return 1 + mass * (TABLE_TOTAL - VALUES) // total

    def _coupled_centres(self, channel: int, earlier: np.ndarray, start: int, stop: int) -> np.ndarray:
        """(n, 3, K) centres with the couplings of the decoded earlier channels (1/128 code values)."""
        centres = self._centres[start:stop].copy()
        couplings = self._couplings[start:stop]
        signed = 2 * earlier - (VALUES - 1)  # (n, channel)
        if channel >= 1:
            centres[:, 1] += couplings[:, 0] * signed[:, :1]
        if channel >= 2:
            centres[:, 2] += couplings[:, 1] * signed[:, :1] + couplings[:, 2] * signed[:, 1:2]
        return centres

    def _posterior_weights(self, earlier: np.ndarray, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
        """(n, K) weights given the earlier channels' values, each step renormalised to 2**16."""
        weights = self._weights[start:stop]
        for channel in range(earlier.shape[1]):
            value = earlier[:, channel, None]
            likelihood = self._bin_probability(value, centres[:, channel], self._slopes[start:stop, channel])
            joint = weights * likelihood
            total = joint.sum(axis=1, keepdims=True)
            weights = np.where(total > 0, (joint << WEIGHT_BITS) // np.maximum(total, 1), weights)
        return weights

    def _cdf_at(self, edges: np.ndarray, centres: np.ndarray, slopes: np.ndarray) -> np.ndarray:
        """CDF (units 2**-24) at bin ``edges`` (1/128 code values); centres, slopes broadcast."""
        grid = ((edges - centres) * slopes + (1 << (SLOPE_BITS - 1))) >> SLOPE_BITS
        return self._cdf[np.clip(grid, -CDF_LIMIT * CDF_GRID, CDF_LIMIT * CDF_GRID) + CDF_LIMIT * CDF_GRID]

    def _edge_cdf(self, centres: np.ndarray, slopes: np.ndarray) -> np.ndarray:
        """(n, K, 255) CDF (units 2**-24) of every component at the upper edges of the values
        0..254, the integers :meth:`_cdf_at` gives, computed in place (the coder's inner loop)."""
        limit = CDF_LIMIT * CDF_GRID
        # ((128 v + 64 - centre) slope + 2**19) >> 20 = (128 slope v + offset) >> 20
        offset = (CENTRE_SCALE // 2 - centres) * slopes + (1 << (SLOPE_BITS - 1))
        grid = np.multiply.outer(slopes * CENTRE_SCALE, np.arange(VALUES - 1))
        grid += offset[..., None]
        grid >>= SLOPE_BITS
        np.clip(grid, -limit, limit, out=grid)
        grid += limit
        return self._cdf.take(grid)

    def _bin_probability(self, values: np.ndarray, centres: np.ndarray, slopes: np.ndarray) -> np.ndarray:
        """(n, K) probability of (n, 1) ``values`` (units 2**-24); the end bins take the tails."""
        upper = np.where(values >= VALUES - 1, 1 << CDF_BITS,
                         self._cdf_at(values * CENTRE_SCALE + CENTRE_SCALE // 2, centres, slopes))
        lower = np.where(values <= 0, 0, self._cdf_at(values * CENTRE_SCALE - CENTRE_SCALE // 2, centres, slopes))
        return upper - lower
