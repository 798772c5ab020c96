"""Each classical runner that can run here round-trips a small synthetic image."""

import numpy as np
import pytest

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval import metrics
from dqcodec.eval.classical import CLASSICAL_CODECS, get_classical


def synthetic_image(height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth colour gradients with a little noise: something every codec can compress a lot, not entirely."""
    rows, columns = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    image = np.stack([rows * 255 / height, columns * 255 / width, (rows + columns) * 127 / (height + width) + 64], axis=-1)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CLASSICAL_CODECS))
def test_runner_round_trips_and_rate_follows_quality(name):
    codec = CLASSICAL_CODECS[name]
    reason = codec.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    image = synthetic_image()
    lowest, highest = codec.run(image, codec.points[0]), codec.run(image, codec.points[-1])
    for coded in (lowest, highest):
        assert isinstance(coded.data, bytes) and len(coded.data) > 0
        assert coded.decoded.shape == image.shape and coded.decoded.dtype == np.uint8
        assert coded.encode_seconds >= 0 and coded.decode_seconds >= 0
    assert len(lowest.data) < len(highest.data)
    assert metrics.psnr(image, lowest.decoded) < metrics.psnr(image, highest.decoded)
    assert metrics.psnr(image, highest.decoded) > 30


def test_unknown_codec_is_a_user_error():
    with pytest.raises(DQCodecError, match="unknown classical codec"):
        get_classical("gif")


@pytest.mark.parametrize("name", [name for name, codec in CLASSICAL_CODECS.items() if codec.unavailable_reason()])
def test_missing_codec_says_why(name):
    with pytest.raises(DQCodecError, match="cannot run here"):
        get_classical(name)


def test_metrics_on_known_values():
    image = synthetic_image()
    assert metrics.psnr(image, image) == float("inf")
    shifted = (image.astype(np.int16) + 1).clip(0, 255).astype(np.uint8)
    mse = np.mean((shifted.astype(float) - image) ** 2)
    assert metrics.psnr(image, shifted) == pytest.approx(10 * np.log10(255**2 / mse))
    assert metrics.bpp(1000, 100, 80) == pytest.approx(1.0)
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)
