"""The bridge to constriction's range coder: integer frequency tables in, bytes out.

Only integer tables cross this bridge (DESIGN.md, "exactness first"): the float64
probabilities handed to constriction are computed here, from integers, by the same
operations on both sides, so encoder and decoder quantize identical numbers.

constriction's decoder never fails at the end of its data: it shifts in zero words and goes on
producing symbols. So the decoder here re-encodes what it decodes (same symbols, same tables)
and compares: a stream is accepted only if it is exactly the stream that the encoder writes for
those symbols. That refuses a stream that runs out before the image is decoded (as soon as it
does, not at the end) and one with data left over after its last symbol.
"""

import constriction
import numpy as np

from dqcodec.codec.errors import DQCodecError

_MODEL = constriction.stream.model.Categorical(perfect=False)


def _probabilities(frequencies: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(U, K) positive integer frequencies and (N,) rows -> (N, K) float64 probabilities of
    those rows (each sums to 1). Each table the rows use is divided once, then gathered:
    converting the gathered (N, K) integers instead took 20 times as long for a step of 384
    symbols read from 60 tables of 200 codes (0.96 ms against 0.05 ms), the same numbers either
    way. With more tables than rows (a decoder chunk of a step with a table per symbol, the
    lossless DQ-AE) the rows' own tables are converted, not all of the step's."""
    if len(frequencies) > len(rows):
        frequencies, rows = frequencies[rows], np.arange(len(rows))
    frequencies = frequencies.astype(np.float64)
    return (frequencies / frequencies.sum(axis=1, keepdims=True))[rows]


class RangeEncoder:
    """Collects symbols with their per-symbol frequency tables and returns the stream."""

    def __init__(self):
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, frequencies: np.ndarray, rows: np.ndarray) -> None:
        """Append symbols.

        symbols: (N,) integers in [0, K).
        frequencies: (U, K) integer tables, every entry >= 1. A one-symbol alphabet (K = 1)
            carries no information and writes nothing.
        rows: (N,) the table each symbol is coded with.
        """
        if len(symbols) == 0 or frequencies.shape[1] == 1:
            return
        self._coder.encode(symbols.astype(np.int32), _MODEL, _probabilities(frequencies, rows))

    def to_bytes(self) -> bytes:
        """The finished stream as little-endian bytes (a multiple of 4 long)."""
        return self._coder.get_compressed().astype("<u4").tobytes()


class RangeDecoder:
    """Reads symbols back in the order they were encoded, given the same tables, and checks
    that they use the stream up exactly (:meth:`finish`)."""

    # Symbols decoded between two checks that the stream has not run out: bounds the work a
    # stream that ends early can cause after its end.
    CHUNK = 1 << 16

    def __init__(self, stream: bytes):
        if len(stream) % 4:
            raise DQCodecError("corrupted .dqc file (stream length is not a multiple of 4 bytes)")
        self._words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(self._words)
        self._mirror = constriction.stream.queue.RangeEncoder()

    def decode(self, frequencies: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(U, K) integer tables and the (N,) table of each symbol -> (N,) int64 symbols.

        Raises ``DQCodecError`` as soon as the decoder has read past the end of the stream
        (beyond the last word, which the coder may leave implicit).
        """
        if len(rows) == 0 or frequencies.shape[1] == 1:
            return np.zeros(len(rows), dtype=np.int64)
        chunks = []
        for start in range(0, len(rows), self.CHUNK):
            probabilities = _probabilities(frequencies, rows[start : start + self.CHUNK])
            try:
                symbols = self._coder.decode(_MODEL, probabilities)
            except Exception as error:  # constriction reports a damaged stream as a plain exception
                raise DQCodecError(f"corrupted .dqc stream ({error})") from error
            self._mirror.encode(symbols, _MODEL, probabilities)
            # The decoder has read 2 words more than the encoder has written for the same
            # symbols (its 64-bit state); a whole stream has 1 or 2 words more than that.
            if self._mirror.pos()[0] >= len(self._words):
                raise DQCodecError("corrupted .dqc stream (it ends before the image is decoded)")
            chunks.append(symbols)
        return np.concatenate(chunks).astype(np.int64)

    def finish(self) -> None:
        """Raise ``DQCodecError`` unless the stream is exactly what was decoded from it."""
        written = self._mirror.get_compressed()
        if len(written) > len(self._words):
            raise DQCodecError("corrupted .dqc stream (it ends before the image is decoded)")
        if len(written) < len(self._words):
            raise DQCodecError(
                f"corrupted .dqc stream ({4 * (len(self._words) - len(written))} bytes left after the image)"
            )
        if not np.array_equal(written, self._words):
            raise DQCodecError("corrupted .dqc stream (its last words do not match the decoded data)")
