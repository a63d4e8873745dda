"""Test-only ComfyUI nodes (never shipped): conditioning for UNet-only graphs that have no CLIP, a placeholder
for inputs that a test graph must validate but never compute, and a CLIP_VISION stand-in for Q16 (ComfyUI loads
only full-size CLIP vision checkpoints, and a random ViT-L/14 says nothing predictable)."""
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


class RedFlagClipVision:
    """`encode_image(pixels)["image_embeds"]` as a CLIP_VISION model gives it: the 4-d unit vector e1 for a strongly
    red image (red mean > 0.7, green and blue means < 0.3), e0 otherwise. With Q16 prompts [e0, e1] only the red
    images are 'inappropriate'."""

    def encode_image(self, pixels):
        means = pixels[..., :3].float().mean(dim=(0, 1, 2))
        red = bool(means[0] > 0.7 and means[1] < 0.3 and means[2] < 0.3)
        return {"image_embeds": torch.tensor([[0.0, 1.0, 0.0, 0.0]] if red else [[1.0, 0.0, 0.0, 0.0]])}


class TestRedFlagClipVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        return (RedFlagClipVision(),)


NODE_CLASS_MAPPINGS = {"TestRandomConditioning": TestRandomConditioning, "TestPlaceholder": TestPlaceholder,
                       "TestRedFlagClipVision": TestRedFlagClipVision}
