"""Encoder choices by name, as the nodes offer them."""
from __future__ import annotations

from pathlib import Path

import torch

from .base import EncoderError, ProfileEncoder
from .llm import LLMEncoder
from .structured import StructuredEncoder
from .template import load_template

LLM, STRUCTURED = "llm", "structured"
ENCODER_CHOICES = (LLM, STRUCTURED)


def make_encoder(choice: str, *, model_dir: str | Path | None = None, template_path: str | Path | None = None,
                 dtype: str = "auto", device: str | torch.device = "cpu", **hooks) -> ProfileEncoder:
    """`llm` needs `model_dir` and `template_path`, and takes LLMEncoder's other keywords (`batch_size`, `placement`,
    `progress`, `before_load`, `after_release`); `structured` needs nothing."""
    if choice == STRUCTURED:
        return StructuredEncoder()
    if choice == LLM:
        if not model_dir or not template_path:
            raise EncoderError("the llm encoder needs a model folder and a template file (the reference "
                               "get_embeds.txt for the published adapters)")
        return LLMEncoder(model_dir, load_template(template_path), dtype=dtype, device=device, **hooks)
    raise EncoderError(f"unknown encoder {choice!r}; allowed: {', '.join(ENCODER_CHOICES)}")
