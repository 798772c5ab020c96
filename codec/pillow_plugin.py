"""Pillow plugin for ``.dqc`` files: ``Image.open``, ``.load()`` and ``.save()`` through dqcodec.

    >>> import dqcodec                       # registers the plugin
    >>> from PIL import Image
    >>> image = Image.open("photo.dqc")      # size and mode from the header; nothing decoded yet
    >>> image.size, image.mode
    ((768, 512), 'RGB')
    >>> image.save("copy.dqc", quality=3)    # or model="shvq-q2"

Opening reads only the header (:func:`~dqcodec.codec.container.read_header`), so it costs
milliseconds and imports no torch; the codec (:mod:`dqcodec.codec.api`) is imported when pixels
are first needed. Errors follow Pillow's conventions: a file whose header is bad is not
identified (``PIL.UnidentifiedImageError``, an ``OSError``), a file that cannot be decoded raises
``OSError`` on ``load()``, and ``verify()`` checks the whole file (layout and CRC32) without
decoding, raising ``SyntaxError``; the messages are dqcodec's one-line ones.

The pixel limit is Pillow's: ``Image.open`` applies ``Image.MAX_IMAGE_PIXELS`` to the header's
size (``DecompressionBombWarning`` above it, ``DecompressionBombError`` above twice it), before
anything is decoded. dqcodec's own limit (``DQCODEC_MAX_PIXELS``) guards its CLI and
``dqcodec.decode``; inside Pillow only the .dqc format's ceiling
(:data:`~dqcodec.codec.container.MAX_PIXELS`) is added.
"""

import warnings
from typing import IO

from PIL import Image, ImageFile

from dqcodec.codec.container import MAGIC, MAX_HEADER_SIZE, MAX_PIXELS, read_header, unpack
from dqcodec.codec.errors import DQCodecError

FORMAT = "DQC"
EXTENSION = ".dqc"
MIME_TYPE = "image/x-dqc"  # no registered type exists; "x-" as for other unregistered image formats
_MODES = {1: "L", 3: "RGB"}  # header channels -> Pillow mode


def _accept(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


class DqcImageFile(ImageFile.ImageFile):
    """A ``.dqc`` file opened by Pillow: ``size`` and ``mode`` ("RGB", or "L" for grayscale
    originals) come from the header; ``info["model"]`` names the model that coded it."""

    format = FORMAT
    format_description = "dqcodec learned image codec"

    def _open(self) -> None:
        try:
            header = read_header(self.fp.read(MAX_HEADER_SIZE))
        except DQCodecError as error:
            raise SyntaxError(str(error)) from None
        self._size = (header.width, header.height)
        self._mode = _MODES[header.channels]
        self.info["model"] = header.model
        # One tile over the whole image, decoded by DqcDecoder from the start of the file.
        self.tile = [ImageFile._Tile(FORMAT, (0, 0, *self.size), 0, None)]

    def verify(self) -> None:
        """Check the whole file (layout, CRC32, header fields) without decoding it; raises
        ``SyntaxError`` with the one-line reason. As in Pillow, call it right after ``open``."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        self.fp.seek(0)
        try:
            unpack(self.fp.read())
        except DQCodecError as error:
            raise SyntaxError(str(error)) from None
        super().verify()


class DqcDecoder(ImageFile.PyDecoder):
    """Decodes a whole ``.dqc`` file with :func:`dqcodec.codec.api.decode` into the image."""

    _pulls_fd = True

    def decode(self, buffer) -> tuple[int, int]:
        from dqcodec.codec import api  # the codec: only when pixels are wanted

        try:
            # Image.open has applied Pillow's pixel limit to this size already.
            image = api.decode(self.fd.read(), max_pixels=MAX_PIXELS)
        except DQCodecError as error:
            raise OSError(str(error)) from None
        self.set_as_raw(image.tobytes())
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Encode ``im`` with :func:`dqcodec.codec.api.encode_with_notes`; save options ``quality``
    (a level of the default family), ``model`` (a model name or checkpoint) and ``max_pixels``.

    A bad option raises ``ValueError``, an image dqcodec cannot encode ``OSError``; each lossy
    conversion of the input (alpha dropped, 16 bits reduced, ...) is a ``UserWarning``.
    """
    from dqcodec.codec import api

    quality = im.encoderinfo.get("quality")
    model = im.encoderinfo.get("model")
    try:
        api.resolve_model_name(quality, model)
    except DQCodecError as error:
        raise ValueError(str(error)) from None
    try:
        data, notes = api.encode_with_notes(
            im, quality=quality, model=model, max_pixels=im.encoderinfo.get("max_pixels")
        )
    except DQCodecError as error:
        raise OSError(str(error)) from None
    for note in notes:
        warnings.warn(f"dqcodec: {note}", stacklevel=3)
    fp.write(data)


def register_pillow_plugin() -> None:
    """Let Pillow open and save ``.dqc`` files (format "DQC", extension ``.dqc``, MIME type
    ``image/x-dqc``). ``import dqcodec`` calls it; calling it again changes nothing."""
    Image.register_open(FORMAT, DqcImageFile, _accept)
    Image.register_decoder(FORMAT, DqcDecoder)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME_TYPE)
