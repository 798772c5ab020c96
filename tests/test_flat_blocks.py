"""The flat-block level: exactly flat blocks are found, coded with fixed tables and painted back."""

import numpy as np

from dqcodec.codec.rangecoder import RangeDecoder, RangeEncoder
from dqcodec.models.flat_blocks import FlatBlockModel, flat_block_colours, flat_block_symbols

BLOCK = 4


def _image() -> np.ndarray:
    """(1, 3, 12, 16) image of 3 x 4 blocks: noise, with flat blocks of two colours, one of them
    twice in a row and again after a block of the other, and one block flat but for one pixel."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, size=(3, 12, 16))
    green, grey = np.array([0, 255, 0]), np.array([128, 128, 128])
    for (row, col), colour in {(0, 1): green, (0, 2): green, (1, 0): grey, (1, 3): green, (2, 2): grey}.items():
        values[:, row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK] = colour[:, None, None]
    values[:, 8:12, 4:8] = 7
    values[1, 9, 5] = 8  # not flat
    return values[None] / 255


def test_flat_blocks_are_found_with_their_colours_and_repeats_cost_no_colour():
    symbols = flat_block_symbols(_image(), BLOCK)
    assert symbols.shape == (1, 4, 3, 4)
    modes = symbols[0, 0]
    assert modes.tolist() == [[0, 2, 1, 0], [2, 0, 0, 2], [0, 0, 2, 0]]
    assert symbols[0, 1:, 0, 1].tolist() == [0, 255, 0] and symbols[0, 1:, 0, 2].tolist() == [0, 0, 0]
    assert symbols[0, 1:, 1, 0].tolist() == [128] * 3 and symbols[0, 1:, 2, 2].tolist() == [128] * 3
    flat, colours = flat_block_colours(symbols)
    assert flat[0].tolist() == (modes > 0).tolist()
    assert colours[0, :, 0, 2].tolist() == [0, 255, 0] and colours[0, :, 1, 3].tolist() == [0, 255, 0]


def test_the_level_round_trips_through_the_range_coder_and_photographs_pay_almost_nothing():
    model = FlatBlockModel()
    symbols = flat_block_symbols(_image(), BLOCK)
    encoder = RangeEncoder()
    for step in model.coding_steps(symbols.shape):
        encoder.encode(step.symbols(symbols), *model.step_tables(symbols, step, {}))
    decoder = RangeDecoder(encoder.to_bytes())
    decoded = np.zeros_like(symbols)
    for step in model.coding_steps(decoded.shape):
        step.place(decoded, decoder.decode(*model.step_tables(decoded, step, {})))
    decoder.finish()
    assert np.array_equal(decoded, symbols)
    noise = np.random.default_rng(1).integers(0, 256, size=(2, 3, 64, 64)) / 255
    none = flat_block_symbols(noise, BLOCK)
    assert not none.any() and model.bits(none, {}) / none[:, 0].size < 0.03  # bits per block
    # A flat image: one new colour, then every block repeats it.
    flat = flat_block_symbols(np.full((1, 3, 64, 64), 200 / 255), BLOCK)
    assert (flat[0, 0] > 0).all() and (flat[0, 0] == 2).sum() == 1


def test_a_repeat_before_any_colour_paints_black():
    symbols = np.zeros((1, 4, 1, 2), dtype=np.int64)
    symbols[0, 0] = [1, 2]
    symbols[0, 1:, 0, 1] = [9, 8, 7]
    flat, colours = flat_block_colours(symbols)
    assert flat.all() and colours[0, :, 0, 0].tolist() == [0, 0, 0] and colours[0, :, 0, 1].tolist() == [9, 8, 7]
