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
from dqcodec.models.registry import load_checkpoint


def save_state(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, step: int, generator: torch.Generator) -> None:
    """Write ``path.safetensors`` and ``path.json`` (atomically, via temporary names)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {"step": step, "param_groups": optimizer_state["param_groups"], "optimizer_steps": {}}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if key == "step":
                scalars["optimizer_steps"][str(index)] = float(value)
            else:
                tensors[f"optimizer.{index}.{key}"] = value.contiguous()
    tensors["rng"] = generator.get_state()
    tensors["torch_rng"] = torch.get_rng_state()
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, f"{temporary}.safetensors")
    Path(f"{temporary}.json").write_text(json.dumps(scalars))
    Path(f"{temporary}.safetensors").replace(f"{path}.safetensors")
    Path(f"{temporary}.json").replace(f"{path}.json")


def load_state(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    """Restore what :func:`save_state` wrote; returns the step to continue from."""
    tensors = load_file(f"{path}.safetensors")
    scalars = json.loads(Path(f"{path}.json").read_text())
    net.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
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
    return int(scalars["step"])


def load_start_model(stem: Path, network: type[nn.Module]) -> nn.Module:
    """The exported model ``stem`` (path without extension) to start training from (``--init-from``).

    Raises DQCodecError (one line) when its files are missing or damaged, or when it is not a
    ``network`` (a DQ run cannot start from an SHVQ model, nor the reverse).
    """
    try:
        net, _, _ = load_checkpoint(stem)
    except (OSError, ValueError, KeyError) as error:
        raise DQCodecError(f"--init-from {stem}: cannot load the model ({error})") from None
    if not isinstance(net, network):
        raise DQCodecError(f"--init-from {stem} is a {type(net).__name__}, not a {network.__name__}")
    return net
