"""The runtimes that code a model file, and the light install.

The block codecs are coded by a plain-numpy runtime (:mod:`dqcodec.models.block_runtime`), the
only one the base install (``pip install dqcodec``, no torch) has; the torch network of the same
file (:mod:`dqcodec.models.torch_runtime`) must write the same bytes and decode the same pixels,
for every such model in the package (shipped and earlier releases). The neural models of the
package (``install`` "train" in ``dqcodec models``) need torch: a one-line error without it. The light commands (``--help``,
``info``, ``models``, ``encode``, ``decode`` and their errors) import no torch; an architecture
without a light runtime is a one-line error there.
"""

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dqcodec
from dqcodec.models import registry
from dqcodec.paths import kodak_dir

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.2.0"


def _runtime_of(stem: Path) -> str:
    info = json.loads(stem.with_suffix(".json").read_text())
    return registry.ARCHITECTURES[info["architecture"]].runtime(info["config"])


# The models of the package (and of earlier releases) that the block runtime codes: in numpy,
# byte for byte as their torch networks. hdq's light runtime is compared with its network below,
# within one 8-bit level (float32 convolutions in another library).
BLOCK_STEMS = [stem for stem in sorted(path.with_suffix("") for path in registry.WEIGHTS_DIR.glob("*.json")) + sorted(
    path.with_suffix("") for path in registry.RELEASES_DIR.glob("*/*.json"))
    if _runtime_of(stem) == registry.BLOCK_RUNTIME]
LIGHT_MODELS = [model["name"] for model in registry.list_models() if model["install"] == "base"]
NEURAL_MODELS = [model["name"] for model in registry.list_models() if model["install"] == "train"]
IMAGES = {name: np.asarray(Image.open(FIXTURES / name)) for name in ("kodim23-crop.png", "flat-colours.png")}
HEAVY = ("torch", "torchvision", "compressai", "pytorch_msssim", "scipy", "matplotlib")


def _use_runtime(monkeypatch, runtime: str) -> None:
    """Code every architecture with ``runtime`` (forgetting the runtimes loaded so far)."""
    for name, architecture in list(registry.ARCHITECTURES.items()):
        monkeypatch.setitem(registry.ARCHITECTURES, name, dataclasses.replace(architecture, runtime=lambda config: runtime))
    registry.clear_cache()


@pytest.fixture
def fresh_cache():
    registry.clear_cache()
    yield
    registry.clear_cache()


@pytest.mark.parametrize("stem", BLOCK_STEMS, ids=lambda stem: str(stem.relative_to(registry.WEIGHTS_DIR)))
def test_both_runtimes_write_the_same_bytes_and_decode_the_same_pixels(stem, monkeypatch, fresh_cache):
    model = f"{stem}.json"
    light = {name: dqcodec.encode(pixels, model=model) for name, pixels in IMAGES.items()}
    light_pixels = {name: np.asarray(dqcodec.decode(data)) for name, data in light.items()}
    _use_runtime(monkeypatch, registry.TORCH_RUNTIME)
    assert type(registry.load_model(registry.register_checkpoint(Path(model)))[0]).__name__ == "TorchRuntime"
    for name, pixels in IMAGES.items():
        assert dqcodec.encode(pixels, model=model) == light[name]
        assert np.array_equal(np.asarray(dqcodec.decode(light[name])), light_pixels[name])


@pytest.mark.parametrize("path", sorted(FIXTURES.parent.glob("release-*/*.dqc")), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_files_of_earlier_releases_decode_the_same_under_both_runtimes(path, monkeypatch, fresh_cache):
    light = np.asarray(dqcodec.decode(path))
    _use_runtime(monkeypatch, registry.TORCH_RUNTIME)
    assert np.array_equal(np.asarray(dqcodec.decode(path)), light)


def _run_cli(argv: list[str], block_torch: bool, cwd: Path) -> subprocess.CompletedProcess:
    """``dqcodec ARGV`` in a fresh interpreter; its last stderr line lists the heavy modules it
    loaded. With ``block_torch``, importing torch and the other [train] modules fails, as in the
    base install."""
    blocker = textwrap.dedent(f"""
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Missing())
        """)
    script = "import json, sys\n" + (blocker if block_torch else "") + textwrap.dedent(f"""
        from dqcodec.codec.cli import main
        try:
            status = main(json.loads(sys.argv[1]))
        except SystemExit as exit:
            status = exit.code
        print("HEAVY=" + json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))), file=sys.stderr)
        sys.exit(status)
        """)
    return subprocess.run([sys.executable, "-c", script, json.dumps(argv)], capture_output=True, text=True, cwd=cwd)


def _heavy(result: subprocess.CompletedProcess) -> list[str]:
    return json.loads(result.stderr.strip().splitlines()[-1].removeprefix("HEAVY="))


def test_the_light_commands_and_their_errors_import_no_torch(tmp_path):
    Image.fromarray(IMAGES["kodim23-crop.png"]).save(tmp_path / "in.png")
    (tmp_path / "empty.dqc").write_bytes(b"")
    (tmp_path / "junk.dqc").write_bytes(b"not a dqc file at all")
    runs = {
        ("--help",): 0,
        ("models",): 0,
        ("encode", "in.png", "a.dqc"): 0,
        ("info", "--json", "a.dqc"): 0,
        ("decode", "a.dqc", "out.png"): 0,
        ("encode", "in.png", "b.dqc", "--quality", "99"): 2,
        ("encode", "missing.png", "b.dqc"): 2,
        ("decode", "empty.dqc", "out2.png"): 2,
        ("info", "junk.dqc"): 2,
        ("decode", "missing.dqc", "out2.png"): 2,
    }
    for argv, status in runs.items():
        result = _run_cli(list(argv), block_torch=False, cwd=tmp_path)
        assert result.returncode == status, (argv, result.stderr)
        assert _heavy(result) == [], argv
        if status == 2:
            assert len(result.stderr.strip().splitlines()) == 2, (argv, result.stderr)  # one line, then HEAVY=
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(dqcodec.decode(tmp_path / "a.dqc")))


@pytest.mark.parametrize("model", LIGHT_MODELS)
def test_without_torch_every_light_model_round_trips(model, tmp_path):
    Image.fromarray(IMAGES["kodim23-crop.png"]).save(tmp_path / "in.png")
    for argv in (["encode", "in.png", "a.dqc", "--model", model], ["decode", "a.dqc", "out.png"]):
        result = _run_cli(argv, block_torch=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert _heavy(result) == [], argv
    assert (tmp_path / "a.dqc").read_bytes() == dqcodec.encode(IMAGES["kodim23-crop.png"], model=model)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(dqcodec.decode(tmp_path / "a.dqc")))


def test_without_torch_a_neural_model_is_a_one_line_error(tmp_path):
    """A shipped neural model (by name), else an hdq checkpoint with a refinement level (its
    network codes it: the light hdq runtime has no refinement level)."""
    checkpoint = registry.WEIGHTS_DIR / "hdq-q2.json"
    if NEURAL_MODELS:
        model = NEURAL_MODELS[0]
    else:
        info = json.loads(checkpoint.read_text())
        info["config"]["refinement_size"] = 32
        model = str(tmp_path / "hdq-q2.json")
        Path(model).write_text(json.dumps(info))
        for stem in ("hdq-q2", info["shared_weights"]):
            (tmp_path / f"{stem}.safetensors").write_bytes((checkpoint.parent / f"{stem}.safetensors").read_bytes())
    Image.fromarray(IMAGES["kodim23-crop.png"]).save(tmp_path / "in.png")
    result = _run_cli(["encode", "in.png", "a.dqc", "--model", model], block_torch=True, cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[0]
    assert message.startswith(f"dqcodec: error: model '{Path(model).stem}' (HierarchicalDQCodec)")
    assert message.endswith('needs torch, which this install lacks: pip install "dqcodec[train]"')
    assert len(result.stderr.strip().splitlines()) == 2 and not (tmp_path / "a.dqc").exists()


HDQ_MODEL = registry.WEIGHTS_DIR / "hdq-q1.json"


def _runtimes(stem: Path):
    """The numpy/onnxruntime runtime and the torch runtime of one hdq model file."""
    from dqcodec.models.hdq_runtime import HDQRuntime
    from dqcodec.models.torch_runtime import TorchRuntime

    arrays, info, _ = registry.read_model(stem)
    return HDQRuntime(arrays, info), TorchRuntime(arrays, info)


def test_hdq_is_coded_without_torch_as_its_network_codes_it():
    """hdq's light runtime (numpy, onnxruntime) chooses the network's indices and decodes them to
    the network's pixels within one 8-bit level (float32 convolutions in another library)."""
    light, network = _runtimes(HDQ_MODEL.with_suffix(""))
    assert registry.model_install(json.loads(HDQ_MODEL.read_text())) == "base"
    pixels = np.asarray(Image.open(kodak_dir() / "kodim05.png"))[:128, :192]
    image = pixels.transpose(2, 0, 1)[None].astype(np.float64) / 255
    ours, theirs = light.compress(image), network.compress(image)
    assert [level.name for level in ours] == [level.name for level in theirs] == ["flat", "coarse", "fine"]
    for mine, reference in zip(ours, theirs):
        assert np.mean(mine.indices == reference.indices) > 0.999, mine.name
    decoded = network.decompress(theirs)
    for levels in (ours, theirs):
        assert np.abs(np.rint(light.decompress(levels) * 255) - np.rint(network.decompress(levels) * 255)).max() <= 1
    assert 10 * np.log10(1 / np.mean((np.rint(decoded * 255) / 255 - image) ** 2)) > 20  # a textured crop at q1


def test_hdq_tiles_code_the_same_in_forked_workers(tmp_path):
    """onnxruntime's sessions are made anew in each forked worker (its thread pools do not
    survive a fork), and the parent's are never destroyed there (their destructor waited forever
    for threads the fork did not copy once a worker coded a second tile): 4 tiles coded by 2
    workers, after the parent has coded, give the same file, in a fresh interpreter that may not
    hang the tests."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from PIL import Image
        import dqcodec
        pixels = np.asarray(Image.open(sys.argv[1]))[:512, :512]
        one = dqcodec.encode(pixels, model="hdq-q1", tile_size=256)
        assert dqcodec.encode(pixels, model="hdq-q1", tile_size=256, workers=2) == one
        assert np.array_equal(np.asarray(dqcodec.decode(one, workers=2)), np.asarray(dqcodec.decode(one)))
        print("same")
        """)
    result = subprocess.run([sys.executable, "-c", script, str(kodak_dir() / "kodim05.png")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "same", result.stderr
