"""What a run reports: a JSONL line per optimizer step, and a PNG plot of loss and implicit accuracy.

Per-step DPO metrics are noisy (one random timestep per pair, training-notes.md §9.1), so the log also
carries exponential moving averages, and the plot draws them over the raw values.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from psa_core.atomic import atomic_write

EMA_DECAY = 0.95


class Ema:
    def __init__(self, decay: float = EMA_DECAY):
        self.decay, self.value, self.count = decay, None, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.value = value if self.value is None else self.decay * self.value + (1 - self.decay) * value
        return self.value


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


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: list[tuple[list[tuple[float, float]], tuple[int, int, int]]], fixed: tuple[float, float] | None):
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    points = [p for line, _ in series for p in line if math.isfinite(p[1])]
    draw.text((left + 4, top - 14), title, fill=(0, 0, 0))
    if not points:
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = fixed or (min(p[1] for p in points), max(p[1] for p in points))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    draw.text((right + 4, top), f"{y1:.4g}", fill=(0, 0, 0))
    draw.text((right + 4, bottom - 10), f"{y0:.4g}", fill=(0, 0, 0))
    draw.text((left, bottom + 2), f"step {x0:g}", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 2), f"step {x1:g}", fill=(0, 0, 0))

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return (left + (point[0] - x0) / (x1 - x0) * (right - left),
                bottom - (min(max(point[1], y0), y1) - y0) / (y1 - y0) * (bottom - top))

    for line, colour in series:
        finite = [at(p) for p in line if math.isfinite(p[1])]
        if len(finite) == 1:
            draw.ellipse([finite[0][0] - 2, finite[0][1] - 2, finite[0][0] + 2, finite[0][1] + 2], fill=colour)
        elif finite:
            draw.line(finite, fill=colour, width=1)


def plot_run(rows: list[dict], path: str | Path) -> Path:
    """Loss (with ln 2, the value at initialisation, as a reference line) and implicit accuracy over steps."""
    image = Image.new("RGB", (900, 560), "white")
    draw = ImageDraw.Draw(image)
    steps = [r["step"] for r in rows]
    loss = [(s, r["loss"]) for s, r in zip(steps, rows)]
    loss_ema = [(s, r["loss_ema"]) for s, r in zip(steps, rows)]
    ln2 = [(s, math.log(2)) for s in (steps[:1] + steps[-1:])] if steps else []
    _panel(draw, (60, 30, 820, 250), "DPO loss (grey: per step, blue: EMA, green: ln 2)",
           [(loss, (190, 190, 190)), (ln2, (40, 160, 40)), (loss_ema, (30, 60, 200))], None)
    accuracy = [(s, r["implicit_accuracy"]) for s, r in zip(steps, rows)]
    accuracy_ema = [(s, r["accuracy_ema"]) for s, r in zip(steps, rows)]
    _panel(draw, (60, 310, 820, 530), "implicit accuracy (grey: per step, red: EMA)",
           [(accuracy, (190, 190, 190)), (accuracy_ema, (200, 40, 40))], (0.0, 1.0))
    return atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))
