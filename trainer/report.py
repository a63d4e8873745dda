"""The trainer's run files: a JSONL line per optimizer step, and a PNG plot of loss and implicit accuracy."""
from __future__ import annotations

import json
from pathlib import Path

from psa_core.atomic import atomic_write
from psa_core.training.report import render_history


class RunLog:
    """Appends one JSON object per line; a resumed run drops lines past its checkpoint's step first."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                row = json.loads(line) if line.strip() else None
                if row and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
        text = "".join(json.dumps(row) + "\n" for row in self.rows)
        atomic_write(self.path, lambda temporary: temporary.write_text(text))

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def plot_run(rows: list[dict], path: str | Path) -> Path:
    """Loss (with ln 2, the value at initialisation, as a reference line) and implicit accuracy over steps."""
    image = render_history(rows)
    return atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))
