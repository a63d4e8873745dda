"""Checks on where a command writes, made before any work starts (docs/evaluation.md §11, docs/training.md).

`check_writable` answers "can a file be created there?" by creating one: `os.access` is not enough, since it
answers yes for root whatever the folder's mode, and says nothing of a path whose parent is a file. The probe is a
uniquely named empty file in the nearest folder that exists, removed at once, the folder's access and modification
times then set back; nothing else is created.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PSAError

PROBE_PREFIX = ".psa-write-check-"


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` itself or its nearest ancestor that exists."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())


def check_writable(folder: str | os.PathLike, what: str, error: type[PSAError] = PSAError) -> None:
    """Raise `error` (its message starting with `what`, e.g. "--out report.json") unless files can be created in
    `folder` or, when it does not exist yet, in the nearest existing folder above it (where it would be made)."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise error(f"{what}: {existing} is a file, not a folder; allowed: a path in a folder you can write to")
    try:
        times = existing.stat()
        handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as caught:
        raise error(f"{what}: cannot write in {existing} ({caught.strerror or caught}); allowed: a folder you can "
                    "write to") from None
    try:  # the folder's times as they were: the probe leaves no trace a user could see
        os.utime(existing, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError:
        pass
