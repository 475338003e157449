"""What can go wrong that the user can fix. Every message is one line naming the problem and the fix;
the CLI prints it as is and exits with status 2, the Python API raises it."""

from __future__ import annotations

import operator
from typing import Any


class CovoEdgeError(Exception):
    """Base of every error the user can act on."""


class OptionError(CovoEdgeError, ValueError):
    """A numeric or choice option out of its range."""


class AudioError(CovoEdgeError, ValueError):
    """Audio that cannot be used (unreadable, empty, silent, NaN, too short, bad shape or rate)."""


class InputError(CovoEdgeError, ValueError):
    """An input file other than audio (codes, tokens, noise) that is missing or malformed."""


class CodesError(InputError):
    """Audio codes token2wav cannot vocode: not integers, not 1-D, empty or out of range."""


class OutputError(CovoEdgeError, OSError):
    """An output that cannot be written (a directory in the way, no permission, disk full)."""


class ArtifactsError(CovoEdgeError, ValueError):
    """An artifacts directory that cannot be used: missing, truncated, swapped or stale files."""


class ContextFullError(CovoEdgeError, ValueError):
    """The conversation no longer fits the exported context."""


class DeviceError(CovoEdgeError, RuntimeError):
    """No usable GPU for what was asked: no driver, no device, no cuda-bindings, or a CUDA error."""


def at_least(name: str, value: Any, minimum: int) -> int:
    """`value` as an int >= minimum, or OptionError; the CLI and the API share the wording."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or n < minimum:
        raise OptionError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return n


def os_reason(e: OSError) -> str:
    """An OSError in words without its errno prefix or a repeated path: 'No space left on device'."""
    return e.strerror or str(e) or type(e).__name__
