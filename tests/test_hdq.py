"""The hierarchical DQ codec (``--arch hdq``): a tiny configuration trains, exports and codes exactly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save

import dqcodec
from dqcodec.codec import api
from dqcodec.codec.cli import main
from dqcodec.codec.container import unpack
from dqcodec.models import registry
from dqcodec.models.context_tables import (
    CONTEXTS_PER_PHASE, TABLE_PRECISION, StoredContextTables, choose_indices, quantize_table,
)
from dqcodec.models.hdq_codec import HDQConfig, HierarchicalDQCodec
from dqcodec.models.image_lambda import image_scales, image_weights, typical_distortion
from dqcodec.models.interface import IndexLevel, estimated_bits
from dqcodec.models.structural_weights import SSIM_C2, TYPICAL_BLOCK_TERM, block_weights
from dqcodec.train.fit_tables import REFIT_CLAUSE, recipe_without_refit
from dqcodec.train.training_log import read_log

TINY = ["--channels", "12", "--latent-channels", "16", "--num-codebooks", "4", "--codebook-size", "16",
        "--code-dim", "2", "--coarse-channels", "8", "--coarse-codebooks", "2", "--coarse-codebook-size", "8",
        "--coarse-code-dim", "2"]


def network_of(stem) -> HierarchicalDQCodec:
    """The float32 torch network of checkpoint ``stem`` (the registry codes hdq without it)."""
    arrays, info, _ = registry.read_model(stem.with_suffix(""))
    return registry.build_network(arrays, info)


def tiny_run(out, data, steps: int, *extra: str) -> list[str]:
    # A tiny lambda keeps several codes of every codebook in use.
    return ["train", "--arch", "hdq", "--out", str(out), "--data", str(data), "--lambda", "1e-9", *TINY,
            "--init-crops", "8", "--table-crops", "8", "--fit-crop", "64", "--batch-size", "2", "--crop", "64",
            "--threads", "1", "--validation-images", "0", "--gain-every", "2",
            "--steps", str(steps), *extra]


def wave_images(folder, seed: int, phase: int = 9, period: float = 7.0):
    """``folder`` with three 96 x 112 RGB PNGs (sinusoidal patterns plus noise) to train tiny models on."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(3):
        rows, cols = np.mgrid[0:96, 0:112]
        base = 128 + 90 * np.sin((cols + phase * i) / period)[..., None] * np.cos(rows / (period + 4))[..., None]
        Image.fromarray(np.clip(base + rng.normal(0, 10, (96, 112, 3)), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An exported tiny hdq model (stem path) trained for 6 steps on synthetic images."""
    root = tmp_path_factory.mktemp("hdq")
    data = wave_images(root / "images", seed=1)
    export = ["--export", "hdq-tiny", "--family", "hdq-test", "--quality", "1", "--weights-dir", str(root / "w"),
              "--measure-images", "1"]
    assert main(tiny_run(root / "run", data, 6, *export)) == 0
    return root / "w" / "hdq-tiny", data


def test_training_logs_exports_and_describes_the_model(tiny_model):
    stem, _ = tiny_model
    info = json.loads(stem.with_suffix(".json").read_text())
    assert info["architecture"] == "HierarchicalDQCodec" and info["training"]["steps"] == 6
    assert info["training"]["throughput"]["steps_per_second"] > 0
    assert info["kodak"]["images"] == 1 and info["kodak"]["bpp"] > 0
    log = [json.loads(line) for line in (stem.parent.parent / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert {"fine_gain", "coarse_gain", "perplexity", "coarse_perplexity"} <= set(log[-1])


def test_a_new_lambda_and_codebook_size_refit_the_fine_codebooks_of_a_trained_model(tiny_model, tmp_path):
    """--init-from with another --lambda / --codebook-size: another rate level from the same transforms."""
    stem, data = tiny_model
    export = ["--export", "hdq-tiny-k8", "--family", "hdq-test", "--quality", "2", "--weights-dir", str(tmp_path / "w"),
              "--measure-images", "0"]
    assert main(tiny_run(tmp_path / "run", data, 0, "--init-from", str(stem), "--codebook-size", "8", "--lambda", "1e-4",
                         *export)) == 0
    start, new = (registry.load_checkpoint(path)[0] for path in (stem, tmp_path / "w" / "hdq-tiny-k8"))
    info = json.loads((tmp_path / "w" / "hdq-tiny-k8.json").read_text())
    assert info["training"]["init_from"]["changed"] == {"codebook_size": 8, "rate_lambda": 1e-4}
    assert new.fine_quantizer.codebooks.shape == (4, 8, 2)
    for name in ("analysis", "synthesis", "coarse_analysis", "coarse_synthesis"):
        old_state, new_state = getattr(start, name).state_dict(), getattr(new, name).state_dict()
        assert all(torch.equal(old_state[key], new_state[key]) for key in old_state)
    assert torch.equal(start.fine_quantizer.projection.weight, new.fine_quantizer.projection.weight)
    image = torch.from_numpy(np.asarray(Image.open(data / "0.png"))[:64, :64].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        slices = new.fine_quantizer.project(new.analysis(image)).permute(1, 0, 3, 4, 2).reshape(4, -1, 2)
        fitted = torch.cdist(slices, new.fine_quantizer.codebooks).amin(dim=-1).pow(2).mean()
        unfitted = torch.cdist(slices, HierarchicalDQCodec(new.config).fine_quantizer.codebooks).amin(dim=-1).pow(2).mean()
    assert fitted < 0.5 * unfitted
    pixels = np.asarray(Image.open(data / "1.png"))
    decoded = np.asarray(dqcodec.decode(dqcodec.encode(pixels, model=str(tmp_path / "w" / "hdq-tiny-k8.json"))))
    assert decoded.shape == pixels.shape


def test_levels_refitted_from_one_network_store_it_once(tiny_model, tmp_path, capsys):
    stem, data = tiny_model
    weights = tmp_path / "w"

    def level(name: str, *start: str) -> list[str]:
        return tiny_run(tmp_path / f"run-{name}", data, 0, *start, "--export", name, "--family", "hdq-test",
                        "--quality", "1", "--weights-dir", str(weights), "--measure-images", "0",
                        "--share-weights", "hdq-test-shared")

    # As hdq-q5 was made: a level trained (here: resumed from the tiny model), then another
    # refitted from its export, whose float16 weights its tables were fitted to.
    assert main(level("low", "--init-from", str(stem), "--steps", "1")) == 0
    assert main(level("high", "--init-from", str(weights / "low"), "--codebook-size", "8", "--lambda", "1e-4")) == 0
    shared = load_file(weights / "hdq-test-shared.safetensors")
    assert "analysis.linear.weight" in shared and not any(key.startswith("fine_") and "projection" not in key for key in shared)
    own = load_file(weights / "high.safetensors")
    assert set(own) & set(shared) == set() and "fine_quantizer.codebooks" in own
    assert json.loads((weights / "high.json").read_text())["shared_weights"] == "hdq-test-shared"
    pixels = np.asarray(Image.open(data / "2.png"))
    files = {name: dqcodec.encode(pixels, model=str(weights / f"{name}.json")) for name in ("low", "high")}
    decoded = {name: np.asarray(dqcodec.decode(data)) for name, data in files.items()}
    assert all(image.shape == pixels.shape for image in decoded.values())
    assert registry.file_fingerprint(weights / "low") != registry.file_fingerprint(weights / "high")
    # Another network cannot join: one line, exit status 2, nothing written.
    assert main(tiny_run(tmp_path / "run-other", data, 1, "--export", "other", "--family", "hdq-test", "--quality", "3",
                         "--weights-dir", str(weights), "--measure-images", "0", "--share-weights", "hdq-test-shared")) == 2
    assert "differs from the shared weights" in capsys.readouterr().err and not (weights / "other.json").exists()
    # The shared weights are part of each level's fingerprint: changed, its files are refused.
    changed = {**shared, "synthesis_gains": shared["synthesis_gains"] * 2}
    (weights / "hdq-test-shared.safetensors").write_bytes(save(changed))
    registry.clear_cache()
    with pytest.raises(dqcodec.DQCodecError, match="fingerprint"):
        dqcodec.decode(files["low"])


def test_an_exported_network_is_the_one_its_tables_were_fitted_to(tmp_path):
    """Export rounds the weights to their stored precision before the tables are fitted, so the
    loaded model (float16 transforms) is bit for bit the network the tables were counted on."""
    torch.manual_seed(0)
    net = HierarchicalDQCodec(HDQConfig(channels=8, latent_channels=8, num_codebooks=2, codebook_size=8, code_dim=2,
                                        coarse_channels=4, coarse_codebooks=1, coarse_codebook_size=4, coarse_code_dim=2))
    weight = net.analysis.linear.weight.detach().clone()
    registry.round_to_storage(net)
    assert not torch.equal(weight, net.analysis.linear.weight) and torch.equal(weight.half().float(), net.analysis.linear.weight)
    registry.save_model(net, tmp_path / "m", {"name": "m", "family": "hdq-test", "quality": 1})
    loaded = registry.load_checkpoint(tmp_path / "m")[0].state_dict()
    for key, tensor in net.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(loaded[key], tensor), key


def test_round_trip_is_exact_and_three_streams_match_the_estimate(tiny_model):
    stem, data = tiny_model
    pixels = np.asarray(Image.open(data / "0.png"))
    encoded = dqcodec.encode(pixels, model=f"{stem}.json")
    header, streams = unpack(encoded)
    assert len(streams) == 3  # flat blocks, coarse, fine
    net = network_of(stem)
    padded = np.pad(pixels, ((0, 128 - 96), (0, 128 - 112), (0, 0)), mode="edge")
    image = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    levels = net.compress(image)
    expected = (net.decompress(levels)[0, :, :96, :112].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(np.asarray(dqcodec.decode(encoded)), expected)
    estimate = estimated_bits(net.levels(128, 128), levels)
    payload_bits = 8 * sum(len(s) for s in streams)
    assert payload_bits <= 1.01 * estimate + 3 * 32  # each stream ends on a 32-bit word
    # The tables that the encoder's choice recorded are the ones the coder computes without them.
    assert all(level.step_tables is not None for level in levels[1:])
    bare = [IndexLevel(level.name, level.indices) for level in levels]
    specs = net.levels(128, 128)
    assert [api._encode_level(spec, level, bare[:i]) for i, (spec, level) in enumerate(zip(specs, bare))] == streams


def test_an_encode_time_lambda_reaches_the_hdq_encoder(tiny_model):
    stem, data = tiny_model
    pixels = np.asarray(Image.open(data / "0.png"))
    own = dqcodec.encode(pixels, model=f"{stem}.json")
    cheap = dqcodec.encode(pixels, model=f"{stem}.json", rate_lambda=0.5)
    assert len(cheap) < len(own)
    assert np.asarray(dqcodec.decode(cheap)).shape == pixels.shape


def test_decoder_feedback_is_a_gradient_step_on_the_pixel_error_through_the_linear_path(tiny_model):
    stem, data = tiny_model
    net = network_of(stem)
    pixels = np.asarray(Image.open(data / "1.png"))[:64, :64].copy()
    pixels[:16, :16] = (40, 120, 200)  # one flat block: the decoder paints it, so it pulls nothing
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    latent = net.analyse(image)
    flat, coarse = (level.indices for level in net.compress(image)[:2])
    assert flat[0, 0, 0, 0] > 0 and (flat[0, 0] > 0).sum() == 1
    targets, guess_error = net.fine_targets(image, latent, coarse, flat)
    quantizer = net.fine_quantizer
    slices = quantizer.project(latent).detach()
    # Autograd's gradient of (x_hat_linear . (x_hat - x)) at the nearest codes (the first guess):
    # the linear path's share of the gradient of half the squared pixel error, outside the
    # painted block.
    guess = quantizer.lookup(quantizer.assign(slices, 0.0)).requires_grad_(True)
    with torch.enable_grad():
        features = quantizer.assemble(guess)
        decoded = net.reconstruct(features.detach(), net.coarse_quantizer.dequantize(torch.from_numpy(coarse)))
        error = decoded - image
        error[..., :16, :16] = 0.0
        (net.synthesis.shuffle(net.synthesis.linear(features)) * error).sum().backward()
    expected = slices - net.config.feedback_step / net.synthesis_gains[0] * guess.grad
    assert net.config.feedback_step > 0 and not torch.equal(targets, slices)
    assert torch.equal(targets[..., 0, 0], slices[..., 0, 0])
    assert torch.allclose(targets, expected.detach(), rtol=1e-4, atol=1e-5 * float(slices.abs().max()))
    assert np.isclose(guess_error[0], float(error.detach().double().square().mean()), rtol=1e-5)  # painted block exact
    net.config.feedback_step = 0.0
    try:
        assert torch.equal(net.fine_targets(image, latent, coarse, flat)[0], slices)
    finally:
        net.config.feedback_step = HDQConfig().feedback_step


def test_structural_weights_weigh_flat_blocks_up_and_textured_blocks_down():
    rng = np.random.default_rng(0)
    image = np.full((1, 3, 32, 32), 0.5)
    image[..., :16, 16:] = rng.uniform(0, 1, (3, 16, 16))  # a textured block beside three flat ones
    weights = block_weights(image, 16, 1.0)
    assert weights.shape == (1, 2, 2)
    assert np.allclose(weights[0, [0, 1, 1], [0, 0, 1]], TYPICAL_BLOCK_TERM / SSIM_C2)
    variance = image[0, :, :16, 16:].var(axis=(1, 2)).mean()
    assert np.isclose(weights[0, 0, 1], TYPICAL_BLOCK_TERM / (2 * variance + SSIM_C2)) and weights[0, 0, 1] < 1
    assert np.allclose(block_weights(image, 16, 0.5) ** 2, weights)
    assert np.array_equal(block_weights(image, 16, 0.0), np.ones((1, 2, 2)))


def test_a_positions_weight_divides_its_lambda_in_the_encoders_choice(tiny_model):
    stem, data = tiny_model
    net = network_of(stem)
    image = torch.from_numpy(np.asarray(Image.open(data / "2.png"))[:64, :64].copy()).permute(2, 0, 1)[None].float() / 255
    coarse = net.compress(image)[1].indices
    with torch.no_grad():
        slices = net.fine_quantizer.project(net.analyse(image)).double().numpy()
    codewords = net.fine_quantizer.codebooks.detach().double().numpy()
    fine_lambda = net.rate_lambdas(0.1)[0]

    def choose(rate_lambda, weights=None):
        return choose_indices(slices, codewords, net.fine_entropy, rate_lambda, side={"coarse": coarse}, weights=weights)[0]

    assert not np.array_equal(choose(fine_lambda), choose(fine_lambda / 8))
    assert np.array_equal(choose(fine_lambda, np.ones((1, 4, 4))), choose(fine_lambda))
    assert np.array_equal(choose(fine_lambda, np.full((1, 4, 4), 8.0)), choose(fine_lambda / 8))
    # A huge weight at one position takes its nearest codes there, whatever the context.
    plain, nearest = choose(fine_lambda), choose(0.0)
    y, x = np.argwhere((plain != nearest).any(axis=1)[0])[0]
    weights = np.ones((1, 4, 4))
    weights[0, y, x] = 1e9
    assert np.array_equal(choose(fine_lambda, weights)[..., y, x], nearest[..., y, x])


def test_the_encoders_choice_in_float32_costs_what_the_float64_choice_costs():
    """choose_indices scores in the dtype of its vectors (hdq's fine level: float32). Each code
    it picks there must cost, recomputed in float64 under the same context, what the best code
    costs, to float32's precision, and almost every index must be the float64 one."""
    rng = np.random.default_rng(5)
    num_codebooks, size, dim, height, width = 3, 64, 4, 12, 16
    vectors = rng.normal(size=(2, num_codebooks, dim, height, width))
    codebooks = rng.normal(size=(num_codebooks, size, dim))
    counts = rng.integers(1, 50, size=(num_codebooks, 1, 1, size))
    # One context per codebook and phase: the cost of a code depends on nothing chosen before.
    tables = StoredContextTables(
        num_codebooks=num_codebooks, codebook_size=size, num_predicted=0,
        code_class=np.zeros((num_codebooks, size), dtype=np.int64), code_level=np.zeros((num_codebooks, size), dtype=np.int64),
        frequencies=np.broadcast_to(quantize_table(counts), (num_codebooks, 2, CONTEXTS_PER_PHASE, size)).copy(),
        alphabet_sizes=np.full(num_codebooks, size))
    weights = rng.uniform(0.5, 2.0, size=(2, height, width))
    bits = np.log2(tables.frequencies[:, 0, 0].sum(-1, keepdims=True)) - np.log2(tables.frequencies[:, 0, 0])  # (M, K)
    for weight in (None, weights):
        single = choose_indices(vectors.astype(np.float32), codebooks, tables, 0.3, weights=weight)[0]
        double = choose_indices(vectors, codebooks, tables, 0.3, weights=weight)[0]
        scale = np.ones((2, 1, height, width)) if weight is None else weight[:, None]
        cost = (scale[..., None] * ((vectors[:, :, None] - codebooks[None, :, :, :, None, None]) ** 2).sum(3).transpose(0, 1, 3, 4, 2)
                + 0.3 * bits[None, :, None, None, :])  # (B, M, H, W, K) in float64
        picked = np.take_along_axis(cost, single[..., None], axis=-1)[..., 0]
        assert np.allclose(picked, cost.min(axis=-1), rtol=1e-5, atol=1e-5)
        assert np.mean(single == double) > 0.99


def test_structural_weighting_changes_the_encoders_choice_only(tiny_model, tmp_path):
    stem, data = tiny_model
    info = json.loads(stem.with_suffix(".json").read_text())
    info["config"]["structural_weighting"] = 1.0
    weighted = tmp_path / "hdq-weighted"
    weighted.with_suffix(".json").write_text(json.dumps(info))
    weighted.with_suffix(".safetensors").write_bytes(stem.with_suffix(".safetensors").read_bytes())
    pixels = np.asarray(Image.open(data / "0.png")).copy()
    pixels[:32, :48] = pixels[:32, :48].mean(axis=(0, 1)).round() + np.arange(48)[:, None] % 3  # smooth, not flat
    plain, structural = (dqcodec.encode(pixels, model=f"{model}.json", rate_lambda=0.05) for model in (stem, weighted))
    assert plain != structural
    net = network_of(weighted)
    padded = np.pad(pixels, ((0, 128 - 96), (0, 128 - 112), (0, 0)), mode="edge")
    levels = net.compress(torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255, 0.05)
    expected = (net.decompress(levels)[0, :, :96, :112].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.array_equal(np.asarray(dqcodec.decode(structural)), expected)


def test_image_scales_follow_the_images_error_within_a_factor_of_two_and_fall_back_where_the_network_fails():
    ratios = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 500.0])
    scales = image_scales(0.002 * ratios, 0.002)
    assert np.allclose(scales, [0.5, 0.5, 0.5, 0.75, 1.0, 2.0, 2.0, 2.0, 8 / 6, 1.0, 1.0])
    assert np.allclose(image_weights(0.002 * ratios, 0.002), 1 / scales)
    assert typical_distortion(np.array([[0.0, 0.003], [0.001, 0.5]])) == 0.002  # a median: painted crops count


def test_the_image_lambda_codes_each_image_at_lambda_times_its_first_guess_error_over_the_reference(tiny_model):
    stem, data = tiny_model
    net = network_of(stem)
    reference = net.config.distortion_reference
    assert 0 < reference < 1  # measured by the export's table step
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(data / f"{i}.png"))[:64, :64].copy()).permute(2, 0, 1)
                          for i in range(2)]).float() / 255
    images[1] = images[1] * 0.5 + 0.25  # less contrast: a smaller first-guess error
    latent = net.analyse(images)
    flat, coarse = (level.indices for level in net.compress(images)[:2])
    errors = net.fine_targets(images, latent, coarse, flat)[1]
    assert errors[1] < errors[0]
    chosen = net.compress(images, 0.05)
    net.config.distortion_reference = 0.0
    try:
        for index in range(2):
            scale = image_scales(errors[index : index + 1], reference)[0]
            alone = net.compress(images[index : index + 1], 0.05 * scale)
            assert np.mean(alone[-1].indices == chosen[-1].indices[index : index + 1]) > 0.99, index
            at_lambda = net.compress(images[index : index + 1], 0.05)  # what the level's lambda alone chooses
            assert np.mean(at_lambda[-1].indices != chosen[-1].indices[index : index + 1]) > 0.02, index
    finally:
        net.config.distortion_reference = reference


def test_train_has_no_option_for_the_measured_distortion_reference(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--arch", "hdq", "--help"])
    assert "--distortion-reference" not in capsys.readouterr().out


def test_train_refuses_a_negative_structural_weighting_in_one_line(tmp_path, capsys):
    data = wave_images(tmp_path / "images", seed=3)
    assert main(tiny_run(tmp_path / "run", data, 1, "--structural-weighting", "-1")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dqcodec: error: --structural-weighting -1.0: need a finite value of 0 or more")
    assert main(tiny_run(tmp_path / "run", data, 1, "--feedback-step", "nan")) == 2
    assert "--feedback-step nan: need a finite value of 0 or more" in capsys.readouterr().err


def within_one_level(a: np.ndarray, b: np.ndarray) -> bool:
    """hdq decodes in float32: the indices are exact, a rounded pixel may flip by one level."""
    return a.shape == b.shape and int(np.abs(a.astype(np.int16) - b).max()) <= 1


def test_decoding_does_not_depend_on_threads_batch_or_process(tiny_model, tmp_path):
    stem, data = tiny_model
    images = [np.asarray(Image.open(data / f"{i}.png")) for i in range(2)]
    files = [dqcodec.encode(image, model=f"{stem}.json") for image in images]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [np.asarray(dqcodec.decode(f)) for f in files]
        torch.set_num_threads(2)
        two = [np.asarray(dqcodec.decode(f)) for f in files]
    finally:
        torch.set_num_threads(threads)
    assert all(within_one_level(a, b) for a, b in zip(one, two, strict=True))
    (tmp_path / "a.dqc").write_bytes(files[0])
    script = (f"import numpy as np, pathlib, dqcodec; from dqcodec.models import registry; "
              f"registry.register_checkpoint(pathlib.Path({str(stem) + '.json'!r})); "
              f"np.save({str(tmp_path / 'a.npy')!r}, np.asarray(dqcodec.decode({str(tmp_path / 'a.dqc')!r})))")
    subprocess.run([sys.executable, "-c", script], check=True)
    assert within_one_level(np.load(tmp_path / "a.npy"), one[0])
    # Batch of two images -> the same indices as each image alone.
    net = network_of(stem)
    batch = torch.from_numpy(np.stack([np.pad(im, ((0, 32), (0, 16), (0, 0)), mode="edge") for im in images]))
    batch = batch.permute(0, 3, 1, 2).float() / 255
    together = net.compress(batch)
    alone = [net.compress(batch[i : i + 1]) for i in range(2)]
    for level, name in enumerate(("flat", "coarse", "fine")):
        assert together[level].name == name
        assert np.array_equal(together[level].indices, np.concatenate([a[level].indices for a in alone]))


def test_fine_tables_read_the_coarse_level_and_are_valid_integers(tiny_model):
    stem, data = tiny_model
    net = network_of(stem)
    entropy = net.fine_entropy
    assert entropy.frequencies.dtype == torch.int32 and int(entropy.frequencies.min()) >= 1
    assert int(entropy.frequencies.sum(dim=-1).max()) <= TABLE_PRECISION
    image = torch.from_numpy(np.asarray(Image.open(data / "1.png"))[:64, :64].copy()).permute(2, 0, 1)[None].float() / 255
    _, coarse, fine = net.compress(image)
    side = {"coarse": coarse.indices}
    buckets = entropy.side_contexts(side, fine.indices.shape)
    assert buckets.shape == (1, 4, 4) and buckets.max() < entropy.side_buckets
    busiest = np.full_like(coarse.indices, entropy.coarse_class.shape[1] - 1)
    quiet = np.zeros_like(coarse.indices)
    assert entropy.side_contexts({"coarse": busiest}, fine.indices.shape).max() >= \
        entropy.side_contexts({"coarse": quiet}, fine.indices.shape).max()
    assert int(entropy.alphabet_sizes.min()) > 1  # a small lambda: every codebook codes several symbols
    assert entropy.bits(fine.indices, side) > 0


def test_the_integer_tables_are_the_counted_probabilities_within_their_quantization():
    """Discrete conditioning's float twin is the counted distribution; the stored integer
    table of every context differs from it by at most K / 2**16 per symbol."""
    torch.manual_seed(0)
    net = HierarchicalDQCodec(HDQConfig(channels=8, latent_channels=8, num_codebooks=2, codebook_size=8, code_dim=2,
                                        coarse_channels=4, coarse_codebooks=1, coarse_codebook_size=4, coarse_code_dim=2))
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 4, size=(3, 1, 2, 2))
    fine = rng.integers(0, 8, size=(3, 2, 8, 8))
    usage = torch.ones(2, 8)
    net.fine_entropy.set_codes(net.fine_quantizer.codebooks, usage)
    net.fine_entropy.set_coarse_codes(net.coarse_quantizer.codebooks, torch.ones(1, 4))
    net.fine_entropy.fit([(fine, {"coarse": coarse})], prior_count=0.05)
    counts = np.zeros(tuple(net.fine_entropy.frequencies.shape))
    for step in net.fine_entropy.coding_steps(fine.shape):
        contexts = net.fine_entropy.contexts(fine, step.codebook, step.phase, step.mask, {"coarse": coarse}).reshape(-1)
        np.add.at(counts[step.codebook, step.phase], (contexts, step.symbols(fine)), 1)
    probabilities = (counts + 0.05) / (counts + 0.05).sum(-1, keepdims=True)
    table = net.fine_entropy.frequencies.numpy().astype(float)
    assert np.abs(table / TABLE_PRECISION - probabilities).max() <= 8 / TABLE_PRECISION


def test_a_resumed_hdq_run_continues_bit_for_bit(tmp_path, training_images):
    from safetensors.numpy import load_file

    assert main(tiny_run(tmp_path / "straight", training_images, 4, "--checkpoint-every", "1")) == 0
    assert main(tiny_run(tmp_path / "resumed", training_images, 2, "--checkpoint-every", "1")) == 0
    assert main(tiny_run(tmp_path / "resumed", training_images, 4, "--checkpoint-every", "1")) == 0
    straight = load_file(tmp_path / "straight" / "state.safetensors")
    resumed = load_file(tmp_path / "resumed" / "state.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert np.array_equal(straight[key], resumed[key]), key


def test_max_minutes_stops_and_saves(tmp_path, training_images, capsys):
    """A run stopped by --max-minutes saves its state, and the model it exports says how many
    steps were done, not how many were asked for."""
    export = ["--export", "hdq-stopped", "--family", "hdq-test", "--quality", "1", "--weights-dir", str(tmp_path / "w"),
              "--measure-images", "0"]
    assert main(tiny_run(tmp_path / "run", training_images, 1000, "--max-minutes", "0.001", *export)) == 0
    assert "stopped after 0.001 minutes" in capsys.readouterr().out
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == len(log) < 1000
    training = json.loads((tmp_path / "w" / "hdq-stopped.json").read_text())["training"]
    assert training["steps"] == state["step"] and f"; {state['step']} Adam steps" in training["recipe"]


def test_plot_training_draws_the_log(tmp_path, training_images, capsys):
    assert main(tiny_run(tmp_path / "run", training_images, 3)) == 0
    assert main(["plot-training", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    assert main(["plot-training", str(tmp_path / "missing")]) == 2
    assert "cannot read the training log" in capsys.readouterr().err


def test_steps_redone_after_a_resume_count_once_and_their_time_twice(tmp_path):
    # Invocation 1 logged steps 1-4 and saved its state at step 2; invocation 2 resumed there.
    lines = [{"step": step, "seconds": seconds} for step, seconds in ((1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (3, 1.5), (4, 3.0))]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["wall_seconds"] for r in records] == [1.0, 2.0, 5.5, 7.0]


def test_every_level_holds_guard_codes_that_flat_areas_keep(tiny_model, tmp_path):
    """An exported model has, in every fine codebook, a code in use at exactly the slice that
    the inside of a flat area of each guard colour gives (the cube's corners and greys), and the
    encoder keeps a flat area on those codes. Guard codes take at most a quarter of a codebook:
    the tiny model's 16 codes keep 12 for its photographs."""
    from dqcodec.models.block_runtime import guard_colours
    from dqcodec.models.hdq_codec import FINE, FLAT_PROBE

    stem, data = tiny_model
    export = ["--export", "hdq-tiny-k64", "--family", "hdq-test", "--quality", "2", "--weights-dir", str(tmp_path / "w"),
              "--measure-images", "0"]
    assert main(tiny_run(tmp_path / "run", data, 0, "--init-from", str(stem), "--codebook-size", "64", *export)) == 0
    small = registry.load_checkpoint(stem)[0]
    before = small.fine_quantizer.codebooks.clone()
    small.guard_codes(guard_colours(), torch.ones_like(small.fine_quantizer.ema_counts))  # no free code
    assert (small.fine_quantizer.codebooks == before).all(dim=-1).sum(dim=1).min() >= 12
    net = registry.load_checkpoint(tmp_path / "w" / "hdq-tiny-k64")[0]
    colours = guard_colours()
    slices = net.flat_slices(colours)
    codes = net.fine_quantizer.codebooks.double().numpy()  # (M, K, D)
    distances = np.linalg.norm(slices[:, :, None] - codes[:, None], axis=-1)  # (M, G, K)
    distances[np.broadcast_to((net.fine_quantizer.ema_counts <= 0).numpy()[:, None], distances.shape)] = np.inf
    assert distances.min(axis=2).max() < 1e-5
    images = torch.from_numpy(colours).float()[:, :, None, None].expand(-1, -1, FLAT_PROBE, FLAT_PROBE)
    centre = FLAT_PROBE // 32
    fine = {level.name: level.indices for level in net.compress(images)}[FINE][:, :, centre, centre]  # (G, M)
    chosen = net.fine_quantizer.codebooks.double().numpy()[np.arange(fine.shape[1]), fine]  # (G, M, D)
    assert np.allclose(chosen, slices.transpose(1, 0, 2), atol=1e-5)


def test_training_crops_mix_saturated_photos_and_synthetic_content(tmp_path):
    """hdq and hdq-family train on the photos plus saturation-boosted copies of some of them and
    synthetic content (flat colours, gradients, text, screenshots), which photographs lack;
    --synthetic-share 0 leaves the photos alone."""
    from types import SimpleNamespace

    from dqcodec.content import fitting_content, saturate
    from dqcodec.train.recipes import RECIPES

    data = wave_images(tmp_path / "images", seed=3)
    recipe, loop = RECIPES["hdq"], SimpleNamespace(data=data)
    assert RECIPES["hdq-family"].data is recipe.data
    mixed = recipe.data(recipe.options(synthetic_share=0.5), loop)  # every 2nd photo: 2 saturated copies, 2 synthetic
    plain = recipe.data(recipe.options(synthetic_share=0.0), loop)
    images = mixed.batches(64, 4, torch.Generator().manual_seed(0)).images
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in mixed.files]
    assert len(images) == 7 and len(plain.batches(64, 4, torch.Generator()).images) == 3
    assert all(np.array_equal(image, photo) for image, photo in zip(images[:3], photos))
    assert np.array_equal(images[3], saturate(photos[0], 2.0)) and np.array_equal(images[4], saturate(photos[2], 2.0))
    assert np.array_equal(images[5], fitting_content()[0]) and np.array_equal(images[6], fitting_content()[1])
    assert "saturation-boosted" in mixed.describe() and mixed.describe().startswith(plain.describe())


def test_the_block_start_is_a_block_transform_codec():
    """After set_hdq_block_transform with all 768 axes kept, the (zero) nonlinear branches add
    nothing and synthesis(projections(analysis(x))) gives back x: training starts from the block PCA
    codec, and only quantization loses anything."""
    from dqcodec.train.initialize import balanced_groups, block_pca, set_hdq_block_transform

    torch.manual_seed(0)
    config = HDQConfig(channels=8, latent_channels=768, num_codebooks=192, codebook_size=4, code_dim=4,
                       coarse_channels=4, coarse_codebooks=1, coarse_codebook_size=4, coarse_code_dim=2)
    net = HierarchicalDQCodec(config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    set_hdq_block_transform(net, *block_pca(images, 16))
    image = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        latent = net.analysis(image)
        slices = net.fine_quantizer.projection(latent)
        coarse = net.coarse_synthesis(net.coarse_quantizer.projection(net.coarse_analysis(latent)))
        rebuilt = net.synthesis(torch.cat([slices, coarse], dim=1))
    assert torch.allclose(rebuilt, image, atol=1e-4)
    # Balanced groups: every axis once, and group g holds the g-th largest axis.
    order = balanced_groups(4, 3)
    assert sorted(order) == list(range(12)) and order[::3] == [0, 1, 2, 3]
    assert order == [0, 7, 8, 1, 6, 9, 2, 5, 10, 3, 4, 11]


def test_flat_blocks_come_back_exact(tiny_model):
    """A flat image and the flat 16 x 16 blocks of a photograph decode to their exact colour,
    whatever the network makes of them (the flat-block level)."""
    stem, data = tiny_model
    model = f"{stem}.json"
    flat = np.zeros((24, 40, 3), dtype=np.uint8)
    flat[..., 1] = 255
    assert np.array_equal(np.asarray(dqcodec.decode(dqcodec.encode(flat, model=model))), flat)
    photo = np.asarray(Image.open(data / "0.png")).copy()
    photo[16:48, 32:80] = (200, 30, 90)
    decoded = np.asarray(dqcodec.decode(dqcodec.encode(photo, model=model)))
    assert np.array_equal(decoded[16:48, 32:80], photo[16:48, 32:80])


def _activity_model(rng: np.random.Generator):
    """A fine-level entropy model of 20 codebooks of 8 codes (1 predicted) fitted on skewed
    indices whose blocks are busy or quiet in all codebooks at once, and those indices."""
    from dqcodec.models.hierarchical_entropy import CoarseConditionedIndexModel

    m_count, k_count = 20, 8
    model = CoarseConditionedIndexModel(m_count, k_count, "coarse", 1, 4, factor=2, side_buckets=2, num_predicted=1)
    busy = rng.random((4, 1, 8, 10)) < 0.3
    indices = np.where(busy, rng.integers(0, k_count, (4, m_count, 8, 10)), rng.geometric(0.8, (4, m_count, 8, 10)) - 1)
    indices = np.minimum(indices, k_count - 1)
    coarse = rng.integers(0, 4, (4, 1, 4, 5))
    usage = torch.from_numpy(np.stack([np.bincount(indices[:, m].ravel(), minlength=k_count) for m in range(m_count)]))
    codebooks = torch.arange(k_count, dtype=torch.float32)[None, :, None].expand(m_count, -1, 1)
    model.set_codes(codebooks, usage.float())
    model.set_coarse_codes(torch.arange(4, dtype=torch.float32)[None, :, None], torch.ones(1, 4))
    model.fit([(indices, {"coarse": coarse})])
    return model, indices, coarse


def test_activity_contexts_read_only_what_the_decoder_has_and_sort_busy_blocks_apart():
    from dqcodec.models.hierarchical_entropy import ACTIVITY_BUCKETS

    model, indices, coarse = _activity_model(np.random.default_rng(3))
    side = {"coarse": coarse}
    decoded = np.zeros_like(indices)  # what a decoder holds, step by step
    for step in model.coding_steps(indices.shape):
        assert all(map(np.array_equal, model.step_tables(decoded, step, side), model.step_tables(indices, step, side)))
        step.place(decoded, step.symbols(indices))
    assert np.array_equal(decoded, indices)
    assert model.frequencies.shape == (20, 2, 128, 8)  # 64 contexts per phase, times 2 coarse buckets
    edges = model.activity_edges.numpy()
    assert edges.shape == (20, 2, 2, ACTIVITY_BUCKETS - 1) and (np.diff(edges, axis=-1) >= 0).all()
    # The fitted edges split a late codebook's own-position activity into quartiles of the data.
    _, own, _ = model._activity(indices, 19, 0)
    shares = [(own < edge).mean() for edge in edges[19, 0, 0]]
    assert shares[0] < 0.5 < shares[-1]
    # A block busy in the earlier codebooks gets a higher activity bucket than a quiet one.
    quiet, busy = np.zeros_like(indices[:1]), np.full_like(indices[:1], 7)
    mask = np.ones(indices.shape[2:], dtype=bool)
    assert (model.contexts(busy, 19, 0, mask, {"coarse": coarse[:1]}) >
            model.contexts(quiet, 19, 0, mask, {"coarse": coarse[:1]})).all()
    assert model.bits(indices, side) < model.bits(np.random.default_rng(4).permutation(indices.ravel()).reshape(indices.shape), side)


def test_predicted_codebooks_take_the_level_bin_of_the_predicted_code():
    from dqcodec.models.hierarchical_entropy import PREDICTED_BINS, PREDICTED_SPREADS, CoarseConditionedIndexModel

    rng = np.random.default_rng(5)
    m_count, k_count = 2, 256
    model = CoarseConditionedIndexModel(m_count, k_count, "coarse", 1, 4, factor=2, num_predicted=1)
    # Codes in shuffled level order (as codes sorted by use are), used by a smooth field.
    levels = rng.permutation(k_count).astype(np.float32)
    field = np.cumsum(rng.normal(0, 3, (4, 32, 32)), axis=2) + 128
    indices = np.argsort(levels)[np.clip(field.round(), 0, k_count - 1).astype(np.int64)]
    indices = np.stack([indices, rng.integers(0, k_count, indices.shape)], axis=1)
    codebooks = torch.from_numpy(np.stack([levels / 64, np.zeros(k_count, np.float32)]))[:, :, None]
    usage = torch.ones(m_count, k_count)
    model.set_codes(codebooks, usage)
    model.set_coarse_codes(torch.arange(4, dtype=torch.float32)[None, :, None], torch.ones(1, 4))
    side = {"coarse": rng.integers(0, 4, (4, 1, 16, 16))}
    model.fit([(indices, side)])
    bins = model.predicted_bins.numpy()[0]
    # Bins follow the codes' levels and split the training use about equally.
    assert (np.diff(bins[np.argsort(levels)]) >= 0).all() and bins.max() == PREDICTED_BINS - 1
    counts = np.bincount(bins[indices[:, 0].ravel()], minlength=PREDICTED_BINS)
    assert counts.max() < 4 * indices[:, 0].size / PREDICTED_BINS
    # Context 0 where no neighbour is decoded (the first anchor row), else 1 + the bin, split by
    # the spread of the neighbours' levels.
    step = next(iter(model.coding_steps(indices.shape)))
    assert (model._level_contexts(indices, 0, 0, step.mask) == 0).all()
    mask = np.ones(indices.shape[2:], dtype=bool)
    nearest = model._nearest_codes(indices, 0, 1, mask)
    spread = model._neighbour_spread(indices, 0, 1, mask)
    contexts = model._level_contexts(indices, 0, 1, mask)
    assert np.array_equal((contexts - 1) // PREDICTED_SPREADS, bins[nearest])
    # Wider spreads take higher buckets, and the terciles of the data use all of them.
    order = np.argsort(spread.ravel(), kind="stable")
    assert (np.diff(((contexts - 1) % PREDICTED_SPREADS).ravel()[order]) >= 0).all()
    assert len(np.unique((contexts - 1) % PREDICTED_SPREADS)) == PREDICTED_SPREADS
    # The spread is the largest minus the smallest of the 4 decoded anchor neighbours' levels.
    level = model.code_level.numpy()[0].astype(np.int64)[indices[:, 0]]
    row, col = 5, 8
    around = [level[0, row + dy, col + dx] for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0))]
    assert spread[0].reshape(indices.shape[2:])[row, col] == max(around) - min(around)
    # A decoder holding only what is decoded so far gets the same tables at every step.
    decoded = np.zeros_like(indices)
    for step in model.coding_steps(indices.shape):
        assert all(map(np.array_equal, model.step_tables(decoded, step, side), model.step_tables(indices, step, side)))
        step.place(decoded, step.symbols(indices))


def test_second_phase_adapts_to_the_image_in_integers():
    from dqcodec.models.context_tables import TABLE_PRECISION, ContextTables
    from dqcodec.models.hierarchical_entropy import CoarseConditionedIndexModel

    rng = np.random.default_rng(6)
    m_count, k_count = 3, 8
    model = CoarseConditionedIndexModel(m_count, k_count, "coarse", 1, 4, factor=2)
    model.set_codes(torch.arange(k_count, dtype=torch.float32)[None, :, None].expand(m_count, -1, 1),
                    torch.ones(m_count, k_count))
    model.set_coarse_codes(torch.arange(4, dtype=torch.float32)[None, :, None], torch.ones(1, 4))
    coarse = np.zeros((2, 1, 8, 8), dtype=np.int64)
    model.fit([(rng.integers(0, k_count, (2, m_count, 16, 16)), {"coarse": coarse})])
    # Image 0 uses code 5 nine times in ten, image 1 is like the training data.
    indices = rng.integers(0, k_count, (2, m_count, 16, 16))
    indices[0] = np.where(rng.random((m_count, 16, 16)) < 0.9, 5, indices[0])
    side = {"coarse": coarse}
    step = [step for step in model.coding_steps(indices.shape) if step.phase == 1][1]
    tables, rows = model.step_tables(indices, step, side)
    adapted = tables[rows]
    distinct, rows = ContextTables.step_tables(model, indices, step, side)  # the base class's: not adapted
    static = distinct[rows]
    share = lambda tables: tables[:, 5] / tables.sum(axis=1)  # noqa: E731
    half = len(adapted) // 2  # the rows of image 0, then those of image 1
    assert (share(adapted[:half]) > 2 * share(static[:half])).all()
    assert np.allclose(share(adapted[half:]), share(static[half:]), rtol=0.5)
    symbols = step.symbols(indices)[:half]
    bits = lambda tables: -np.log2(tables[np.arange(half), symbols] / tables.sum(axis=1)).sum()  # noqa: E731
    assert bits(adapted[:half]) < 0.8 * bits(static[:half])
    # A large tile of one code, the code least used in training: rows stay valid integer tables.
    model.marginal[1] = torch.tensor([1] + [9000] * (k_count - 1), dtype=torch.int32)
    huge = np.zeros((1, m_count, 1024, 1024), dtype=np.int64)
    mask = np.add.outer(np.arange(1024), np.arange(1024)) % 2 == 1  # the second phase's positions
    tables, _ = model.step_tables(huge, type(step)(1, 1, mask), {"coarse": np.zeros((1, 1, 512, 512), dtype=np.int64)})
    assert tables.dtype == np.int32 and (tables >= 1).all() and (tables.sum(axis=1) <= TABLE_PRECISION).all()
    assert (tables[:, 0] > TABLE_PRECISION // 2).all()


def test_fit_tables_counts_new_tables_and_keeps_the_network(tiny_model, tmp_path, capsys):
    import shutil

    stem, data = tiny_model
    for suffix in (".json", ".safetensors"):
        shutil.copy(f"{stem}{suffix}", tmp_path / f"hdq-tiny{suffix}")
    copy = tmp_path / "hdq-tiny"
    before = load_file(f"{copy}.safetensors")
    # A model saved before the activity contexts: no edges, which the current code cannot load.
    (tmp_path / "hdq-tiny.safetensors").write_bytes(save({k: v for k, v in before.items() if "activity_edges" not in k}))
    registry.clear_cache()
    with pytest.raises(ValueError, match="activity_edges"):
        registry.load_checkpoint(copy)
    assert main(["fit-tables", str(copy), "--crops", "16", "--data", str(data), "--threads", "1",
                 "--measure-images", "1"]) == 0
    assert "hdq-tiny: Kodak" in capsys.readouterr().out
    after = load_file(f"{copy}.safetensors")
    assert all(np.array_equal(before[key], after[key]) for key in before if key.startswith(("analysis.", "synthesis.")))
    assert "fine_entropy.activity_edges" in after
    info = json.loads(copy.with_suffix(".json").read_text())
    assert info["training"]["table_crops"] == 16 and "fit-tables" in info["training"]["recipe"] and info["kodak"]["images"] == 1
    assert info["training"]["steps"] == 6  # the rest of the training record stays
    pixels = np.asarray(Image.open(data / "0.png"))
    registry.clear_cache()
    assert np.asarray(dqcodec.decode(dqcodec.encode(pixels, model=str(copy.with_suffix(".json"))))).shape == pixels.shape
    assert not list(tmp_path.glob(".fit-tables-*"))  # the staging folder is gone
    # Refitted again: the recipe names the latest refit once.
    assert main(["fit-tables", str(copy), "--crops", "8", "--data", str(data), "--threads", "1",
                 "--measure-images", "0"]) == 0
    recipe = json.loads(copy.with_suffix(".json").read_text())["training"]["recipe"]
    assert recipe.count("fit-tables") == 1 and "over 8 crops" in recipe
    assert info["config"]["distortion_reference"] > 0  # the table step measured the image lambda's reference


def test_a_refit_keeps_what_came_after_the_earlier_refit_in_the_recipe():
    refit = f"{REFIT_CLAUSE} over 1536 crops of 256 px, contexts seen fewer than 256 times backed off"
    tuned = "; synthesis tuned to the encoder's codes (dqcodec tune-synthesis): 1500 Adam steps"
    assert recipe_without_refit(f"trained{refit}{tuned}") == f"trained{tuned}"
    assert recipe_without_refit(f"trained{tuned}{refit}") == f"trained{tuned}"
    assert recipe_without_refit("trained") == "trained"


def test_fit_tables_refuses_what_it_cannot_refit_in_one_line(tiny_model, tmp_path, capsys):
    import shutil

    stem, data = tiny_model
    for name in ("low", "high"):  # two levels sharing one transforms file
        shutil.copy(f"{stem}.safetensors", tmp_path / f"{name}.safetensors")
        info = json.loads(stem.with_suffix(".json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps({**info, "name": name, "shared_weights": "shared"}))
    (tmp_path / "shared.safetensors").write_bytes(save({}))
    untouched = (tmp_path / "low.safetensors").read_bytes()
    (tmp_path / "broken").mkdir()
    shutil.copy(stem.with_suffix(".json"), tmp_path / "broken" / "hdq-tiny.json")
    (tmp_path / "broken" / "hdq-tiny.safetensors").write_bytes(untouched[:100])  # cut short
    cases = {
        (str(tmp_path / "low"),): "shares shared.safetensors",
        (str(tmp_path / "missing"),): "no such model file",
        (str(registry.WEIGHTS_DIR / "dq-q3"),): "fit-tables counts the tables of hdq models",
        (str(tmp_path / "broken" / "hdq-tiny"),): "hdq-tiny.safetensors is damaged",
    }
    for models, message in cases.items():
        assert main(["fit-tables", *models, "--crops", "8", "--data", str(data), "--measure-images", "0"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    for option, value in (("--crops", "4"), ("--backoff", "-1"), ("--threads", "0"), ("--refinement-size", "-1"),
                          ("--refinement-size", "257")):
        assert main(["fit-tables", str(stem), option, value, "--data", str(data)]) == 2
        assert f"{option} {value}" in capsys.readouterr().err
    assert (tmp_path / "low.safetensors").read_bytes() == untouched


def test_refinement_contexts_read_only_what_the_decoder_has_and_follow_the_fine_cells():
    from dqcodec.models.refinement import CELL_BUCKETS, RefinementIndexModel

    rng = np.random.default_rng(5)
    m_count, k_fine, k_refine = 6, 8, 5
    model = RefinementIndexModel(m_count, k_refine, k_fine, "fine")
    fine = rng.integers(0, k_fine, (3, m_count, 8, 10))
    # Residuals grow with the fine code: codes 6 and 7 have the widest cells.
    power = torch.arange(k_fine, dtype=torch.float64)[None].expand(m_count, -1)
    model.set_cell_buckets(power, torch.ones(m_count, k_fine))
    assert model.cell_bucket[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # quartiles of equal use
    # Refined (index > 0) mostly where the fine code's cell is wide.
    wide = model.cell_bucket.numpy()[np.arange(m_count)[None, :, None, None], fine] == CELL_BUCKETS - 1
    refine = np.where(rng.random(fine.shape) < np.where(wide, 0.7, 0.05), rng.integers(1, k_refine, fine.shape), 0)
    usage = torch.from_numpy(np.stack([np.bincount(refine[:, m].ravel(), minlength=k_refine) for m in range(m_count)]))
    model.set_codes(torch.zeros(m_count, k_refine, 2), usage.float())
    side = {"fine": fine}
    model.fit([(refine, side)])
    decoded = np.zeros_like(refine)
    for step in model.coding_steps(refine.shape):
        assert all(map(np.array_equal, model.step_tables(decoded, step, side), model.step_tables(refine, step, side)))
        step.place(decoded, step.symbols(refine))
    assert np.array_equal(decoded, refine)
    shuffled = {"fine": rng.permutation(fine.ravel()).reshape(fine.shape)}
    assert model.bits(refine, side) < 0.9 * model.bits(refine, shuffled)


def test_a_model_trained_with_a_refinement_size_exports_its_refinement_level(tmp_path):
    data = wave_images(tmp_path / "images", seed=2)
    export = ["--export", "hdq-refined", "--family", "hdq-test", "--quality", "1", "--weights-dir", str(tmp_path / "w"),
              "--measure-images", "0"]
    assert main(tiny_run(tmp_path / "run", data, 2, "--refinement-size", "4", *export)) == 0
    stem = tmp_path / "w" / "hdq-refined"
    assert json.loads(stem.with_suffix(".json").read_text())["config"]["refinement_size"] == 4
    pixels = np.asarray(Image.open(data / "1.png"))
    encoded = dqcodec.encode(pixels, model=f"{stem}.json")
    assert len(unpack(encoded)[1]) == 4
    assert np.asarray(dqcodec.decode(encoded)).shape == pixels.shape


def test_fit_tables_gives_a_model_a_refinement_level_that_codes_exactly_and_lowers_distortion(tiny_model, tmp_path,
                                                                                              capsys):
    import shutil

    stem, data = tiny_model
    for suffix in (".json", ".safetensors"):
        shutil.copy(f"{stem}{suffix}", tmp_path / f"hdq-tiny{suffix}")
    copy = tmp_path / "hdq-tiny"
    assert main(["fit-tables", str(copy), "--crops", "16", "--data", str(data), "--threads", "1",
                 "--measure-images", "0", "--refinement-size", "8"]) == 0
    info = json.loads(copy.with_suffix(".json").read_text())
    assert info["config"]["refinement_size"] == 8 and "refinement level of 8 codes" in info["training"]["recipe"]
    registry.clear_cache()
    net = network_of(copy)
    assert torch.equal(net.refinement.codebooks[:, 0], torch.zeros_like(net.refinement.codebooks[:, 0]))
    pixels = np.asarray(Image.open(data / "0.png"))
    encoded = dqcodec.encode(pixels, model=f"{copy}.json")
    header, streams = unpack(encoded)
    assert len(streams) == 4  # flat blocks, coarse, fine, refinement
    image = torch.from_numpy(np.pad(pixels, ((0, 32), (0, 16), (0, 0)), mode="edge")).permute(2, 0, 1)[None].float() / 255
    levels = net.compress(image)
    assert levels[-1].name == "refine" and (levels[-1].indices > 0).any()
    expected = (net.decompress(levels)[0, :, :96, :112].permute(1, 2, 0) * 255).round().byte().numpy()
    assert within_one_level(np.asarray(dqcodec.decode(encoded)), expected)  # the decoder runs on one thread
    estimate = estimated_bits(net.levels(128, 128), levels)
    assert 8 * sum(len(s) for s in streams) <= 1.01 * estimate + 4 * 32
    # Together, 2 threads and a batch of two: the same refinement indices.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = net.compress(torch.cat([image, image.flip(3)]))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(together[-1].indices[:1], levels[-1].indices)
    unrefined = net.decompress(levels[:-1])
    assert ((net.decompress(levels) - image) ** 2).mean() < ((unrefined - image) ** 2).mean()
    # tune-synthesis trains the synthesis on what the decoder decodes: fine plus refinement codes.
    from dqcodec.train.tune_synthesis import SynthesisTuner, TuneOptions, load_family

    tuner = SynthesisTuner(load_family([copy]), TuneOptions(crops=8, crop=64, steps=1), tmp_path / "tune")
    tuner.encode_crops(sorted(data.glob("*.png")))
    assert (tuner.codes["refine"] > 0).any()
    with torch.no_grad():
        refined = tuner.loss(np.arange(8), 0).item()
        tuner.codes["refine"][:] = 0
        assert tuner.loss(np.arange(8), 0).item() > refined
    # --refinement-size 0 takes the level away again.
    assert main(["fit-tables", str(copy), "--crops", "8", "--data", str(data), "--threads", "1",
                 "--measure-images", "0", "--refinement-size", "0"]) == 0
    registry.clear_cache()
    assert len(unpack(dqcodec.encode(pixels, model=f"{copy}.json"))[1]) == 3
    assert not any(key.startswith("refinement.") for key in load_file(f"{copy}.safetensors"))


def _copy_model(stem, folder, name="hdq-tiny"):
    import shutil

    folder.mkdir(exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(f"{stem}{suffix}", folder / f"{name}{suffix}")
    return folder / name


def test_tune_synthesis_trains_the_nonlinear_synthesis_on_the_encoders_codes_and_keeps_the_rest(tiny_model, tmp_path,
                                                                                                 capsys):
    from dqcodec.train.tune_synthesis import SynthesisTuner, TuneOptions, load_family

    stem, data = tiny_model
    copy = _copy_model(stem, tmp_path / "m")
    before = load_file(f"{copy}.safetensors")
    options = TuneOptions(crops=8, crop=64, steps=12, learning_rate=3e-3)
    tuner = SynthesisTuner(load_family([copy]), options, tmp_path / "probe")
    tuner.encode_crops(sorted(data.glob("*.png")))
    rows = np.arange(8)
    with torch.no_grad():
        start = tuner.loss(rows, 0).item()
    tuner.train(save_every=100)
    with torch.no_grad():
        assert tuner.loss(rows, 0).item() < start  # the decoding of the encoded crops got better

    assert main(["tune-synthesis", str(copy), "--work", str(tmp_path / "work"), "--crops", "8", "--crop", "64",
                 "--steps", "3", "--save-every", "2", "--data", str(data), "--threads", "1", "--measure-images", "1"]) == 0
    assert "hdq-tiny: Kodak" in capsys.readouterr().out
    after = load_file(f"{copy}.safetensors")
    kept = [key for key in before if not key.startswith(("synthesis.layers.", "coarse_synthesis."))]
    assert kept and all(np.array_equal(before[key], after[key]) for key in kept)  # analysis, linear path, codes, tables
    assert any(not np.array_equal(before[key], after[key]) for key in before if key.startswith("synthesis.layers."))
    info = json.loads(copy.with_suffix(".json").read_text())
    assert "tune-synthesis" in info["training"]["recipe"] and info["training"]["synthesis_tuning"][-1]["steps"] == 3
    assert info["training"]["steps"] == 6 and info["kodak"]["images"] == 1  # the training record stays
    assert {path.name for path in (tmp_path / "work").iterdir()} == {"codes.npz", "state.pt"}
    assert not list((tmp_path / "m").glob(".tune-synthesis-*"))
    pixels = np.asarray(Image.open(data / "0.png"))
    registry.clear_cache()
    assert np.asarray(dqcodec.decode(dqcodec.encode(pixels, model=str(copy.with_suffix(".json"))))).shape == pixels.shape


def test_tune_synthesis_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    from dqcodec.train import tune_synthesis
    from dqcodec.train.tune_synthesis import SynthesisTuner, TuneOptions, load_family

    stem, data = tiny_model
    files = sorted(data.glob("*.png"))
    options = TuneOptions(crops=8, crop=64, steps=4, learning_rate=3e-3)

    def tuned(work):
        tuner = SynthesisTuner(load_family([stem]), options, work)
        tuner.encode_crops(files)
        tuner.train(save_every=2)
        return [parameter.detach().clone() for parameter in tuner.parameters]

    whole = tuned(tmp_path / "whole")
    calls = []
    loss = SynthesisTuner.loss

    def stopping(self, rows, level):
        calls.append(level)
        if len(calls) == 3:  # stopped during step 3, after the state of step 2 was saved
            raise KeyboardInterrupt
        return loss(self, rows, level)

    monkeypatch.setattr(tune_synthesis.SynthesisTuner, "loss", stopping)
    with pytest.raises(KeyboardInterrupt):
        tuned(tmp_path / "split")
    monkeypatch.setattr(tune_synthesis.SynthesisTuner, "loss", loss)
    assert all(torch.equal(a, b) for a, b in zip(whole, tuned(tmp_path / "split")))


def test_tune_synthesis_refuses_bad_input_in_one_line(tiny_model, tmp_path, capsys):
    stem, data = tiny_model
    copy = _copy_model(stem, tmp_path / "m")
    untouched = (tmp_path / "m" / "hdq-tiny.safetensors").read_bytes()
    common = ["--work", str(tmp_path / "work"), "--data", str(data), "--measure-images", "0", "--crop", "64"]
    cases = {
        (str(tmp_path / "missing"),): "no such model file",
        (str(registry.WEIGHTS_DIR / "dq-q3"),): "tune-synthesis tunes hdq models",
        (str(copy), "--steps", "0"): "--steps 0",
        (str(copy), "--crops", "4"): "--crops 4",
        (str(copy), "--crop", "100"): "--crop 100",
        (str(copy), "--learning-rate", "0"): "--learning-rate 0",
    }
    for args, message in cases.items():
        assert main(["tune-synthesis", *common, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # The codes of one run are not read by a run with other options.
    assert main(["tune-synthesis", str(copy), *common, "--crops", "8", "--steps", "1"]) == 0
    capsys.readouterr()  # that run's progress bars
    assert main(["tune-synthesis", str(copy), *common, "--crops", "16", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds the codes of another run" in err and err.count("\n") == 1, err
    assert (tmp_path / "m" / "hdq-tiny.safetensors").read_bytes() != untouched  # only the first run wrote it
    # A second tuning (another --work) continues from the first and is recorded after it.
    assert main(["tune-synthesis", str(copy), *common[2:], "--work", str(tmp_path / "again"), "--crops", "8",
                 "--steps", "2", "--seed", "1"]) == 0
    training = json.loads(copy.with_suffix(".json").read_text())["training"]
    assert [run["steps"] for run in training["synthesis_tuning"]] == [1, 2]
    assert training["recipe"].count("tune-synthesis") == 2 and "(seed 1)" in training["recipe"]
