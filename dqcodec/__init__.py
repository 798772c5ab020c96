"""dqcodec: a learned vector-quantized image codec and the research toolkit behind it.

    >>> import dqcodec
    >>> data = dqcodec.encode("photo.png", quality=3)   # .dqc bytes
    >>> image = dqcodec.decode(data)                    # PIL.Image
"""

from dqcodec.codec.api import decode, encode
from dqcodec.codec.errors import DQCodecError

__all__ = ["encode", "decode", "DQCodecError"]
