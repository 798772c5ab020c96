"""The pixel limit: a guard against decompression bombs, like Pillow's ``MAX_IMAGE_PIXELS``.

A file of a few bytes can claim a huge image; coding costs time and memory in proportion to the
pixels. Every image is checked against the limit before anything sized by it is allocated: on
encode right after the image file's header is read, on decode right after the .dqc header is
parsed. The default lets every camera photo through (61 MP is the most a 35 mm sensor gives);
``--max-pixels N`` or ``DQCODEC_MAX_PIXELS=N`` sets another limit. The .dqc format's own
ceiling (``container.MAX_PIXELS``) holds whatever the limit is.
"""

import os

from dqcodec.codec.errors import DQCodecError

DEFAULT_MAX_PIXELS = 64_000_000
ENVIRONMENT_VARIABLE = "DQCODEC_MAX_PIXELS"


def max_pixels(limit: int | None = None) -> int:
    """The pixel limit in force: ``limit`` if given, else ``$DQCODEC_MAX_PIXELS``, else the default.

    Raises ``DQCodecError`` if the one that applies is not a positive integer.
    """
    if limit is None:
        setting = os.environ.get(ENVIRONMENT_VARIABLE)
        if setting is None or not setting.strip():
            return DEFAULT_MAX_PIXELS
        try:
            limit = int(setting)
        except ValueError:
            raise DQCodecError(f"{ENVIRONMENT_VARIABLE} must be a positive integer, got {setting!r}") from None
        if limit < 1:
            raise DQCodecError(f"{ENVIRONMENT_VARIABLE} must be a positive integer, got {setting!r}")
        return limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DQCodecError(f"max_pixels must be a positive integer, got {limit!r}")
    return limit


def check_pixels(width: int, height: int, name: str, limit: int | None = None) -> None:
    """Raise ``DQCodecError`` (one line that says how to allow it) if a ``width`` x ``height``
    image has more pixels than :func:`max_pixels` (``limit``) allows; ``name`` starts the message."""
    allowed = max_pixels(limit)
    pixels = width * height
    if pixels > allowed:
        raise DQCodecError(
            f"{name}: image is {width}x{height} = {pixels:,} pixels, more than the limit of {allowed:,} "
            f"(a guard against decompression bombs); to allow it, pass --max-pixels {pixels} "
            f"(max_pixels= in Python) or set {ENVIRONMENT_VARIABLE}={pixels}"
        )
