"""dqcodec: a learned vector-quantized image codec and the research toolkit behind it.

    >>> import dqcodec
    >>> data = dqcodec.encode("photo.png", quality=3)   # .dqc bytes
    >>> image = dqcodec.decode(data)                    # PIL.Image; a path to a .dqc file works too
    >>> from PIL import Image
    >>> Image.open("photo.dqc").size                    # importing dqcodec registers a Pillow plugin
"""

from dqcodec.codec.errors import DQCodecError
from dqcodec.codec.pillow_plugin import register_pillow_plugin

__all__ = ["encode", "decode", "register_pillow_plugin", "DQCodecError"]

register_pillow_plugin()


def __getattr__(name: str):
    # The API loads the codec (numpy, constriction, the models); import it on first use so that
    # 'import dqcodec' and Pillow's opening of a .dqc header stay light.
    if name in ("encode", "decode"):
        from dqcodec.codec import api

        return getattr(api, name)
    raise AttributeError(f"module 'dqcodec' has no attribute {name!r}")
