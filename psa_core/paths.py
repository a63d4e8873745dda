"""Where a name given to the pack may point: inside a set of folders, unless the server owner allows more.

The caller supplies the folders (for the nodes: ComfyUI's input, output and model folders). Names are read as
relative paths inside them; empty names, NUL bytes, `..`, over-long names and the folders themselves (`.`, `./`, or
the folder's absolute path: a container, never an entry) are refused. An absolute path is accepted when it lies
inside one of the folders, and anywhere only when the server's environment sets `PSA_ALLOW_OUTSIDE_PATHS=1`. Names of files the pack writes are stricter: relative, plain characters, never a
folder itself. Containment is lexical, so links the owner placed inside the folders are followed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import InputError, shown

OUTSIDE_PATHS_ENV = "PSA_ALLOW_OUTSIDE_PATHS"
OUTSIDE_HINT = f"paths elsewhere only when the server owner sets {OUTSIDE_PATHS_ENV}=1"
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 200  # leaves room for the counter and suffix a writer adds, under the usual 255-byte limit
WRITE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]*")
WRITE_PART_RULE = "letters, digits, '.', '_', '-' and spaces, each part starting with a letter or digit"
_SEPARATORS = re.compile(r"[\\/]")


class PathPolicyError(InputError):
    """A name or path points where the pack does not read or write."""


def outside_paths_allowed() -> bool:
    """The owner's opt-in: paths outside ComfyUI's folders are read only when the environment says so."""
    return os.environ.get(OUTSIDE_PATHS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """True when `path` is `folder` or lies below it, comparing normalised absolute paths."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _is_absolute(text: str) -> bool:
    return os.path.isabs(text) or bool(PureWindowsPath(text).drive)


def _problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "not a text"
    text = value.strip()
    if not text:
        return "empty"
    if "\x00" in text:
        return "contains a NUL byte"
    if len(text) > MAX_PATH_CHARS:
        return f"{len(text)} characters long, at most {MAX_PATH_CHARS}"
    parts = _SEPARATORS.split(text)
    if ".." in parts:
        return "contains '..'"
    if any(len(part) > MAX_PART_CHARS for part in parts):
        return f"a part is longer than {MAX_PART_CHARS} characters"
    return None


def _refusal(value: object, name: str, problem: str, allowed: str) -> PathPolicyError:
    return PathPolicyError(f"{name} {shown(value)} is not allowed ({problem}); allowed: {allowed}")


def _part_problem(part: str) -> str:
    if not part:
        return "an empty part"
    if not part[0].isalnum():
        return f"a part starting with {part[0]!r}"
    return "a character other than letters, digits, '.', '_', '-' and spaces"


def stays_inside(name: str) -> bool:
    """True for a relative name that cannot leave the folder it is joined to (no '..', not absolute, no NUL)."""
    return _problem(name) is None and not _is_absolute(name.strip())


def candidates(value: str, name: str, folders: Sequence[str | Path], allowed: str,
               subfolders: bool = True) -> list[Path]:
    """Where `value` may be, in order: a relative name inside each folder, or one permitted absolute path.

    `name` is the input the value came from and `allowed` says in words what it may be; both go into the error.
    Without `subfolders` the value names an entry directly in one of the folders, and the opt-in does not widen
    that: a name with a folder part, or an absolute path anywhere else, is refused."""
    problem = _problem(value)
    if problem:
        raise _refusal(value, name, problem, allowed)
    text = value.strip()
    if not _is_absolute(text):
        if all(part in ("", ".") for part in _SEPARATORS.split(text)):  # `.`, `./`: the folder itself, not an entry
            raise _refusal(value, name, "the folder itself", allowed)
        if not subfolders and len(_SEPARATORS.split(text)) > 1:
            raise _refusal(value, name, "in a sub-folder", allowed)
        return [Path(folder) / text for folder in folders]
    path = Path(os.path.abspath(text))
    if any(path == Path(os.path.abspath(folder)) for folder in folders):
        raise _refusal(value, name, "the folder itself", allowed)
    if not subfolders:
        if any(path.parent == Path(os.path.abspath(folder)) for folder in folders):
            return [path]
        raise _refusal(value, name, "not directly in the folder", allowed)
    if outside_paths_allowed() or any(is_inside(path, folder) for folder in folders):
        return [path]
    raise _refusal(value, name, "outside ComfyUI's folders", f"{allowed} ({OUTSIDE_HINT})")


def write_name(value: str, name: str, allowed: str, subfolders: bool) -> PurePosixPath:
    """A relative name for something the pack writes: never absolute, never `.` or `..`, plain characters only
    (with `subfolders`, parts separated by '/'). The opt-in does not apply: the pack writes only into its folders."""
    problem = _problem(value)
    parts = value.strip().split("/") if problem is None else []
    if problem is None and _is_absolute(value.strip()):
        problem = "an absolute path"
    if problem is None and len(parts) > 1 and not subfolders:
        problem = "contains '/'"
    if problem is None:
        problem = next((_part_problem(part) for part in parts if not WRITE_PART.fullmatch(part)), None)
    if problem:
        raise _refusal(value, name, problem, allowed)
    return PurePosixPath(*parts)
