"""Rate-distortion figures: PSNR-RGB and MS-SSIM (dB) against bpp, as PNG and SVG.

dqcodec's curves are drawn bold, the classical codecs measured here in colour, the published
anchors dashed, so a reader sees at a glance which numbers were measured in this repository.
"""

from pathlib import Path

import numpy as np

from dqcodec.eval.results import RDCurve

# Published curves drawn by default: the classical codecs and the learned models people compare with.
DEFAULT_ANCHORS = (
    "bpg_444_x265_ycbcr",
    "vtm",
    "compressai-bmshj2018-hyperprior_mse_cpu",
    "compressai-cheng2020-anchor_mse_cpu",
)

_AXIS_LABELS = {"psnr": "PSNR-RGB (dB)", "ms-ssim": "MS-SSIM-RGB (dB, −10 log₁₀(1 − MS-SSIM))"}
_STYLE = {
    "dqcodec": {"linewidth": 2.5, "marker": "o", "markersize": 5, "linestyle": "-"},
    "classical": {"linewidth": 1.5, "marker": ".", "markersize": 6, "linestyle": "-"},
    "anchor": {"linewidth": 1.2, "markersize": 5, "alpha": 0.9},
}
# Published curves are drawn in greys, told apart by dash pattern and marker.
_ANCHOR_DASHES = ("--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))
_ANCHOR_MARKERS = ("x", "+", "^", "v", "s", "d")
_LEGEND_SUFFIX = {"dqcodec": "", "classical": " — measured", "anchor": " — published"}
_COLOURS = {
    "dqcodec": ("#000000", "#e6194b", "#3cb44b", "#4363d8"),
    "classical": ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728"),
    "anchor": ("#222222", "#555555", "#888888"),
}
_LEGEND_ORDER = ("dqcodec", "classical", "anchor")


def plot_rd(curves: list[RDCurve], metric: str, dataset: str, out_stem: Path, max_bpp: float = 2.0) -> list[Path]:
    """Draw one RD figure and write it as ``<out_stem>.png`` and ``<out_stem>.svg``.

    Args:
        curves: the curves to draw, in legend order within each kind.
        metric: ``"psnr"`` or ``"ms-ssim"`` (drawn in dB).
        dataset: the data set's name, for the title (e.g. ``"Kodak"``).
        out_stem: output path without suffix; its folder is created.
        max_bpp: right end of the bpp axis; the quality axis fits the points left of it.
    Returns:
        The two paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6.5), constrained_layout=True)
    visible_values = []
    lines = {kind: [] for kind in _LEGEND_ORDER}
    # Anchors first so the measured curves are drawn on top of them.
    for kind in reversed(_LEGEND_ORDER):
        for index, curve in enumerate(c for c in curves if c.kind == kind):
            rates = np.asarray(curve.bpp)
            values = np.asarray(curve.metric(metric))
            order = np.argsort(rates)
            style = dict(_STYLE[kind], color=_COLOURS[kind][index % len(_COLOURS[kind])])
            if kind == "anchor":
                style.update(linestyle=_ANCHOR_DASHES[index % len(_ANCHOR_DASHES)],
                             marker=_ANCHOR_MARKERS[index % len(_ANCHOR_MARKERS)])
            (line,) = axes.plot(rates[order], values[order], label=curve.name + _LEGEND_SUFFIX[kind], **style)
            lines[kind].append(line)
            visible_values.extend(values[(rates <= max_bpp) & np.isfinite(values)])
    axes.set_xlim(0, max_bpp)
    if visible_values:
        low, high = min(visible_values), max(visible_values)
        margin = 0.03 * (high - low) + 0.1
        axes.set_ylim(low - margin, high + margin)
    axes.set_xlabel("bits per pixel (bpp), from the real file sizes")
    axes.set_ylabel(_AXIS_LABELS[metric])
    axes.set_title(f"{dataset}: {'PSNR' if metric == 'psnr' else 'MS-SSIM'} vs rate (mean over images)")
    axes.grid(True, alpha=0.3)
    axes.legend(handles=[line for kind in _LEGEND_ORDER for line in lines[kind]], loc="lower right",
                fontsize="small", framealpha=0.9)

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    written = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
    figure.savefig(written[0], dpi=150)
    figure.savefig(written[1])
    plt.close(figure)
    return written
