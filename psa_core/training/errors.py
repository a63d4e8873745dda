"""Errors of the training core. Each message names the problem and what is allowed."""
from __future__ import annotations

from ..errors import PSAError


class DatasetError(PSAError):
    """Training data cannot be read: malformed metadata lines, missing images or embeddings."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A data, pairs or profiles file that does not exist; still a FileNotFoundError for callers catching that."""


class TrainingError(PSAError):
    """A training run cannot start or continue (bad settings, non-finite loss, unusable checkpoint)."""
