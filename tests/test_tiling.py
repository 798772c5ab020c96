"""Tiled coding (issue 11, item 2): large images in bounded memory, without seams, exactly.

Real models on small synthetic images with small tiles (256 px), so that a few hundred pixels
make several tiles; the big measurements (24 and 67 MP) are ``dqcodec bench --large``.
"""

import dataclasses
import time

import numpy as np
import pytest
from PIL import Image

import dqcodec
from dqcodec.codec import api
from dqcodec.codec.blend import TileAssembler, ramp
from dqcodec.codec.cli import main
from dqcodec.codec.container import Header, pack, unpack
from dqcodec.codec.tiles import MIN_TILE_SIZE, Tiling, ordered_map
from dqcodec.eval.large import seam_report
from dqcodec.models import registry

TILE = MIN_TILE_SIZE  # 256: the smallest tile, the most borders per pixel


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: smooth waves, hard-edged discs and a little noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.full((height, width, 3), 128.0)
    for _ in range(6):
        fy, fx = rng.uniform(0.005, 0.08, 2)
        wave = np.sin(fy * rows + fx * columns + rng.uniform(0, 6.3))
        image += rng.uniform(10, 40) * wave[..., None] * rng.uniform(0.3, 1, 3)
    for _ in range(8):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 60)
        image[(rows - cy) ** 2 + (columns - cx) ** 2 < radius**2] += rng.uniform(-60, 60, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


IMAGE = photo_like(300, 600)  # 3 x 2 tiles every 256 pixels, each 8 into the next: 264, 264, 88 wide; 264, 44 high


@pytest.fixture(scope="module")
def tiled() -> bytes:
    return dqcodec.encode(IMAGE, model="dq-q1", tile_size=TILE)


@pytest.fixture(scope="module")
def whole() -> bytes:
    return dqcodec.encode(IMAGE, model="dq-q1", tile_size=0)


def tile_file(data: bytes, index: int) -> bytes:
    """The streams of tile ``index`` of a tiled file as a file of their own (one tile, that size)."""
    header, streams = unpack(data)
    tile = list(header.tiling.tiles())[index]
    levels = len(streams) // len(header.tiling)
    single = dataclasses.replace(header, width=tile.width, height=tile.height, tile_size=0, overlap=0)
    return pack(single, streams[index * levels : (index + 1) * levels])


# ---- geometry and blending ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 255, 256, 257, 263, 264, 265, 300, 511, 512, 513, 520, 1000, 2048, 4000])
@pytest.mark.parametrize("size, overlap", [(256, 0), (256, 1), (256, 8), (256, 64), (256, 256), (1024, 64), (0, 0)])
def test_tiles_cover_the_image_and_share_exactly_the_overlap(length, size, overlap):
    tiling = Tiling(length, 7, size, overlap)
    spans = [(tile.left, tile.right) for tile in tiling.tiles()]
    assert len(spans) == tiling.columns == len(tiling) and spans[0][0] == 0 and spans[-1][1] == length
    assert all(start == index * size for index, (start, _) in enumerate(spans))  # on the model's grid
    for (start, stop), (next_start, next_stop) in zip(spans, spans[1:]):
        assert stop - start == size + overlap and stop - next_start == overlap  # full tiles, overlaps inside
        assert next_stop - next_start > overlap  # the last tile reaches past its overlap: no sliver
    assert all(0 < stop - start <= (size + overlap or length) for start, stop in spans)


def test_tiles_come_in_raster_order():
    tiles = list(Tiling(600, 300, 256).tiles())
    assert [(t.row, t.column) for t in tiles] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [t.index for t in tiles] == list(range(6)) and (tiles[-1].width, tiles[-1].height) == (88, 44)


@pytest.mark.parametrize("width, height, size, overlap", [(600, 300, 256, 32), (700, 520, 256, 128), (300, 300, 256, 1),
                                                          (513, 257, 256, 0), (800, 600, 256, 256)])
def test_blending_weights_sum_to_one_and_every_pixel_is_pasted_once(width, height, size, overlap):
    tiling = Tiling(width, height, size, overlap)
    levels = np.random.default_rng(1).integers(0, 256, (height, width, 3))
    out = np.zeros((height, width, 3), np.uint8)
    pasted = np.zeros((height, width), int)

    def paste(top, left, pixels):
        out[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        pasted[top : top + pixels.shape[0], left : left + pixels.shape[1]] += 1

    assembler = TileAssembler(tiling, paste)
    for tile in tiling.tiles():  # every tile reconstructs the same image: the blend must give it back
        assembler.add(tile, levels[tile.top : tile.bottom, tile.left : tile.right] / 255.0)
    assert (pasted == 1).all() and np.array_equal(out, levels)
    extent = size + overlap
    first, middle = ramp(tiling, 0, 3, extent), ramp(tiling, 1, 3, extent)
    assert 0 < middle.min() and middle.max() <= 1 and (overlap == 0) == (middle.min() == 1)
    assert np.allclose(first[size:] + middle[:overlap], 1)  # a tile and the next, on their shared pixels


def power_unless_seven(exponent: int, base: int) -> int:
    if base == 7:
        raise dqcodec.DQCodecError("seven")
    return base**exponent


@pytest.mark.parametrize("workers", [1, 3])
def test_ordered_map_keeps_the_order_and_raises_at_the_failing_item(workers):
    assert list(ordered_map(power_unless_seven, 2, range(7), workers)) == [x * x for x in range(7)]
    results = []
    with pytest.raises(dqcodec.DQCodecError, match="seven"):
        for value in ordered_map(power_unless_seven, 3, range(100), workers):
            results.append(value)
    assert results == [x**3 for x in range(7)]


# ---- exact round trips --------------------------------------------------------------------------


def test_a_tiled_file_records_its_tiles(tiled):
    header, streams = unpack(tiled)
    assert tiled[4] == 2 and (header.tile_size, header.overlap) == (TILE, 8)  # block codecs: one block
    assert (header.tiling.columns, header.tiling.rows) == (3, 2) and len(streams) == 6
    facts = api.inspect(tiled)
    assert (facts["tiles"], facts["tile_size"], facts["tile_overlap"]) == (6, TILE, 8)
    assert facts["estimated_bits"] < facts["real_bits"]


def check_tiles(data: bytes, image: np.ndarray, model: str) -> np.ndarray:
    """Check a tiled file against its tiles coded alone; returns the decoded pixels.

    Streams (hence indices): tile k's are exactly what coding its pixels alone writes. Pixels:
    where one tile covers the image, exactly what decoding that tile alone gives; where two or
    four share pixels, a blend of theirs (between the lowest and the highest, +-1 for rounding).
    """
    header, streams = unpack(data)
    decoded = np.asarray(dqcodec.decode(data)).astype(int)
    lowest = np.full(decoded.shape, 255)
    highest = np.zeros(decoded.shape, int)
    covered = np.zeros(decoded.shape[:2], int)
    for tile in header.tiling.tiles():
        crop = np.ascontiguousarray(image[tile.top : tile.bottom, tile.left : tile.right])
        alone = dqcodec.encode(crop, model=model, tile_size=0)
        assert unpack(alone)[1] == streams[tile.index : tile.index + 1]
        pixels = np.asarray(dqcodec.decode(tile_file(data, tile.index))).astype(int)
        box = (slice(tile.top, tile.bottom), slice(tile.left, tile.right))
        lowest[box], highest[box] = np.minimum(lowest[box], pixels), np.maximum(highest[box], pixels)
        covered[box] += 1
    single = covered == 1
    assert np.array_equal(decoded[single], lowest[single])
    assert ((decoded >= lowest - 1) & (decoded <= highest + 1)).all()
    height, width = covered.shape
    overlap, tiling = header.overlap, header.tiling
    shared = overlap * ((tiling.columns - 1) * height + (tiling.rows - 1) * width)
    assert (covered > 1).sum() == shared - overlap**2 * (tiling.columns - 1) * (tiling.rows - 1)
    return decoded.astype(np.uint8)


def test_each_tile_is_the_tile_coded_alone_and_overlaps_are_blended(tiled):
    check_tiles(tiled, IMAGE, "dq-q1")


def test_workers_change_nothing(tiled):
    assert dqcodec.encode(IMAGE, model="dq-q1", tile_size=TILE, workers=2) == tiled
    one = np.asarray(dqcodec.decode(tiled, workers=1))
    assert np.array_equal(np.asarray(dqcodec.decode(tiled, workers=2)), one)
    assert np.array_equal(np.asarray(dqcodec.decode(tiled, workers=5)), one)


def test_grayscale_stays_grayscale_in_tiles():
    gray = IMAGE[:, :, 1]
    data = dqcodec.encode(gray, model="dq-q1", tile_size=TILE)
    image = dqcodec.decode(data)
    assert image.mode == "L" and image.size == (600, 300) and len(unpack(data)[1]) == 6
    whole = np.asarray(dqcodec.decode(dqcodec.encode(gray, model="dq-q1", tile_size=0)))
    assert abs(np.mean(np.asarray(image).astype(float) - whole)) < 1


def test_an_image_within_one_tile_is_the_file_of_whole_image_coding():
    """Kodak-sized images fit in the default tile: the same bytes as release 0.2.0 wrote (format
    version 1), hence the same PSNR."""
    image = photo_like(512, 768, seed=3)
    data = dqcodec.encode(image, model="dq-q1")
    assert data == dqcodec.encode(image, model="dq-q1", tile_size=0) and data[4] == 1
    assert unpack(data)[0].tile_size == 0


def test_a_model_may_ask_for_more_overlap(monkeypatch, whole):
    """As a convolutional codec would (``tile_overlap``): 32 shared pixels, blended; workers
    change nothing, and the result is no worse than whole-image coding."""
    monkeypatch.setattr(api, "tile_overlap", lambda net: 32)
    data = dqcodec.encode(IMAGE, model="dq-q1", tile_size=TILE)
    header, _ = unpack(data)
    assert header.overlap == 32 and (header.tiling.columns, header.tiling.rows) == (3, 2)
    decoded = check_tiles(data, IMAGE, "dq-q1")
    assert np.array_equal(np.asarray(dqcodec.decode(data, workers=2)), decoded)
    report = seam_report(IMAGE, decoded, np.asarray(dqcodec.decode(whole)), stride=TILE)
    assert report["tiled"]["psnr"] > report["whole"]["psnr"] - 0.1


@pytest.mark.parametrize("model", ["dq-q1", "shvq-q1"])
def test_no_seams_at_tile_borders(model):
    """Pixels within 4 px of a tile border are as good as with whole-image coding, and the step
    across a tile border is no worse than across any other block border of the block codec."""
    tiled = np.asarray(dqcodec.decode(dqcodec.encode(IMAGE, model=model, tile_size=TILE)))
    whole = np.asarray(dqcodec.decode(dqcodec.encode(IMAGE, model=model, tile_size=0)))
    report = seam_report(IMAGE, tiled, whole, stride=TILE)
    assert report["tiled"]["psnr"] > report["whole"]["psnr"] - 0.1
    assert report["tiled"]["psnr_border_band"] > report["whole"]["psnr_border_band"] - 0.3
    assert report["tiled"]["step_error_tile_borders"] < report["whole"]["step_error_tile_borders"] + 0.5
    assert report["tiled"]["step_error_tile_borders"] < report["tiled"]["step_error_block_borders"] + 0.5


# ---- damaged and hostile files ------------------------------------------------------------------


def test_a_damaged_tile_stream_is_refused(tiled):
    header, streams = unpack(tiled)
    middle = streams[4]
    cases = {
        "ends before|invalid": [b"", middle[:-4], middle[: 4 * (len(middle) // 8)]],
        "left after": [middle + bytes(4)],
        "ends before|invalid|left after|do not match": [streams[0], streams[5]],  # another tile's stream
    }
    for fragment, damaged in cases.items():
        for stream in damaged:
            data = pack(header, [stream if i == 4 else s for i, s in enumerate(streams)])
            for call in (dqcodec.decode, api.inspect, lambda data: dqcodec.decode(data, workers=3)):
                with pytest.raises(dqcodec.DQCodecError, match=fragment):
                    call(data)
    swapped = pack(header, [streams[1], streams[0], *streams[2:]])  # two full tiles: may decode, to the right size
    try:
        assert dqcodec.decode(swapped).size == (600, 300)
    except dqcodec.DQCodecError:
        pass


def test_a_tile_grid_that_does_not_match_the_model_is_refused(tiled):
    header, streams = unpack(tiled)
    two_per_tile = pack(header, [stream for stream in streams for _ in range(2)])
    wider_tiles = pack(dataclasses.replace(header, tile_size=512), streams[:2])
    for data, fragment in ((two_per_tile, "geometry does not match"), (wider_tiles, "ends before|invalid|left after")):
        with pytest.raises(dqcodec.DQCodecError, match=fragment):
            dqcodec.decode(data)


def test_a_tiled_bomb_is_refused_at_once(tmp_path, capsys):
    """A header claiming 8192 x 8192 in 64 tiles with empty streams: refused by the first tile."""
    net, _, fingerprint = registry.load_model("dq-q3")
    header = Header("dq-q3", fingerprint, 8192, 8192, 3, 8, net.padding_multiple, tile_size=1024)
    data = pack(header, [b""] * 64)
    assert len(data) == 4 + 2 + 5 + 32 + 64 * 4 + 4
    (tmp_path / "bomb.dqc").write_bytes(data)
    start = time.perf_counter()
    status = main(["decode", str(tmp_path / "bomb.dqc"), str(tmp_path / "out.png"), "--max-pixels", str(2**26)])
    assert time.perf_counter() - start < 1.0
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "ends before the image is decoded" in error
    assert not (tmp_path / "out.png").exists()


# ---- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [100, 255, 260, 40000, -8, True, 256.0])
def test_a_bad_tile_size_is_one_line(tile_size):
    with pytest.raises(dqcodec.DQCodecError, match="tile size must be 0 .* or a multiple of 8 from 256"):
        dqcodec.encode(IMAGE[:16, :16], model="dq-q1", tile_size=tile_size)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_workers_are_one_line(workers):
    with pytest.raises(dqcodec.DQCodecError, match="workers must be a positive integer"):
        dqcodec.encode(IMAGE[:16, :16], model="dq-q1", workers=workers)
    with pytest.raises(dqcodec.DQCodecError, match="workers must be a positive integer"):
        dqcodec.decode(b"", workers=workers)


def test_the_command_line_codes_in_tiles(tmp_path, capsys, tiled):
    Image.fromarray(IMAGE).save(tmp_path / "in.png")
    arguments = ["encode", tmp_path / "in.png", tmp_path / "x.dqc", "-m", "dq-q1", "--tile-size", TILE, "--workers", 2]
    assert main([str(a) for a in arguments]) == 0
    assert (tmp_path / "x.dqc").read_bytes() == tiled
    assert main(["decode", str(tmp_path / "x.dqc"), str(tmp_path / "x.png"), "--workers", "2"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), np.asarray(dqcodec.decode(tiled)))
    assert main(["info", str(tmp_path / "x.dqc")]) == 0
    assert "6 of 256 x 256 pixels" in capsys.readouterr().out
    status = main(["encode", str(tmp_path / "in.png"), str(tmp_path / "y.dqc"), "-m", "dq-q1", "--tile-size", "100"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "tile size" in error and not (tmp_path / "y.dqc").exists()


# ---- memory ---------------------------------------------------------------------------------------


def test_memory_is_bounded_by_the_tile_not_the_image(tmp_path, monkeypatch):
    """Peak resident memory of encode and decode, each in a fresh process, above what the process
    held before the call (torch and the model): for 4x the pixels, tiled coding grows by little
    more than the image buffers (uint8 in, Pillow's 4 bytes a pixel out); whole-image coding of
    the larger image takes several times what tiled coding does.

    The children map every allocation above 64 KiB on its own (``MALLOC_MMAP_THRESHOLD_``), so
    freed tile buffers leave the resident set at once and the peak measures live memory. With
    glibc's default, heap pages that freed tiles leave behind stay resident by chance: measured
    4.4 bytes a pixel of decode growth with the setting, 18-21 without."""
    from dqcodec.eval.large import measure

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    growth = {}
    for width, height, arms in ((768, 512, ("tiled",)), (1536, 1024, ("tiled", "whole"))):
        source = tmp_path / f"{width}.png"
        Image.fromarray(photo_like(height, width, seed=5)).save(source)
        for arm in arms:
            coded = tmp_path / f"{width}-{arm}.dqc"
            runs = [measure("encode", source, coded, "dq-q1", TILE if arm == "tiled" else 0, 1, 1),
                    measure("decode", coded, tmp_path / "unused", "dq-q1", None, 1, 1)]
            growth[arm, width] = [run.peak_bytes - run.before_bytes for run in runs]
    added_pixels = 1536 * 1024 - 768 * 512
    for step in (0, 1):  # encode, decode
        tiled = growth["tiled", 1536][step] - growth["tiled", 768][step]
        assert tiled < 16 * added_pixels, growth  # at most ~7 bytes a pixel of image buffers
        assert growth["whole", 1536][step] > 3 * growth["tiled", 1536][step], growth
