"""Fingerprints of files: which version of a file this is (cheap, from its metadata), and what it contains.

- `file_version` / `file_fingerprint`: the file's inode, size and modification time. A rewrite in place changes
  the size or the mtime, an atomic replace (a new file renamed over the old) the inode. This is what the nodes
  give ComfyUI to decide whether a loader re-runs, what the pack's in-memory caches of parsed files are keyed by,
  and what keys the memo of content hashes below.
- `file_sha256`, `HashMemo`, `model_fingerprint`: content hashes, for the base model (recorded in adapters, part
  of the training cache key, docs/training.md §8) and for data files. The model fingerprint is the sha256 of the
  checkpoint file (the usual "model hash": its first 10 hex digits are the AutoV2 hash model sites show), or for
  a diffusers folder the sha256 over its weight files' names and hashes. Hashing a multi-GB file takes seconds,
  so results are remembered per file version.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from .atomic import atomic_write

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_CHUNK = 8 * 1024 * 1024


class FileVersion(NamedTuple):
    """What tells one version of a file apart, from its metadata alone."""

    inode: int
    size: int
    mtime_ns: int


def file_version(path: str | Path) -> FileVersion | None:
    """The version of the file at `path` now (links followed), or None when nothing is there."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileVersion(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_fingerprint(path: str | Path) -> str:
    """The absolute path with its version, as one text: equal only for the same version of the same file
    (`<path>|missing` while nothing is there)."""
    version = file_version(path)
    state = "missing" if version is None else f"{version.inode}|{version.size}|{version.mtime_ns}"
    return f"{os.path.abspath(path)}|{state}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashMemo:
    """sha256 of files, remembered in a JSON file keyed by the fingerprint of the resolved path."""

    def __init__(self, memo_file: str | Path | None):
        self.memo_file = Path(memo_file) if memo_file else None
        self._memo: dict[str, str] = {}
        if self.memo_file and self.memo_file.is_file():
            try:
                self._memo = dict(json.loads(self.memo_file.read_text()))
            except (ValueError, OSError):
                self._memo = {}
        self._dirty = False

    def sha256(self, path: str | Path) -> str:
        path = Path(path).resolve()
        key = file_fingerprint(path)
        if key not in self._memo:
            self._memo[key] = file_sha256(path)  # raises FileNotFoundError for a missing file
            self._dirty = True
        return self._memo[key]

    def save(self) -> None:
        if self.memo_file and self._dirty:
            text = json.dumps(self._memo, indent=0, sort_keys=True)
            atomic_write(self.memo_file, lambda temporary: temporary.write_text(text))
            self._dirty = False


def model_fingerprint(path: str | Path, memo: HashMemo | None = None) -> str:
    """sha256 of a checkpoint file, or of a diffusers folder's weight files (names and contents)."""
    memo = memo or HashMemo(None)
    path = Path(path)
    if path.is_file():
        return memo.sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"base model not found: {path}")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES + (".json",))
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}={memo.sha256(file)}\n".encode())
    return digest.hexdigest()
