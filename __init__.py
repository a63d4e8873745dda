"""PSA for ComfyUI: Personalized Safety Alignment adapters for SD1.5 and SDXL as ComfyUI nodes."""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
