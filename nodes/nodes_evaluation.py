"""Evaluation nodes: check generated images against a profile's bans (psa_core/evaluation/guard.py does the work)."""
from __future__ import annotations

from comfy_api.latest import io

from ..psa_core.errors import InputError
from ..psa_core.evaluation.guard import (BLUR, MODES, ClipVisionEmbedder, check_image_batch, check_images,
                                         default_scorer, judge_asker, profile_bans)
from ..psa_core.evaluation.q16 import Q16Classifier
from ..psa_core.text_limits import MAX_PATH_CHARS, limit_text
from .checked_node import CheckedNode, about
from .comfy_paths import OUTSIDE_RULE, ReadPath, model_folders
from .model_folders import ADAPTERS
from .nodes_profile import PSAProfileType
from .psa_types import PSAJudgeType

CATEGORY = "PSA/evaluation"
Q16_PROMPTS_FILE = ReadPath("Q16 prompts file", model_folders(ADAPTERS, "clip_vision"),
                            "models/psa/ or models/clip_vision/", optional=True)


class PSASafetyCheck(CheckedNode):
    PATH_INPUTS = {"q16_prompts": Q16_PROMPTS_FILE}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSASafetyCheck",
            display_name="PSA Safety Check",
            category=CATEGORY,
            description="Score each image with NudeNet (and Q16 with a CLIP_VISION model and the Q16 prompts file, "
                        "and a judge when one is connected) and check it against the profile's banned categories, "
                        "each one violated, clear or unchecked (docs/evaluation.md §7): NudeNet sees only "
                        "Sexuality, Q16 flags 'inappropriate' without a category (a hit violates every ban, a pass "
                        "clears none), a judge sees all seven. An image with a ban nothing could check is 'not "
                        "verified', never clean. Violating, unverified and unscorable images can be blurred or "
                        "made black. Needs the optional `nudenet` package.",
            inputs=[
                io.Image.Input("images", tooltip="The images to check."),
                io.Combo.Input("violating", options=list(MODES), default=BLUR,
                               tooltip="What happens to an image that violates the bans or cannot be scored: "
                                       "passed through unchanged, blurred, or replaced by black."),
                PSAProfileType.Input("profile", optional=True,
                                     tooltip="The user's profile: exposed nudity violates a Sexuality ban, Q16 "
                                             "'inappropriate' any ban, the judge's findings the bans it names; a "
                                             "ban nothing could check leaves the image 'not verified'. Without "
                                             "one, the InPro rule (exposed genitals or Q16 inappropriate)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="A CLIP ViT-L/14 vision model for Q16 (with q16_prompts)."),
                io.String.Input("q16_prompts", default="", optional=True,
                                tooltip="The Q16 prompt embeddings (reference prompts.p, .npy or .safetensors): a "
                                        f"file name in models/psa/ or models/clip_vision/ ({OUTSIDE_RULE}). Empty: "
                                        f"no Q16. {limit_text(MAX_PATH_CHARS)}"),
                PSAJudgeType.Input("judge", optional=True,
                                   tooltip="A judge from PSA Load Judge: asked once per image (blind prompt) when "
                                           "the profile bans anything; the banned categories it finds "
                                           "violate, the rest are clear. Without one, bans other than Sexuality "
                                           "are unchecked."),
                io.Combo.Input("unchecked", options=list(MODES), default=BLUR, optional=True,
                               tooltip="What happens to an image that violates nothing but has a banned category "
                                       "no detector could check ('not verified'): passed through, blurred or "
                                       "black."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The images, violating ones blurred or black as "
                                                               "chosen."),
                io.Boolean.Output(display_name="all_clean", tooltip="True only when every image was scored, none "
                                                                    "violates and every banned category was "
                                                                    "checked."),
                io.String.Output(display_name="report", tooltip="Per image: clean, VIOLATES or not verified, each "
                                                                "banned category's status (violates, clear, "
                                                                "unchecked), and what NudeNet, Q16 and the judge "
                                                                "found."),
                io.String.Output(display_name="unchecked", tooltip="The banned categories no detector could check "
                                                                   "on some image, comma-separated; empty when "
                                                                   "every ban was checked."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, q16_prompts: str = "", **_: object) -> str:
        return Q16_PROMPTS_FILE.fingerprint(q16_prompts or "", "q16_prompts")

    @classmethod
    def execute(cls, images, violating: str, profile=None, clip_vision=None, q16_prompts: str = "", judge=None,
                unchecked: str | None = BLUR) -> io.NodeOutput:
        check_image_batch(images)  # before any model or file is loaded
        unchecked = BLUR if unchecked is None else unchecked  # an optional input sent as null: its default
        banned = profile_bans(profile)
        ask = None if judge is None else judge_asker(judge, profile)
        prompts = Q16_PROMPTS_FILE.find(q16_prompts or "", "q16_prompts")
        if (clip_vision is None) != (prompts is None):
            raise InputError("Q16 needs both clip_vision and q16_prompts; connect a CLIP_VISION model and name the "
                             "prompts file, or neither")
        with about("q16_prompts"):  # a file that is not Q16 prompts, or prompts of another width than clip_vision's
            q16 = None if prompts is None else Q16Classifier(ClipVisionEmbedder(clip_vision), prompts)
        result = check_images(images, banned, violating, default_scorer(q16), unchecked, ask)
        return io.NodeOutput(result.images, result.all_clean, result.report, ", ".join(result.unchecked))


NODES = [PSASafetyCheck]
