"""Bjontegaard deltas on curves whose answer is known, and on the published Kodak anchors."""

import math
import random

import pytest

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.bdrate import bd_metric, bd_rate
from dqcodec.eval.results import load_curve
from dqcodec.paths import anchors_dir

RATES = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNR = [26.0, 28.9, 31.5, 34.2, 37.0]


def test_identical_curves_give_zero():
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-9)
    assert bd_metric(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_every_rate_halved_gives_minus_50_percent():
    assert bd_rate(RATES, PSNR, [r / 2 for r in RATES], PSNR) == pytest.approx(-50.0)


def test_psnr_shift_on_a_log_linear_curve():
    # PSNR = a + b ln(rate): raising PSNR by d dB at every rate saves exp(-d / b) - 1 of the rate.
    a, b, shift = 30.0, 6 / math.log(2), 1.0  # 6 dB per doubling of the rate
    psnr = [a + b * math.log(r) for r in RATES]
    shifted = [value + shift for value in psnr]
    assert bd_rate(RATES, psnr, RATES, shifted) == pytest.approx((math.exp(-shift / b) - 1) * 100)
    assert bd_metric(RATES, psnr, RATES, shifted) == pytest.approx(shift)


def test_point_order_does_not_matter():
    points = list(zip([r * 0.8 for r in RATES], PSNR))
    random.Random(0).shuffle(points)
    rates, psnr = zip(*points)
    assert bd_rate(RATES[::-1], PSNR[::-1], rates, psnr) == pytest.approx(bd_rate(RATES, PSNR, [r * 0.8 for r in RATES], PSNR))


def test_dominated_points_are_ignored():
    # A point that costs more than another without a better PSNR is never an operating point.
    reference = bd_rate(RATES, PSNR, [r * 0.7 for r in RATES], PSNR)
    test_rates = [r * 0.7 for r in RATES] + [0.5]
    test_psnr = PSNR + [29.0]
    assert bd_rate(RATES, PSNR, test_rates, test_psnr) == pytest.approx(reference)


def test_curves_without_overlap_are_refused():
    with pytest.raises(DQCodecError, match="do not overlap"):
        bd_rate(RATES, PSNR, RATES, [value + 20 for value in PSNR])


def test_a_single_point_is_refused():
    with pytest.raises(DQCodecError, match="at least two"):
        bd_rate(RATES, PSNR, [0.3], [30.0])


def _anchor(name: str):
    if not (anchors_dir() / f"{name}.json").is_file():
        pytest.skip(f"published anchors not found in {anchors_dir()}")
    return load_curve(name)


def test_published_vtm_against_bpg_is_about_minus_18_percent():
    # CompressAI's published Kodak curves: VTM needs ~18 % fewer bits than BPG (4:4:4, x265) at equal PSNR.
    bpg, vtm = _anchor("bpg_444_x265_ycbcr"), _anchor("vtm")
    assert bd_rate(bpg.bpp, bpg.psnr, vtm.bpp, vtm.psnr) == pytest.approx(-18.0, abs=1.0)
    # and over MS-SSIM (dB), about the same
    assert bd_rate(bpg.bpp, bpg.metric("ms-ssim"), vtm.bpp, vtm.metric("ms-ssim")) == pytest.approx(-17.7, abs=1.0)
