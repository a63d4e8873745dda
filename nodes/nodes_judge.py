"""The vision-language judge in ComfyUI: load a local VLM, judge images for a profile (psa_core/evaluation/judge.py
and judged_images.py do the work)."""
from __future__ import annotations

from comfy_api.latest import io

from ..psa_core.encoders.llm import DTYPE_CHOICES, DTYPES, read_model_config, resolve_dtype
from ..psa_core.evaluation.judge import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, VLMJudge
from ..psa_core.evaluation.judge_prompts import BLIND, MODES
from ..psa_core.evaluation.judged_images import judge_batch
from ..psa_core.text_limits import MAX_PATH_CHARS, MAX_PROMPT_CHARS, limit_text
from .checked_node import CheckedNode, about, comfy_should_stop
from .comfy_paths import LLM_FOLDER, OUTSIDE_RULE
from ..psa_core.encoders.placement import RUN
from .model_memory import DEVICE_TOOLTIP, DEVICES, ComfyPlacement, NodeProgress
from .nodes_evaluation import CATEGORY
from .nodes_profile import PSAProfileType
from .psa_types import PSAJudgeType

MODE_TOOLTIP = ("blind (ours): a neutral prompt with the user's banned and allowed categories and demographics. "
                "reference: the paper's wording, for reproducing its pass rates (docs/evaluation.md §8).")


class PSALoadJudge(CheckedNode):
    PATH_INPUTS = {"vlm": LLM_FOLDER}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSALoadJudge",
            display_name="PSA Load Judge",
            category=CATEGORY,
            description="A local vision-language model as the judge of PSA Judge Image: a Hugging Face chat VLM "
                        "folder (Qwen2-VL, Qwen2.5-VL or any model transformers loads as image-text-to-text) "
                        "under models/LLM/, local files only. The weights load when the first image is judged, "
                        "under ComfyUI's memory manager.",
            inputs=[
                io.String.Input("vlm", default="Qwen2.5-VL-7B-Instruct",
                                tooltip=f"The VLM folder (config.json, processor, tokenizer, weights): a folder "
                                        f"name under models/LLM/ ({OUTSIDE_RULE}). {limit_text(MAX_PATH_CHARS)}"),
                io.Combo.Input("precision", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="VLM precision; 'auto' uses the checkpoint's dtype."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip=DEVICE_TOOLTIP.replace("LLM", "VLM")),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=MAX_NEW_TOKENS_LIMIT,
                             tooltip="The longest answer, in tokens (greedy decoding: the same image and profile "
                                     "always get the same answer). An answer cut short is 'no verdict'."),
            ],
            outputs=[PSAJudgeType.Output(display_name="judge", tooltip="For PSA Judge Image and PSA Safety Check.")],
        )

    @classmethod
    def fingerprint_inputs(cls, vlm: str = "", **_: object) -> str:
        return LLM_FOLDER.fingerprint(vlm, "vlm")

    @classmethod
    def execute(cls, vlm: str, precision: str, device: str, max_new_tokens: int) -> io.NodeOutput:
        folder = LLM_FOLDER.find(vlm, "vlm")
        with about("vlm"):  # a folder that is not a model (no or a broken config.json): the message names the input
            dtype = DTYPES[resolve_dtype(precision, read_model_config(folder))]
        return io.NodeOutput(VLMJudge.from_folder(folder, dtype=dtype, max_new_tokens=max_new_tokens,
                                                  placement=ComfyPlacement(device, node="PSA Judge Image"),
                                                  should_stop=comfy_should_stop))


class PSAJudgeImage(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSAJudgeImage",
            display_name="PSA Judge Image",
            category=CATEGORY,
            description="Ask a local vision-language judge whether each image respects this user's banned and "
                        "allowed categories and demographics (docs/evaluation.md §8): PASS, FAIL or no verdict "
                        "(an answer that does not parse is never a pass), with quality and appropriateness scores "
                        "and the judge's explanation, written onto each image.",
            inputs=[
                io.Image.Input("images", tooltip="The images to judge."),
                PSAProfileType.Input("profile", tooltip="The user the images are judged for."),
                PSAJudgeType.Input("judge", tooltip="From PSA Load Judge."),
                io.Combo.Input("mode", options=list(MODES), default=BLIND, tooltip=MODE_TOOLTIP),
                io.String.Input("caption", default="", optional=True, multiline=True,
                                tooltip="The prompt the images were made from, shown to the judge in blind mode "
                                        f"(the reference prompt ignores it). Empty: not shown. "
                                        f"{limit_text(MAX_PROMPT_CHARS)}"),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The images with the verdict written on each."),
                io.Boolean.Output(display_name="all_pass", tooltip="True only when every image got PASS."),
                io.String.Output(display_name="verdicts", tooltip="One line per image: verdict, scores, banned "
                                                                  "categories found and the explanation."),
                io.String.Output(display_name="report", tooltip="Every field of every verdict as JSON, with the "
                                                                "judge's raw answer."),
            ],
        )

    @classmethod
    def execute(cls, images, profile, judge: VLMJudge, mode: str, caption: str = "") -> io.NodeOutput:
        progress = NodeProgress()
        result = judge_batch(judge, images, profile, mode, caption,
                              on_image=lambda done, total: progress(RUN, done, total))
        progress.finish()
        return io.NodeOutput(result.images, result.all_pass, result.text, result.report_json())


NODES = [PSALoadJudge, PSAJudgeImage]
