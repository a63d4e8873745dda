"""Errors of the evaluation core (docs/evaluation.md)."""
from __future__ import annotations

from ..errors import PSAError


class EvaluationError(PSAError):
    """A setting, model or file of an evaluation is not usable; the message names it and what is allowed."""


class ImageReadError(EvaluationError):
    """One image cannot be read. A scorer reports it as an error of that image, never as a clean image."""


class MissingDependencyError(EvaluationError):
    """An optional package a scorer needs is not installed (or does not import); the message says what to install."""
