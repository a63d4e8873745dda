"""JSON from files the user gives: the two ways `json.loads` fails other than with a JSONDecodeError.

Nesting deeper than Python's recursion limit raises RecursionError, and an integer of more digits than Python
converts (`sys.get_int_max_str_digits()`, 4300 by default) raises a plain ValueError. `parse_json` raises both as
`json.JSONDecodeError`, with the position of the offending part, so every reader reports them as it reports any
other invalid JSON: naming its file and line. `json_lines` reads a JSONL file so, one reason per bad line (UTF-8
errors included).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator


def _offending_position(text: str) -> tuple[int, int, int]:
    """(position of the deepest nesting, its depth, position of the first over-long integer or -1), read outside
    JSON strings."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # no limit before Python 3.10.7
    depth = deepest = deepest_at = 0
    long_number, run_start = -1, None
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
            continue
        if char.isdigit():
            run_start = index if run_start is None else run_start
            if limit and long_number < 0 and index - run_start + 1 > limit:
                long_number = run_start
            continue
        run_start = None
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_at = depth, index
        elif char in "]}":
            depth -= 1
    return deepest_at, deepest, long_number


def parse_json(text: str) -> object:
    """`json.loads(text)`; too deep nesting and too long integers raise json.JSONDecodeError as well."""
    try:
        return json.loads(text)
    except RecursionError:
        at, depth, _ = _offending_position(text)
        raise json.JSONDecodeError(f"nested {depth} levels deep, more than can be read", text, at) from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:
        if isinstance(error, UnicodeError):
            raise
        _, _, at = _offending_position(text)
        raise json.JSONDecodeError(f"an integer of more than {sys.get_int_max_str_digits()} digits, more than can "
                                   "be read", text, max(at, 0)) from None


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
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg} at column {error.colno})"
