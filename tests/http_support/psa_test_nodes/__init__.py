"""Test-only ComfyUI nodes (never shipped): conditioning for UNet-only graphs that have no CLIP."""
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


NODE_CLASS_MAPPINGS = {"TestRandomConditioning": TestRandomConditioning}
