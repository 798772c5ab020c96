"""An exponential moving average of a network's weights, for validation and export
(``dqcodec train --average-decay``).

Checkpoints of one run a few hundred steps apart differ in their Kodak figures by more than a
whole CPU run moves the curve (hdq family at lr 5e-5: up to 0.5 dB between steps 3 800 and
3 900 on 6 images), so the last step's weights are one draw from that spread. The average
after each Adam step, ``average <- decay * average + (1 - decay) * weights``, follows the same
descent with the step-to-step noise smoothed over about ``1 / (1 - decay)`` steps.

Only the parameters are averaged. Buffers (codebooks kept by their own EMA, code usage, the
measured synthesis gains) are the live network's: they are statistics of the latents, which
the averaged weights move by about as little as the average differs from the live weights.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

STATE_PREFIX = "average."  # key prefix of the averaged weights in a run's state file


class WeightAverage:
    """The moving average of ``net``'s parameters, on the parameters' device."""

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.parameters = dict(net.named_parameters())
        self.average = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average toward the current weights (call after each optimizer step)."""
        live = [parameter.detach() for parameter in self.parameters.values()]
        torch._foreach_lerp_(list(self.average.values()), live, 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The network holds the averaged weights inside the block, its own again after it."""
        saved = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}
        self.copy_to_network()
        try:
            yield
        finally:
            self._set_weights(saved)

    def copy_to_network(self) -> None:
        """Replace the network's weights by the average (before export)."""
        self._set_weights(self.average)

    @torch.no_grad()
    def _set_weights(self, values: dict[str, torch.Tensor]) -> None:
        for name, parameter in self.parameters.items():
            parameter.copy_(values[name])

    def to(self, device: torch.device) -> None:
        self.average = {name: value.to(device) for name, value in self.average.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged weights as tensors of a run's state file (``STATE_PREFIX`` + name)."""
        return {STATE_PREFIX + name: value.detach().cpu().contiguous() for name, value in self.average.items()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the average from a state file's tensors, or start it at the network's current
        weights when the state holds none (a run that starts averaging on resume)."""
        found = {key[len(STATE_PREFIX):]: value for key, value in tensors.items() if key.startswith(STATE_PREFIX)}
        if found and found.keys() != self.average.keys():
            raise ValueError("the averaged weights in the state do not match the network")
        for name, parameter in self.parameters.items():
            self.average[name].copy_(found.get(name, parameter.detach()))

    def restart(self) -> None:
        """Start the average anew at the network's current weights (after initialisation)."""
        self.load({})
