"""Index entropy model: static integer probability tables selected by discrete contexts (numpy only).

A codec's indices (B, M, H, W) are coded codebook by codebook (m = 0 .. M-1) and, inside a
codebook, in two checkerboard phases: first the *anchors* ((row + col) even), then the rest.
The table that codes index (m, row, col) is chosen by a context made only of indices that
the decoder already has at that moment.

The first few codebooks (``num_predicted``; with a PCA-ordered transform these hold the
block means and the coarsest gradients, which carry the most bits) are *predicted*: their
anchors are coded row by row, and the context is the code nearest to the mean value of the
already decoded neighbours of the same codebook (up-left, up-right and two rows up for
anchors; the 4 anchor neighbours for the rest), DPCM in table form. Code values enter as
integers (``code_level``, the first coordinate in units of 1/1024) and the nearest code is
found in integer arithmetic, so the context is exact. For the other codebooks the context is:

- the activity class of codebook m-1 at the same position,
- phase 0: the summed classes of codebook m-1 at the 4 neighbours;
  phase 1: the summed classes of codebook m's 4 anchor neighbours (decoded in phase 0),
- the summed classes of codebooks m-2 and m-3 at the same position.

An activity class (0..3) says how far a code lies from its codebook's most frequent code
(0: the mode itself, 1: the 2 nearest codes, 2: the next 4, 3: the rest; ``CLASS_RANK_EDGES``): a "how busy is
this block" signal that transfers across codebooks. Classes and tables are integers stored
in the model (computed once by :meth:`~dqcodec.models.entropy.ContextIndexModel.fit`), so
encoder and decoder rebuild every table bit for bit, whatever the threads or the machine
(DESIGN.md).

This module is the coding half, plain numpy, shared by the light install's runtime
(:mod:`dqcodec.models.block_runtime`) and the training network
(:class:`~dqcodec.models.entropy.ContextIndexModel`, which adds the torch buffers and the fit).
"""

import lzma
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dqcodec.models.interface import CodingStep, Side, StepTables, level_bits

NUM_CLASSES = 4
# Class of a code by its distance rank from the mode: rank 0 -> 0, ranks 1-2 -> 1, 3-6 -> 2, 7+ -> 3.
CLASS_RANK_EDGES = (1, 3, 7)
CONTEXTS_PER_PHASE = 64
NUM_PHASES = 2
# Totals of the integer tables: every symbol gets >= 1, the row sums to at most 2**16.
TABLE_PRECISION = 1 << 16


def _bucket(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), values, side="right")


def _neighbour_sum(classes: np.ndarray) -> np.ndarray:
    """(B, H, W) -> (B, H, W) sum over the 4-neighbourhood (outside the image counts 0)."""
    # Shifted in-place adds: np.pad took 3 times as long (50 against 16 us for a Kodak image's
    # 32 x 48 positions), and every coding step of a level computes one such sum.
    total = np.zeros_like(classes)
    total[:, 1:] += classes[:, :-1]
    total[:, :-1] += classes[:, 1:]
    total[:, :, 1:] += classes[:, :, :-1]
    total[:, :, :-1] += classes[:, :, 1:]
    return total


def anchor_mask(height: int, width: int) -> np.ndarray:
    """(H, W) bool, True where (row + col) is even: the positions coded in phase 0."""
    rows, cols = np.indices((height, width))
    return (rows + cols) % 2 == 0


_ANCHOR_NEIGHBOURS = ((-1, -1), (-1, 1), (-2, 0))  # decoded before an anchor (same codebook)
_CROSS_NEIGHBOURS = ((0, -1), (0, 1), (-1, 0), (1, 0))  # the anchors around a non-anchor
LEVEL_SCALE = 1024  # code_level = round(first code coordinate * LEVEL_SCALE)


def _shifted(values: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """values[r + dy, c + dx] for every (r, c) of (B, H, W), and where that lies in the image."""
    b, h, w = values.shape
    out = np.zeros_like(values)
    inside = np.zeros((h, w), dtype=bool)
    rows = slice(max(0, -dy), min(h, h - dy))
    cols = slice(max(0, -dx), min(w, w - dx))
    src_rows = slice(max(0, dy), min(h, h + dy))
    src_cols = slice(max(0, dx), min(w, w + dx))
    out[:, rows, cols] = values[:, src_rows, src_cols]
    inside[rows, cols] = True
    return out, inside


class ContextTables:
    """Coding with context-conditioned integer tables for the indices of M codebooks of K codes.

    A base that reads these attributes, set by a subclass (numpy arrays in
    :class:`StoredContextTables`; torch buffers in
    :class:`~dqcodec.models.entropy.ContextIndexModel`, read through ``np.asarray`` without a copy):
        num_codebooks, codebook_size, num_predicted, side_buckets: ints.
        code_class: (M, K) activity class of every code.
        code_level: (M, K) first coordinate of every code in units of 1 / LEVEL_SCALE.
        frequencies: (M, 2, 64 * side_buckets, K) integer table for each codebook, phase and context.
        alphabet_sizes: (M,) number of codes in use per codebook (codes are sorted so that the
            used ones come first); tables are cut to that size, which keeps coding fast.
    """

    num_codebooks: int
    codebook_size: int
    num_predicted: int
    side_buckets: int

    def contexts(
        self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray | None = None, side: Side | None = None
    ) -> np.ndarray:
        """Context ids in [0, 64 * side_buckets) for codebook m in the given phase: (B, H, W),
        or (B, N) for the N positions of an (H, W) ``mask``.

        indices: (B, M, H, W) integer array; only what is decoded before that step is read
        (codebooks < m, the rows above for predicted anchors, the anchors of codebook m in
        phase 1), so a decoder can pass its partly decoded array. ``side``: the decoded
        coarser levels, read by :meth:`side_contexts`.
        """
        if mask is None:
            mask = np.ones(indices.shape[2:], dtype=bool)
        own = self._level_contexts(indices, m, phase, mask)
        if self.side_buckets == 1:
            return own
        return own * self.side_buckets + self.side_contexts(side or {}, indices.shape)[:, mask]

    def side_contexts(self, side: Side, shape: tuple[int, ...]) -> np.ndarray:
        """(B, H, W) class in [0, side_buckets) of every position from the coarser levels."""
        raise NotImplementedError

    def _level_contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """Context ids in [0, 64) from this level's decoded indices alone, (B, N)."""
        if m < self.num_predicted:
            return self._predicted_contexts(indices, m, phase, mask)
        code_class = np.asarray(self.code_class)
        b, _, h, w = indices.shape

        def classes(k: int) -> np.ndarray:
            if k < 0:
                return np.zeros((b, h, w), dtype=np.int64)
            return code_class[k][indices[:, k]].astype(np.int64)

        previous = classes(m - 1)
        if phase == 0:
            neighbours = _neighbour_sum(previous)
        else:
            neighbours = _neighbour_sum(classes(m) * anchor_mask(h, w))
        older = classes(m - 2) + classes(m - 3)
        context = previous * 16 + _bucket(neighbours, (1, 3, 6)) * 4 + _bucket(older, (1, 2, 4))
        return context[:, mask]

    def _predicted_contexts(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """Context = the code nearest to the mean level of the decoded same-codebook neighbours,
        (B, N); codes 4 apart share a context when K = 256. Positions with no decoded
        neighbour get context 0."""
        nearest = self._nearest_codes(indices, m, phase, mask)
        return np.maximum(nearest, 0) * CONTEXTS_PER_PHASE // max(self.codebook_size, CONTEXTS_PER_PHASE)

    def _nearest_codes(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> np.ndarray:
        """(B, N) code of predicted codebook m nearest to the mean level of each masked
        position's decoded same-codebook neighbours; -1 where none is decoded yet."""
        return self._nearest_to_mean(m, *self._decoded_neighbours(indices, m, phase, mask))

    def _nearest_to_mean(self, m: int, values: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """(B, N) code of predicted codebook m nearest to the mean of the neighbour levels
        ``values`` (B, n, N) where ``inside`` (n, N); -1 where there is none."""
        level = np.asarray(self.code_level)[m, : int(self.alphabet_sizes[m])].astype(np.int64)
        count, total = inside.sum(axis=0), (values * inside).sum(axis=1)
        # argmin_k |level_k - total / count|, scaled by count to stay in integers.
        error = np.abs(count[None, :, None] * level - total[..., None])
        return np.where(count > 0, error.argmin(axis=-1), -1)

    def _decoded_neighbours(self, indices: np.ndarray, m: int, phase: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The levels of predicted codebook m's decoded same-codebook neighbours of each masked
        position, (B, n, N) int64 for the n neighbour offsets of the phase, and (n, N) whether
        each lies in the image."""
        size = int(self.alphabet_sizes[m])
        level = np.asarray(self.code_level)[m, :size].astype(np.int64)
        offsets = _ANCHOR_NEIGHBOURS if phase == 0 else _CROSS_NEIGHBOURS
        # Only the rows around the masked ones are read (neighbours lie 2 rows up to 1 row down):
        # a level coded row by row would otherwise be scanned whole once per row.
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            return np.zeros((indices.shape[0], len(offsets), 0), dtype=np.int64), np.zeros((len(offsets), 0), dtype=bool)
        top, bottom = max(0, rows[0] - 2), min(mask.shape[0], rows[-1] + 2)
        mask = mask[top:bottom]
        values = level[np.minimum(indices[:, m, top:bottom], size - 1)]
        shifted = [_shifted(values, dy, dx) for dy, dx in offsets]
        return (np.stack([moved[:, mask] for moved, _ in shifted], axis=1),
                np.stack([inside[mask] for _, inside in shifted]))

    def coding_steps(self, shape: tuple[int, int, int, int]) -> Iterator[CodingStep]:
        """The coding order of (B, M, H, W) indices: codebook by codebook, anchors then the rest.

        Predicted codebooks code their anchors one row per step (each row's context needs the
        rows above); the others code all anchors, then all non-anchors, in one step each.
        """
        _, _, height, width = shape
        anchors = anchor_mask(height, width)
        rows = np.arange(height)[:, None]
        for m in range(self.num_codebooks):
            if m < self.num_predicted:
                for row in range(height):
                    yield CodingStep(m, 0, anchors & (rows == row))
            else:
                yield CodingStep(m, 0, anchors)
            yield CodingStep(m, 1, ~anchors)

    def step_tables(self, indices: np.ndarray, step: CodingStep, side: Side) -> tuple[np.ndarray, np.ndarray]:
        """The distinct tables of ``step``, (U, K_m) integers, and the row of them that each of
        its N positions (all images, row-major) reads, (N,): one table per context seen. The
        contexts come from this level and, with ``side_buckets`` > 1, from ``side``."""
        context = self.contexts(indices, step.codebook, step.phase, step.mask, side)  # (B, N per image)
        used, rows = np.unique(context, return_inverse=True)
        return self.context_tables(step.codebook, step.phase, used), rows.reshape(-1)

    def context_tables(self, codebook: int, phase: int, context: np.ndarray) -> np.ndarray:
        """(N,) context ids of one codebook and phase -> their (N, K_m) integer tables."""
        size = int(self.alphabet_sizes[codebook])
        return np.asarray(self.frequencies)[codebook, phase, :, :size][context]

    def bits(self, indices: np.ndarray, side: Side) -> float:
        """-log2 p of all indices (B, M, H, W) under the integer tables."""
        return level_bits(self, indices, side)


@dataclass
class StoredContextTables(ContextTables):
    """:class:`ContextTables` over the arrays of a model file (one level, no side information)."""

    num_codebooks: int
    codebook_size: int
    num_predicted: int
    code_class: np.ndarray
    code_level: np.ndarray
    frequencies: np.ndarray
    alphabet_sizes: np.ndarray
    side_buckets: int = 1


def choose_indices(
    vectors: np.ndarray,
    codebooks: np.ndarray,
    entropy: ContextTables,
    rate_lambda: np.ndarray | float,
    side: Side | None = None,
    nearest_first_rows: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, StepTables]:
    """Rate-distortion optimised indices under the context tables, in coding order (greedy RDO).

    vectors: (B, M, D, H, W) float64 or float32, the values that codebook m quantizes at each
        position; the costs are computed in this dtype. float32 scores hdq-q5's fine codes of a
        Kodak image about 3x as fast; the choice is the encoder's alone (the decoder reads the
        indices), so the precision only decides between codes whose costs tie to about 1e-7.
    codebooks: (M, K, D) codewords in the entropy model's code order.
    rate_lambda: squared error (in the units of ``vectors``) per bit, a scalar or one per
        codebook (M,).
    side: decoded coarser levels, as the entropy model's ``step_tables`` reads them.
    nearest_first_rows: the first step of each predicted codebook (its first row of anchors,
        which has no decoded neighbour) takes the nearest code instead: what it chooses becomes
        the context of everything below, so a flat area keeps the code of its first row, and a
        code off the nearest one that was cheaper for that row would spread over the whole area.
    weights: (B, H, W) positive weights of each position's squared error (None: all 1), e.g. the
        structural weights of :func:`~dqcodec.models.structural_weights.block_weights`; a position
        of weight w is chosen at lambda / w.
    Returns (B, M, H, W) int64 indices, each minimising ||x - c_k||^2 + lambda * (-log2 p(k | context)),
    the context made of the indices already chosen, exactly as the decoder will see them; and each
    step's (tables, rows) from ``entropy.step_tables``, for the range coder (``IndexLevel.step_tables``).
    """
    b, m_count, d, h, w = vectors.shape
    dtype = vectors.dtype
    codebooks = codebooks.astype(dtype, copy=False)
    lambdas = np.broadcast_to(np.asarray(rate_lambda, dtype=dtype), (m_count,))
    # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c, and ||x||^2 is the same for every code of a
    # position, so the argmin needs only ||c||^2 - 2 x.c: one matrix product per step instead
    # of D passes over an (N, K) array (3x faster at D = 4, K = 256). The cancellation error,
    # about 1e-16 ||x||^2, is far below any distortion difference that could change a choice.
    norms = (codebooks * codebooks).sum(axis=-1)  # (M, K)
    indices = np.zeros((b, m_count, h, w), dtype=np.int64)
    started: set[int] = set()
    step_tables: StepTables = []
    for step in entropy.coding_steps(indices.shape):
        m = step.codebook
        # The rate term is computed once per distinct table (a few dozen) and gathered.
        table, rows = entropy.step_tables(indices, step, side or {})  # (U, K_m), (N,)
        step_tables.append((table, rows))
        bits = (np.log2(table.sum(axis=1, keepdims=True)) - np.log2(table)).astype(dtype)
        nearest = nearest_first_rows and m < entropy.num_predicted and m not in started
        started.add(m)
        size = table.shape[1]
        points = vectors[:, m][:, :, step.mask].transpose(0, 2, 1).reshape(-1, d)  # (N, D)
        if weights is None or nearest:
            # The rows' offsets gathered by np.take, then the product added in place: the same
            # sums as the product plus offset[rows], and hdq-q5's fine level of a Kodak image took
            # 0.28 instead of 0.33 s.
            offset = norms[m, :size] + (0.0 if nearest else lambdas[m]) * bits  # (U, K_m)
            cost = np.take(offset, rows, axis=0)  # (N, K_m)
            cost += points @ (-2.0 * codebooks[m, :size].T)
        else:
            # w (||c||^2 - 2 x.c) + lambda * bits, the same argmin as at lambda / w, with the
            # weights folded into one product: [w x, w] @ [-2 c; ||c||^2]^T.
            weight = weights[:, step.mask].reshape(-1, 1).astype(dtype)
            cost = np.take(lambdas[m] * bits, rows, axis=0)
            cost += np.hstack([points * weight, weight]) @ np.vstack([-2.0 * codebooks[m, :size].T, norms[m, :size]])
        step.place(indices, cost.argmin(axis=1))
    return indices, step_tables


def quantize_table(counts: np.ndarray) -> np.ndarray:
    """(..., K) non-negative counts -> int32 frequencies, each >= 1, rows summing <= 2**16."""
    k = counts.shape[-1]
    probs = counts / counts.sum(axis=-1, keepdims=True)
    return (np.floor(probs * (TABLE_PRECISION - k)) + 1).astype(np.int32)


# How the tables are stored in a model file: narrowed integer types, each codebook's tables cut
# to its alphabet (most codebooks use a handful of codes), and each distinct table of a codebook
# stored once, with the row every (phase, context) reads (``ROWS_SUFFIX``): contexts never seen
# in training all hold one table, over half of an hdq model's. The distinct tables, one uint16
# array, are then compressed (xz, as bytes): their entries are mostly small and repeat from
# table to table, so hdq's five levels keep 2.8 of their 12.9 MB of tables. This keeps shipped
# files small; model files from before store the tables plain (uint16), or every table (no rows),
# and still load.
STORAGE_DTYPES = {"frequencies": np.uint16, "code_class": np.uint8, "code_level": np.int32}
ROWS_SUFFIX = "table_rows"


def pack_tables(tables: np.ndarray, alphabet_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, P, C, K) tables (entries 0 .. 65535) -> (uint8 xz stream of each codebook's distinct
    (K_m,) tables as little-endian uint16, in sorted order, codebook after codebook; (M, P, C)
    uint16 row of its codebook's tables each reads)."""
    packed, rows = [], []
    for m, size in enumerate(alphabet_sizes):
        distinct, row = np.unique(tables[m, :, :, :size].reshape(-1, size), axis=0, return_inverse=True)
        packed.append(distinct.ravel())
        rows.append(row.reshape(tables.shape[1:3]))
    plain = np.concatenate(packed).astype("<u2").tobytes()
    stream = lzma.compress(plain, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    return np.frombuffer(stream, dtype=np.uint8).copy(), np.stack(rows).astype(np.uint16)


def unpack_tables(stored: np.ndarray, alphabet_sizes: np.ndarray, shape: tuple[int, ...],
                  rows: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`pack_tables` -> (M, P, C, K) uint16 tables; entries beyond each
    alphabet are 1 (never used). ``stored`` uint16: the plain distinct tables of model files from
    before the compression; ``rows`` None: the layout of model files from before the distinct
    tables (every table stored, in (P, C) order). Both still decode.

    Raises ValueError when ``stored`` is damaged or does not fit ``alphabet_sizes``, ``shape``
    and ``rows`` (never decompressing more than the tables it should hold).
    """
    m_count, phases, contexts, k_count = shape
    sizes = [int(size) for size in alphabet_sizes]
    if rows is None:
        rows = np.broadcast_to(np.arange(phases * contexts).reshape(phases, contexts), (m_count, phases, contexts))
    if len(sizes) != m_count or max(sizes) > k_count or rows.shape != (m_count, phases, contexts):
        raise ValueError("entropy tables do not match the model configuration")
    counts = [int(rows[m].max()) + 1 for m in range(m_count)]
    expected = sum(count * size for count, size in zip(counts, sizes))
    packed = _decompressed(stored, expected) if stored.dtype == np.uint8 else stored
    if packed.size != expected:
        raise ValueError("entropy tables do not match the model configuration")
    tables = np.ones(shape, dtype=np.uint16)
    offset = 0
    for m, (count, size) in enumerate(zip(counts, sizes)):
        tables[m, :, :, :size] = packed[offset : offset + count * size].reshape(count, size)[rows[m]]
        offset += count * size
    return tables


def same_stored_tables(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two stored table arrays (as :func:`pack_tables` writes them, or plain) hold the same
    tables: compressed ones are compared by their content, since another version of liblzma may
    compress the same tables to other bytes."""
    if first.dtype == second.dtype == np.uint8:
        return lzma.decompress(first.tobytes()) == lzma.decompress(second.tobytes())
    return first.dtype == second.dtype and np.array_equal(first, second)


def _decompressed(stream: np.ndarray, count: int) -> np.ndarray:
    """The uint16 entries of :func:`pack_tables`' xz ``stream``, which must hold ``count`` of
    them: ValueError otherwise, after at most ``count`` + 1 entries' worth of output."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        plain = decompressor.decompress(stream.tobytes(), max_length=2 * count + 2)
    except lzma.LZMAError as error:
        raise ValueError(f"entropy tables are damaged ({error})") from None
    if len(plain) != 2 * count or not decompressor.eof or decompressor.unused_data:
        raise ValueError("entropy tables do not match the model configuration")
    return np.frombuffer(plain, dtype="<u2")
