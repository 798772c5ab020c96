"""Model files and the shipped models: safetensors weights + JSON description, by architecture.

A model ``NAME`` is stored as ``NAME.safetensors`` (tensors) and ``NAME.json`` (architecture,
config, how it was trained, measured Kodak figures); nothing is ever unpickled. Each
architecture's entry in ``ARCHITECTURES`` says how its tensors are stored (integer buffers
narrowed, context tables cut to their alphabets) and how its fingerprint is made; the
fingerprint is written into every .dqc file, so a file made with any other weights is refused.

The package ships the current models in ``weights/`` and, while they are small, the models of
earlier releases whose weights changed in ``weights/releases/<version>/``; a file is decoded
with whichever of them has its fingerprint. ``weights/releases/history.json`` lists the fingerprint of
every model ever shipped with its release, so a file whose weights are no longer in the
package is refused with the release that can decode it.

Each entry also names the runtime that codes its files (:class:`~dqcodec.models.interface.CodingRuntime`):
plain numpy for the block codecs (:mod:`dqcodec.models.block_runtime`, all that the base install
``pip install dqcodec`` has), the torch network itself otherwise
(:mod:`dqcodec.models.torch_runtime`, with ``pip install "dqcodec[train]"``). This module imports
no torch: listing models, fingerprints and coding with a numpy runtime stay light; the networks'
modules are imported when a network is built.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors_bytes
from safetensors.numpy import save as save_safetensors_bytes

from dqcodec.models.context_tables import ROWS_SUFFIX, STORAGE_DTYPES, pack_tables, same_stored_tables, unpack_tables
from dqcodec.models.interface import CodingRuntime

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
RELEASES_DIR = WEIGHTS_DIR / "releases"
HISTORY_FILE = RELEASES_DIR / "history.json"


def standard_fingerprint(weight_bytes: bytes, config: dict) -> bytes:
    """16 bytes: sha256 of the safetensors file and the config JSON (keys sorted). The measured
    figures and training notes in the JSON may be rewritten; weights and config may not."""
    config_bytes = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(weight_bytes + config_bytes).digest()[:16]


class MissingRuntime(Exception):
    """The runtime that codes a model needs what this install lacks (torch: ``pip install
    "dqcodec[train]"``); the message is one line."""


BLOCK_RUNTIME = "dqcodec.models.block_runtime:BlockRuntime"
TORCH_RUNTIME = "dqcodec.models.torch_runtime:TorchRuntime"
HDQ_RUNTIME = "dqcodec.models.hdq_runtime:HDQRuntime"
BASE_RUNTIMES = (BLOCK_RUNTIME, HDQ_RUNTIME)  # what the base install codes with (no torch)


def resolve(reference: type | str) -> type:
    """A class, or ``"package.module:Class"`` -> that class (importing its module)."""
    if not isinstance(reference, str):
        return reference
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Architecture:
    """How one architecture's models are built, stored, fingerprinted and coded.

    network_class: the codec network class (implements :mod:`dqcodec.models.interface`, an
        ``nn.Module``), built as ``network(config(**json_config))``; or its ``"module:Class"``
        name (the entries below), imported by :attr:`network` when first needed, so that the
        registry imports without torch.
    config_class: its config dataclass, or that class's ``"module:Class"`` name.
    runtime: the runtime that codes a model's files, from its JSON config -> ``"module:Class"``
        of a :class:`~dqcodec.models.interface.CodingRuntime` built as ``runtime(arrays, info)``
        (the file's arrays and its JSON): :data:`BLOCK_RUNTIME` (numpy, the base install) or
        :data:`TORCH_RUNTIME` (the network in torch, the ``[train]`` install).
    integer_dtypes: state-dict name -> storage dtype of integer buffers (narrowed to what holds
        their values); float tensors are stored as float32.
    packed_tables: state-dict prefixes of :class:`~dqcodec.models.entropy.ContextIndexModel`s
        whose tables are stored cut to each codebook's alphabet (a model without that entropy
        model, e.g. an hdq model without a refinement, stores none).
    half_precision: state-dict prefixes of float tensors stored as float16 (convolution weights,
        where float16 costs nothing measurable and halves the file); the rest stays float32.
    shareable: state-dict prefixes of the tensors that the levels of one family may share (the
        transforms of levels that differ only in codebooks and tables): saved with ``shared``,
        they are stored once, in a shared weights file beside the models (:func:`save_model`).
    """

    network_class: type | str
    config_class: type | str
    runtime: Callable[[dict], str] = lambda config: TORCH_RUNTIME
    integer_dtypes: Mapping[str, type] = field(default_factory=dict)
    packed_tables: tuple[str, ...] = ()
    fingerprint: Callable[[bytes, dict], bytes] = standard_fingerprint
    half_precision: tuple[str, ...] = ()
    shareable: tuple[str, ...] = ()

    def float_storage(self, key: str) -> type:
        """The dtype a float tensor of state-dict name ``key`` is stored in."""
        return np.float16 if key.startswith(self.half_precision) else np.float32

    @property
    def network(self) -> type:
        return resolve(self.network_class)

    @property
    def config(self) -> type:
        return resolve(self.config_class)


def _context_tables(prefix: str) -> dict[str, type]:
    return {f"{prefix}.{name}": dtype for name, dtype in STORAGE_DTYPES.items()}


def _dq_runtime(config: dict) -> str:
    """DQ block codecs in numpy, unless a post-filter (a small CNN) follows the synthesis."""
    return BLOCK_RUNTIME if config.get("postfilter_channels", 0) == 0 else TORCH_RUNTIME


def _hdq_runtime(config: dict) -> str:
    """hdq in numpy and onnxruntime, unless it has a refinement level (coded by its network)."""
    return HDQ_RUNTIME if config.get("refinement_size", 0) == 0 else TORCH_RUNTIME


# The JSON's "architecture" -> its entry. A new architecture is a module under models/ and a line here
# (or a call to register_architecture).
ARCHITECTURES: dict[str, Architecture] = {
    "DQCodecNet": Architecture(
        "dqcodec.models.codec_net:DQCodecNet", "dqcodec.models.codec_net:CodecConfig", _dq_runtime,
        _context_tables("entropy"), ("entropy",),
    ),
    "SHVQCodecNet": Architecture(
        "dqcodec.models.shvq_codec:SHVQCodecNet", "dqcodec.models.shvq_codec:SHVQCodecConfig", lambda config: BLOCK_RUNTIME,
        {**_context_tables("entropy"), "symbol_centre": np.uint16}, ("entropy",),
    ),
    "HierarchicalDQCodec": Architecture(
        "dqcodec.models.hdq_codec:HierarchicalDQCodec",
        "dqcodec.models.hdq_codec:HDQConfig",
        _hdq_runtime,
        integer_dtypes={**_context_tables("coarse_entropy"), **_context_tables("fine_entropy"),
         "fine_entropy.coarse_class": np.uint8, "fine_entropy.coarse_edges": np.int32,
         "fine_entropy.activity_edges": np.int32, "fine_entropy.predicted_bins": np.uint8,
         "fine_entropy.predicted_spread_edges": np.int32,
         "fine_entropy.marginal": np.uint16, **_context_tables("refinement.entropy"),
         "refinement.entropy.cell_bucket": np.uint8},
        packed_tables=("coarse_entropy", "fine_entropy", "refinement.entropy"),
        half_precision=("analysis.", "coarse_analysis.", "synthesis.", "coarse_synthesis.",
                        "fine_quantizer.projection.", "coarse_quantizer.projection."),
        # Levels of one network (refitted by --init-from with a new --lambda or --codebook-size,
        # or trained jointly by --arch hdq-family) differ only in their fine codebooks and tables.
        shareable=("analysis.", "coarse_analysis.", "synthesis.", "coarse_synthesis.", "fine_quantizer.projection.",
                   "coarse_quantizer.", "coarse_entropy.", "synthesis_gains"),
    ),
    # Trained only: its levels are exported as HierarchicalDQCodec models (HDQFamily.level).
    "HDQFamily": Architecture("dqcodec.models.hdq_family:HDQFamily", "dqcodec.models.hdq_family:HDQFamilyConfig"),
    "DQAE": Architecture("dqcodec.models.dqae:DQAE", "dqcodec.models.dqae:DQAEConfig"),  # a likelihood model (no compress): trained and stored, not coded
    # The same network with its index priors, coded losslessly (made by 'dqcodec export-lossless').
    "LosslessDQAE": Architecture("dqcodec.models.dqae_lossless:LosslessDQAE", "dqcodec.models.dqae_lossless:LosslessDQAEConfig"),
}


def register_architecture(name: str, architecture: Architecture) -> None:
    """Make models whose JSON says ``"architecture": name`` loadable (e.g. from a plug-in)."""
    ARCHITECTURES[name] = architecture


def architecture_name(model: nn.Module) -> str:
    """The registry name of ``model``'s architecture. Raises KeyError if it has none."""
    for name, architecture in ARCHITECTURES.items():
        if type(model) is architecture.network:
            return name
    raise KeyError(f"{type(model).__name__} is not a registered architecture")


def list_models(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """Descriptions of the shipped models, sorted by family then quality.

    Each dict has at least name, family, quality, bpp, psnr, ms_ssim (Kodak means, measured
    from real files), install (:func:`model_install`) and description.
    """
    models = []
    for path in sorted(weights_dir.glob("*.json")):
        info = json.loads(path.read_text())
        kodak = info.get("kodak", {})
        models.append(
            {
                "name": info["name"],
                "family": info["family"],
                "quality": info["quality"],
                "bpp": kodak.get("bpp"),
                "psnr": kodak.get("psnr"),
                "ms_ssim": kodak.get("ms_ssim"),
                "install": model_install(info),
                "description": info.get("description", ""),
            }
        )
    return sorted(models, key=lambda m: (m["family"], m["quality"]))


def model_install(info: dict) -> str:
    """The install that codes the model of JSON ``info``: ``"base"`` (its architecture has a numpy
    runtime) or ``"train"`` (its network needs torch, ``pip install "dqcodec[train]"``)."""
    return "base" if ARCHITECTURES[info["architecture"]].runtime(info["config"]) in BASE_RUNTIMES else "train"


def model_names(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the shipped models."""
    return [m["name"] for m in list_models(weights_dir)]


def round_to_storage(model: nn.Module) -> None:
    """Round ``model``'s float tensors in place to the precision :func:`save_model` stores them
    in (float16 where the architecture says so), so that what is fitted to the network before it
    is saved (context tables, code usage) is fitted to the network that will be loaded."""
    import torch

    architecture = ARCHITECTURES[architecture_name(model)]
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.from_numpy(tensor.cpu().numpy().astype(architecture.float_storage(key))))


def save_model(model: nn.Module, stem: Path, info: dict, shared: str | None = None) -> None:
    """Write ``stem.safetensors`` and ``stem.json`` as the model's architecture stores them;
    ``info`` needs name, family, quality.

    shared: the name of a shared weights file ``<stem's folder>/<shared>.safetensors`` that gets
        the architecture's shareable tensors (written when it does not exist yet; when it does,
        they must be identical to what it holds); the model's own file keeps the rest and its
        JSON names the shared file (``"shared_weights"``).
    Raises ValueError when ``shared`` is not a plain name, or its file holds other tensors.
    """
    name = architecture_name(model)
    architecture = ARCHITECTURES[name]
    tensors = {}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        floats = architecture.float_storage(key)
        storage = architecture.integer_dtypes.get(key, floats if array.dtype.kind == "f" else array.dtype)
        tensors[key] = array.astype(storage)
    for prefix in architecture.packed_tables:
        if f"{prefix}.frequencies" in tensors:  # an optional level (hdq's refinement) may be absent
            tensors[f"{prefix}.frequencies"], tensors[f"{prefix}.{ROWS_SUFFIX}"] = pack_tables(
                tensors[f"{prefix}.frequencies"], tensors[f"{prefix}.alphabet_sizes"])
    stem.parent.mkdir(parents=True, exist_ok=True)
    if shared is not None:
        tensors = _share(tensors, architecture.shareable, Path(stem).parent, shared)
        info = {**info, "shared_weights": shared}
    Path(f"{stem}.safetensors").write_bytes(save_safetensors_bytes(tensors))
    description = {"architecture": name, "config": asdict(model.config), **info}
    Path(f"{stem}.json").write_text(json.dumps(description, indent=2) + "\n")
    clear_cache()


def _share(tensors: dict[str, np.ndarray], prefixes: tuple[str, ...], folder: Path, shared: str) -> dict[str, np.ndarray]:
    """Move the tensors under ``prefixes`` to the shared file ``folder/shared.safetensors`` (or
    check that they equal its contents); returns the tensors left for the model's own file."""
    if not shared or Path(shared).name != shared or not prefixes:
        raise ValueError(f"shared weights {shared!r}: need a file name (no folder) and an architecture that shares tensors")
    common = {key: array for key, array in tensors.items() if key.startswith(prefixes)}
    path = folder / f"{shared}.safetensors"
    if path.is_file():
        existing = load_safetensors_bytes(path.read_bytes())
        for key in sorted(set(common) | set(existing)):
            if key not in common or key not in existing or not (
                    same_stored_tables(existing[key], common[key]) if key.endswith(".frequencies")
                    else existing[key].dtype == common[key].dtype and np.array_equal(existing[key], common[key])):
                raise ValueError(f"tensor {key} differs from the shared weights {path}: a level of another network, "
                                 "or one whose tables were fitted on other data (--data)")
    else:
        path.write_bytes(save_safetensors_bytes(common))
    return {key: array for key, array in tensors.items() if key not in common}


def _weight_bytes(stem: Path, info: dict) -> tuple[bytes, bytes]:
    """(the model's own safetensors bytes, its shared weights' bytes or b"")."""
    own = Path(f"{stem}.safetensors").read_bytes()
    shared = info.get("shared_weights")
    if shared is None:
        return own, b""
    if not isinstance(shared, str) or Path(shared).name != shared:
        raise ValueError(f"{stem}.json: shared_weights must name a file beside it, not {shared!r}")
    return own, (Path(stem).parent / f"{shared}.safetensors").read_bytes()


def read_model(stem: Path) -> tuple[dict[str, np.ndarray], dict, bytes]:
    """Read ``stem.safetensors`` + ``stem.json`` (and the shared weights its JSON names) ->
    (arrays as stored, info, fingerprint); no torch. The fingerprint covers the shared weights.

    Raises FileNotFoundError or ValueError when the files are missing, damaged or name no known
    architecture.
    """
    info = json.loads(Path(f"{stem}.json").read_text())
    if info.get("architecture") not in ARCHITECTURES:
        raise ValueError(f"{stem}.json: unknown architecture {info.get('architecture')!r}")
    architecture = ARCHITECTURES[info["architecture"]]
    own, shared = _weight_bytes(stem, info)
    arrays = _tensors(own, f"{stem}.safetensors")
    if shared:
        common = _tensors(shared, f"{info['shared_weights']}.safetensors")
        if set(common) & set(arrays):
            raise ValueError(f"{stem}.safetensors repeats tensors of its shared weights {info['shared_weights']}")
        arrays = {**common, **arrays}
    return arrays, info, architecture.fingerprint(own + shared, info["config"])


def _tensors(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The arrays of safetensors bytes; ValueError (naming ``source``) when they are damaged."""
    try:
        return load_safetensors_bytes(data)
    except SafetensorError as error:
        raise ValueError(f"{source} is damaged ({error})") from None


def build_network(arrays: dict[str, np.ndarray], info: dict, source: str = "model") -> nn.Module:
    """The float32 network (eval mode) of a model's ``arrays`` and JSON ``info`` (needs torch).

    Raises ValueError (naming ``source``) when a tensor is missing or has the wrong shape.
    """
    import torch

    architecture = ARCHITECTURES[info["architecture"]]
    model = architecture.network(architecture.config(**info["config"]))
    arrays = dict(arrays)
    reference = model.state_dict()
    for prefix in architecture.packed_tables:
        tables, sizes = f"{prefix}.frequencies", f"{prefix}.alphabet_sizes"
        if tables in arrays and sizes in arrays:
            arrays[tables] = unpack_tables(arrays[tables], arrays[sizes], tuple(reference[tables].shape),
                                           arrays.get(f"{prefix}.{ROWS_SUFFIX}"))
    state = {}
    for key, tensor in reference.items():
        if key not in arrays:
            raise ValueError(f"{source}: missing tensor {key}")
        if arrays[key].shape != tuple(tensor.shape):
            raise ValueError(f"{source}: tensor {key} has shape {arrays[key].shape}, expected {tuple(tensor.shape)}")
        state[key] = torch.from_numpy(arrays[key]).to(tensor.dtype)
    model.load_state_dict(state)
    model.eval()
    return model


def load_checkpoint(stem: Path) -> tuple[nn.Module, dict, bytes]:
    """Load ``stem.safetensors`` + ``stem.json`` -> (float32 model in eval mode, info, fingerprint).

    Raises FileNotFoundError or ValueError when the files are missing or inconsistent.
    """
    arrays, info, fingerprint = read_model(stem)
    return build_network(arrays, info, f"{stem}.safetensors"), info, fingerprint


def file_fingerprint(stem: Path) -> bytes:
    """The fingerprint of model files ``stem.*`` without building the network."""
    info = json.loads(Path(f"{stem}.json").read_text())
    architecture = ARCHITECTURES.get(info.get("architecture"))
    if architecture is None:
        raise ValueError(f"{stem}.json: unknown architecture {info.get('architecture')!r}")
    return architecture.fingerprint(b"".join(_weight_bytes(stem, info)), info["config"])


# Checkpoints outside the package that this process was asked to use: model name -> stems.
_CHECKPOINTS: dict[str, list[Path]] = {}
CHECKPOINT_PREFIX = "checkpoint:"


def register_checkpoint(path: Path) -> str:
    """Make a checkpoint (``stem``, ``stem.json`` or ``stem.safetensors``) usable for coding.

    Returns the key to pass to :func:`load_model` (``"checkpoint:<stem>"``: a checkpoint never
    stands in for a shipped model of the same name). Files it writes carry the name from its
    JSON and decode in this process by their fingerprint.
    Raises FileNotFoundError / ValueError for a missing or malformed checkpoint.
    """
    path = Path(path)
    stem = (path.with_suffix("") if path.suffix in (".json", ".safetensors") else path).resolve()
    info = json.loads(Path(f"{stem}.json").read_text())
    if not Path(f"{stem}.safetensors").is_file():
        raise FileNotFoundError(f"{stem}.safetensors")
    if "name" not in info:
        raise ValueError(f"{stem}.json: no model name")
    stems = _CHECKPOINTS.setdefault(info["name"], [])
    if stem not in stems:
        stems.append(stem)
    return f"{CHECKPOINT_PREFIX}{stem}"


def load_model(key: str) -> tuple[CodingRuntime, dict, bytes]:
    """A shipped model by name, or a checkpoint by the key of :func:`register_checkpoint`, as
    its coding runtime -> (runtime, info, fingerprint); cached. Raises KeyError for an unknown
    name, :class:`MissingRuntime` when its runtime needs what this install lacks."""
    if key.startswith(CHECKPOINT_PREFIX):
        return _load_for_coding(key[len(CHECKPOINT_PREFIX) :])
    if key not in model_names():
        raise KeyError(key)
    return _load_for_coding(str(WEIGHTS_DIR / key))


def find_model(name: str, fingerprint: bytes) -> tuple[CodingRuntime, dict, bytes]:
    """The model named ``name`` whose fingerprint is ``fingerprint`` (the shipped one, one of an
    earlier release still in the package, or a registered checkpoint), as for :func:`load_model`.

    Raises KeyError with a one-line reason when there is none (naming the release that shipped
    those weights, when ``history.json`` knows it), :class:`MissingRuntime` as :func:`load_model`.
    """
    releases = sorted(path.with_suffix("") for path in RELEASES_DIR.glob(f"*/{name}.json"))
    candidates = [WEIGHTS_DIR / name, *releases, *_CHECKPOINTS.get(name, [])]
    for stem in candidates:
        if Path(f"{stem}.json").is_file() and _fingerprint_of(str(stem)) == fingerprint:
            return _load_for_coding(str(stem))
    shipped = json.loads(HISTORY_FILE.read_text()) if HISTORY_FILE.is_file() else {}
    known = shipped.get(fingerprint.hex())
    if known is not None:
        raise KeyError(
            f"file made by dqcodec {known['release']} with model {name!r}, whose weights this dqcodec no longer "
            f"ships; decode it with that release (pip install dqcodec=={known['release']})"
        )
    if not any(Path(f"{stem}.json").is_file() for stem in candidates):
        raise KeyError(f"file made with model {name!r}, which this dqcodec does not have")
    raise KeyError(f"file made with different weights for model {name!r} (fingerprint mismatch)")


@functools.lru_cache(maxsize=64)
def _fingerprint_of(stem: str) -> bytes:
    return file_fingerprint(Path(stem))


@functools.lru_cache(maxsize=8)
def _load_for_coding(stem: str) -> tuple[CodingRuntime, dict, bytes]:
    """The one place where a model becomes a coding runtime, the one its architecture names
    (float64 throughout, never modified after)."""
    arrays, info, fingerprint = read_model(Path(stem))
    runtime = ARCHITECTURES[info["architecture"]].runtime(info["config"])
    try:
        runtime_class = resolve(runtime)
    except ModuleNotFoundError as error:  # the base install: no torch
        raise MissingRuntime(
            f"model {info['name']!r} ({info['architecture']}) is coded by a network that needs {error.name}, "
            f'which this install lacks: pip install "dqcodec[train]"'
        ) from None
    return runtime_class(arrays, info), info, fingerprint


def clear_cache() -> None:
    """Forget loaded models (after model files were rewritten in this process)."""
    _fingerprint_of.cache_clear()
    _load_for_coding.cache_clear()
