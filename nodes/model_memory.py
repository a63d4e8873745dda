"""ComfyUI's model management around a model the pack loads itself (the LLM of PSA Encode Profile and PSA Rewrite
Prompt): where it runs, room made before it loads, memory handed back after it is released (docs/comfyui.md §7).
"""
from __future__ import annotations

import torch

DEVICES = ("auto", "cpu")  # the `device` combo: ComfyUI's device, or the CPU
ROOM_FACTOR = 1.2  # room asked for beyond the weights (activations, allocator slack)


def llm_device(choice: str) -> torch.device:
    """The device of a `device` combo value: ComfyUI's torch device for "auto", else the CPU."""
    import comfy.model_management as mm  # not at import: it picks the device, and tests choose the CPU first

    return mm.get_torch_device() if choice == "auto" else torch.device("cpu")


def before_load(nbytes: int, device: torch.device) -> None:
    """Evict diffusion models from `device` as far as the LLM's `nbytes` of weights need their room."""
    import comfy.model_management as mm

    mm.free_memory(int(nbytes * ROOM_FACTOR), device)


def after_release() -> None:
    """After the LLM was deleted: let ComfyUI empty its allocator caches."""
    import comfy.model_management as mm

    mm.soft_empty_cache()
