"""Length bounds of the texts users give the pack: node text widgets, command-line flags and the rows of prompt
files. One limit per kind of text, checked before the text reaches a model or a file, so no input can make a
model tokenize a megabyte (docs/comfyui.md §6, "Bounded text").

The bounds are generous: a prompt of MAX_PROMPT_CHARS characters is far beyond what CLIP (77 tokens) or T5 (512)
read, and beyond any useful LLM instruction or judge caption; names (categories, concepts) are short words.
"""
from __future__ import annotations

from .errors import InputError
from .paths import MAX_PATH_CHARS

MAX_PROMPT_CHARS = 10_000  # prompts, captions, negative prompts, LLM instructions
MAX_NAME_CHARS = 200  # a category, a concept
MAX_NAME_LIST_CHARS = 2_000  # a comma-separated list of names (extra categories)
MAX_JSON_CHARS = 100_000  # one profile as JSON (a SAGE metadata line is about 1 KB)

__all__ = ["MAX_JSON_CHARS", "MAX_NAME_CHARS", "MAX_NAME_LIST_CHARS", "MAX_PATH_CHARS", "MAX_PROMPT_CHARS",
           "TextTooLong", "check_text", "limit_text"]


class TextTooLong(InputError):
    """A text is longer than its bound."""


def limit_text(limit: int) -> str:
    """How a tooltip or help text states a bound: 'At most 10000 characters.'"""
    return f"At most {limit} characters."


def check_text(value: str, where: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """`value` if it is text of at most `limit` characters; TextTooLong naming `where` (an input, a flag, a file's
    row) otherwise. The text itself is never echoed."""
    if not isinstance(value, str):
        raise InputError(f"{where}: expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise TextTooLong(f"{where} is {len(value)} characters long; allowed: at most {limit} characters")
    return value
