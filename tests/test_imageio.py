"""Image loading (every input kind and mode the codec promises to handle) and atomic writing."""

import io
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dqcodec.codec.container import MAX_SIDE
from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.imageio import (
    LoadedImage,
    load_image,
    output_format,
    read_bytes,
    save_image,
    to_pil,
    write_bytes_atomic,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 20), dtype=np.uint8)


def encoded(image: Image.Image, format_name: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_name, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_by_hand(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written from its specification (Pillow cannot write 48-bit RGB, or lie about size)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + header + data + png_chunk(b"IEND", b"")


def assert_one_line_error(source, *fragments):
    with pytest.raises(DQCodecError) as caught:
        load_image(source)
    message = str(caught.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def assert_valid(loaded: LoadedImage, height: int, width: int):
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.shape == (height, width, 3)


# ---- kinds of source ---------------------------------------------------------------------------


def test_rgb_png_from_path_bytes_pil_and_array(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encoded(Image.fromarray(RGB)))
    for source in (path, str(path), path.read_bytes(), Image.open(path), RGB):
        loaded = load_image(source)
        assert_valid(loaded, 12, 20)
        np.testing.assert_array_equal(loaded.pixels, RGB)
        assert (loaded.channels, loaded.bit_depth, loaded.notes) == (3, 8, [])


def test_gray_array_and_rgba_array():
    loaded = load_image(GRAY)
    assert loaded.channels == 1
    np.testing.assert_array_equal(loaded.pixels, np.repeat(GRAY[:, :, None], 3, axis=2))
    opaque = np.concatenate([RGB, np.full((12, 20, 1), 255, np.uint8)], axis=2)
    loaded = load_image(opaque)
    np.testing.assert_array_equal(loaded.pixels, RGB)
    assert loaded.channels == 3 and loaded.notes[0].startswith("alpha channel dropped")


@pytest.mark.parametrize(
    "array",
    [
        RGB.astype(np.float32),
        RGB.astype(np.uint16),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 3, 1), np.uint8),
        np.zeros(5, np.uint8),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((1, MAX_SIDE + 1), np.uint8),
    ],
)
def test_bad_arrays(array):
    assert_one_line_error(array, "input array")


def test_unsupported_source_type():
    assert_one_line_error([[0, 0, 0]], "list")


def test_tiny_1x1_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    loaded = load_image(path)
    assert_valid(loaded, 1, 1)
    assert loaded.pixels[0, 0].tolist() == [10, 20, 30]


# ---- modes -------------------------------------------------------------------------------------


def test_grayscale_stays_grayscale():
    loaded = load_image(encoded(Image.fromarray(GRAY)))
    assert (loaded.channels, loaded.bit_depth, loaded.notes) == (1, 8, [])
    np.testing.assert_array_equal(loaded.pixels, np.repeat(GRAY[:, :, None], 3, axis=2))


def test_bilevel_is_grayscale():
    loaded = load_image(encoded(Image.fromarray(GRAY > 127)))
    assert loaded.channels == 1
    assert set(np.unique(loaded.pixels)) <= {0, 255}


def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 0, 255)  # opaque
    rgba[0, 1] = (200, 100, 0, 0)  # fully transparent
    rgba[1, :] = (0, 0, 0, 128)  # half-transparent black
    loaded = load_image(encoded(Image.fromarray(rgba)))
    assert loaded.channels == 3
    assert loaded.pixels[0, 0].tolist() == [200, 100, 0]
    assert loaded.pixels[0, 1].tolist() == [255, 255, 255]
    assert loaded.pixels[1, 0].tolist() == [127, 127, 127]
    assert loaded.notes == ["alpha channel dropped (transparent areas composited on white)"]


def test_gray_with_alpha_stays_grayscale():
    la = Image.merge("LA", [Image.fromarray(GRAY), Image.new("L", (20, 12), 0)])
    loaded = load_image(encoded(la))
    assert loaded.channels == 1
    assert (loaded.pixels == 255).all()
    assert loaded.notes[0].startswith("alpha channel dropped")


def test_palette_becomes_rgb():
    palette = Image.fromarray(RGB).quantize(16)
    loaded = load_image(encoded(palette))
    assert (loaded.channels, loaded.notes) == (3, [])
    np.testing.assert_array_equal(loaded.pixels, np.asarray(palette.convert("RGB")))


def test_palette_with_transparency():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    data = encoded(palette, transparency=1)
    loaded = load_image(data)
    assert loaded.channels == 3
    assert loaded.pixels[0].tolist() == [[255, 0, 0], [255, 255, 255]]
    assert loaded.notes[0].startswith("alpha channel dropped")


def test_16_bit_gray_png():
    values = np.array([[0, 257, 65535, 1000, 40000]], np.uint16)
    data = encoded(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    loaded = load_image(data)
    assert (loaded.channels, loaded.bit_depth) == (1, 16)
    assert loaded.notes == ["16-bit input reduced to 8 bits"]
    assert loaded.pixels[0, :, 0].tolist() == np.round(values[0] / 257).astype(int).tolist()


def test_16_bit_rgb_png():
    values = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(3))
    loaded = load_image(png_by_hand(4, 3, 16, 2, rows))
    assert (loaded.channels, loaded.bit_depth) == (3, 16)
    assert loaded.notes == ["16-bit input reduced to 8 bits"]
    assert np.abs(loaded.pixels.astype(int) - values / 257).max() <= 1


def test_cmyk_becomes_rgb_with_a_note():
    loaded = load_image(encoded(Image.new("CMYK", (3, 2), (0, 0, 0, 0)), "TIFF"))
    assert loaded.channels == 3
    assert (loaded.pixels == 255).all()
    assert loaded.notes == ["CMYK image converted to RGB"]


def test_exif_orientation_is_applied():
    # Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to view",
    # which puts the left half on top.
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image, "JPEG", exif=exif, quality=95)
    for source in (data, Image.open(io.BytesIO(data))):
        loaded = load_image(source)
        assert_valid(loaded, 32, 16)
        top, bottom = loaded.pixels[4, 8].astype(int), loaded.pixels[28, 8].astype(int)
        assert top[0] > 200 and top[2] < 60
        assert bottom[2] > 200 and bottom[0] < 60


def test_animation_keeps_the_first_frame():
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(buffer.getvalue())
    assert loaded.pixels[0, 0].tolist() == [255, 0, 0]
    assert loaded.notes == ["only the first of 2 frames is encoded"]


def test_heic_photo():
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (200, 30, 30))).save(buffer, quality=90)
    loaded = load_image(buffer.getvalue())
    assert_valid(loaded, 48, 64)
    assert np.abs(loaded.pixels[24, 32].astype(int) - [200, 30, 30]).max() < 8


def test_float_images_are_refused():
    assert_one_line_error(Image.new("F", (2, 2)), "floating-point")


# ---- bad files ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_one_line_error(tmp_path / "nope.png", "nope.png", "no such file")


def test_directory(tmp_path):
    assert_one_line_error(tmp_path, "folder")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text\n")
    assert_one_line_error(path, "notes.png", "not an image")
    assert_one_line_error(b"hello", "not an image")


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_one_line_error(path, "empty.png")
    assert_one_line_error(b"", "empty")


def test_truncated_image(tmp_path):
    data = encoded(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    for size in (40, len(data) // 2, len(data) - 200):
        path = tmp_path / "cut.png"
        path.write_bytes(data[:size])
        assert_one_line_error(path, "cut.png")
        assert_one_line_error(data[:size])


def test_zero_size_png():
    assert_one_line_error(png_by_hand(0, 5, 8, 0, b""))


def test_too_many_pixels_is_refused_from_the_header():
    # 9000 x 9000 is above our 2**26 pixels but below Pillow's own bomb limit. The file has no
    # pixel data at all, so only a check made before decoding can produce the size message.
    assert_one_line_error(png_by_hand(9000, 9000, 8, 2, None), "9000x9000")


def test_decompression_bomb_is_refused():
    assert_one_line_error(png_by_hand(30000, 30000, 8, 2, None), "too large")


def test_side_longer_than_max_side():
    assert_one_line_error(encoded(Image.new("L", (MAX_SIDE + 1, 1))), f"{MAX_SIDE + 1}x1")


# ---- output ------------------------------------------------------------------------------------


def test_to_pil():
    assert to_pil(RGB, 3).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(to_pil(RGB, 3)), RGB)
    gray = to_pil(np.repeat(GRAY[:, :, None], 3, axis=2), 1)
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), GRAY)
    with pytest.raises(ValueError):
        to_pil(GRAY, 1)


@pytest.mark.parametrize(
    "name, format_name, lossless",
    [
        ("a.png", "PNG", True),
        ("a.bmp", "BMP", True),
        ("a.tif", "TIFF", True),
        ("a.tiff", "TIFF", True),
        ("a.ppm", "PPM", True),
        ("a.pnm", "PPM", True),
        ("a.webp", "WEBP", True),
        ("A.PNG", "PNG", True),
        ("a.jpg", "JPEG", False),
        ("a.jpeg", "JPEG", False),
    ],
)
def test_save_image_formats(tmp_path, name, format_name, lossless):
    path = tmp_path / name
    smooth = np.stack(np.meshgrid(np.arange(20) * 12, np.arange(12) * 20) + [np.full((12, 20), 90)], axis=2)
    smooth = smooth.astype(np.uint8)
    save_image(Image.fromarray(smooth), path)
    with Image.open(path) as written:
        assert written.format == format_name
        pixels = np.asarray(written.convert("RGB")).astype(int)
    error = np.abs(pixels - smooth).max()
    assert error == 0 if lossless else error < 16
    assert os.listdir(tmp_path) == [name]


def test_pgm_is_grayscale(tmp_path):
    save_image(Image.fromarray(RGB), tmp_path / "a.pgm")
    with Image.open(tmp_path / "a.pgm") as written:
        assert written.mode == "L"


@pytest.mark.parametrize("name", ["a.gif", "a.dqc", "noextension"])
def test_unknown_extension(tmp_path, name):
    with pytest.raises(DQCodecError, match=r"\.png .*\.webp"):
        save_image(Image.fromarray(RGB), tmp_path / name)
    with pytest.raises(DQCodecError):
        output_format(name)
    assert os.listdir(tmp_path) == []


def test_overwrite_keeps_umask_permissions(tmp_path):
    path = tmp_path / "out.dqc"
    path.write_bytes(b"old contents that are longer")
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["out.dqc"]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.jpg"
    with pytest.raises(DQCodecError, match="cannot write"):
        save_image(Image.new("RGBA", (4, 4)), path)  # JPEG has no alpha: Pillow fails mid-write
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"previous")
    with pytest.raises(DQCodecError):
        save_image(Image.new("RGBA", (4, 4)), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.jpg"]


def test_unwritable_outputs(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for target, fragment in [
        (tmp_path / "missing" / "out.png", "does not exist"),
        (tmp_path / "file" / "out.png", "not a folder"),
        (tmp_path / "folder.png", "is a folder"),
    ]:
        with pytest.raises(DQCodecError, match=fragment):
            write_bytes_atomic(target, b"data")
        with pytest.raises(DQCodecError, match=fragment):
            save_image(Image.fromarray(RGB), target)
    assert sorted(os.listdir(tmp_path)) == ["file", "folder.png"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(DQCodecError, match="permission"):
            write_bytes_atomic(folder / "out.dqc", b"data")
    finally:
        folder.chmod(0o700)


def test_read_bytes(tmp_path):
    (tmp_path / "x.dqc").write_bytes(b"abc")
    assert read_bytes(tmp_path / "x.dqc") == b"abc"
    with pytest.raises(DQCodecError, match="no such file"):
        read_bytes(tmp_path / "y.dqc")
    with pytest.raises(DQCodecError, match="folder"):
        read_bytes(tmp_path)
