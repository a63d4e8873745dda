"""JSON text from users and data files, parsed with limits that end in the pack's own error.

Python's parser raises `RecursionError` on deep nesting and a bare `ValueError` on integers of more than
`sys.get_int_max_str_digits()` digits; both, and nesting deeper than the pack ever needs, become `JSONTextError`.
`json_lines` reads a JSONL file so, one reason per bad line (UTF-8 errors included), for readers that report every
bad line with its number.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

from .errors import PSAError

MAX_DEPTH = 64


class JSONTextError(PSAError):
    """Text that is not JSON the pack reads. `msg`, `lineno` and `colno` as in `json.JSONDecodeError`
    (the position is None where the parser gives none)."""

    def __init__(self, msg: str, lineno: int | None = None, colno: int | None = None):
        self.msg, self.lineno, self.colno = msg, lineno, colno
        super().__init__(f"{msg} at line {lineno} column {colno}" if lineno else msg)

    def in_line(self) -> str:
        """The problem of one line of a JSON-lines file, e.g. `not valid JSON (Expecting value at column 5)`."""
        return f"not valid JSON ({self.msg}{f' at column {self.colno}' if self.colno else ''})"


def _deeper_than(data: object, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def parse_json(text: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    """`json.loads(text)`, refusing nesting deeper than `max_depth` arrays/objects and over-long integers."""
    too_deep = f"arrays/objects nested more than {max_depth} levels deep"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise JSONTextError(error.msg, error.lineno, error.colno) from None
    except UnicodeDecodeError:
        raise JSONTextError("not UTF-8 text") from None
    except RecursionError:
        raise JSONTextError(too_deep) from None
    except ValueError as error:  # Python's limit on integer digits (int_max_str_digits)
        raise JSONTextError(f"an integer of more than {sys.get_int_max_str_digits()} digits" if "digits" in str(error)
                            else str(error)) from None
    if _deeper_than(data, max_depth):
        raise JSONTextError(too_deep)
    return data


def json_lines(path: str | os.PathLike, first_line_encoding: str = "utf-8"
               ) -> Iterator[tuple[int, object, str | None]]:
    """Each non-blank line of a JSONL file as (line number, value, None), or (line number, None, why it cannot be
    read) for a line that is not UTF-8 or not JSON; `first_line_encoding` "utf-8-sig" also accepts a BOM."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(first_line_encoding if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield number, None, f"not UTF-8 text ({error.reason} at byte {error.start + 1} of the line)"
                continue
            if not text.strip():
                continue
            try:
                yield number, parse_json(text), None
            except JSONTextError as error:
                yield number, None, error.in_line()
