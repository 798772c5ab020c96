"""Widening a trained hdq family: more fine latent channels and fine codebooks
(``--arch hdq-family --start-levels FOLDER`` with a larger ``--latent-channels`` and
``--num-codebooks`` than the levels in FOLDER).

Why: the fine latent's size, not the codebooks, sets how good the highest levels can get.
Measured on Kodak with hdq-q5 (192 latent channels): 36.2 dB with the fine latent unquantized
against 32.1 dB with its nearest codes; refitting its codebooks with 4x as many codes bought
0.9 dB for 22 % more bits and then saturated (33.0 dB at 1.44 bpp on the first 8 images), while
192 block-PCA axes alone reach 37.1 dB and 288 reach 44.3 dB. Training a wider network from
scratch costs days on a CPU; widening keeps everything the family has learnt.

The widened network starts as the narrow one plus a linear correction. Each new latent channel
is a linear function of its 16 x 16 block (a new row of the analysis' linear path; the nonlinear
branches start with zero weights for it) and each one reaches the image through a new column of
the synthesis' linear path: together they are the rank-k linear least-squares predictor of the
narrow network's own residual (image minus its reconstruction, fine latent unquantized) from the
block (reduced-rank regression: the principal axes U of the fitted residual, the new channels
U^T C (x - mean) and the new columns U, with C the full least-squares coefficients). They are
scaled so that a unit of latent error costs the measured synthesis gain in pixel error, as the
old channels do, which keeps the one rate-distortion lambda of the fine level right for both.
Each new channel is the D-dim slice of a new codebook (identity projection), and each level's new
codebooks are fitted by its entropy-constrained Lloyd iterations at its own lambda.
"""

from dataclasses import replace

import torch
from torch import nn

from dqcodec.models.hdq_codec import FINE_STRIDE
from dqcodec.models.lloyd import sample_centres
from dqcodec.models.quantizers import slice_vectors

WIDTH_FIELDS = ("latent_channels", "num_codebooks")
RIDGE = 1e-6  # relative ridge of the blocks' covariance: keeps the least-squares solve well posed


def narrow_config(config, levels_config):
    """``config`` (an hdq family's) with the widths of ``levels_config`` (an hdq level's)."""
    return replace(config, **{name: getattr(levels_config, name) for name in WIDTH_FIELDS})


def check_widening(narrow, wide) -> None:
    """Raise ValueError (one line) unless ``wide`` adds as many latent channels as its new codebooks quantize."""
    added_channels = wide.latent_channels - narrow.latent_channels
    added_codebooks = wide.num_codebooks - narrow.num_codebooks
    if added_channels < 0 or added_codebooks < 0 or added_channels != added_codebooks * wide.code_dim:
        raise ValueError(
            f"widening from {narrow.latent_channels} latent channels and {narrow.num_codebooks} codebooks to "
            f"{wide.latent_channels} and {wide.num_codebooks}: each added codebook quantizes {wide.code_dim} added "
            f"latent channels (D), so the channels must grow by D times the codebooks"
        )


def _embed(old: torch.Tensor, new: torch.Tensor) -> None:
    """Copy ``old`` into the leading corner of ``new`` (every other entry zero)."""
    new.zero_()
    new[tuple(slice(0, size) for size in old.shape)] = old


@torch.no_grad()
def _residual_axes(narrow, crops: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced-rank regression of the narrow body's residual on the 16 x 16 blocks of ``crops``
    (B, 3, H, W): (mean (768,), analysis rows (count, 768), synthesis columns (768, count)),
    scaled to the body's fine synthesis gain; float64."""
    body = narrow.body.eval()
    quantizer, coarse = body.fine_quantizer, body.coarse_quantizer
    blocks, residuals = [], []
    for batch in crops.split(16):
        latent = body.analysis(batch)
        coarse_codes = coarse.dequantize(coarse.quantize(body.coarse_analysis(latent)))
        decoded = body.reconstruct(quantizer.assemble(quantizer.project(latent)), coarse_codes)
        for image, out in ((batch, blocks), (batch - decoded, residuals)):
            out.append(nn.functional.pixel_unshuffle(image, FINE_STRIDE).permute(0, 2, 3, 1).reshape(-1, 3 * FINE_STRIDE**2))
    x, e = torch.cat(blocks).double(), torch.cat(residuals).double()
    mean = x.mean(0)
    x = x - mean
    covariance = x.T @ x / len(x)
    covariance += RIDGE * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
    coefficients = torch.linalg.solve(covariance, x.T @ (e - e.mean(0)) / len(x))  # block -> residual
    fitted = x @ coefficients
    _, axes = torch.linalg.eigh(fitted.T @ fitted / len(x))
    axes = axes[:, -count:].flip(1)  # (768, count), largest fitted residual variance first
    scale = body.synthesis_gains[0].double().sqrt()
    return mean, (coefficients @ axes).T / scale, axes * scale


@torch.no_grad()
def widen_family(narrow: nn.Module, wide: nn.Module, crops: torch.Tensor, fit_codebooks, generator: torch.Generator) -> str:
    """Load ``narrow`` (an HDQFamily) into the wider ``wide`` (same levels; ``check_widening``)
    and start the added channels and codebooks from ``crops`` (B, 3, H, W) training crops;
    ``fit_codebooks(points (M', N, D), start (M', K, D), rate_lambda)`` fits one level's new
    codebooks (a :class:`~dqcodec.models.lloyd.LloydResult`). Returns a line for the log."""
    check_widening(narrow.config, wide.config)
    old_channels, new_channels = narrow.config.latent_channels, wide.config.latent_channels
    old_slices = narrow.config.num_codebooks * narrow.config.code_dim
    added = new_channels - old_channels
    state = wide.state_dict()
    for key, value in narrow.state_dict().items():
        if not key.startswith("body.fine_entropy."):
            _embed(value, state[key])
    # The synthesis' first convolution reads [fine slices, coarse features]: the coarse part moves up.
    first = narrow.body.synthesis.layers[0].weight
    state["body.synthesis.layers.0.weight"][:, old_slices + added:] = first[:, old_slices:]
    state["body.synthesis.layers.0.weight"][:, old_slices:old_slices + added] = 0
    mean, rows, columns = _residual_axes(narrow, crops, added)
    analysis = state["body.analysis.linear.weight"]
    analysis[old_channels:, :, 0, 0] = rows.float()
    state["body.analysis.linear.bias"][old_channels:] = -(rows @ mean).float()
    state["body.fine_quantizer.projection.weight"][old_slices:, old_channels:, 0, 0] = torch.eye(added)
    state["body.synthesis.linear.weight"][:, old_slices:, 0, 0] = columns.float()
    wide.load_state_dict(state)

    wide.eval()
    latent = torch.cat([wide.body.analysis(batch) for batch in crops.split(16)])
    points = slice_vectors(wide.body.fine_quantizer.project(latent)[:, narrow.config.num_codebooks:])
    used = []
    for index, level in enumerate(wide.level_configs):
        quantizer = wide.fine_quantizer(index)
        fitted = fit_codebooks(points, sample_centres(points, level.codebook_size, generator),
                               wide.body.rate_lambdas(level.rate_lambda)[0])
        # Unused codes keep a tiny count, as in a fresh start: the rate term keeps them out of use.
        centres, counts = fitted.centres, fitted.counts.clamp_min(1e-3)
        codebooks, ema_counts = quantizer.codebooks.clone(), quantizer.ema_counts.clone()
        codebooks[narrow.config.num_codebooks:], ema_counts[narrow.config.num_codebooks:] = centres, counts
        # The old codes keep their EMA counts as they are: rescale the new ones to the same total.
        ema_counts[narrow.config.num_codebooks:] *= ema_counts[0].sum() / counts.sum(1, keepdim=True).clamp_min(1e-12)
        quantizer.load_codebooks(codebooks, ema_counts)
        used.append((fitted.counts > 0).sum(1).float().mean().item())
    return (f"widened from {old_channels} to {new_channels} fine latent channels ({narrow.config.num_codebooks} to "
            f"{wide.config.num_codebooks} codebooks): new channels by reduced-rank regression of the residual on "
            f"{len(crops)} crops, new codes in use per level {', '.join(f'{u:.0f}' for u in used)}")
