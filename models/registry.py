"""The shipped models: safetensors weights + JSON description, one pair per quality level.

A model ``NAME`` is stored as ``weights/NAME.safetensors`` (tensors; integer tables as
uint16/uint8) and ``weights/NAME.json`` (architecture, config, how it was trained, measured
Kodak figures). Nothing is ever unpickled. The fingerprint written into every .dqc file is
a hash of the weights and the architecture config, so a file made by any other set of weights is refused.
"""

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors_bytes
from safetensors.numpy import save as save_safetensors_bytes

from dqcodec.models.codec_net import CodecConfig, DQCodecNet
from dqcodec.models.shvq_codec import SHVQCodecConfig, SHVQCodecNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The JSON's "architecture" -> (network class, its config dataclass).
ARCHITECTURES = {"DQCodecNet": (DQCodecNet, CodecConfig), "SHVQCodecNet": (SHVQCodecNet, SHVQCodecConfig)}
CodecNet = DQCodecNet | SHVQCodecNet
_TABLES, _ALPHABETS = "entropy.frequencies", "entropy.alphabet_sizes"
# Integer buffers are stored in the narrowest type that holds them.
_STORAGE_DTYPES = {
    "entropy.frequencies": np.uint16,
    "entropy.code_class": np.uint8,
    "entropy.code_level": np.int32,
    "symbol_centre": np.uint16,
}


def list_models(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """Descriptions of the shipped models, sorted by family then quality.

    Each dict has at least name, family, quality, bpp, psnr, ms_ssim (Kodak means, measured
    from real files) and description.
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
                "description": info.get("description", ""),
            }
        )
    return sorted(models, key=lambda m: (m["family"], m["quality"]))


def model_names(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the shipped models."""
    return [m["name"] for m in list_models(weights_dir)]


def save_model(model: CodecNet, stem: Path, info: dict) -> None:
    """Write ``stem.safetensors`` and ``stem.json``; ``info`` needs name, family, quality.

    Float weights are stored as float32 (they are small; the tables dominate the size).
    """
    tensors = {}
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        tensors[name] = array.astype(_STORAGE_DTYPES.get(name, np.float32 if array.dtype.kind == "f" else array.dtype))
    tensors[_TABLES] = _pack_tables(tensors[_TABLES], tensors[_ALPHABETS])
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.safetensors").write_bytes(save_safetensors_bytes(tensors))
    description = {"architecture": type(model).__name__, "config": asdict(model.config), **info}
    Path(f"{stem}.json").write_text(json.dumps(description, indent=2) + "\n")


def _pack_tables(tables: np.ndarray, alphabet_sizes: np.ndarray) -> np.ndarray:
    """(M, P, C, K) tables -> 1-D array of each codebook's (P, C, K_m) part: most codebooks
    use a handful of codes, so this is what keeps the shipped files small."""
    return np.concatenate([tables[m, :, :, :size].ravel() for m, size in enumerate(alphabet_sizes)])


def _unpack_tables(packed: np.ndarray, alphabet_sizes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_pack_tables`; entries beyond each alphabet are 1 (never used)."""
    m_count, phases, contexts, k_count = shape
    sizes = [int(size) for size in alphabet_sizes]
    if len(sizes) != m_count or max(sizes) > k_count or packed.size != phases * contexts * sum(sizes):
        raise ValueError("entropy tables do not match the model configuration")
    tables = np.ones(shape, dtype=packed.dtype)
    offset = 0
    for m, size in enumerate(sizes):
        count = phases * contexts * size
        tables[m, :, :, :size] = packed[offset : offset + count].reshape(phases, contexts, size)
        offset += count
    return tables


def load_checkpoint(stem: Path) -> tuple[CodecNet, dict, bytes]:
    """Load ``stem.safetensors`` + ``stem.json`` -> (model in eval mode, info dict, fingerprint).

    Raises FileNotFoundError or ValueError when the files are missing or inconsistent.
    """
    weight_bytes = Path(f"{stem}.safetensors").read_bytes()
    info = json.loads(Path(f"{stem}.json").read_text())
    if info.get("architecture") not in ARCHITECTURES:
        raise ValueError(f"{stem}.json: unknown architecture {info.get('architecture')!r}")
    network, config = ARCHITECTURES[info["architecture"]]
    model = network(config(**info["config"]))
    arrays = load_safetensors_bytes(weight_bytes)
    if _TABLES in arrays and _ALPHABETS in arrays:
        shape = tuple(model.state_dict()[_TABLES].shape)
        arrays[_TABLES] = _unpack_tables(arrays[_TABLES], arrays[_ALPHABETS], shape)
    state = {}
    for name, reference in model.state_dict().items():
        if name not in arrays:
            raise ValueError(f"{stem}.safetensors: missing tensor {name}")
        state[name] = torch.from_numpy(arrays[name].astype(np.float32 if reference.is_floating_point() else np.int32))
    model.load_state_dict(state)
    model.eval()
    # The measured figures and training notes in the JSON may be rewritten; the config may not.
    config_bytes = json.dumps(info["config"], sort_keys=True).encode()
    fingerprint = hashlib.sha256(weight_bytes + config_bytes).digest()[:16]
    return model, info, fingerprint


# Checkpoints outside the package that this process was asked to use, by model name.
_CHECKPOINTS: dict[str, Path] = {}


def register_checkpoint(path: Path) -> str:
    """Make a checkpoint (``stem``, ``stem.json`` or ``stem.safetensors``) usable by name.

    Returns the model name from its JSON; files it writes decode in this process by that name.
    Raises FileNotFoundError / ValueError for a missing or malformed checkpoint.
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    info = json.loads(Path(f"{stem}.json").read_text())
    if not Path(f"{stem}.safetensors").is_file():
        raise FileNotFoundError(f"{stem}.safetensors")
    _CHECKPOINTS[info["name"]] = stem
    load_model.cache_clear()
    return info["name"]


@functools.lru_cache(maxsize=8)
def load_model(name: str) -> tuple[CodecNet, dict, bytes]:
    """A shipped (or registered) model by name, ready for coding (synthesis in float64); cached.

    Raises KeyError for an unknown name.
    """
    if name in _CHECKPOINTS:
        stem = _CHECKPOINTS[name]
    elif name in model_names():
        stem = WEIGHTS_DIR / name
    else:
        raise KeyError(name)
    model, info, fingerprint = load_checkpoint(stem)
    model.synthesis.double()
    return model, info, fingerprint
