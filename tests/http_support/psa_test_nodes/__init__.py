"""Test-only ComfyUI nodes (never shipped): conditioning for UNet-only graphs that have no CLIP, and a placeholder
for inputs that a test graph must validate but never compute."""
import torch


class TestRandomConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "context_dim": ("INT", {"default": 768, "min": 1, "max": 4096}),
                             "tokens": ("INT", {"default": 77, "min": 1, "max": 1024})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, context_dim, tokens):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, context_dim, generator=generator), {}]],)


class TestPlaceholder:
    """Stands for a value of any type (a model, a dataset) in graphs that are validated, never run that far:
    running it stops the prompt with a clear error instead of computing anything heavy."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"stands_for": ("STRING", {"default": "MODEL"})}}

    RETURN_TYPES = ("*",)
    FUNCTION = "stop"
    CATEGORY = "testing"

    def stop(self, stands_for):
        raise RuntimeError(f"TestPlaceholder: this test graph has no {stands_for}")


NODE_CLASS_MAPPINGS = {"TestRandomConditioning": TestRandomConditioning, "TestPlaceholder": TestPlaceholder}
