"""The bridge to constriction's range coder: integer frequency tables in, bytes out.

Only integer tables cross this bridge (DESIGN.md, "exactness first"): the float64
probabilities handed to constriction are computed here, from integers, by the same
operations on both sides, so encoder and decoder quantize identical numbers.
"""

import constriction
import numpy as np

from dqcodec.codec.errors import DQCodecError

_MODEL = constriction.stream.model.Categorical(perfect=False)


def _probabilities(frequencies: np.ndarray) -> np.ndarray:
    """(N, K) positive integer frequencies -> (N, K) float64 probabilities (rows sum to 1)."""
    frequencies = frequencies.astype(np.float64)
    return frequencies / frequencies.sum(axis=1, keepdims=True)


class RangeEncoder:
    """Collects symbols with their per-symbol frequency tables and returns the stream."""

    def __init__(self):
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, frequencies: np.ndarray) -> None:
        """Append symbols.

        symbols: (N,) integers in [0, K).
        frequencies: (N, K) integer table of each symbol, every entry >= 1. A one-symbol
            alphabet (K = 1) carries no information and writes nothing.
        """
        if len(symbols) == 0 or frequencies.shape[1] == 1:
            return
        self._coder.encode(symbols.astype(np.int32), _MODEL, _probabilities(frequencies))

    def to_bytes(self) -> bytes:
        """The finished stream as little-endian bytes (a multiple of 4 long)."""
        return self._coder.get_compressed().astype("<u4").tobytes()


class RangeDecoder:
    """Reads symbols back in the order they were encoded, given the same tables."""

    def __init__(self, stream: bytes):
        if len(stream) % 4:
            raise DQCodecError("corrupted .dqc file (stream length is not a multiple of 4 bytes)")
        self._coder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, dtype="<u4").astype(np.uint32))

    def decode(self, frequencies: np.ndarray) -> np.ndarray:
        """(N, K) integer tables -> (N,) int64 symbols."""
        if len(frequencies) == 0 or frequencies.shape[1] == 1:
            return np.zeros(len(frequencies), dtype=np.int64)
        try:
            return self._coder.decode(_MODEL, _probabilities(frequencies)).astype(np.int64)
        except Exception as error:  # constriction reports a damaged stream as a plain exception
            raise DQCodecError(f"corrupted .dqc stream ({error})") from error

