"""Image λ: each image coded at a λ in proportion to its own squared error.

A level's λ is one slope of squared error per bit. Within an image that is the right trade for
PSNR, whose error is the image's mean squared error. Across images it is not: a PSNR of
-10 log10 D falls by 10 / ln 10 * dD / D when D rises by dD, so a unit of squared error costs
an image with a small error (a smooth photograph) more decibels than an image with a large one
(foliage, water). Mean PSNR over images at a given mean rate is highest where every image trades
decibels for bits at the same slope, that is where -dD_i / dR_i is in proportion to D_i: each
image coded at λ D_i / D_ref (Lagrangian allocation of bits over images under a log-distortion
measure). An image with twice the typical error is coded at twice the level's λ and spends fewer
bits, whose PSNR gain would be small; a smooth one at a smaller λ.

D_i is not known before the codes are chosen; the decoder feedback's first guess (each fine
slice's nearest code, decoded) gives it: its mean squared error over Kodak tracked the file's
within a correlation of 0.999 (log scale, hdq-q2 and q4). D_ref is the level's typical first-guess
error, the median over the table step's training crops (a median, as the crops of flat synthetic
content that the decoder paints have no error at all), stored with the model
(``distortion_reference``; 0 codes every image at the level's λ). The scale is clipped to
[1/2, 2], the range it was measured over.

Content the network does not draw is left at the level's λ: text and screenshots reach 5-44
times the typical error (the 64 x 64 test images of :mod:`dqcodec.content`, hdq-q1 to q5),
photographs at most 2.5 (Kodak and 8 of the photos' validation images). Their error is the
network's, which bits do not buy back, and twice the λ took text at the lowest level 1.3 dB
further down, below the floor the codec keeps for such content. So past 4 times the typical
error the scale falls back, from 2 to 1 at 8 times and beyond.

A tile of a large image is coded as an image. The encoder's alone: the decoder and the file
format do not change.
"""

import numpy as np

from dqcodec.models.structural_weights import block_weights

MIN_SCALE, MAX_SCALE = 0.5, 2.0
DRAWN_LIMIT = 4.0  # first-guess error over the typical one past which the scale falls back to 1 (at twice this)


def image_scales(distortion: np.ndarray, reference: float) -> np.ndarray:
    """(B,) first-guess mean squared errors (pixels in [0, 1]) -> (B,) float64 factors of the
    level's lambda: ``clip(distortion / reference, 1/2, 2)`` up to 4 times the reference, then
    ``2 * 4 / ratio`` down to 1 (content the network does not draw keeps the level's lambda)."""
    ratio = np.asarray(distortion, dtype=np.float64) / reference
    drawn = np.clip(ratio, MIN_SCALE, MAX_SCALE)
    undrawn = np.clip(MAX_SCALE * DRAWN_LIMIT / np.maximum(ratio, DRAWN_LIMIT), 1.0, MAX_SCALE)
    return np.where(ratio > DRAWN_LIMIT, undrawn, drawn)


def image_weights(distortion: np.ndarray, reference: float) -> np.ndarray:
    """(B,) first-guess mean squared errors -> (B,) float64 weights ``1 / image_scales`` of each
    image's squared error: an image of weight w is coded at lambda / w."""
    return 1.0 / image_scales(distortion, reference)


def coding_weights(image: np.ndarray, block: int, exponent: float, guess_error: np.ndarray | None,
                   reference: float) -> np.ndarray | None:
    """(B, 3, H, W) float64 image in [0, 1] and its (B,) first-guess errors -> (B, H/block,
    W/block) float64 weights of its blocks' squared errors in the choice of the fine (and
    refinement) codes: the structural weights of ``exponent``
    (:func:`~dqcodec.models.structural_weights.block_weights`) times the image weights
    (:func:`image_weights`; ``reference`` 0: none). None when every block counts alike."""
    if exponent == 0 and reference == 0:
        return None
    weights = block_weights(image, block, exponent)  # all ones for exponent 0
    return weights * image_weights(guess_error, reference)[:, None, None] if reference else weights


def typical_distortion(distortions: np.ndarray) -> float:
    """First-guess mean squared errors of training crops (any shape) -> their median, the
    ``distortion_reference`` that codes a typical crop at the level's own lambda."""
    return float(np.median(np.asarray(distortions, dtype=np.float64)))
