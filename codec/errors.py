"""The one exception type that dqcodec raises for bad input, bad files and bad requests."""


class DQCodecError(Exception):
    """A problem with the user's input (image, .dqc file, model name, path), stated in one line.

    The CLI prints it as ``dqcodec: error: <message>`` and exits with status 2; the Python API
    lets it propagate. Internal bugs are never wrapped in it.
    """
