"""What a study writes: mean ± std over seeds, ``summary.json`` / ``summary.md``, PNG plots."""

import json
from pathlib import Path

import numpy as np


def mean_std(values: list[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of the per-seed (or per-run) values of one measurement.

    std is the sample standard deviation (ddof = 1: the square root of the unbiased variance),
    the spread a reader expects beside a mean over a few seeds; 0 for a single value.
    """
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported only when a study plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frame_panel(axis, xlabel: str, ylabel: str, title: str, legend_size: float = 8, **legend_options) -> None:
    """Axis labels, title, a light grid and the legend: the frame every study panel shares."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=legend_size, **legend_options)


def save_figure(figure, path: Path, dpi: int = 110) -> None:
    """Lay out ``figure``, write it to ``path`` (PNG) and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)


def write_summary(out: Path, summary: dict, markdown: str) -> None:
    """Write ``out/summary.json`` and ``out/summary.md`` (creating ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown.rstrip() + "\n")
