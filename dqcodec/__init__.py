"""dqcodec: a learned vector-quantized image codec and the research toolkit behind it.

    >>> import dqcodec
    >>> data = dqcodec.encode("photo.png", quality=3)   # .dqc bytes
    >>> image = dqcodec.decode(data)                    # PIL.Image
"""

from dqcodec.codec.errors import DQCodecError

__all__ = ["encode", "decode", "DQCodecError"]


def __getattr__(name: str):
    # The API pulls in torch; import it on first use so that 'dqcodec --help' starts fast.
    if name in ("encode", "decode"):
        from dqcodec.codec import api

        return getattr(api, name)
    raise AttributeError(f"module 'dqcodec' has no attribute {name!r}")
