"""The one exception type that dqcodec raises for bad input, bad files and bad requests."""

import os
import sys


class DQCodecError(Exception):
    """A problem with the user's input (image, .dqc file, model name, path), stated in one line.

    The CLI prints it as ``dqcodec: error: <message>`` and exits with status 2; the Python API
    lets it propagate. Internal bugs are never wrapped in it.
    """


def output_error(error: OSError) -> DQCodecError:
    """The one-line error for a failed write to standard output (a pipe whose reader has gone,
    a full device). Points file descriptor 1 at /dev/null first, so that Python's flush at exit
    does not fail a second time with a traceback."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a descriptor
        descriptor = None
    if descriptor is not None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, descriptor)
        os.close(null)
    if isinstance(error, BrokenPipeError):
        return DQCodecError("the output pipe closed before all data was written")
    return DQCodecError(f"cannot write to standard output: {error.strerror or error}")
