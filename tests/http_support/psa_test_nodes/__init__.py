"""Test-only ComfyUI nodes (never shipped): conditioning for UNet-only graphs that have no CLIP, a placeholder
for inputs that a test graph must validate but never compute, and a CLIP_VISION stand-in for Q16 (ComfyUI loads
only full-size CLIP vision checkpoints, and a random ViT-L/14 says nothing predictable), and IMAGE values that no
ComfyUI node makes, for the input fuzz tests, and a judge stand-in with a scripted answer."""
import json
import sys

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


class TestImageBatch:
    """An IMAGE output that is not a proper image batch: empty, of another rank or channel count, of integers, or
    holding NaN or infinity (what a buggy custom node could pass on)."""

    KINDS = {
        "empty": lambda: torch.zeros(0, 32, 32, 3),
        "rank 3": lambda: torch.zeros(32, 32, 3),
        "rank 5": lambda: torch.zeros(1, 1, 32, 32, 3),
        "1 channel": lambda: torch.zeros(1, 32, 32, 1),
        "5 channels": lambda: torch.zeros(1, 32, 32, 5),
        "zero height": lambda: torch.zeros(1, 0, 32, 3),
        "uint8": lambda: torch.zeros(1, 32, 32, 3, dtype=torch.uint8),
        "nan": lambda: torch.full((2, 32, 32, 3), float("nan")),
        "inf": lambda: torch.full((1, 32, 32, 3), float("inf")),
    }

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(cls.KINDS),)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, kind):
        return (self.KINDS[kind](),)


class TestScriptedJudge:
    """A PSA_JUDGE stand-in: the pack's own VLMJudge on an answer function that finds the categories in `found`
    (comma-separated; empty: nothing) in every image, so the pack's real prompt, answer parser and nodes run."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"found": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("PSA_JUDGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, found):
        names = [name.strip() for name in found.split(",") if name.strip()]
        answer = json.dumps({"banned_categories_respected": not names, "banned_categories_found": names,
                             "allowed_categories_respected": True, "quality_score": 50, "appropriateness_score": 50,
                             "overall_assessment": "FAIL" if names else "PASS", "explanation": "scripted"})
        modules = [m for name, m in list(sys.modules.items()) if name.endswith("psa_core.evaluation.judge")
                   and hasattr(m, "VLMJudge")]
        return (modules[0].VLMJudge(lambda prompt, images: answer, description={"backend": "scripted"}),)


NODE_CLASS_MAPPINGS = {"TestImageBatch": TestImageBatch, "TestRandomConditioning": TestRandomConditioning, "TestPlaceholder": TestPlaceholder,
                       "TestRedFlagClipVision": TestRedFlagClipVision, "TestScriptedJudge": TestScriptedJudge}
