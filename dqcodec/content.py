"""Synthetic image content that photographs lack: flat colours, saturated gradients, text, screenshots.

A codec trained on photographs sees few saturated colours and no flat graphics; these images
make that content on demand (no files to ship), for three users: the training recipes mix them
into the data that fits transforms, codebooks and context tables (:func:`fitting_content`), the
tests encode them with every shipped model (:func:`test_set`), and ``dqcodec content`` measures
them. Every function returns (H, W, 3) uint8 RGB arrays and is deterministic.
"""

import itertools

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

# The 8 corners of the RGB cube, by name.
CORNERS = {
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
GREYS = {"grey-64": (64, 64, 64), "grey-128": (128, 128, 128), "grey-192": (192, 192, 192)}
FLAT_COLOURS = {**CORNERS, **GREYS}


def flat(colour: tuple[int, int, int], height: int, width: int | None = None) -> np.ndarray:
    """(height, width, 3) image of one colour."""
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (height, width or height, 3)).copy()


def hue_sweep(height: int, width: int) -> np.ndarray:
    """Fully saturated hues left to right, brightness falling from full at the top to black."""
    hue = np.linspace(0, 1, width, endpoint=False)[None, :]
    value = np.linspace(1, 0, height)[:, None]
    sector = hue * 6
    channels = [np.clip(np.abs((sector + shift) % 6 - 3) - 1, 0, 1) for shift in (0, 4, 2)]
    return (np.stack(channels, axis=-1) * value[..., None] * 255 + 0.5).astype(np.uint8)


def corner_gradient(height: int, width: int, start: tuple, end: tuple) -> np.ndarray:
    """A linear gradient from colour ``start`` (left) to ``end`` (right), e.g. red to blue."""
    t = np.linspace(0, 1, width)[None, :, None]
    row = np.asarray(start, dtype=np.float64) * (1 - t) + np.asarray(end, dtype=np.float64) * t
    return np.broadcast_to(row + 0.5, (height, width, 3)).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text(height: int, width: int, foreground=(0, 0, 0), background=(255, 255, 255), seed: int = 0) -> np.ndarray:
    """Lines of text in one colour on a flat background of another."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(image)
    size = max(8, height // 8)
    words = ["codec", "flat", "colour", "pixel", "text", "RGB", "image", "block", "quant", "Kodak", "screen"]
    for top in range(2, height - size, size + size // 3):
        line = " ".join(rng.choice(words, size=8))
        draw.text((2, top), line, fill=tuple(foreground), font=_font(size))
    return np.asarray(image).copy()


def screenshot(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A screenshot-like image: title bar, flat panels, saturated buttons and icons, lines of text."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    bar = max(6, height // 10)
    draw.rectangle((0, 0, width, bar), fill=(40, 60, 160))
    draw.text((4, 0), "dqcodec - window", fill=(255, 255, 255), font=_font(max(6, bar - 2)))
    side = width // 4
    draw.rectangle((0, bar, side, height), fill=(45, 45, 48))
    size = max(6, height // 12)
    for row, top in enumerate(range(bar + 4, height - size, size + 4)):
        colour = tuple(int(v) for v in rng.choice([0, 255], size=3)) if row % 3 == 0 else (200, 200, 200)
        draw.rectangle((4, top, 4 + size, top + size), fill=colour)  # an icon
        draw.text((8 + size, top), "item", fill=(230, 230, 230), font=_font(size))
        draw.text((side + 6, top), "Lorem ipsum dolor sit amet", fill=(20, 20, 20), font=_font(size))
    for index, colour in enumerate(((220, 0, 0), (0, 160, 0), (0, 90, 255), (255, 200, 0))):
        left = side + 6 + index * (width - side) // 4
        draw.rectangle((left, height - 2 * bar, left + (width - side) // 5, height - bar // 2), fill=colour)
    return np.asarray(image).copy()


def saturate(image: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """Pillow's colour enhancement: factor 1 is the image itself, 2 doubles its saturation."""
    return np.asarray(ImageEnhance.Color(Image.fromarray(image)).enhance(factor)).copy()


def test_set(size: int = 64) -> dict[str, np.ndarray]:
    """Named (size, size, 3) images: the 8 RGB-cube corners and 3 greys as flat images, a hue sweep,
    red-to-blue and green-to-magenta gradients, black text on white, yellow text on blue, a screenshot."""
    images = {f"flat-{name}": flat(colour, size) for name, colour in FLAT_COLOURS.items()}
    images["hue-sweep"] = hue_sweep(size, size)
    images["gradient-red-blue"] = corner_gradient(size, size, (255, 0, 0), (0, 0, 255))
    images["gradient-green-magenta"] = corner_gradient(size, size, (0, 255, 0), (255, 0, 255))
    images["text-black-on-white"] = text(size, size)
    images["text-yellow-on-blue"] = text(size, size, foreground=(255, 255, 0), background=(0, 0, 200), seed=1)
    images["screenshot"] = screenshot(size, size)
    return images


def fitting_content(size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Synthetic images for fitting a codec beside photographs, the kinds taken in turn (so that
    the first few already hold each kind): a mosaic of flat tiles (the cube's corners, greys and
    random colours, edges on and off the 8-pixel grid), a hue sweep, a gradient between two cube
    corners, coloured text on a coloured background, a screenshot."""
    rng = np.random.default_rng(seed)
    corners = list(CORNERS.values())
    palette = corners + list(GREYS.values())
    kinds: list[list[np.ndarray]] = [[], [], [], [], []]
    for variant in range(4):
        mosaic = np.zeros((size, size, 3), dtype=np.uint8)
        tile = 24 + 4 * variant  # 24..36 pixels: tile edges fall on and off block edges
        for top, left in itertools.product(range(0, size, tile), repeat=2):
            colour = palette[rng.integers(len(palette))] if rng.random() < 0.6 else rng.integers(0, 256, 3)
            mosaic[top : top + tile, left : left + tile] = colour
        kinds[0].append(mosaic)
        sweep = hue_sweep(size, size)
        kinds[1].append(sweep if variant % 2 == 0 else sweep[::-1, ::-1].transpose(1, 0, 2).copy())
        start, end = rng.choice(len(corners), size=2, replace=False)
        kinds[2].append(corner_gradient(size, size, corners[start], corners[end]))
        foreground, background = rng.choice(len(corners), size=2, replace=False)
        kinds[3].append(text(size, size, corners[foreground], corners[background], seed=variant))
        kinds[4].append(screenshot(size, size, seed=variant))
    return [image for group in zip(*kinds) for image in group]
