"""Errors the pack raises on bad input. Each message names the problem and what is allowed."""


class PSAError(ValueError):
    """Base class for every user-facing PSA error."""


class AdapterFileError(PSAError):
    """An adapter file cannot be read, or is not a PSA adapter."""


class EmbeddingFileError(PSAError):
    """A user-embedding file cannot be read, or has the wrong shape."""


class CompatibilityError(PSAError):
    """Two valid things do not fit together (adapter vs model, embedding vs adapter)."""
