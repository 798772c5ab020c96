"""What the two block codecs (DQ and SHVQ) share: one level of indices over P x P blocks.

A block codec analyses the image into one feature vector per P x P block, quantizes M slices of
it (codebook m: D values) to indices, codes those indices with a
:class:`~dqcodec.models.entropy.ContextIndexModel`, and synthesises the image back from the
quantized features. Subclasses say how features become slices and codewords (``code_slices``,
``code_values``, ``dequantize``); this base turns that into the codec-model interface
(:mod:`dqcodec.models.interface`): one level named ``"blocks"`` of shape (M, H/P, W/P).

Any content, not only photographs: the base also keeps flat colours reproducible whatever the
training data held. :meth:`BlockCodec.anchor_flat_colours` makes the synthesis invert the
analysis exactly on flat blocks, and :meth:`BlockCodec.guard_codes` gives every codebook codes at
the values that flat blocks of the RGB cube's corners and of greys produce (and codes spread over
the range those values span), so a colour that the training images never showed, like pure
green, is not clipped to the nearest colour they did show; a model that holds them
(:meth:`BlockCodec.holds_guard_codes`) starts each predicted codebook on its nearest codes, so
that a flat area keeps them (``choose_indices``' ``nearest_first_rows``).
"""

import numpy as np
import torch
from torch import nn

from dqcodec.models.block_runtime import GUARD_PIXEL_ERROR, LEVEL_NAME, guard_colours
from dqcodec.models.context_tables import choose_indices
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.interface import CompressedLevels, IndexLevel, LevelSpec

def _merge_close(values: np.ndarray, tolerance: float) -> np.ndarray:
    """(G, D) values -> the first of each group of values within ``tolerance`` of an earlier kept one."""
    kept: list[np.ndarray] = []
    for value in values:
        if all(np.linalg.norm(value - other) > tolerance for other in kept):
            kept.append(value)
    return np.array(kept).reshape(-1, values.shape[1])


class BlockCodec(nn.Module):
    """Base of the block codecs; subclasses set ``config`` (with ``block``, ``rate_lambda``),
    ``analysis``, ``synthesis`` (a :class:`~dqcodec.models.transforms.BlockSynthesis`) and
    ``entropy``, and implement the code hooks below (slices, codewords, dequantization, and
    which codes are in use and how guard codes are placed)."""

    config: object
    entropy: ContextIndexModel

    @property
    def padding_multiple(self) -> int:
        return self.config.block

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """One level: (M, height / P, width / P) indices under ``self.entropy``."""
        block = self.config.block
        return [LevelSpec(LEVEL_NAME, (self.entropy.num_codebooks, height // block, width // block), self.entropy)]

    def code_slices(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, M, D, H/P, W/P): the values codebook m quantizes at each block."""
        raise NotImplementedError

    def code_values(self) -> np.ndarray:
        """(M, K, D) float64 codewords in the entropy model's code order."""
        raise NotImplementedError

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) int64 indices -> (B, C, h, w) synthesis input, in the network's dtype."""
        raise NotImplementedError

    def code_in_use(self) -> np.ndarray:
        """(M, K) bool: the codes the quantizer may assign (in ``code_values`` order)."""
        raise NotImplementedError

    def place_guard_codes(
        self, exact: list[np.ndarray], spread: list[np.ndarray], gaps: np.ndarray, in_use: np.ndarray
    ) -> np.ndarray:
        """Make codebook m hold the (G, D) values ``exact[m]`` and a code within ``gaps[m] / 2`` of
        every (F, D) value of ``spread[m]``, moving only codes that are not ``in_use`` (M, K) or
        lie very near a value; returns the (M, K) bool mask of the codes that serve them (in
        ``code_values`` order), which must stay in use."""
        raise NotImplementedError

    @torch.no_grad()
    def flat_slices(self, colours: np.ndarray) -> np.ndarray:
        """(G, 3) colours in [0, 1] -> (M, G, D) float64: what codebook m quantizes in a flat
        P x P block of each colour."""
        block, count = self.config.block, len(colours)
        weight = self.analysis.linear.weight
        image = torch.from_numpy(np.ascontiguousarray(colours.T)).to(weight)[None, :, None, :, None]
        image = image.expand(1, 3, block, count, block).reshape(1, 3, block, count * block)
        return self.code_slices(image)[0, :, :, 0, :].permute(0, 2, 1).double().cpu().numpy()

    def synthesis_reach(self) -> np.ndarray:
        """(M,) the largest change of any pixel value (in [0, 1] units) per unit change of one
        value of codebook m's slice, through the linear synthesis."""
        columns = self.synthesis.linear.weight.detach().double()[:, :, 0, 0].abs()  # (3 P^2, M * D)
        return columns.amax(dim=0).view(self.entropy.num_codebooks, -1).amax(dim=1).cpu().numpy()

    @torch.no_grad()
    def guard_codes(self, pixel_error: float = GUARD_PIXEL_ERROR, usage: np.ndarray | None = None) -> np.ndarray:
        """Give every codebook the codes that flat colours need; returns the (M, K) bool mask of
        those codes (in ``code_values`` order), which code pruning must keep.

        Codebook m gets a code at exactly the value of each guard colour (:func:`guard_colours`:
        the RGB cube's corners and greys), and, for D = 1, codes over the whole range those values
        span (the range of that coefficient over every flat colour, since it is affine in the
        colour) no further apart than ``2 * pixel_error`` pixel units through the synthesis, so
        that any flat colour is off by about ``pixel_error`` per codebook at most. Computed from
        the network's own weights, so it holds for a retrained or new transform as well. Codes
        with no ``usage`` (M, K) (by default: those the quantizer does not use, ``code_in_use``)
        are free to take a guard value.
        """
        gaps = 2 * pixel_error / np.maximum(self.synthesis_reach(), 1e-12)
        exact, spread = [], []
        for m, values in enumerate(self.flat_slices(guard_colours())):  # (G, D) per codebook
            # Values closer than float32 rounding are one value (a detail axis gives 0 to every flat colour).
            exact.append(_merge_close(values, 1e-4 * gaps[m]))
            low, high = values.min(), values.max()
            if values.shape[1] != 1 or high - low <= gaps[m]:
                spread.append(np.zeros((0, values.shape[1])))
                continue
            spread.append(np.linspace(low, high, int(np.ceil((high - low) / gaps[m])) + 1)[:, None])
        in_use = self.code_in_use() if usage is None else np.asarray(usage) > 0
        return self.place_guard_codes(exact, spread, gaps, in_use)

    @torch.no_grad()
    def holds_guard_codes(self, pixel_error: float = GUARD_PIXEL_ERROR) -> bool:
        """Whether every codebook has, among the codes in use, a code within half the guard
        spacing of :meth:`guard_codes` (for ``pixel_error``) of the value of every guard colour:
        true of a model fitted with guard codes (release 0.3.0 on), false of earlier ones."""
        values = self.code_values()
        sizes = self.entropy.alphabet_sizes.tolist()
        gaps = 2 * pixel_error / np.maximum(self.synthesis_reach(), 1e-12)
        for m, targets in enumerate(self.flat_slices(guard_colours())):
            distances = np.sqrt(((targets[:, None] - values[m, : sizes[m]][None]) ** 2).sum(-1)).min(axis=1)
            if distances.max() > gaps[m] / 2:
                return False
        return True

    @torch.no_grad()
    def anchor_flat_colours(self) -> float:
        """Make synthesis(analysis(flat block)) the flat block again, for every colour.

        A rank-3 correction of the linear synthesis (and its bias): both transforms are affine, so
        the reconstruction error of flat blocks is affine in the colour, E(c) = E1 c + E0, and so
        are the slices of flat blocks, y(c) = Y1 c + y0; adding E1 Y1^+ to the weights and
        E0 - E1 Y1^+ y0 to the bias removes it (Y1^+ Y1 = I). Other blocks move by E1 Y1^+ y: their
        flat-colour content times the flat-colour error, nothing where the transforms were already
        exact (the block PCA). Training moves analysis and synthesis apart (SHVQ's soft-to-hard
        stage does); this undoes that on flat colours. Returns the largest error removed, in
        [0, 1] pixel units. Needs the synthesis without a post-filter (raises ValueError otherwise).
        """
        if self.synthesis.postfilter is not None:
            raise ValueError("a post-filter after the synthesis cannot be anchored on flat colours")
        colours = guard_colours()[:8]
        block = self.config.block
        slices = torch.from_numpy(self.flat_slices(colours)).permute(1, 0, 2).reshape(len(colours), -1)  # (8, M*D)
        linear = self.synthesis.linear
        weight, bias = linear.weight.detach().double()[:, :, 0, 0], linear.bias.detach().double()
        target = torch.from_numpy(colours).repeat_interleave(block * block, dim=1)  # (8, 3 P^2), pixel-unshuffle order
        error = target - (slices @ weight.T + bias)
        design = torch.cat([torch.from_numpy(colours), torch.ones(len(colours), 1, dtype=torch.float64)], dim=1)
        slice_fit = torch.linalg.lstsq(design, slices).solution  # (4, M*D): rows Y1^T, y0
        error_fit = torch.linalg.lstsq(design, error).solution  # (4, 3 P^2): rows E1^T, E0
        correction = error_fit[:3].T @ torch.linalg.pinv(slice_fit[:3].T)  # (3 P^2, M*D)
        linear.weight.add_((correction[:, :, None, None]).to(linear.weight))
        linear.bias.add_((error_fit[3] - correction @ slice_fit[3]).to(linear.bias))
        return float(error.abs().max())

    def rate_lambdas(self, rate_lambda: float | None = None) -> np.ndarray:
        """(M,) ``rate_lambda`` (None: ``config.rate_lambda``; squared pixel error, values in
        [0, 1], summed over the colour channels, per bit) in the units of each codebook's slice:
        an error e on codebook m's D values costs about gain_m * ||e||^2 of pixel error through
        the linear synthesis, gain_m the mean squared norm of its D synthesis columns."""
        columns = self.synthesis.linear.weight.detach().double()[:, :, 0, 0]  # (3 P^2, M * D)
        gains = (columns**2).sum(dim=0).view(self.entropy.num_codebooks, -1).mean(dim=1)
        pixel_lambda = self.config.rate_lambda if rate_lambda is None else rate_lambda
        return pixel_lambda / gains.clamp_min(1e-12).numpy()

    @torch.no_grad()
    def compress(self, image: torch.Tensor, rate_lambda: float | None = None) -> CompressedLevels:
        """(B, 3, H, W) image in [0, 1], H and W multiples of P -> one level of (B, M, H/P, W/P) indices.

        Each index minimises distortion + lambda * (-log2 p) under the context tables, in coding
        order (:func:`~dqcodec.models.context_tables.choose_indices`); a model that holds guard codes
        (:meth:`holds_guard_codes`) starts each predicted codebook on the nearest codes, so that
        a flat area of a guard colour stays on its exact code (earlier models keep their choices:
        the same weights still write the same files). ``rate_lambda``: pixel units; None: the model's own.
        """
        slices = self.code_slices(image).double().numpy()
        indices, step_tables = choose_indices(slices, self.code_values(), self.entropy, self.rate_lambdas(rate_lambda),
                                              nearest_first_rows=self.holds_guard_codes())
        return [IndexLevel(LEVEL_NAME, indices, step_tables)]

    @torch.no_grad()
    def decompress(self, levels: CompressedLevels) -> torch.Tensor:
        """The ``"blocks"`` level -> (B, 3, H, W) image clamped to [0, 1], in the network's dtype."""
        (level,) = levels
        return self.synthesis(self.dequantize(torch.from_numpy(level.indices))).clamp(0, 1)
