"""``dqcodec study channel-density``: DQ along channels vs DQ along space (DQ paper, Table 2).

Fostiropoulos & Boehm, "Implicit Feature Decoupling with Depthwise Quantization" (CVPR 2022),
argue that an image feature tensor should be decomposed for quantization along its channel
axis, the axis of weak statistical dependence, and support it (their Table 2) by quantizing
pretrained VGG features both ways, K = 32 and 1024 codes, 10 runs, and reporting the
quantization (L2) error and the entropy of the codes: channels beat pixels on both.

No pretrained VGG weights exist here, so the features are those of our own shipped codec's
encoder: ``load_checkpoint(WEIGHTS_DIR / "dq-q3")[0].analysis``, (B, 3, H, W) images in [0, 1] -> (B, 192, H/8, W/8),
on BSDS500 images (never Kodak, which is the codec's test set).

The reading reproduced (the paper's own text of Table 2 could not be retrieved here, so this
is stated rather than quoted): both arms quantize the same scalars with the same quantizer,
the same number M of codebooks, K codes each, vectors of the same dimension D and the same
number of vectors, and differ only in the axis the vectors are cut along. Split the C channels
into M = C / D groups of D channels and the feature map into p x p patches with p*p = D. For
group g and patch t the features form a D x D block X[g, t] (D channels x D pixels):

- channel arm (DQ along channels): the vectors are the columns of X[g, t], i.e. the D channels
  of group g at one pixel, quantized by codebook g (DQ's channel decomposition);
- pixel arm (DQ along space): the vectors are the rows of X[g, t], i.e. one channel of group g
  over the D pixels of a patch, quantized by codebook g: the same decomposition applied to
  the transposed block.

Both are :class:`~dqcodec.models.quantizers.ProductQuantizer` (M codebooks on M slices of D,
no projection): DQ with identity projections. DQ's learned 1x1 projections are left out
because, without a decoder to reconstruct through, shrinking them would lower the L2 error
for nothing. Codebooks are fitted by Lloyd iterations to convergence
(:mod:`dqcodec.eval.studies.density_fit`: the training MSE fell by less than ``--tolerance`` in one
iteration) on ``--vectors`` random rows of the fitting images' features; each run draws its
own rows and initial codes. Measured on held-out images: L2 = mean squared quantization
error per feature scalar; entropy = bits of the empirical code usage of each codebook,
averaged over the M codebooks (at most log2 K). "Channel beats pixel" is read as lower L2 and
higher entropy (more of the codebooks' capacity in use); the summary also says which arm
needs fewer bits.
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.studies.density_fit import fit_codebooks
from dqcodec.eval.studies.report import frame_panel, mean_std, pyplot, save_figure, write_summary
from dqcodec.models.quantizers import ProductQuantizer
from dqcodec.models.registry import WEIGHTS_DIR, load_checkpoint, model_names
from dqcodec.train.data import default_train_dir, image_files, load_rgb, to_tensor

ARMS = ("channel", "pixel")
PAPER = "Fostiropoulos & Boehm, Implicit Feature Decoupling with Depthwise Quantization, CVPR 2022, Table 2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="dq-q3", help="shipped model whose encoder gives the features (default: dq-q3)"
    )
    parser.add_argument(
        "--data", type=Path, default=None, metavar="DIR", help="image folder (default: BSDS500; never use Kodak)"
    )
    parser.add_argument("--images", type=int, default=40, help="images whose features fit the codebooks (default: 40)")
    parser.add_argument("--eval-images", type=int, default=10, help="held-out images to measure on (default: 10)")
    parser.add_argument("--vectors", type=int, default=24000, help="feature rows per codebook fit (default: 24000)")
    parser.add_argument(
        "--codebook-sizes", type=int, nargs="+", default=[32, 1024], metavar="K",
        help="codes per codebook (default: 32 1024)",
    )
    parser.add_argument("--patch", type=int, default=4, help="patch side p; vectors have D = p*p entries (default: 4)")
    parser.add_argument("--runs", type=int, default=10, help="fits per arm and K (default: 10)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="convergence: relative MSE drop per iteration (default: 1e-3)"
    )
    parser.add_argument("--max-iterations", type=int, default=50, help="cap on Lloyd iterations per fit (default: 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image split and of the runs (default: 0)")


def channel_slices(features: torch.Tensor, code_dim: int) -> torch.Tensor:
    """(B, C, H, W) features -> (B*H*W, C/D, D): at each pixel, the channels cut into M groups of D."""
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b * h * w, c // code_dim, code_dim)


def pixel_slices(features: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) features -> (B*H*W, C/D, D), D = patch**2: one channel over a patch's pixels.

    Row (b, i, j, c) holds, for every channel group g, channel g*D + c over the D pixels of
    patch (i, j) in raster order: the transpose, within each group and patch, of
    :func:`channel_slices`. H and W must be multiples of ``patch``.
    """
    b, c, h, w = features.shape
    d = patch * patch
    # pixel_unshuffle orders channels (channel, row, col): each channel's patch is contiguous.
    blocks = F.pixel_unshuffle(features, patch).view(b, c // d, d, d, h // patch, w // patch)  # (B, M, c, pixel, i, j)
    return blocks.permute(0, 4, 5, 2, 1, 3).reshape(b * h * w, c // d, d)


@torch.no_grad()
def encoder_slices(analysis: torch.nn.Module, files: list[Path], multiple: int, patch: int) -> dict[str, torch.Tensor]:
    """Each arm's (N, M, D) float32 slices of the encoder features of ``files`` (cropped to ``multiple``).

    The encoder runs in its own dtype (a model loaded for coding is float64).
    """
    dtype = next(analysis.parameters()).dtype
    per_arm: dict[str, list[torch.Tensor]] = {arm: [] for arm in ARMS}
    for path in tqdm(files, desc="encoder features", unit="img", leave=False):
        features = analysis(to_tensor(load_rgb(path, multiple)).to(dtype)).float()
        per_arm["channel"].append(channel_slices(features, patch * patch))
        per_arm["pixel"].append(pixel_slices(features, patch))
    return {arm: torch.cat(parts) for arm, parts in per_arm.items()}


@torch.no_grad()
def measure(quantizer: ProductQuantizer, slices: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """(L2, entropy) of quantizing (N, M, D) slices: MSE per scalar, and bits of the empirical
    code usage of each codebook averaged over the M codebooks."""
    m_count, k_count = quantizer.num_codebooks, quantizer.codebook_size
    usage = torch.zeros(m_count, k_count)
    squared_error = 0.0
    for part in slices.split(chunk):
        indices = quantizer.assign(part[..., None, None])  # (n, M, 1, 1)
        squared_error += float(((part - quantizer.lookup(indices)[..., 0, 0]) ** 2).sum())
        usage.scatter_add_(1, indices[..., 0, 0].T, torch.ones(m_count, len(part)))
    probabilities = usage / usage.sum(dim=1, keepdim=True)
    entropy = -(probabilities * torch.log2(probabilities.clamp_min(1e-30))).sum(dim=1)
    return squared_error / slices.numel(), float(entropy.mean())


def _check(args: argparse.Namespace, channels: int) -> None:
    """Raise DQCodecError (one line) for arguments the study cannot run with."""
    for name in ("images", "eval_images", "runs", "max_iterations", "threads", "patch"):
        if getattr(args, name) < 1:
            raise DQCodecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if channels % (args.patch * args.patch):
        raise DQCodecError(
            f"--patch {args.patch}: D = {args.patch**2} does not divide the encoder's {channels} channels"
        )
    if min(args.codebook_sizes) < 2:
        raise DQCodecError(f"--codebook-sizes must all be at least 2, got {args.codebook_sizes}")
    if args.vectors < max(args.codebook_sizes):
        raise DQCodecError(f"--vectors {args.vectors} is fewer than the {max(args.codebook_sizes)} codes to seed")
    if not args.tolerance > 0:
        raise DQCodecError(f"--tolerance must be positive, got {args.tolerance}")


def _split_files(args: argparse.Namespace, multiple: int) -> tuple[list[Path], list[Path]]:
    """Disjoint fitting and held-out image lists, drawn by a seeded shuffle."""
    folder = args.data if args.data is not None else default_train_dir()
    try:
        files = image_files(folder)
    except FileNotFoundError as error:
        raise DQCodecError(str(error)) from None
    if len(files) < args.images + args.eval_images:
        raise DQCodecError(f"{folder} holds {len(files)} images, fewer than --images + --eval-images")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(args.seed)).tolist()
    chosen = [files[i] for i in order[: args.images + args.eval_images]]
    for path in chosen:
        height, width = load_rgb(path).shape[:2]
        if min(height, width) < multiple:
            raise DQCodecError(f"{path} is {width}x{height}, smaller than one {multiple}x{multiple} patch of features")
    return chosen[: args.images], chosen[args.images :]


def _stats(values: list[float]) -> dict:
    """Mean ± sample std over the runs (:func:`~dqcodec.eval.studies.report.mean_std`) and the runs."""
    return {**mean_std(values), "runs": values}


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.model not in model_names():
        raise DQCodecError(f"unknown model {args.model!r}")
    model = load_checkpoint(WEIGHTS_DIR / args.model)[0].double()  # float64, as the coding copy it was read from
    analysis = model.analysis
    channels = analysis.linear.out_channels
    block = analysis.unshuffle.downscale_factor
    _check(args, channels)
    code_dim = args.patch * args.patch
    num_codebooks = channels // code_dim
    fit_files, eval_files = _split_files(args, block * args.patch)
    fit_pool = encoder_slices(analysis, fit_files, block * args.patch, args.patch)
    held_out = encoder_slices(analysis, eval_files, block * args.patch, args.patch)
    vectors = min(args.vectors, len(fit_pool["channel"]))
    if vectors < max(args.codebook_sizes):
        raise DQCodecError(f"the fitting images give {vectors} vectors, fewer than {max(args.codebook_sizes)} codes")

    results: dict[str, dict] = {}
    histories: dict[tuple[int, str], list[list[float]]] = {}
    jobs = [(k, run_index, arm) for k in args.codebook_sizes for run_index in range(args.runs) for arm in ARMS]
    progress = tqdm(jobs, desc="codebook fits", unit="fit")
    for k, run_index, arm in progress:
        progress.set_postfix(K=k, run=run_index, arm=arm)
        generator = torch.Generator().manual_seed(args.seed * 100_003 + run_index)  # distinct per (seed, run)
        rows = torch.randperm(len(fit_pool[arm]), generator=generator)[:vectors]
        quantizer = ProductQuantizer(channels, num_codebooks, k).eval()
        fit = fit_codebooks(quantizer, fit_pool[arm][rows], generator, args.tolerance, args.max_iterations)
        l2, entropy = measure(quantizer, held_out[arm])
        record = results.setdefault(str(k), {}).setdefault(
            arm, {"l2": [], "entropy_bits": [], "iterations": [], "converged": []}
        )
        record["l2"].append(l2)
        record["entropy_bits"].append(entropy)
        record["iterations"].append(fit.iterations)
        record["converged"].append(fit.converged)
        histories.setdefault((k, arm), []).append(fit.mse)

    summary = {
        "study": "channel-density",
        "paper": PAPER,
        "reading": (
            f"Both arms: ProductQuantizer (DQ with identity projections), M = {num_codebooks} codebooks of "
            f"K codes, D = {code_dim}, codebook g for channel group g. Channel arm: a vector is the {code_dim} "
            f"channels of a group at one pixel. Pixel arm: a vector is one channel of a group over a "
            f"{args.patch}x{args.patch} patch (the transposed {code_dim}x{code_dim} block). Same scalars, same number "
            "of vectors. Codebooks fitted by Lloyd iterations to convergence; L2 = MSE per feature scalar and "
            "entropy = mean over codebooks of the empirical code-usage entropy (bits), both on held-out images. "
            "'Channel beats pixel' = lower L2 and higher entropy."
        ),
        "std": "sample standard deviation over runs (ddof = 1)",
        "config": {
            "model": args.model,
            "encoder": f"{args.model} analysis: (B, 3, H, W) -> (B, {channels}, H/{block}, W/{block})",
            "data": str(args.data if args.data is not None else default_train_dir()),
            "fit_images": [path.name for path in fit_files],
            "eval_images": [path.name for path in eval_files],
            "fit_vectors_per_run": vectors,
            "vector_shapes": {arm: list(held_out[arm].shape) for arm in ARMS},
            "channels": channels,
            "num_codebooks": num_codebooks,
            "code_dim": code_dim,
            "patch": args.patch,
            "codebook_sizes": args.codebook_sizes,
            "runs": args.runs,
            "convergence": f"relative drop of the training MSE in one Lloyd iteration < {args.tolerance} "
            f"(cap {args.max_iterations} iterations)",
            "threads": args.threads,
            "seed": args.seed,
        },
        "results": {
            k: {
                arm: {
                    "l2": _stats(record["l2"]),
                    "entropy_bits": _stats(record["entropy_bits"]),
                    "max_entropy_bits": math.log2(int(k)),
                    "iterations": record["iterations"],
                    "converged_runs": sum(record["converged"]),
                }
                for arm, record in by_arm.items()
            }
            for k, by_arm in results.items()
        },
    }
    summary["claims"] = _claims(summary["results"])
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_summary(args.out, summary, _markdown(summary))
    _plot_results(summary["results"], args.model, args.out / "channel_vs_pixel.png")
    _plot_convergence(histories, args.out / "convergence.png")
    print(_markdown(summary))
    print(f"wrote {args.out / 'summary.json'}, summary.md and plots in {summary['wall_seconds']} s")
    return 0


def _claims(results: dict) -> dict:
    """Per K: does the channel arm have lower L2 and higher entropy than the pixel arm (means over runs)?"""
    claims = {}
    for k, by_arm in results.items():
        channel, pixel = by_arm["channel"], by_arm["pixel"]
        lower_l2 = channel["l2"]["mean"] < pixel["l2"]["mean"]
        higher_entropy = channel["entropy_bits"]["mean"] > pixel["entropy_bits"]["mean"]
        claims[k] = {
            "channel_lower_l2": lower_l2,
            "channel_higher_entropy": higher_entropy,
            "channel_beats_pixel_in_both": lower_l2 and higher_entropy,
            "fewer_bits_per_code": "channel" if not higher_entropy else "pixel",
            "l2_ratio_channel_over_pixel": channel["l2"]["mean"] / pixel["l2"]["mean"],
        }
    return claims


def _markdown(summary: dict) -> str:
    config = summary["config"]
    lines = [
        "# Channel vs pixel feature density (DQ paper, Table 2)",
        "",
        f"Features: {config['encoder']} on {len(config['fit_images'])} fitting / {len(config['eval_images'])} "
        f"held-out images of {config['data']}. M = {config['num_codebooks']} codebooks, D = {config['code_dim']}, "
        f"{config['fit_vectors_per_run']} fitting rows per run, {config['runs']} runs; convergence: "
        f"{config['convergence']}. L2 = held-out MSE per feature scalar; H = mean code-usage entropy per codebook.",
        "",
        "| K | arm | L2 (mean ± sample std) | H bits (mean ± sample std) | H max | Lloyd iterations | converged |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, by_arm in summary["results"].items():
        for arm, record in by_arm.items():
            l2, entropy = record["l2"], record["entropy_bits"]
            iterations = record["iterations"]
            lines.append(
                f"| {k} | {arm} | {l2['mean']:.5f} ± {l2['std']:.5f} | {entropy['mean']:.3f} ± {entropy['std']:.3f} "
                f"| {record['max_entropy_bits']:.0f} | {min(iterations)}–{max(iterations)} "
                f"| {record['converged_runs']}/{len(iterations)} |"
            )
    lines += ["", "Claim: DQ along channels beats DQ along space in both L2 (lower) and entropy (higher).", ""]
    for k, claim in summary["claims"].items():
        verdict = "holds" if claim["channel_beats_pixel_in_both"] else "does not hold"
        lines.append(
            f"- K = {k}: {verdict} (channel lower L2: {'yes' if claim['channel_lower_l2'] else 'no'}, "
            f"L2 ratio channel/pixel {claim['l2_ratio_channel_over_pixel']:.3f}; channel higher entropy: "
            f"{'yes' if claim['channel_higher_entropy'] else 'no'}; "
            f"fewer bits per code: {claim['fewer_bits_per_code']})"
        )
    lines += ["", f"Reading: {summary['reading']}", ""]
    lines.append(f"Wall time: {summary['wall_seconds']} s on {config['threads']} thread(s).")
    return "\n".join(lines)


def _plot_results(results: dict, model: str, path: Path) -> None:
    """Two panels, L2 and entropy, per K: a bar per arm (mean over runs) with the runs as dots."""
    plt = pyplot()

    sizes = list(results)
    colours = {"channel": "tab:blue", "pixel": "tab:orange"}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    names = {"channel": "DQ along channels", "pixel": "DQ along space (pixels)"}
    panels = ((axes[0], "l2", "held-out L2 (MSE per feature scalar)"), (axes[1], "entropy_bits", "code entropy (bits)"))
    for axis, metric, label in panels:
        for offset, arm in zip((-0.2, 0.2), ARMS):
            for position, k in enumerate(sizes):
                values = results[k][arm][metric]["runs"]
                axis.bar(
                    position + offset, np.mean(values), width=0.36, color=colours[arm], alpha=0.75,
                    label=names[arm] if position == 0 else None,
                )
                axis.scatter(np.full(len(values), position + offset), values, color="black", s=8, zorder=3)
        if metric == "entropy_bits":
            for position, k in enumerate(sizes):
                axis.hlines(math.log2(int(k)), position - 0.4, position + 0.4, colors="grey", linestyles="dashed",
                            label="log2 K" if position == 0 else None)
        axis.set_xticks(range(len(sizes)), [f"K = {k}" for k in sizes])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"DQ along channels vs along space on {model} encoder features (bars: mean; dots: runs)")
    save_figure(figure, path, dpi=120)


def _plot_convergence(histories: dict[tuple[int, str], list[list[float]]], path: Path) -> None:
    """Training MSE against Lloyd iteration, one line per run, one panel per K."""
    plt = pyplot()

    sizes = sorted({k for k, _ in histories})
    colours = {"channel": "tab:blue", "pixel": "tab:orange"}
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for axis, k in zip(axes[0], sizes):
        for arm in ARMS:
            for run_index, mse in enumerate(histories[(k, arm)]):
                axis.plot(range(1, len(mse) + 1), mse, color=colours[arm], alpha=0.6, linewidth=1,
                          label=f"{arm} arm" if run_index == 0 else None)
        axis.set_yscale("log")
        frame_panel(axis, "Lloyd iteration", "training MSE per feature scalar", f"K = {k}")
    save_figure(figure, path)
