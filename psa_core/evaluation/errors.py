"""Errors of the evaluation core (docs/evaluation.md)."""
from __future__ import annotations

from ..errors import PSAError
from ..images import ImageReadError

# ImageReadError (one image cannot be read) is the image gate's error: a scorer reports it as that image's error.

__all__ = ["EvaluationError", "ImageReadError", "MissingDependencyError"]


class EvaluationError(PSAError):
    """A setting, model or file of an evaluation is not usable; the message names it and what is allowed."""


class MissingDependencyError(EvaluationError):
    """An optional package a scorer needs is not installed (or does not import); the message says what to install."""
