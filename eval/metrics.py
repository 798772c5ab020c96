"""Distortion and rate measures on 8-bit RGB images, as the project reports them.

PSNR and MS-SSIM compare a decoded 8-bit RGB image with the original (both ``(H, W, 3)``
``uint8`` arrays, data range 255); bpp counts the real bytes of a file per pixel.
"""

import math

import numpy as np

# pytorch-msssim downsamples four times with an 11-tap window: the short side must exceed this.
MS_SSIM_MIN_SIDE = (11 - 1) * 2**4


def _check_pair(original: np.ndarray, decoded: np.ndarray) -> None:
    if original.shape != decoded.shape:
        raise ValueError(f"image shapes differ: original {original.shape}, decoded {decoded.shape}")
    if original.dtype != np.uint8 or decoded.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {original.dtype} and {decoded.dtype}")
    if original.ndim != 3 or original.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB images, got shape {original.shape}")


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over all pixels and the three RGB channels, peak 255.

    Args:
        original, decoded: ``(H, W, 3)`` uint8 arrays.
    Returns:
        ``10 log10(255² / MSE)``; ``inf`` for identical images.
    """
    _check_pair(original, decoded)
    return psnr_from_mse(float(np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)))


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """``10 log10(peak² / mse)`` in dB (``inf`` for mse 0); peak 1 for values in [0, 1]."""
    if mse == 0:
        return math.inf
    return float(10 * np.log10(peak**2 / mse))


def ms_ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, 5 scales, data range 255) of two RGB images, in [0, 1].

    Args:
        original, decoded: ``(H, W, 3)`` uint8 arrays whose short side exceeds 160 pixels.
    Raises:
        ValueError: for images too small for five scales.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(original, decoded)
    if min(original.shape[:2]) <= MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs images whose short side exceeds {MS_SSIM_MIN_SIDE} pixels, got {original.shape[:2]}"
        )

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.tensor(image, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)

    with torch.no_grad():
        return float(_ms_ssim(to_tensor(original), to_tensor(decoded), data_range=255))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, ``-10 log10(1 - value)``, which spreads out values near 1."""
    if value >= 1:
        return math.inf
    return -10 * math.log10(1 - value)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a file of ``num_bytes`` bytes holding an ``height`` × ``width`` image."""
    return 8 * num_bytes / (height * width)
