"""Range coding of indices with integer context tables: exact round trips, honest rates."""

import lzma

import numpy as np
import pytest
import torch

from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.models.context_tables import pack_tables, same_stored_tables, unpack_tables
from dqcodec.models.entropy import ContextIndexModel, quantize_table


def _fitted_model(rng: np.random.Generator) -> tuple[ContextIndexModel, np.ndarray]:
    m_count, k_count = 4, 8
    model = ContextIndexModel(m_count, k_count, num_predicted=2)
    # Skewed indices whose codebooks depend on each other, as in a real codec.
    base = rng.geometric(0.5, size=(3, 1, 12, 10)) - 1
    indices = np.clip(base + rng.integers(0, 2, size=(3, m_count, 12, 10)), 0, k_count - 2)
    usage = torch.from_numpy(np.stack([np.bincount(indices[:, m].ravel(), minlength=k_count) for m in range(m_count)]))
    codebooks = torch.arange(k_count, dtype=torch.float32)[None, :, None].expand(m_count, -1, 1)
    model.set_codes(codebooks, usage.float())
    model.fit([(indices, {})])
    return model, indices


def test_tables_are_positive_integers_within_precision():
    table = quantize_table(np.array([[0.0, 1.0, 1e6], [3.0, 3.0, 3.0]]))
    assert table.dtype == np.int32 and table.min() >= 1 and table.sum(axis=1).max() <= 1 << 16


def test_contexts_read_only_what_the_decoder_has():
    model, indices = _fitted_model(np.random.default_rng(0))
    decoded = np.zeros_like(indices)  # what a decoder holds, step by step
    for step in model.coding_steps(indices.shape):
        assert all(map(np.array_equal, model.step_tables(decoded, step, {}), model.step_tables(indices, step, {})))
        step.place(decoded, step.symbols(indices))
    assert np.array_equal(decoded, indices)


def test_activity_classes_start_at_the_mode():
    """Class 0 is the most used code, 1 its 2 nearest, 2 the next 4, 3 the rest: all four in use."""
    model = ContextIndexModel(1, 10)
    usage = torch.tensor([[1.0, 2, 3, 9, 4, 5, 6, 7, 8, 0.5]])
    model.set_codes(torch.arange(10, dtype=torch.float32)[None, :, None], usage)
    # The mode is code 3; by distance from it: 2 and 4 (class 1), 1, 5, 0, 6 (class 2), then 7, 8, 9.
    assert model.code_class[0].tolist() == [2, 2, 1, 0, 1, 2, 2, 3, 3, 3]


def test_predicted_codebooks_use_cheaper_tables_for_smooth_fields():
    rng = np.random.default_rng(2)
    smooth = np.repeat(np.repeat(rng.integers(0, 8, size=(4, 1, 4, 4)), 4, axis=2), 4, axis=3)  # (4, 1, 16, 16)
    usage = torch.from_numpy(np.bincount(smooth.ravel(), minlength=8)[None].astype(np.float32))
    codebooks = torch.arange(8, dtype=torch.float32)[None, :, None]
    order = usage.argsort(dim=1, descending=True)
    ranked = np.argsort(order[0].numpy())[smooth]  # codes sorted by usage, as a pruned model has them
    plain, predicted = ContextIndexModel(1, 8), ContextIndexModel(1, 8, num_predicted=1)
    for model in (plain, predicted):
        model.set_codes(codebooks[:, order[0]], usage[:, order[0]])
        model.fit([(ranked, {})])
    # (1847 vs 2496 bits here; the plain model's activity classes already see the smooth field a little)
    assert predicted.bits(ranked, {}) < 0.8 * plain.bits(ranked, {})


def test_round_trip_is_exact_and_size_meets_the_estimate():
    model, indices = _fitted_model(np.random.default_rng(1))
    encoder = RangeEncoder()
    estimate = 0.0
    for step in model.coding_steps(indices.shape):
        tables, rows = model.step_tables(indices, step, {})
        symbols = step.symbols(indices)
        encoder.encode(symbols, tables, rows)
        estimate -= np.log2(tables[rows, symbols] / tables.sum(axis=1)[rows]).sum()
    stream = encoder.to_bytes()
    assert 8 * len(stream) <= estimate * 1.01 + 64
    assert abs(model.bits(indices, {}) - estimate) < 1e-6 * estimate

    decoder = RangeDecoder(stream)
    decoded = np.zeros_like(indices)
    for step in model.coding_steps(indices.shape):
        step.place(decoded, decoder.decode(*model.step_tables(decoded, step, {})))
    assert np.array_equal(decoded, indices)


def test_one_symbol_alphabets_cost_nothing():
    encoder = RangeEncoder()
    encoder.encode(np.zeros(100, dtype=np.int64), np.ones((1, 1), dtype=np.int32), np.zeros(100, dtype=np.int64))
    assert encoder.to_bytes() == b""
    assert np.array_equal(RangeDecoder(b"").decode(np.ones((1, 1), dtype=np.int32), np.zeros(5, dtype=np.int64)),
                          np.zeros(5))


def test_a_stream_of_odd_length_is_refused():
    with pytest.raises(DQCodecError):
        RangeDecoder(b"abc")


def test_rare_contexts_back_off_to_their_codebooks_table():
    model, indices = _fitted_model(np.random.default_rng(3))
    model.fit([(indices, {})], backoff=10**9)  # every context is rare
    tables = model.frequencies.numpy().copy()
    assert (tables == tables[:, :, :1]).all()  # one table per codebook and phase
    model.fit([(indices, {})], backoff=0)
    assert not (model.frequencies.numpy() == tables).all()


def test_distinct_tables_are_stored_once_compressed_and_unpack_exactly():
    rng = np.random.default_rng(0)
    tables = rng.integers(1, 500, size=(3, 2, 64, 8)).astype(np.uint16)
    tables[:, :, 10:] = tables[:, :, :1]  # most contexts share one table, as unseen contexts do
    sizes = np.array([8, 5, 1])
    packed, rows = pack_tables(tables, sizes)
    assert rows.shape == (3, 2, 64) and packed.dtype == np.uint8
    plain = np.frombuffer(lzma.decompress(packed.tobytes()), dtype="<u2")
    assert plain.size <= 2 * 10 * sizes.sum()  # per phase: the 10 distinct tables
    unpacked = unpack_tables(packed, sizes, tables.shape, rows)
    for m, size in enumerate(sizes):
        assert np.array_equal(unpacked[m, :, :, :size], tables[m, :, :, :size]) and (unpacked[m, :, :, size:] == 1).all()
    # Model files from before: the distinct tables stored plain (uint16), or every table stored in
    # (phase, context) order, no rows.
    assert np.array_equal(unpack_tables(plain.astype(np.uint16), sizes, tables.shape, rows), unpacked)
    legacy = np.concatenate([tables[m, :, :, :size].ravel() for m, size in enumerate(sizes)])
    assert np.array_equal(unpack_tables(legacy, sizes, tables.shape), unpacked)
    with pytest.raises(ValueError, match="do not match"):
        unpack_tables(plain[:-1].astype(np.uint16), sizes, tables.shape, rows)


def test_stored_tables_compare_by_content_whatever_the_compressor_wrote():
    rng = np.random.default_rng(2)
    tables = rng.integers(1, 500, size=(2, 2, 8, 4)).astype(np.uint16)
    sizes = np.array([4, 3])
    packed, _ = pack_tables(tables, sizes)
    plain = lzma.decompress(packed.tobytes())
    other_bytes = np.frombuffer(lzma.compress(plain, preset=0), dtype=np.uint8)  # as another liblzma might
    assert not np.array_equal(other_bytes, packed) and same_stored_tables(packed, other_bytes)
    tables[1, 0, 0, 0] += 1
    assert not same_stored_tables(packed, pack_tables(tables, sizes)[0])
    plain_tables = np.frombuffer(plain, "<u2").astype(np.uint16)  # files from before the compression
    assert same_stored_tables(plain_tables, plain_tables.copy()) and not same_stored_tables(plain_tables, plain_tables + 1)


def test_damaged_or_oversized_stored_tables_are_refused_without_decompressing_them():
    rng = np.random.default_rng(1)
    tables = rng.integers(1, 500, size=(2, 2, 8, 4)).astype(np.uint16)
    sizes = np.array([4, 3])
    packed, rows = pack_tables(tables, sizes)
    flipped = packed.copy()
    flipped[packed.size // 2] ^= 0x10
    truncated, doubled = packed[:-1], np.concatenate([packed, packed])
    # 100 MB of zeros in 15 kB: refused after the few bytes the tables may hold.
    bomb = np.frombuffer(lzma.compress(bytes(100_000_000)), dtype=np.uint8)
    for stored in (flipped, truncated, doubled, bomb):
        with pytest.raises(ValueError, match="damaged|do not match"):
            unpack_tables(stored, sizes, tables.shape, rows)
