"""Write files so that readers see the old file or the complete new one, never a partial one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None],
                 temporary: str | os.PathLike | None = None) -> Path:
    """Call `write(temporary_path)`, then move the result onto `path` in one step. The temporary is a fresh unique
    name beside `path`, or `temporary` (in the same folder) for a writer that recognises its own leftovers."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if temporary is None:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(handle)
    temporary_path = Path(temporary)
    try:
        write(temporary_path)
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)
    return target
