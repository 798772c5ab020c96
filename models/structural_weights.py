"""Structural weights: how much a block's squared error costs in MS-SSIM, relative to a typical block.

SSIM compares local contrast and structure through terms of the form (2 s_xy + C2) / (s_x^2 +
s_y^2 + C2): near a good reconstruction, a squared error e^2 of a block with pixel variance s^2
lowers that term by about e^2 / (2 s^2 + C2). So the same squared error costs more structural
similarity in a flat block than in a textured one (the idea of SSIM-motivated rate-distortion
optimisation in video coding, Wang, Rehman, Zeng, Wang and Gao, IEEE TIP 2012). The encoder
may weight each block's squared error by

    w = (reference / (2 s^2 + C2)) ** exponent

(exponent 0: plain squared error; 1: the SSIM term's own sensitivity), where ``reference`` is a
typical 2 s^2 + C2 of the training photographs' blocks, so that a typical block keeps its lambda.
The weights are the encoder's alone: the decoder and the file format do not change.
"""

import numpy as np

SSIM_C2 = 0.03**2  # SSIM's C2 = (K2 L)^2 with K2 = 0.03 and L = 1 (pixels in [0, 1])
# The geometric mean of 2 s^2 + C2 over the 16 x 16 blocks of 40 training images (BSDS500 and the
# photos' training split, each scaled to at most 768 px; median 0.0066).
TYPICAL_BLOCK_TERM = 0.0072


def block_weights(image: np.ndarray, block: int, exponent: float, reference: float = TYPICAL_BLOCK_TERM) -> np.ndarray:
    """(B, 3, H, W) image in [0, 1], H and W multiples of ``block`` -> (B, H/block, W/block)
    float64 weights ``(reference / (2 s^2 + C2)) ** exponent``, s^2 the block's pixel variance
    (mean over the 3 channels)."""
    b, c, h, w = image.shape
    blocks = image.reshape(b, c, h // block, block, w // block, block)
    variance = blocks.var(axis=(3, 5)).mean(axis=1)
    return (reference / (2.0 * variance + SSIM_C2)) ** exponent
