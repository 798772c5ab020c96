"""The hierarchical DQ codec (``hdq``): convolutional transforms, two levels of depthwise-quantized
indices, and an exact entropy model in which the fine level reads the coarse one.

Encoder: image (B, 3, H, W) -> fine latent y (stride 16, :class:`ConvAnalysis`) -> fine indices
(M codebooks of K codes, each on its own D-dim 1x1 projection of y); y -> coarse latent (stride
64, :class:`CoarseAnalysis`) -> coarse indices (M_c codebooks). Decoder: the coarse codewords go
up through :class:`CoarseSynthesis` and join the fine codewords at the input of
:class:`ConvSynthesis` (DQ-AE's top-down path). Coding order is coarse then fine; the fine
level's tables are chosen by its own decoded neighbours and earlier codebooks and by the coarse
level (:class:`~dqcodec.models.hierarchical_entropy.CoarseConditionedIndexModel`). A first level
marks the 16 x 16 blocks that hold one flat colour and carries it; the decoder paints them with
it (:mod:`~dqcodec.models.flat_blocks`), so flat areas come back exact whatever the network does.
A model may add a last level, the fine indices' refinement (:mod:`~dqcodec.models.refinement`): a
residual code per fine codebook and position, which lifts the top rates past the fine codebooks'
resolution.

Decoder feedback (encoder only): the analysis is one amortised guess at the latent. Before the
fine codes are chosen, the encoder decodes a first guess (each slice's nearest code),
takes the pixel residual x - x_hat back through the synthesis' linear block path (W^T, one matrix
per block) and moves the slices by ``feedback_step * W^T (x - x_hat) / gain``: a step of gradient
descent on the squared pixel error, straight through the quantizer. The file format does not
change; the decoder never sees it.

Structural weights (encoder only, ``structural_weighting``): each 16 x 16 block's squared error
counts w times in the choice of the fine and refinement codes, w larger in flat blocks than in
textured ones, as SSIM weighs errors (:mod:`~dqcodec.models.structural_weights`); a block is
coded at ``lambda / w``.

Image lambda (encoder only, ``distortion_reference``): each image (or tile) is coded at the
level's lambda times its first guess's squared error over the level's typical one (clipped to
[1/2, 2]), so that mean PSNR over images, not mean squared error, is what the bits buy
(:mod:`~dqcodec.models.image_lambda`).

Rate-distortion trade-off: ``rate_lambda`` is in pixel units (squared error of [0, 1] RGB values
per bit). The fine quantizer's entropy-constrained assignment works in latent units, so it uses
``rate_lambda / gain``, where ``gain`` is the synthesis' squared gain per latent dimension
(pixel squared error caused by a unit squared error of a codeword), measured by finite
differences on the training batches and stored with the model (buffer ``synthesis_gains``).
The coarse level is assigned to its nearest codes, with no rate term: it costs at most
M_c log2 K_c bits per 64 x 64 pixels (0.012 bpp with the defaults), and charging it its rate
while its benefit (cheaper fine indices under tables that read it) is not counted in training
collapsed it to a single code in a run from scratch.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dqcodec.models.block_runtime import GUARD_PIXEL_ERROR
from dqcodec.models.conv_transforms import CoarseAnalysis, CoarseSynthesis, ConvAnalysis, ConvSynthesis
from dqcodec.models.context_tables import choose_indices
from dqcodec.models.entropy import ContextIndexModel
from dqcodec.models.flat_blocks import NUM_SYMBOLS, FlatBlockModel, flat_block_colours, flat_block_symbols
from dqcodec.models.hdq_levels import COARSE, COARSE_FACTOR, FINE, FINE_STRIDE, FLAT
from dqcodec.models.hierarchical_entropy import CoarseConditionedIndexModel
from dqcodec.models.image_lambda import coding_weights
from dqcodec.models.interface import RATE_LAMBDA_HELP, CodecOutput, CompressedLevels, IndexLevel, LevelSpec, StepTables
from dqcodec.models.quantizers import DepthwiseQuantizer
from dqcodec.models.refinement import REFINE, FineRefinement

GAIN_PROBE = 1e-2  # finite-difference step, relative to the codewords' RMS
# Flat images of this size (pixels) give the latents of flat areas: their centre lies 96 pixels
# from the zero padding of the convolutions.
FLAT_PROBE = 192
# Coding runs the transforms on channels-last tensors: on 2 CPU threads the synthesis of a Kodak
# image took 0.29 s instead of 0.54 s (hdq-q5), the analysis 0.28 s instead of 0.31 s. Only float
# rounding differs: 36 of the 1.18 M 8-bit values of one image moved by one level.
CODING_MEMORY_FORMAT = torch.channels_last


@dataclass
class HDQConfig:
    """Architecture of one hierarchical DQ codec model (stored in the model's JSON)."""

    channels: int = field(default=96, metadata={"help": "channels N of the convolutional transforms"})
    latent_channels: int = field(default=192, metadata={"help": "channels C of the stride-16 latent"})
    num_codebooks: int = field(default=48, metadata={"help": "fine level: number of codebooks M"})
    codebook_size: int = field(default=128, metadata={"help": "fine level: codes per codebook K"})
    code_dim: int = field(default=4, metadata={"help": "fine level: dimension D of each codebook's projection"})
    coarse_channels: int = field(default=64, metadata={"help": "channels of the stride-64 coarse latent"})
    coarse_codebooks: int = field(default=8, metadata={"help": "coarse level: number of codebooks"})
    coarse_codebook_size: int = field(default=64, metadata={"help": "coarse level: codes per codebook"})
    coarse_code_dim: int = field(default=4, metadata={"help": "coarse level: dimension of each projection"})
    coarse_buckets: int = field(default=3, metadata={"help": "fine tables per context, chosen by coarse activity"})
    predicted_codebooks: int = field(
        default=3, metadata={"help": "first fine codebooks coded with DPCM-like contexts (they hold the block mean colours)"}
    )
    rate_lambda: float = field(default=0.01, metadata={"help": RATE_LAMBDA_HELP, "flag": "--lambda"})
    feedback_step: float = field(
        default=0.05, metadata={"help": "encoder only: step of the decoder feedback that moves the fine slices before the "
                                      "codes are chosen, in units of the pixel residual's gradient over the synthesis "
                                      "gain (0: code the analysis' slices as they are)"}
    )
    structural_weighting: float = field(
        default=0.25, metadata={"help": "encoder only: exponent of the structural weights of each 16 x 16 block's squared "
                                      "error in the choice of the fine (and refinement) codes (0: plain squared error; "
                                      "1: SSIM's own sensitivity, so flat blocks get more bits)"}
    )
    distortion_reference: float = field(
        default=0.0, metadata={"help": "encoder only: the level's typical mean squared error of the decoder feedback's "
                                     "first guess (pixels in [0, 1]); each image is coded at lambda times its own over "
                                     "this (clipped to [1/2, 2]) for mean PSNR over images (0: every image at lambda); "
                                     "measured by the table step", "measured": True}
    )
    refinement_size: int = field(
        default=0, metadata={"help": "codes of each fine codebook's residual refinement (0: no refinement level); fitted "
                                     "with the tables at export, not trained ('dqcodec fit-tables --refinement-size' "
                                     "gives one to a trained model)"}
    )

    def __post_init__(self):
        for name in ("feedback_step", "structural_weighting", "distortion_reference"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"--{name.replace('_', '-')} {value}: need a finite value of 0 or more")


class HierarchicalDQCodec(nn.Module):
    """Two-level depthwise-quantized convolutional codec; images (B, 3, H, W) in [0, 1]."""

    # Coded in float32: float64 convolutions made decoding 2.7x slower (0.76 s against 0.28 s
    # per Kodak image on 2 threads), past the hyperprior's time. The indices stay exact; measured
    # on Kodak with hdq-q2, 744 of 28.3 M decoded 8-bit values differ between 1 and 2 threads,
    # each by one level.
    coding_dtype = torch.float32

    def __init__(self, config: HDQConfig):
        super().__init__()
        self.config = config
        self.analysis = ConvAnalysis(config.channels, config.latent_channels)
        self.coarse_analysis = CoarseAnalysis(config.latent_channels, config.channels, config.coarse_channels)
        self.fine_quantizer = self._fine_quantizer(config)
        # No commitment loss on the coarse level: its latent reaches the image only through the
        # nonlinear branch, which starts at zero, so the commitment term alone would pull every
        # coarse latent onto one code (measured: perplexity 9 -> 1.1 in 120 steps) before the
        # reconstruction could make use of it.
        self.coarse_quantizer = DepthwiseQuantizer(
            config.coarse_channels, config.coarse_codebooks, config.coarse_codebook_size, config.coarse_code_dim, beta=0.0
        )
        self.coarse_synthesis = CoarseSynthesis(self.coarse_quantizer.out_channels, config.channels)
        self.synthesis = ConvSynthesis(self.fine_quantizer.out_channels, config.channels, config.channels)
        self.coarse_entropy = ContextIndexModel(config.coarse_codebooks, config.coarse_codebook_size)
        self.fine_entropy = self._fine_entropy(config)
        self.refinement = self._refinement(config)
        # (fine, coarse) pixel squared error per squared error of one latent dimension.
        self.register_buffer("synthesis_gains", torch.ones(2))
        # Set by the training recipe before a pass that re-measures the gains (that pass resets
        # it): the weight kept by the old gains (0: replace them); None: no measurement.
        self.gain_update: float | None = None
        self._set_assignment_lambdas()

    @staticmethod
    def _fine_quantizer(config: HDQConfig) -> DepthwiseQuantizer:
        return DepthwiseQuantizer(
            config.latent_channels, config.num_codebooks, config.codebook_size, config.code_dim, rate_gradient=True
        )

    @staticmethod
    def _fine_entropy(config: HDQConfig) -> CoarseConditionedIndexModel:
        return CoarseConditionedIndexModel(
            config.num_codebooks, config.codebook_size, COARSE, config.coarse_codebooks,
            config.coarse_codebook_size, COARSE_FACTOR, config.coarse_buckets, config.predicted_codebooks,
        )

    @staticmethod
    def _refinement(config: HDQConfig) -> FineRefinement | None:
        if config.refinement_size <= 0:
            return None
        return FineRefinement(config.num_codebooks, config.refinement_size, config.code_dim, config.codebook_size, FINE)

    @property
    def padding_multiple(self) -> int:
        return FINE_STRIDE * COARSE_FACTOR

    def levels(self, height: int, width: int) -> list[LevelSpec]:
        """The flat blocks (4, H/16, W/16) (:mod:`~dqcodec.models.flat_blocks`), then coarse
        (M_c, H/64, W/64) and fine (M, H/16, W/16) indices, and with a refinement its (M, H/16,
        W/16) indices."""
        rows, cols = height // FINE_STRIDE, width // FINE_STRIDE
        levels = [
            LevelSpec(FLAT, (NUM_SYMBOLS, rows, cols), FlatBlockModel()),
            LevelSpec(COARSE, (self.config.coarse_codebooks, rows // COARSE_FACTOR, cols // COARSE_FACTOR), self.coarse_entropy),
            LevelSpec(FINE, (self.config.num_codebooks, rows, cols), self.fine_entropy),
        ]
        if self.refinement is not None:
            levels.append(LevelSpec(REFINE, (self.config.num_codebooks, rows, cols), self.refinement.entropy))
        return levels

    def rate_lambdas(self, rate_lambda: float | None = None) -> tuple[float, float]:
        """(fine, coarse) ``rate_lambda`` (pixel units; None: the model's) in latent units: squared
        latent error per bit (0 for the coarse level)."""
        pixel_lambda = self.config.rate_lambda if rate_lambda is None else rate_lambda
        return pixel_lambda / max(self.synthesis_gains[0].item(), 1e-12), 0.0

    def _set_assignment_lambdas(self) -> None:
        self.fine_quantizer.rate_lambda, self.coarse_quantizer.rate_lambda = self.rate_lambdas()

    def set_rate_lambda(self, rate_lambda: float) -> None:
        """Change the rate-distortion trade-off (``--init-from`` with another ``--lambda``)."""
        self.config.rate_lambda = rate_lambda
        self._set_assignment_lambdas()

    def set_codebook_size(self, codebook_size: int) -> None:
        """K codes per fine codebook (``--init-from`` with another ``--codebook-size``). The
        projections stay; the codebooks and the fine tables start anew, to be fitted (the
        training recipe refits the codebooks of a model started with a new size or lambda)."""
        projection = self.fine_quantizer.projection.state_dict()
        self.config.codebook_size = codebook_size
        self.fine_quantizer = self._fine_quantizer(self.config)
        self.fine_quantizer.projection.load_state_dict(projection)
        self.fine_entropy = self._fine_entropy(self.config)
        self.refinement = self._refinement(self.config)
        self._set_assignment_lambdas()

    def set_refinement_size(self, refinement_size: int) -> None:
        """K_r codes per refinement codebook (0: none); the codes and tables start anew, to be
        fitted by the table step (``dqcodec fit-tables --refinement-size``)."""
        self.config.refinement_size = refinement_size
        self.refinement = self._refinement(self.config)

    def reconstruct(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """(B, M*D, h, w) fine and (B, M_c*D_c, h/4, w/4) coarse codewords -> (B, 3, 16h, 16w) image."""
        return self.synthesis(torch.cat([fine, self.coarse_synthesis(coarse)], dim=1))

    def forward(self, image: torch.Tensor) -> CodecOutput:
        self._set_assignment_lambdas()
        latent = self.analysis(image)
        dtype = self.fine_quantizer.codebooks.dtype
        with torch.autocast(image.device.type, enabled=False):  # codebook search and EMA in full precision
            fine = self.fine_quantizer(latent.to(dtype))
            coarse = self.coarse_quantizer(self.coarse_analysis(latent).to(dtype))
        reconstruction = self.reconstruct(fine.quantized, coarse.quantized)
        if self.gain_update is not None:
            self._measure_synthesis_gains(fine.quantized.detach(), coarse.quantized.detach(), reconstruction.detach())
        return CodecOutput(
            reconstruction=reconstruction,
            bits=fine.bits + coarse.bits,
            quantizer_loss=fine.loss + coarse.loss,
            statistics={
                "perplexity": fine.perplexity.mean().item(),
                "coarse_perplexity": coarse.perplexity.mean().item(),
                "coarse_bpp_estimate": coarse.bits.sum().item() / (image.shape[0] * image.shape[2] * image.shape[3]),
                "fine_gain": self.synthesis_gains[0].item(),
                "coarse_gain": self.synthesis_gains[1].item(),
            },
        )

    @torch.no_grad()
    def _measure_synthesis_gains(self, fine: torch.Tensor, coarse: torch.Tensor, reference: torch.Tensor) -> None:
        """Finite-difference estimate of E ||J v||^2 / dim for random +-1 directions v, per level."""
        gains = []
        for level in (0, 1):
            codes = (fine, coarse)[level]
            step = GAIN_PROBE * codes.float().pow(2).mean().sqrt().clamp_min(1e-6)
            direction = torch.randint(0, 2, codes.shape, device=codes.device).to(codes.dtype) * 2 - 1
            probe = codes + step * direction
            moved = self.reconstruct(probe, coarse) if level == 0 else self.reconstruct(fine, probe)
            gains.append((moved.float() - reference.float()).pow(2).sum() / (step**2 * codes.numel()))
        kept, self.gain_update = self.gain_update, None
        self.synthesis_gains.copy_(kept * self.synthesis_gains + (1 - kept) * torch.stack(gains))
        self._set_assignment_lambdas()

    @torch.no_grad()
    def flat_slices(self, colours: np.ndarray) -> np.ndarray:
        """(G, 3) colours in [0, 1] -> (M, G, D) float64: the slices that each fine codebook
        quantizes inside a flat area of each colour (the centre of a flat ``FLAT_PROBE`` x
        ``FLAT_PROBE`` image)."""
        weight = self.analysis.linear.weight
        images = torch.from_numpy(colours).to(weight)[:, :, None, None].expand(-1, -1, FLAT_PROBE, FLAT_PROBE)
        slices = self.fine_quantizer.project(self.analysis(images))  # (G, M, D, h, w)
        return slices[..., slices.shape[-2] // 2, slices.shape[-1] // 2].transpose(0, 1).double().cpu().numpy()

    @torch.no_grad()
    def guard_codes(self, colours: np.ndarray, usage: torch.Tensor, pixel_error: float = GUARD_PIXEL_ERROR) -> torch.Tensor:
        """Give the fine codebooks codes at the values that flat areas of ``colours`` (G, 3)
        produce (:meth:`flat_slices`); returns the (M, K) bool mask of the codes that serve them,
        which code pruning must keep.

        Photographs seldom reach the slices of saturated flat colours, so codebooks fitted on them
        may hold no code near pure green. A code moves onto a flat colour's value when it lies
        within a quarter of the gap (a slice error that moves the pixels of its 16 x 16 block by
        about ``2 * pixel_error`` RMS through the measured synthesis gain), else the value takes
        a code that ``usage`` (M, K) shows unused, or the least used one, up to a quarter of the
        codebook (the corners first, then the greys). Computed from the network's own weights,
        so it holds for any trained network. The coarse level gets none:
        the synthesis hardly reads it (its gain stays near 1e-5 of the fine level's), and a
        code moved onto a flat colour would move the coarse classes of photographs.
        """
        quantizer = self.fine_quantizer
        gap = 2 * pixel_error * np.sqrt(3 * FINE_STRIDE**2 / max(self.synthesis_gains[0].item(), 1e-12))
        empty = [np.zeros((0, quantizer.code_dim))] * quantizer.num_codebooks
        mask = quantizer.place_guard_codes(list(self.flat_slices(colours)), empty,
                                           np.full(quantizer.num_codebooks, gap), usage.cpu().numpy() > 0,
                                           limit=quantizer.codebook_size // 4)
        return torch.from_numpy(mask)

    @torch.no_grad()
    def analyse(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image in [0, 1] -> (B, C, H/16, W/16) fine latent, as the coder computes it."""
        return self.analysis(image.contiguous(memory_format=CODING_MEMORY_FORMAT))

    @torch.no_grad()
    def nearest_indices(self, latent: torch.Tensor) -> CompressedLevels:
        """The quantizers' own choice (marginal-rate ECVQ, no context tables) for a fine
        ``latent`` (:meth:`analyse`), coarse then fine."""
        self._set_assignment_lambdas()
        coarse = self.coarse_quantizer.quantize(self.coarse_analysis(latent))
        fine = self.fine_quantizer.quantize(latent)
        return [IndexLevel(COARSE, coarse.numpy()), IndexLevel(FINE, fine.numpy())]

    @torch.no_grad()
    def compress(self, image: torch.Tensor, rate_lambda: float | None = None,
                 latent: torch.Tensor | None = None) -> CompressedLevels:
        """(B, 3, H, W) image in [0, 1], H and W multiples of 64 -> the levels of
        :meth:`choose_levels`, then the refinement indices of a model that has them: the residual
        the fine codes left, at the fine level's lambda. ``rate_lambda`` and ``latent``: as for
        :meth:`choose_levels`.
        """
        levels, fine_slices, weights = self.choose_levels(image, rate_lambda, latent)
        if self.refinement is not None:
            fine_lambda = self.rate_lambdas(rate_lambda)[0]
            levels.append(IndexLevel(REFINE, *self.choose_refinement(weights, fine_slices.double().numpy(),
                                                                     levels[-1].indices, fine_lambda)))
        return levels

    @torch.no_grad()
    def choose_levels(self, image: torch.Tensor, rate_lambda: float | None = None,
                      latent: torch.Tensor | None = None) -> tuple[CompressedLevels, torch.Tensor, np.ndarray | None]:
        """(B, 3, H, W) image in [0, 1], H and W multiples of 64 -> the flat blocks' symbols,
        coarse and fine indices, the (B, M, D, h, w) slices the fine indices were chosen for
        (:meth:`fine_targets`; the table step fits the refinement to what they left) and the
        (B, h, w) weights of their blocks' squared errors
        (:func:`~dqcodec.models.image_lambda.coding_weights`, or None).

        Each index minimises latent distortion + lambda * (-log2 p) under the real context tables
        in coding order (:func:`~dqcodec.models.context_tables.choose_indices`); the fine level's
        tables read the coarse indices chosen first. ``rate_lambda``: pixel units; None: the
        model's own. ``latent``: the image's :meth:`analyse`, when the caller already has it.
        """
        fine_lambda, coarse_lambda = self.rate_lambdas(rate_lambda)
        latent = self.analyse(image) if latent is None else latent
        coarse_slices = self.coarse_quantizer.project(self.coarse_analysis(latent)).double().numpy()
        coarse, coarse_tables = choose_indices(coarse_slices, self._codewords(self.coarse_quantizer), self.coarse_entropy,
                                               coarse_lambda)
        flat = flat_block_symbols(image.numpy(), FINE_STRIDE)
        fine_slices, guess_error = self.fine_targets(image, latent, coarse, flat)
        weights = coding_weights(image.double().numpy(), FINE_STRIDE, self.config.structural_weighting, guess_error,
                                 self.config.distortion_reference)
        fine, fine_tables = choose_indices(
            fine_slices.float().numpy(), self._codewords(self.fine_quantizer), self.fine_entropy, fine_lambda,
            side={COARSE: coarse}, weights=weights,
        )
        levels = [IndexLevel(FLAT, flat), IndexLevel(COARSE, coarse, coarse_tables), IndexLevel(FINE, fine, fine_tables)]
        return levels, fine_slices, weights

    @torch.no_grad()
    def fine_targets(self, image: torch.Tensor, latent: torch.Tensor, coarse: np.ndarray,
                     flat: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """(B, M, D, h, w) slices that the fine codes are chosen for: the analysis' slices of
        ``latent`` (B, C, h, w), moved by one step of decoder feedback (module docstring); and the
        (B,) mean squared pixel error of the first guess, painted blocks counted exact (the image
        lambda's measure of each image), None where neither the feedback nor the image lambda
        needs the first guess.

        image: the (B, 3, 16h, 16w) image in [0, 1]; coarse: its (B, M_c, h/4, w/4) coarse
        indices; flat: its (B, 4, h, w) flat-block symbols, whose blocks the decoder paints
        exactly (their residual is zero, so a flat area keeps the codes of its slices, the guard
        codes).

        The first guess is each slice's nearest code: its residual is what the network and the
        analysis get wrong, not the rate-distortion choice's own coarseness. Measured on Kodak
        with real files (all 24 images, the 5 levels of this release): with the nearest codes as
        the first guess and a step of 0.1, -3.0 % BD-rate over PSNR and 0.0 % over MS-SSIM; with
        the marginal-rate ECVQ codes at the level's lambda as the first guess, +0.7 % and +3.6 %
        (the rate rose 3-9 %). In probes on estimated rates a step of 0.2 lost 2.9 % and a second
        step lost more: the gradient is largest along the block means, whose slices it then moves
        past their codes. Once the synthesis was tuned to the encoder's codes, a step of 0.05 did
        better than 0.1 at every level (+0.01 to +0.04 dB at equal rate on 12 Kodak images, each
        level's curve swept over lambda; -0.5 % BD-rate over PSNR and -0.8 % over MS-SSIM on all
        24, real files), hence the default.
        """
        slices = self.fine_quantizer.project(latent)
        step = self.config.feedback_step
        if step == 0 and self.config.distortion_reference == 0:
            return slices, None
        residual = self.first_guess_residual(image, latent, coarse, flat)
        guess_error = residual.double().square().mean(dim=(1, 2, 3)).numpy()
        pull = F.conv2d(residual, self.synthesis.linear.weight.transpose(0, 1))  # W^T (x - x_hat): (B, M*D, h, w)
        return slices + (step / max(self.synthesis_gains[0].item(), 1e-12)) * pull.view_as(slices), guess_error

    @torch.no_grad()
    def first_guess_residual(self, image: torch.Tensor, latent: torch.Tensor, coarse: np.ndarray,
                             flat: np.ndarray) -> torch.Tensor:
        """(B, 768, h, w) pixel residual x - x_hat of the first guess (each fine slice's nearest
        code, decoded with the ``coarse`` indices) per 16 x 16 block (``pixel_unshuffle`` order),
        zero in the blocks ``flat`` paints. Arguments as for :meth:`fine_targets`."""
        quantizer = self.fine_quantizer
        guess = quantizer.assemble(quantizer.lookup(quantizer.assign(quantizer.project(latent), 0.0)))
        coarse_codes = self.coarse_quantizer.dequantize(torch.from_numpy(coarse))
        decoded = self.reconstruct(*(codes.to(latent).contiguous(memory_format=CODING_MEMORY_FORMAT)
                                     for codes in (guess, coarse_codes)))
        painted = torch.from_numpy(flat_block_colours(flat)[0])[:, None]  # (B, 1, h, w)
        return F.pixel_unshuffle(image.to(latent) - decoded, FINE_STRIDE).masked_fill(painted, 0.0)

    def choose_refinement(self, weights: np.ndarray | None, fine_slices: np.ndarray, fine: np.ndarray,
                          fine_lambda: float) -> tuple[np.ndarray, StepTables]:
        """The (B, h, w) weights the fine codes were chosen with (:meth:`choose_levels`, or None),
        the (B, M, D, h, w) float64 fine slices and their (B, M, h, w) fine indices -> (B, M, h, w)
        refinement indices, chosen for the residual the fine codes left under the refinement's
        tables in coding order, at ``fine_lambda`` (latent units, :meth:`rate_lambdas`) with the
        same weights; and the tables of their coding steps."""
        residual = fine_slices - self.fine_quantizer.lookup(torch.from_numpy(fine)).double().numpy()
        return choose_indices(residual, self.refinement.codebooks.double().numpy(), self.refinement.entropy,
                              fine_lambda, side={FINE: fine}, weights=weights)

    @torch.no_grad()
    def decompress(self, levels: CompressedLevels) -> torch.Tensor:
        """The levels of :meth:`compress` -> (B, 3, H, W) image clamped to [0, 1], in the network's
        dtype: the network's reconstruction, with the flat blocks painted in their colours."""
        indices = {level.name: level.indices for level in levels}
        coarse = self.coarse_quantizer.dequantize(torch.from_numpy(indices[COARSE]))
        slices = self.fine_quantizer.lookup(torch.from_numpy(indices[FINE]))
        if REFINE in indices:
            slices = slices + self.refinement.lookup(torch.from_numpy(indices[REFINE]))
        coarse, fine = (codes.contiguous(memory_format=CODING_MEMORY_FORMAT)
                        for codes in (coarse, self.fine_quantizer.assemble(slices)))
        image = self.reconstruct(fine, coarse).clamp(0, 1)
        flat, colours = flat_block_colours(indices[FLAT])

        def to_pixels(blocks: np.ndarray) -> torch.Tensor:  # (B, C, h, w) -> (B, C, 16h, 16w)
            return torch.from_numpy(blocks).repeat_interleave(FINE_STRIDE, 2).repeat_interleave(FINE_STRIDE, 3)

        return torch.where(to_pixels(flat[:, None]), to_pixels(colours).to(image.dtype) / 255, image)

    @staticmethod
    def _codewords(quantizer: DepthwiseQuantizer) -> np.ndarray:
        return quantizer.codebooks.detach().double().numpy()
