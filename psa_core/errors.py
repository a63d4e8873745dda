"""Errors the pack raises on bad input. Each message names the problem and what is allowed."""
from __future__ import annotations

import reprlib

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 80
_SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 6
_SHOWN.maxlevel = 3


class PSAError(ValueError):
    """Base class for every user-facing PSA error."""


class InputError(PSAError):
    """A value given to the pack (a node input, a name, a path) is not allowed."""


class AdapterFileError(PSAError):
    """An adapter file cannot be read, or is not a PSA adapter."""


class EmbeddingFileError(PSAError):
    """A user-embedding file cannot be read, or has the wrong shape."""


class CompatibilityError(PSAError):
    """Two valid things do not fit together (adapter vs model, embedding vs adapter)."""


def shown(value: object) -> str:
    """`repr(value)` for an error message, cut short: a 1 MB input is never echoed whole, and deep nesting is elided."""
    return _SHOWN.repr(value)
