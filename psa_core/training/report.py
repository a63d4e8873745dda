"""What a training run reports per optimizer step, and the loss/accuracy picture drawn from it.

Per-step DPO metrics are noisy (one random timestep per pair, docs/training.md §10), so each row also carries
exponential moving averages, and the picture draws them over the raw values. The trainer writes the rows as
JSONL and the picture as PNG; the training node shows the picture in the graph.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

from .loop import StepMetrics

EMA_DECAY = 0.95


class Ema:
    def __init__(self, decay: float = EMA_DECAY):
        self.decay, self.value, self.count = decay, None, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.value = value if self.value is None else self.decay * self.value + (1 - self.decay) * value
        return self.value


class History:
    """The rows of a run, one per optimizer step, with moving averages of loss and implicit accuracy."""

    def __init__(self, rows: Sequence[Mapping] = ()):
        self.rows: list[dict] = []
        self.loss_ema, self.accuracy_ema = Ema(), Ema()
        for row in rows:
            self.loss_ema.update(row["loss"])
            self.accuracy_ema.update(row["implicit_accuracy"])
            self.rows.append(dict(row))

    def add(self, step: int, metrics: StepMetrics, **extra: float) -> dict:
        row = {"step": step, "loss": metrics.loss, "implicit_accuracy": metrics.implicit_accuracy,
               "reward_margin": metrics.reward_margin, "loss_ema": self.loss_ema.update(metrics.loss),
               "accuracy_ema": self.accuracy_ema.update(metrics.implicit_accuracy), "lr": metrics.lr,
               "grad_norm": metrics.grad_norm, **extra}
        self.rows.append(row)
        return row


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


def render_history(rows: Sequence[Mapping]) -> Image.Image:
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
    return image
