"""Bjontegaard deltas between two rate-distortion curves.

BD-rate: fit log(rate) as a function of quality (PSNR, or MS-SSIM in dB) for each curve with a
piecewise-cubic Hermite interpolant (pchip, monotone, so no overshoot between points),
integrate both over the quality range they share, and turn the mean log-rate difference into a
percentage: negative means the test curve needs fewer bits than the anchor for the same quality.
BD-PSNR (BD-metric) swaps the axes: mean quality difference over the shared log-rate range.
"""

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

from dqcodec.codec.errors import DQCodecError


def _operational_points(rates, metric, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by rate, keeping only those that beat every cheaper point in quality.

    A point that costs more bits than another without a higher quality is never an operating
    choice, and dropping it makes quality strictly increasing, as interpolation over it requires.
    Returns ``(log_rates, metric)`` as float arrays.
    """
    rates = np.asarray(rates, dtype=np.float64)
    metric = np.asarray(metric, dtype=np.float64)
    if rates.shape != metric.shape or rates.ndim != 1:
        raise DQCodecError(f"{what}: rates and metric values must be two lists of the same length")
    usable = np.isfinite(rates) & np.isfinite(metric) & (rates > 0)
    kept_rates, kept_metric = [], []
    for rate, value in sorted(zip(rates[usable], metric[usable]), key=lambda point: (point[0], -point[1])):
        if not kept_metric or value > kept_metric[-1]:
            kept_rates.append(rate)
            kept_metric.append(value)
    if len(kept_rates) < 2:
        raise DQCodecError(f"{what}: needs at least two RD points with positive rate and increasing quality")
    return np.log(kept_rates), np.asarray(kept_metric)


def _mean_over(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Mean of the pchip interpolant of ``y(x)`` over ``[low, high]`` (exact integral of the cubics)."""
    return float(PchipInterpolator(x, y).integrate(low, high)) / (high - low)


def _overlap(first: np.ndarray, second: np.ndarray, what: str) -> tuple[float, float]:
    low, high = max(first.min(), second.min()), min(first.max(), second.max())
    if high <= low:
        raise DQCodecError(
            f"the curves do not overlap in {what} (anchor {first.min():.4g}..{first.max():.4g}, "
            f"test {second.min():.4g}..{second.max():.4g})"
        )
    return float(low), float(high)


def bd_rate(anchor_rates, anchor_metric, test_rates, test_metric) -> float:
    """Bjontegaard delta rate of the test curve against the anchor, in percent.

    Args:
        anchor_rates, test_rates: rates of each RD point (any positive unit, e.g. bpp), any order.
        anchor_metric, test_metric: quality of each point in a unit that is additive in dB
            (PSNR, or MS-SSIM as ``-10 log10(1 - ms_ssim)``).
    Returns:
        The mean rate change at equal quality over the shared quality range, e.g. -50.0 when
        the test needs half the bits.
    Raises:
        DQCodecError: for fewer than two usable points or curves that share no quality range.
    """
    anchor_log_rates, anchor_values = _operational_points(anchor_rates, anchor_metric, "anchor")
    test_log_rates, test_values = _operational_points(test_rates, test_metric, "test")
    low, high = _overlap(anchor_values, test_values, "quality")
    mean_difference = _mean_over(test_values, test_log_rates, low, high) - _mean_over(
        anchor_values, anchor_log_rates, low, high
    )
    return (math.exp(mean_difference) - 1) * 100


def bd_metric(anchor_rates, anchor_metric, test_rates, test_metric) -> float:
    """Bjontegaard delta quality (BD-PSNR for PSNR) of the test curve against the anchor.

    Same arguments as :func:`bd_rate`. Returns the mean quality difference (test minus anchor,
    in the metric's unit, e.g. dB) at equal rate over the shared log-rate range.
    """
    anchor_log_rates, anchor_values = _operational_points(anchor_rates, anchor_metric, "anchor")
    test_log_rates, test_values = _operational_points(test_rates, test_metric, "test")
    low, high = _overlap(anchor_log_rates, test_log_rates, "rate")
    return _mean_over(test_log_rates, test_values, low, high) - _mean_over(
        anchor_log_rates, anchor_values, low, high
    )
