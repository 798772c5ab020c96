"""``dqcodec study static-prior``: the DVQ paper's static-prior ("blobs") study.

Fostiropoulos, "Depthwise Discrete Representation Learning" (2020) fits quantizers directly to
a fixed distribution, with no encoder or decoder network: N_G Gaussian blobs (the latent
factors), means uniform in [-1, 1]^D, every coordinate with std sigma = 0.01
(:func:`dqcodec.eval.studies.static_prior_fit.make_blobs`). Two parts, every number a mean ±
sample std over seeds (a seed draws the blob means, the points and the codebook
initialisation):

(a) VQ loss against D for K in {10, 20, ..., 100}: :class:`VectorQuantizer` with its
    projection frozen to the identity, so it quantizes the points themselves, next to a
    random baseline — an untrained codebook of K points drawn uniform in [-1, 1]^D, the law of
    the blob means, with the same nearest-code assignment.
(b) DVQ against VQ at equal K and against VQ with a larger codebook K+ (K << K+ < N_G):
    DVQ is :class:`DepthwiseQuantizer` with M = L codebooks, each on its own learned D/L-dim
    projection of the point, followed by a learned linear decoder back to R^D (the
    projections start as the identity split). Beside it, the same L codebooks on fixed
    channel slices (:class:`ProductQuantizer`), which separates what the split gives from
    what the learned projections add. VQ gets no decoder: for one codebook, the
    data-space k-means optimum that its EMA codebook converges to is already the best any
    affine decoder of the codewords could reach. Two more baselines, at the same L and K:
    coupled DQ, the DQ paper's VQ baseline (:class:`CoupledDepthwiseQuantizer`: the L
    codebooks all quantize one shared learned D/L-dim projection, with the same kind of
    decoder as DVQ), and SVQ, the DVQ paper's spatial split (:class:`SpatialQuantizer`: the
    point laid out as L positions of D/L channels, every position quantized by one shared
    codebook, as VQ-VAE quantizes the positions of a feature map).

The loss ("VQ loss") is the hard quantization MSE per coordinate in data space,
mean ||x - x_hat||^2 / D over all points, measured after fitting. Every fit is full-batch
(:func:`dqcodec.eval.studies.static_prior_fit.fit_quantizer`): EMA codebooks with decay 0.9 (a
static prior has no moving encoder to follow), codebooks initialised on K random points, and
Adam on the projections and decoders of DVQ and coupled DQ. Converged means the lowest MSE so
far fell by less than 1e-4 (relative) over the last 10 passes (DVQ and coupled DQ, whose Adam
steps are noisy: 1e-3 over 100 passes), within at most 1000 passes; passes and the converged
fraction are recorded.

Writes ``summary.json``, ``summary.md``, ``vq_loss_vs_dim.png``, ``dvq_vs_vq.png`` and
``convergence.png`` (the MSE against passes of seed 0's fits in part (b)).
"""

import argparse
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.studies.report import frame_panel, mean_std, pyplot, save_figure, write_summary
from dqcodec.eval.studies.static_prior_fit import (
    FitConfig,
    FitResult,
    fit_quantizer,
    init_codebooks_from_data,
    make_blobs,
    reconstruction_mse,
    set_identity_projection,
)
from dqcodec.models.quantizers import (
    CoupledDepthwiseQuantizer,
    DepthwiseQuantizer,
    ProductQuantizer,
    SpatialQuantizer,
    VectorQuantizer,
)

PAPER = "Fostiropoulos, Depthwise Discrete Representation Learning, arXiv:2004.05462 (2020)"
METHODS = ("vq", "vq+", "dvq", "pq", "coupled", "svq")
STYLES = {  # method -> (colour, marker) in the plots
    "vq": ("#1f77b4", "o"), "vq+": ("#2ca02c", "s"), "dvq": ("#d62728", "D"), "pq": ("#ff7f0e", "^"),
    "coupled": ("#9467bd", "v"), "svq": ("#8c564b", "P"),
}
LOSS_LABEL = "VQ loss (MSE per coordinate)"


@dataclass
class StudyConfig:
    """The study's knobs; every one is written to summary.json."""

    seeds: int = 10
    factor_counts: tuple[int, ...] = (70, 420)  # N_G
    dims: tuple[int, ...] = (2, 4, 8, 16, 32, 64)  # D in part (a)
    codebook_sizes: tuple[int, ...] = tuple(range(10, 101, 10))  # K in part (a)
    compare_dims: tuple[int, ...] = (8, 16, 32, 64)  # D in part (b)
    num_codebooks: int = 4  # L, the codebooks of DVQ, PQ and coupled DQ, and SVQ's positions
    small_size: int = 10  # K_VQ = K_DVQ
    large_size: int = 60  # K_VQ+
    points_per_factor: int = 5
    sigma: float = 0.01
    decay: float = 0.9
    # EMA-only fits (VQ, PQ, SVQ) descend smoothly: a short window suffices. The Adam steps of
    # DVQ and coupled DQ are noisy and their projections keep improving slowly: a longer window.
    fit: FitConfig = field(default_factory=lambda: FitConfig(max_passes=1000, check_every=10, patience=10, tolerance=1e-4))
    gradient_fit: FitConfig = field(
        default_factory=lambda: FitConfig(max_passes=1000, check_every=10, patience=100, tolerance=1e-3, learning_rate=1e-2)
    )
    threads: int = 1


# A few seconds' worth of the same study, for tests and a first look.
QUICK = StudyConfig(
    seeds=2, factor_counts=(70,), dims=(4, 16), codebook_sizes=(10, 30, 60), compare_dims=(8, 16)
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = StudyConfig()
    parser.add_argument(
        "--seeds", type=int, default=None,
        help=f"seeds 0..N-1; a seed draws the data and the initial codebooks (default: {defaults.seeds}, --quick: {QUICK.seeds})",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"a small grid: N_G {QUICK.factor_counts}, D {QUICK.dims} in (a) and {QUICK.compare_dims} in (b), K {QUICK.codebook_sizes}",
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads (default: %(default)s)")


def _config(args: argparse.Namespace) -> StudyConfig:
    """Check the command-line values (DQCodecError, one line, for a bad one) and build the config."""
    base = QUICK if args.quick else StudyConfig()
    seeds = base.seeds if args.seeds is None else args.seeds
    for name, value in (("--seeds", seeds), ("--threads", args.threads)):
        if value < 1:
            raise DQCodecError(f"{name} must be at least 1, got {value}")
    return replace(base, seeds=seeds, threads=args.threads)


def spatial_layout(points: torch.Tensor, positions: int) -> torch.Tensor:
    """(1, D, N, 1) points -> (1, D/L, N, L): point n's position l holds its coordinates
    [l*D/L, (l+1)*D/L).

    A permutation of the scalars, so the MSE per coordinate is the same in either layout.
    """
    _, dim, count, _ = points.shape
    return points.view(positions, dim // positions, count).permute(1, 2, 0)[None]


def _identity_decoder(dim: int) -> nn.Conv2d:
    """A learned linear decoder R^D -> R^D (a 1x1 convolution) that starts as the identity."""
    decoder = nn.Conv2d(dim, dim, kernel_size=1)
    with torch.no_grad():
        decoder.weight.copy_(torch.eye(dim)[:, :, None, None])
        decoder.bias.zero_()
    return decoder


def _fit(method: str, points: torch.Tensor, size: int, config: StudyConfig, seed: int) -> FitResult:
    """Fit one quantizer of ``method`` with ``size`` codes per codebook to points (1, D, N, 1)."""
    torch.manual_seed(seed)  # dead-code re-initialisation draws from the global generator
    dim, parts = points.shape[1], config.num_codebooks
    decoder = None
    if method in ("vq", "vq+"):
        quantizer = VectorQuantizer(dim, size, dim, decay=config.decay)
        set_identity_projection(quantizer, trainable=False)
    elif method == "pq":
        quantizer = ProductQuantizer(dim, parts, size, decay=config.decay)
    elif method == "svq":
        quantizer = SpatialQuantizer(dim // parts, 1, size, patch_size=1, decay=config.decay)
        points = spatial_layout(points, parts)
    else:
        if method == "dvq":
            quantizer = DepthwiseQuantizer(dim, parts, size, dim // parts, decay=config.decay)
        else:
            quantizer = CoupledDepthwiseQuantizer(dim, parts, size, dim // parts, decay=config.decay)
        set_identity_projection(quantizer, trainable=True)
        decoder = _identity_decoder(dim)
    init_codebooks_from_data(quantizer, points, torch.Generator().manual_seed(seed))
    return fit_quantizer(quantizer, points, config.fit if decoder is None else config.gradient_fit, decoder)


def random_codebook_mse(points: torch.Tensor, size: int, seed: int) -> float:
    """MSE per coordinate of an untrained VQ whose K codes are uniform in [-1, 1]^D.

    points: (1, D, N, 1). The codes follow the law of the blob means, so this is what a
    codebook of guessed latent factors gives without looking at the data.
    """
    dim = points.shape[1]
    quantizer = VectorQuantizer(dim, size, dim)
    set_identity_projection(quantizer, trainable=False)
    generator = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        quantizer.codebooks.copy_(torch.rand(1, size, dim, generator=generator) * 2 - 1)
    return reconstruction_mse(quantizer.eval(), points)


def _method_size(method: str, config: StudyConfig) -> int:
    return config.large_size if method == "vq+" else config.small_size


def _method_label(method: str, config: StudyConfig) -> str:
    return {
        "vq": f"VQ (K={config.small_size})",
        "vq+": f"VQ+ (K={config.large_size})",
        "dvq": f"DVQ (L={config.num_codebooks}, K={config.small_size})",
        "pq": f"PQ (L={config.num_codebooks}, K={config.small_size}, fixed slices)",
        "coupled": f"coupled DQ (L={config.num_codebooks} on one projection, K={config.small_size})",
        "svq": f"SVQ ({config.num_codebooks} positions, one K={config.small_size} codebook)",
    }[method]


def _check(config: StudyConfig) -> None:
    """Refuse a grid the study cannot run (one-line DQCodecError)."""
    for dim in config.compare_dims:
        if dim % config.num_codebooks:
            raise DQCodecError(f"D = {dim} in part (b) is not divisible by L = {config.num_codebooks}")
    if not config.small_size < config.large_size < min(config.factor_counts):
        raise DQCodecError(f"need K ({config.small_size}) < K+ ({config.large_size}) < every N_G {config.factor_counts}")
    smallest = min(config.factor_counts) * config.points_per_factor
    if max(config.codebook_sizes + (config.large_size,)) > smallest:
        raise DQCodecError(f"a codebook larger than the {smallest} points of the smallest data set")


def _jobs(config: StudyConfig) -> list[tuple[int, int, str, int, int]]:
    """Every fit, once: (N_G, D, method, K, seed). Part (b)'s VQ fits reuse part (a)'s."""
    jobs = set()
    for factors in config.factor_counts:
        for seed in range(config.seeds):
            jobs.update((factors, dim, "vq", size, seed) for dim in config.dims for size in config.codebook_sizes)
            for dim in config.compare_dims:
                jobs.update((factors, dim, "vq", _method_size(m, config), seed) for m in ("vq", "vq+"))
                jobs.update((factors, dim, m, config.small_size, seed) for m in ("dvq", "pq", "coupled", "svq"))
    # Largest problems first, so that the progress bar's estimate is an upper bound early on.
    return sorted(jobs, key=lambda job: (-job[0], -job[1], job[2], job[3], job[4]))


def _claims(vq_table: list[dict], compare_table: list[dict], config: StudyConfig) -> list[dict]:
    """The paper's claims, each checked against the measured means."""
    claims = []
    for factors in config.factor_counts:
        rows = [r for r in vq_table if r["factors"] == factors]
        by_size = {k: [r for r in rows if r["codebook_size"] == k] for k in config.codebook_sizes}
        rising = [k for k, curve in by_size.items() if all(a["mse"]["mean"] < b["mse"]["mean"] for a, b in zip(curve, curve[1:]))]
        claims.append({
            "claim": f"(a) N_G={factors}: VQ loss grows with D at every K",
            "held": len(rising) == len(by_size),
            "evidence": f"strictly rising in D for {len(rising)}/{len(by_size)} K; "
            + ", ".join(f"K={k}: {c[0]['mse']['mean']:.4f} (D={c[0]['dim']}) -> {c[-1]['mse']['mean']:.4f} (D={c[-1]['dim']})"
                        for k, c in by_size.items() if k in (min(by_size), max(by_size))),
        })
        below = [r for r in rows if r["mse"]["mean"] < r["random"]["mean"]]
        ratios = {r["dim"]: r["mse"]["mean"] / r["random"]["mean"] for r in by_size[config.small_size]}
        claims.append({
            "claim": f"(a) N_G={factors}: a trained codebook is below the random baseline",
            "held": len(below) == len(rows),
            "evidence": f"below at {len(below)}/{len(rows)} (D, K); trained/random at K={config.small_size}: "
            + ", ".join(f"D={d}: {ratio:.2f}" for d, ratio in ratios.items()),
        })
        compare = {(r["dim"], r["method"]): r["mse"]["mean"] for r in compare_table if r["factors"] == factors}
        for rival in ("vq", "vq+", "coupled", "svq"):
            wins = [d for d in config.compare_dims if compare[(d, "dvq")] < compare[(d, rival)]]
            claims.append({
                "claim": f"(b) N_G={factors}: DVQ below {_method_label(rival, config)}",
                "held": len(wins) == len(config.compare_dims),
                "evidence": f"below at D in {wins} of {list(config.compare_dims)}; "
                + ", ".join(f"D={d}: {compare[(d, 'dvq')]:.4f} vs {compare[(d, rival)]:.4f}" for d in config.compare_dims),
            })
    return claims


def _cell(stats: dict) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _markdown(config: StudyConfig, vq_table, compare_table, claims, convergence, wall_seconds) -> str:
    lines = [
        "# Static-prior study (DVQ paper, Gaussian blobs)",
        "",
        f"{PAPER}. Data: N_G blobs, means uniform in [-1, 1]^D, sigma = {config.sigma}, "
        f"{config.points_per_factor} points per blob. Loss = hard quantization MSE per coordinate in data space. "
        f"Mean ± sample std over {config.seeds} seeds; {config.threads} torch thread(s), {wall_seconds:.0f} s wall.",
        f"Fits: full-batch EMA codebooks (decay {config.decay}), codes initialised on random points; the projections and "
        f"decoders of DVQ and coupled DQ by Adam (lr {config.gradient_fit.learning_rate:g}). Converged: {convergence['rule']}. "
        f"{convergence['converged']}/{convergence['fits']} fits converged; passes median {convergence['passes_median']:.0f}, "
        f"max {convergence['passes_max']}.",
        "",
        "## (a) VQ loss against D — trained / random baseline",
        "",
        "Random baseline: an untrained codebook of K points uniform in [-1, 1]^D. Cells: trained mean ± std / random mean.",
    ]
    for factors in config.factor_counts:
        lines += ["", f"N_G = {factors}", "", "| K | " + " | ".join(f"D={d}" for d in config.dims) + " |",
                  "|---" * (len(config.dims) + 1) + "|"]
        for size in config.codebook_sizes:
            cells = {r["dim"]: r for r in vq_table if r["factors"] == factors and r["codebook_size"] == size}
            lines.append(f"| {size} | " + " | ".join(
                f"{_cell(cells[d]['mse'])} / {cells[d]['random']['mean']:.3f}" for d in config.dims) + " |")
    lines += [
        "",
        f"## (b) DVQ vs VQ, coupled DQ and SVQ at equal K, and vs VQ+ (K = {config.small_size} << K+ = "
        f"{config.large_size} < N_G)",
        "",
        "DVQ: DepthwiseQuantizer, L learned projections to D/L dims + learned linear decoder. "
        "PQ: the same L codebooks on fixed channel slices (ProductQuantizer). "
        "Coupled DQ (the DQ paper's VQ baseline): the L codebooks all on one learned D/L-dim projection "
        "(CoupledDepthwiseQuantizer) + learned linear decoder. "
        "SVQ (the DVQ paper's spatial split): the point as L positions of D/L channels, one shared codebook "
        "(SpatialQuantizer, 1x1 patches). All but VQ+ send L indices of log2 K bits per point.",
        "",
        "| N_G | D | " + " | ".join(_method_label(m, config) for m in METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for factors in config.factor_counts:
        for dim in config.compare_dims:
            cells = {r["method"]: r for r in compare_table if r["factors"] == factors and r["dim"] == dim}
            lines.append(f"| {factors} | {dim} | " + " | ".join(_cell(cells[m]["mse"]) for m in METHODS) + " |")
    lines += ["", "## Claims", "", "| claim | held here | evidence |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['held'] else 'no'} | {c['evidence']} |" for c in claims]
    return "\n".join(lines)


def _dimension_ticks(axis, dims: tuple[int, ...]) -> None:
    """A log2 x axis with a tick at each D."""
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(dims), [str(d) for d in dims])


def _plot_vq_loss(vq_table: list[dict], config: StudyConfig, path: Path) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(1, len(config.factor_counts), figsize=(6.5 * len(config.factor_counts), 4.8), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(config.codebook_sizes)))
    for axis, factors in zip(axes[0], config.factor_counts):
        for colour, size in zip(colours, config.codebook_sizes):
            rows = [r for r in vq_table if r["factors"] == factors and r["codebook_size"] == size]
            dims = [r["dim"] for r in rows]
            axis.errorbar(dims, [r["mse"]["mean"] for r in rows], yerr=[r["mse"]["std"] for r in rows],
                          color=colour, marker="o", markersize=3, capsize=2, label=f"K={size}")
            axis.plot(dims, [r["random"]["mean"] for r in rows], color=colour, linestyle=":", linewidth=1)
        axis.plot([], [], color="grey", linestyle=":", label="random codebook (dotted)")
        _dimension_ticks(axis, config.dims)
        frame_panel(axis, "dimension D", LOSS_LABEL, f"(a) trained VQ vs random codebook, N_G = {factors}", 7, ncol=2)
    save_figure(figure, path)


def _plot_compare(compare_table: list[dict], config: StudyConfig, path: Path) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(1, len(config.factor_counts), figsize=(6 * len(config.factor_counts), 4.5), squeeze=False)
    for axis, factors in zip(axes[0], config.factor_counts):
        for method in METHODS:
            rows = [r for r in compare_table if r["factors"] == factors and r["method"] == method]
            colour, marker = STYLES[method]
            axis.errorbar([r["dim"] for r in rows], [r["mse"]["mean"] for r in rows], yerr=[r["mse"]["std"] for r in rows],
                          color=colour, marker=marker, capsize=3, label=_method_label(method, config))
        _dimension_ticks(axis, config.compare_dims)
        frame_panel(axis, "dimension D", LOSS_LABEL, f"(b) DVQ vs VQ, coupled DQ and SVQ, N_G = {factors}")
    save_figure(figure, path)


def _plot_convergence(histories: dict, config: StudyConfig, path: Path) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(1, len(config.factor_counts), figsize=(6 * len(config.factor_counts), 4.2), squeeze=False)
    dim = max(config.compare_dims)
    for axis, factors in zip(axes[0], config.factor_counts):
        for method in METHODS:
            history = histories[(factors, dim, method)]
            passes = np.arange(1, len(history) + 1) * config.fit.check_every
            axis.plot(passes, history, color=STYLES[method][0], label=_method_label(method, config))
        frame_panel(axis, "full-batch passes", LOSS_LABEL, f"fits of seed 0 until converged, N_G = {factors}, D = {dim}")
    save_figure(figure, path)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    _check(config)
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    results: dict[tuple[int, int, str, int, int], FitResult] = {}
    data: dict[tuple[int, int, int], torch.Tensor] = {}
    for factors, dim, method, size, seed in tqdm(_jobs(config), desc="static-prior study", unit="fit"):
        if (factors, dim, seed) not in data:
            data[(factors, dim, seed)] = make_blobs(factors, dim, config.points_per_factor, config.sigma, seed)
        results[(factors, dim, method, size, seed)] = _fit(method, data[(factors, dim, seed)], size, config, seed)

    seeds = range(config.seeds)
    vq_table = []
    for factors in config.factor_counts:
        for size in config.codebook_sizes:
            for dim in config.dims:
                fits = [results[(factors, dim, "vq", size, s)] for s in seeds]
                vq_table.append({
                    "factors": factors, "dim": dim, "codebook_size": size,
                    "mse": mean_std([f.mse for f in fits]),
                    "random": mean_std([random_codebook_mse(data[(factors, dim, s)], size, s) for s in seeds]),
                    "passes": mean_std([f.passes for f in fits]),
                    "converged": sum(f.converged for f in fits),
                })
    compare_table = []
    histories = {}
    for factors in config.factor_counts:
        for dim in config.compare_dims:
            for method in METHODS:
                key_method = "vq" if method in ("vq", "vq+") else method
                fits = [results[(factors, dim, key_method, _method_size(method, config), s)] for s in seeds]
                histories[(factors, dim, method)] = fits[0].history
                compare_table.append({
                    "factors": factors, "dim": dim, "method": method, "label": _method_label(method, config),
                    "codebooks": 1 if method in ("vq", "vq+", "svq") else config.num_codebooks,
                    "codebook_size": _method_size(method, config),
                    "mse": mean_std([f.mse for f in fits]),
                    "passes": mean_std([f.passes for f in fits]),
                    "converged": sum(f.converged for f in fits),
                    "per_seed": [f.mse for f in fits],
                })
    passes = [f.passes for f in results.values()]
    convergence = {
        "rule": "the lowest hard MSE so far (measured every "
        f"{config.fit.check_every} passes) fell by less than {config.fit.tolerance:g} (relative) over the last "
        f"{config.fit.patience} passes (DVQ and coupled DQ: {config.gradient_fit.tolerance:g} over {config.gradient_fit.patience}); "
        f"at most {config.fit.max_passes} passes",
        "fits": len(results),
        "converged": sum(f.converged for f in results.values()),
        "passes_median": float(np.median(passes)),
        "passes_max": int(max(passes)),
    }
    claims = _claims(vq_table, compare_table, config)
    wall_seconds = time.perf_counter() - start
    summary = {
        "study": "static-prior",
        "paper": PAPER,
        "config": asdict(config),
        "loss": "hard quantization MSE per coordinate in data space, mean ||x - x_hat||^2 / D",
        "random_baseline": "untrained VectorQuantizer whose K codes are drawn uniform in [-1, 1]^D (the law of the blob means)",
        "methods": {m: _method_label(m, config) for m in METHODS},
        "std": "sample standard deviation over seeds (ddof = 1)",
        "convergence": convergence,
        "vq_loss_vs_dim": vq_table,
        "dvq_vs_vq": compare_table,
        "claims": claims,
        "wall_seconds": wall_seconds,
    }
    out = Path(args.out)
    write_summary(out, summary, _markdown(config, vq_table, compare_table, claims, convergence, wall_seconds))
    _plot_vq_loss(vq_table, config, out / "vq_loss_vs_dim.png")
    _plot_compare(compare_table, config, out / "dvq_vs_vq.png")
    _plot_convergence(histories, config, out / "convergence.png")
    print(f"static-prior study: wrote {out / 'summary.md'} ({wall_seconds:.0f} s)")
    return 0
