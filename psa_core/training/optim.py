"""Optimizer and learning-rate schedule for the adapter (PSAlign defaults, docs/training.md §5)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

OPTIMIZERS = ("adamw", "adafactor", "sgd")
LR_SCHEDULES = ("constant_with_warmup", "constant", "linear", "cosine")


def build_optimizer(parameters: Iterable[torch.nn.Parameter], name: str = "adamw", lr: float = 5e-6,
                    weight_decay: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW (reference SD1.5), Adafactor (reference SDXL; transformers' implementation) or plain SGD."""
    parameters = list(parameters)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, weight_decay=weight_decay, clip_threshold=1.0, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
    if schedule != "constant" and warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str = "constant_with_warmup",
                       warmup_steps: int = 500, total_steps: int = 5000) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step (not per process: nothing here is multiplied by ranks)."""
    lr_factor(0, schedule, warmup_steps, total_steps)  # validate now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule, warmup_steps, total_steps))
