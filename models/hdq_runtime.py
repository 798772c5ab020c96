"""An hdq model file as a coding runtime without torch: numpy for the quantizers, the encoder's
choices and the entropy model, onnxruntime for the convolutional transforms.

It codes exactly what :class:`~dqcodec.models.hdq_codec.HierarchicalDQCodec` codes (the same
levels, contexts, tables and encoder rules: decoder feedback, structural weights, image lambda,
flat blocks), so a file written by either decodes with the other: the indices are integers
under integer tables, and only the decoded pixels may differ by a rounding (float32
convolutions in another library, as between thread counts). Why: hdq coded through torch needs
the training install (5.9 GB with torch; the base install with onnxruntime is 315 MB), and this
runtime codes a Kodak image faster on 2 threads (measured in README: the speed table of the hdq
section).

A model with a refinement level is coded by the torch runtime (the registry chooses,
``_hdq_runtime`` in :mod:`~dqcodec.models.registry`).
"""

import os

import numpy as np

from dqcodec.models.context_tables import (
    CONTEXTS_PER_PHASE, NUM_PHASES, ROWS_SUFFIX, StoredContextTables, choose_indices, unpack_tables,
)
from dqcodec.models.flat_blocks import NUM_SYMBOLS, FlatBlockModel, flat_block_colours, flat_block_symbols
from dqcodec.models.hdq_levels import COARSE, COARSE_FACTOR, FINE, FINE_STRIDE, FLAT
from dqcodec.models.hierarchical_tables import StoredCoarseConditionedTables
from dqcodec.models.image_lambda import coding_weights
from dqcodec.models.interface import CompressedLevels, IndexLevel, LevelSpec
from dqcodec.models.onnx_transforms import OnnxTransforms


def _project(latent: np.ndarray, weight: np.ndarray, bias: np.ndarray, num_codebooks: int) -> np.ndarray:
    """(B, C, h, w) latent -> (B, M, D, h, w) slices through a (M*D, C, 1, 1) 1x1 convolution."""
    b, c, h, w = latent.shape
    out = np.matmul(weight[:, :, 0, 0], latent.reshape(b, c, h * w)) + bias[:, None]
    return out.reshape(b, num_codebooks, -1, h, w)


def _lookup(codebooks: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(M, K, D) codebooks, (B, M, h, w) indices -> (B, M * D, h, w) codewords, assembled."""
    b, m, h, w = indices.shape
    codes = codebooks[np.arange(m)[None, :, None, None], indices]  # (B, M, h, w, D)
    return np.ascontiguousarray(codes.transpose(0, 1, 4, 2, 3)).reshape(b, -1, h, w)


def _nearest(slices: np.ndarray, codebooks: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(B, M, D, h, w) slices -> (B, M, h, w) index of each slice's nearest code in use
    (``usable`` (M, K): codes with training use; pruned codes are never chosen)."""
    b, m, d, h, w = slices.shape
    points = slices.transpose(1, 0, 3, 4, 2).reshape(m, -1, d)  # (M, N, D)
    norms = np.where(usable, (codebooks * codebooks).sum(-1), np.inf).astype(slices.dtype)  # (M, K)
    # One codebook at a time, ||c||^2 - 2 x.c as one product [x, 1] @ [-2 c; ||c||^2]: its (N, K)
    # scores stay in cache (all codebooks at once took 0.19 s for hdq-q5 on a Kodak image).
    ones = np.ones((points.shape[1], 1), dtype=slices.dtype)
    nearest = np.stack([(np.hstack([points[k], ones]) @ np.vstack([-2 * codebooks[k].T, norms[k]])).argmin(axis=1)
                        for k in range(m)])  # (M, N)
    return nearest.reshape(m, b, h, w).transpose(1, 0, 2, 3)


class HDQRuntime:
    """A :class:`~dqcodec.models.interface.CodingRuntime` for hdq model files without a
    refinement level. Arrays float32 as the network codes (weights widened from the file's
    float16), tables int32; never modified after."""

    def __init__(self, arrays: dict[str, np.ndarray], info: dict):
        """``arrays``: the model file's tensors by state-dict name, shared weights included
        (tables packed as stored); ``info``: its JSON description."""
        config = info["config"]
        self.rate_lambda = float(config["rate_lambda"])
        self.feedback_step = float(config.get("feedback_step", 0.0))
        self.structural_weighting = float(config.get("structural_weighting", 0.0))
        self.distortion_reference = float(config.get("distortion_reference", 0.0))
        self.num_codebooks, self.num_coarse_codebooks = int(config["num_codebooks"]), int(config["coarse_codebooks"])
        self.arrays = {key: value.astype(np.float32) if value.dtype.kind == "f" else value for key, value in arrays.items()}
        for array in self.arrays.values():
            array.setflags(write=False)  # shared by every file this process codes (and by forked workers)
        self.gain = max(float(self.arrays["synthesis_gains"][0]), 1e-12)
        self.fine_codewords = self.arrays["fine_quantizer.codebooks"]
        self.coarse_codewords = self.arrays["coarse_quantizer.codebooks"]
        self.fine_usable = self.arrays["fine_quantizer.ema_counts"] > 0
        self.coarse_entropy = self._coarse_tables(config)
        self.fine_entropy = self._fine_tables(config)
        self._transforms: dict[int, OnnxTransforms] = {}  # by process id
        self._loaded_in = os.getpid()

    def _tables(self, prefix: str, shape: tuple[int, int, int, int]) -> dict:
        arrays = self.arrays
        sizes = arrays[f"{prefix}.alphabet_sizes"].astype(np.int32)
        return dict(
            code_class=arrays[f"{prefix}.code_class"].astype(np.int32),
            code_level=arrays[f"{prefix}.code_level"].astype(np.int32),
            frequencies=unpack_tables(arrays[f"{prefix}.frequencies"], sizes, shape,
                                      arrays.get(f"{prefix}.{ROWS_SUFFIX}")).astype(np.int32),
            alphabet_sizes=sizes,
        )

    def _coarse_tables(self, config: dict) -> StoredContextTables:
        size = int(config["coarse_codebook_size"])
        return StoredContextTables(
            num_codebooks=self.num_coarse_codebooks, codebook_size=size, num_predicted=0,
            **self._tables("coarse_entropy", (self.num_coarse_codebooks, NUM_PHASES, CONTEXTS_PER_PHASE, size)),
        )

    def _fine_tables(self, config: dict) -> StoredCoarseConditionedTables:
        size, buckets, arrays = int(config["codebook_size"]), int(config["coarse_buckets"]), self.arrays
        return StoredCoarseConditionedTables(
            num_codebooks=self.num_codebooks, codebook_size=size, num_predicted=int(config["predicted_codebooks"]),
            side_buckets=buckets, coarse_name=COARSE, factor=COARSE_FACTOR,
            **self._tables("fine_entropy", (self.num_codebooks, NUM_PHASES, CONTEXTS_PER_PHASE * buckets, size)),
            **{name: arrays[f"fine_entropy.{name}"].astype(np.int64) for name in (
                "coarse_class", "coarse_edges", "activity_edges", "predicted_bins", "predicted_spread_edges", "marginal")},
        )

    @property
    def transforms(self) -> OnnxTransforms:
        """The onnxruntime sessions of this process: made on first use, and anew in a forked
        worker (onnxruntime's thread pools do not survive a fork). A worker keeps the sessions it
        inherited and never destroys them: their destructor would join pool threads that the
        fork did not copy, and wait forever (a 1300 x 1300 image in tiles of 1024 did). A worker's
        sessions run on one thread, as the workers share the cores: 2 workers encoded a 6 MP image
        in 12 s this way, in 15 s with two threads each, and 1 worker with two threads in 17 s."""
        pid = os.getpid()
        if pid not in self._transforms:
            self._transforms[pid] = OnnxTransforms(self.arrays, threads=0 if pid == self._loaded_in else 1)
        return self._transforms[pid]

    @property
    def padding_multiple(self) -> int:
        return FINE_STRIDE * COARSE_FACTOR

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """As :meth:`HierarchicalDQCodec.levels <dqcodec.models.hdq_codec.HierarchicalDQCodec.levels>`."""
        rows, cols = height // FINE_STRIDE, width // FINE_STRIDE
        return [
            LevelSpec(FLAT, (NUM_SYMBOLS, rows, cols), FlatBlockModel()),
            LevelSpec(COARSE, (self.num_coarse_codebooks, rows // COARSE_FACTOR, cols // COARSE_FACTOR), self.coarse_entropy),
            LevelSpec(FINE, (self.num_codebooks, rows, cols), self.fine_entropy),
        ]

    def compress(self, image: np.ndarray, rate_lambda: float | None = None) -> CompressedLevels:
        """(B, 3, H, W) float64 image in [0, 1], H and W multiples of 64 -> the flat blocks'
        symbols, the coarse indices (nearest codes) and the fine indices (latent distortion +
        lambda * bits under the real tables, for the slices moved by the decoder feedback, with
        the structural weights and the image lambda), as the network chooses them.
        ``rate_lambda``: pixel units; None: the model's own."""
        pixels = image.astype(np.float32)  # the network codes in float32
        arrays = self.arrays
        latent = self.transforms.analyse(pixels)
        coarse_slices = _project(self.transforms.coarse_analyse(latent), arrays["coarse_quantizer.projection.weight"],
                                 arrays["coarse_quantizer.projection.bias"], self.num_coarse_codebooks)
        coarse, coarse_tables = choose_indices(coarse_slices.astype(np.float64), self.coarse_codewords,
                                               self.coarse_entropy, 0.0)
        flat = flat_block_symbols(pixels, FINE_STRIDE)
        fine_slices, guess_error = self.fine_targets(pixels, latent, coarse, flat)
        weights = coding_weights(pixels.astype(np.float64), FINE_STRIDE, self.structural_weighting, guess_error,
                                 self.distortion_reference)
        fine_lambda = (self.rate_lambda if rate_lambda is None else rate_lambda) / self.gain
        fine, fine_tables = choose_indices(fine_slices, self.fine_codewords, self.fine_entropy, fine_lambda,
                                           side={COARSE: coarse}, weights=weights)
        return [IndexLevel(FLAT, flat), IndexLevel(COARSE, coarse, coarse_tables), IndexLevel(FINE, fine, fine_tables)]

    def fine_targets(self, pixels: np.ndarray, latent: np.ndarray, coarse: np.ndarray,
                     flat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, M, D, h, w) float32 slices the fine codes are chosen for: the analysis' slices moved
        by one step of decoder feedback; and the (B,) mean squared error of the first guess
        (painted blocks exact), None where neither the feedback nor the image lambda needs it
        (:meth:`HierarchicalDQCodec.fine_targets
        <dqcodec.models.hdq_codec.HierarchicalDQCodec.fine_targets>`, which says why)."""
        arrays = self.arrays
        slices = _project(latent, arrays["fine_quantizer.projection.weight"], arrays["fine_quantizer.projection.bias"],
                          self.num_codebooks)
        if self.feedback_step == 0 and self.distortion_reference == 0:
            return slices, None
        guess = _lookup(self.fine_codewords, _nearest(slices, self.fine_codewords, self.fine_usable))
        decoded = self.transforms.reconstruct(guess, _lookup(self.coarse_codewords, coarse))
        b, _, height, width = pixels.shape
        h, w = height // FINE_STRIDE, width // FINE_STRIDE
        # pixel_unshuffle: channel (c, row, col) of each 16 x 16 block.
        residual = (pixels - decoded).reshape(b, 3, h, FINE_STRIDE, w, FINE_STRIDE)
        residual = residual.transpose(0, 1, 3, 5, 2, 4).reshape(b, 3 * FINE_STRIDE**2, h * w)
        residual = residual * ~flat_block_colours(flat)[0].reshape(b, 1, h * w)  # painted blocks pull nothing
        guess_error = np.square(residual, dtype=np.float64).mean(axis=(1, 2))
        pull = np.matmul(arrays["synthesis.linear.weight"][:, :, 0, 0].T, residual)  # W^T (x - x_hat): (B, M*D, h*w)
        return slices + (self.feedback_step / self.gain) * pull.reshape(slices.shape), guess_error

    def decompress(self, levels: CompressedLevels) -> np.ndarray:
        """The levels of :meth:`compress` -> (B, 3, H, W) float64 image clamped to [0, 1]: the
        network's reconstruction, with the flat blocks painted in their colours."""
        indices = {level.name: level.indices for level in levels}
        image = np.clip(self.transforms.reconstruct(_lookup(self.fine_codewords, indices[FINE]),
                                                    _lookup(self.coarse_codewords, indices[COARSE])), 0, 1)
        flat, colours = flat_block_colours(indices[FLAT])

        def to_pixels(blocks: np.ndarray) -> np.ndarray:  # (B, C, h, w) -> (B, C, 16h, 16w)
            return blocks.repeat(FINE_STRIDE, axis=2).repeat(FINE_STRIDE, axis=3)

        painted = np.where(to_pixels(flat[:, None]), to_pixels(colours).astype(np.float32) / 255, image)
        return painted.astype(np.float64)
