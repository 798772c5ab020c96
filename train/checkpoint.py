"""Resumable training state: weights, optimizer moments, step and RNG state.

The state is stored as safetensors (tensors) + JSON (scalars) in the run folder, never as a
pickle. It stays out of git; the exported model (``dqcodec.models.registry.save_model``)
is what carries a model from one machine to the next, and training can also start from it
with a fresh optimizer.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dqcodec.codec.errors import DQCodecError
from dqcodec.models.registry import ARCHITECTURES, WEIGHTS_DIR, load_checkpoint, read_model
from dqcodec.train.weight_average import WeightAverage


def save_state(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, step: int, generator: torch.Generator,
               average: WeightAverage | None = None) -> None:
    """Write ``path.safetensors`` and ``path.json`` (atomically, via temporary names), with the
    moving average of the weights when the run keeps one."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if average is not None:
        tensors |= average.state()
    optimizer_state = optimizer.state_dict()
    scalars = {"step": step, "param_groups": optimizer_state["param_groups"], "optimizer_steps": {}}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if key == "step":
                scalars["optimizer_steps"][str(index)] = float(value)
            else:
                tensors[f"optimizer.{index}.{key}"] = value.cpu().contiguous()
    tensors["rng"] = generator.get_state()
    tensors["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_initialized():
        for device, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_rng.{device}"] = cuda_state
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, f"{temporary}.safetensors")
    Path(f"{temporary}.json").write_text(json.dumps(scalars))
    Path(f"{temporary}.safetensors").replace(f"{path}.safetensors")
    Path(f"{temporary}.json").replace(f"{path}.json")


def load_state(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               average: WeightAverage | None = None) -> int:
    """Restore what :func:`save_state` wrote; returns the step to continue from. ``average``
    (built on ``net``) takes the saved average, or starts at the restored weights when the
    state holds none."""
    tensors = load_file(f"{path}.safetensors")
    scalars = json.loads(Path(f"{path}.json").read_text())
    net.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if average is not None:
        average.load(tensors)
    state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, step in scalars["optimizer_steps"].items():
        state.setdefault(int(index), {})["step"] = torch.tensor(step)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
    generator.set_state(tensors["rng"])
    torch.set_rng_state(tensors["torch_rng"])
    cuda_states = [tensors[f"cuda_rng.{device}"] for device in range(torch.cuda.device_count()) if f"cuda_rng.{device}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    return int(scalars["step"])


def load_start_model(stem: Path, network: type[nn.Module]) -> tuple[nn.Module, dict]:
    """(network, its JSON info): the exported model ``stem`` (path without extension) to start
    training from (``--init-from``).

    Raises DQCodecError (one line) when its files are missing or damaged, or when it is not a
    ``network`` (a DQ run cannot start from an SHVQ model, nor the reverse). A shipped model
    can be named by its name (``--init-from dq-q3``).
    """
    if not Path(f"{stem}.json").is_file() and (WEIGHTS_DIR / f"{stem}.json").is_file():
        stem = WEIGHTS_DIR / str(stem)
    return load_model_as(stem, network, f"--init-from {stem}")


def load_model_as(stem: Path, network: type[nn.Module], label: str, wanted: str | None = None) -> tuple[nn.Module, dict]:
    """(network, its JSON info): the exported model ``stem`` (path without extension), which must
    be a ``network``.

    Raises DQCodecError (one line, starting with ``label``) when its files are missing or
    damaged, or when it is another architecture (``wanted`` says what was expected; default
    "a <network class>").
    """
    try:
        net, info, _ = load_checkpoint(stem)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DQCodecError(f"{label}: cannot load the model ({error})") from None
    if not isinstance(net, network):
        raise DQCodecError(f"{label} is a {type(net).__name__}, not {wanted or 'a ' + network.__name__}")
    return net, info


# An hdq model's entropy tables and refinement codes: fitted at export (and by fit-tables), never trained.
TABLE_PREFIXES = ("fine_entropy.", "coarse_entropy.", "refinement.")


def load_hdq_without_tables(stem: Path, label: str, other_architecture: str) -> tuple[nn.Module, dict]:
    """(hdq network in eval mode, its JSON info) of model ``stem``, its entropy tables left at
    their initial values: what training and a recount of the tables start from, which also
    loads a model saved before the entropy model's contexts changed (its tables are dropped).

    Raises DQCodecError (one line, starting with ``label``) when the files are missing or
    damaged, or the model is another architecture (``other_architecture`` ends that message).
    """
    try:
        arrays, info, _ = read_model(stem)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DQCodecError(f"{label}: cannot load the model ({error})") from None
    if info["architecture"] != "HierarchicalDQCodec":
        raise DQCodecError(f"{label} is a {info['architecture']} model; {other_architecture}")
    architecture = ARCHITECTURES[info["architecture"]]
    try:
        net = architecture.network(architecture.config(**info["config"]))
    except (TypeError, ValueError) as error:
        raise DQCodecError(f"{label}.json: its config does not describe an hdq model ({error})") from None
    state = net.state_dict()
    kept = {key: value for key, value in arrays.items() if not key.startswith(TABLE_PREFIXES)}
    try:
        net.load_state_dict({**state, **{key: torch.from_numpy(value).to(state[key].dtype) for key, value in kept.items()}})
    except (KeyError, RuntimeError) as error:
        raise DQCodecError(f"{label}: its weights do not fit its config ({str(error).splitlines()[0]})") from None
    net.eval()
    return net, info
