"""What the RD sweep needs from a codec: one call per (image, RD point) returning real bytes.

Classical codecs (:mod:`dqcodec.eval.classical`) and dqcodec's own models
(:mod:`dqcodec.eval.ours`) are both described by an :class:`RDCodec`.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np


class Coded(NamedTuple):
    """One image through one codec at one RD point."""

    data: bytes  # the complete file, headers included
    decoded: np.ndarray  # (H, W, 3) uint8 RGB
    encode_seconds: float  # wall clock, array -> bytes
    decode_seconds: float  # wall clock, bytes -> array
    estimated_bits: float | None = None  # the model's -log2 p of the payload, for codecs that have one


def always_available() -> str | None:
    """The :attr:`RDCodec.unavailable_reason` of a codec with nothing optional to miss."""
    return None


@dataclass(frozen=True)
class RDCodec:
    """A codec and the RD points a sweep runs it at."""

    name: str  # CLI name and results file stem
    label: str  # legend label, the results file's "name"
    description: str
    kind: str  # "classical" or "dqcodec"
    parameter: str  # what the values in ``points`` mean
    points: tuple  # one RD point each (a quality value, a model name, a checkpoint path), lowest rate first
    run: Callable[[np.ndarray, object], Coded]  # (image (H, W, 3) uint8, point) -> Coded
    unavailable_reason: Callable[[], str | None] = always_available  # None when the codec can run here
