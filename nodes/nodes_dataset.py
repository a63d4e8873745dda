"""Dataset nodes: render a prompt-pair file into a preference dataset of unlabelled image pairs.

PSA Load Prompt Pairs gives item `index` of a file in ComfyUI's input folder (queue `count` prompts with the
index on "increment" to render the whole file); two samplers render its unsafe and safe prompt with the same
seed and settings; PSA Save Preference Pair writes the pair into a dataset folder under ComfyUI's output folder
(psa_core.dataset_build: atomic per pair, re-running an item replaces it). It reads the queued graph to check
that the two images were rendered by the same nodes and settings apart from their prompts, with the seed and
prompts it was given, and records those settings with the pair. PSA Rewrite Prompt asks a local LLM for a safe
rewrite of a prompt.
"""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..psa_core.dataset_build import (PAIRS_NAME, PairDataset, PairItem, PromptPairs, parse_extra_categories,
                                      read_prompt_pairs)
from ..psa_core.dataset_build.prompt_pairs import MAX_SEED
from ..psa_core.dataset_build.provenance import rendered_settings
from ..psa_core.encoders import DTYPE_CHOICES
from ..psa_core.errors import shown
from ..psa_core.fingerprint import file_fingerprint
from ..psa_core.text_limits import MAX_NAME_CHARS, MAX_NAME_LIST_CHARS, MAX_PATH_CHARS, MAX_PROMPT_CHARS, limit_text
from ..psa_core.training.errors import DatasetError
from .checked_node import CheckedNode, about, comfy_should_stop
from .comfy_paths import DATASET_FOLDER, LLM_FOLDER, OUTSIDE_RULE, PROMPT_PAIR_FILE
from .model_memory import DEVICE_TOOLTIP, DEVICES, ComfyPlacement, NodeProgress

CATEGORY = "PSA/dataset"
DEFAULT_DATASET = "psa_dataset"
MAX_INDEX = 10_000_000
_parsed: dict[tuple, PromptPairs] = {}  # (file fingerprint, extras) → parsed file; V3 nodes keep no state


def load_prompt_pairs(file: str, extra_categories: str) -> PromptPairs:
    """The parsed prompt-pair file, re-read only when the file or the extra categories changed."""
    path = PROMPT_PAIR_FILE.find(file, "file")
    key = (file_fingerprint(path), extra_categories)
    if key not in _parsed:
        with about("file"):
            pairs = read_prompt_pairs(path, extra_categories)
        _parsed.clear()
        _parsed[key] = pairs
    return _parsed[key]


class PSALoadPromptPairs(CheckedNode):
    PATH_INPUTS = {"file": PROMPT_PAIR_FILE}
    TEXT_LIMITS = {"extra_categories": MAX_NAME_LIST_CHARS}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSALoadPromptPairs",
            display_name="PSA Load Prompt Pairs",
            category=CATEGORY,
            description="One item of a prompt-pair file (.csv with a header row, or .jsonl) in ComfyUI's input "
                        "folder: category (Hate, Harassment, Violence, Self-Harm, Sexuality, Shocking, Propaganda, or "
                        "a declared extra category), concept, unsafe_prompt, safe_prompt and an optional seed. Queue "
                        "'count' prompts with index on 'increment' to render the whole file. The whole file is "
                        "checked first; problems are reported with their line numbers.",
            inputs=[
                io.Combo.Input("file", options=PROMPT_PAIR_FILE.names(),
                               tooltip="A .csv or .jsonl prompt-pair file in ComfyUI's input folder."),
                io.Int.Input("index", default=0, min=0, max=MAX_INDEX, control_after_generate=True,
                             tooltip="Which item (0 = the first pair of the file). Set it to 'increment' after "
                                     "generating and queue 'count' prompts to render every item."),
                io.Int.Input("base_seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Items without a seed in the file are rendered with base_seed + index."),
                io.String.Input("extra_categories", default="",
                                tooltip="Categories beyond the seven that the file may use, comma-separated (letters, "
                                        "spaces, hyphens). They are recorded in the dataset's dataset.json; no "
                                        "profile can ban them, so training always prefers their unsafe image. "
                                        f"{limit_text(MAX_NAME_LIST_CHARS)}"),
            ],
            outputs=[
                io.String.Output(display_name="unsafe_prompt", tooltip="The prompt that shows the category."),
                io.String.Output(display_name="safe_prompt", tooltip="Its safe rewrite."),
                io.String.Output(display_name="category", tooltip="The category, in its canonical spelling."),
                io.String.Output(display_name="concept", tooltip="What the pair is about."),
                io.Int.Output(display_name="seed", tooltip="Render both images with this seed."),
                io.Int.Output(display_name="count", tooltip="How many prompt pairs the file has."),
                io.String.Output(display_name="extra_categories",
                                 tooltip="The declared extra categories; link to PSA Save Preference Pair."),
            ],
        )

    @classmethod
    def check_inputs(cls, file: str | None, index: int | None, extra_categories: str | None) -> None:
        # The file is read here to report its bad lines before anything runs; a linked input is checked at run time.
        if extra_categories is not None:
            with about("extra_categories"):
                parse_extra_categories(extra_categories)
        if file is not None and extra_categories is not None:
            try:
                pairs = load_prompt_pairs(file, extra_categories)
            except OSError as error:
                raise DatasetError(f"file {shown(file)} cannot be read ({error.strerror})") from None
            if index is not None:
                pairs.item(index)

    @classmethod
    def fingerprint_inputs(cls, file: str, index: int, base_seed: int, extra_categories: str) -> str:
        return f"{PROMPT_PAIR_FILE.fingerprint(file, 'file')}:{index}:{base_seed}:{extra_categories}"

    @classmethod
    def execute(cls, file: str, index: int, base_seed: int, extra_categories: str) -> io.NodeOutput:
        pairs = load_prompt_pairs(file, extra_categories)
        item = pairs.item(index)
        return io.NodeOutput(item.unsafe_prompt, item.safe_prompt, item.category, item.concept,
                             item.seed_for(index, base_seed), len(pairs), ", ".join(pairs.extra_categories))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] floats in 0..1 → uint8, as SaveImage converts them."""
    return np.clip(255.0 * images.cpu().float().numpy(), 0, 255).astype(np.uint8)


class PSASavePreferencePair(CheckedNode):
    PATH_INPUTS = {"dataset": DATASET_FOLDER}
    TEXT_LIMITS = {"category": MAX_NAME_CHARS, "concept": MAX_NAME_CHARS, "extra_categories": MAX_NAME_LIST_CHARS}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSASavePreferencePair",
            display_name="PSA Save Preference Pair",
            category=CATEGORY,
            description="Write an unsafe/safe image pair and its metadata line into a dataset folder under "
                        "ComfyUI's output folder (SAGE image names, pairs.jsonl, dataset.json), atomically: a pair "
                        "is in pairs.jsonl only once both images are complete. Writing the same item again replaces "
                        "it. Checks that both images were rendered with the same seed and settings. Train on the "
                        "folder's pairs.jsonl with profiles: banned category → safe image preferred, allowed → "
                        "unsafe image.",
            inputs=[
                io.Image.Input("unsafe_images", tooltip="Rendered from the unsafe prompt (a batch gives one pair "
                                                        "per image, with the safe image of the same batch index)."),
                io.Image.Input("safe_images", tooltip="Rendered from the safe prompt with the same seed and settings."),
                io.String.Input("unsafe_prompt", force_input=True,
                                tooltip=f"The prompt of the unsafe images. {limit_text(MAX_PROMPT_CHARS)}"),
                io.String.Input("safe_prompt", force_input=True,
                                tooltip=f"The prompt of the safe images. {limit_text(MAX_PROMPT_CHARS)}"),
                io.String.Input("category", force_input=True,
                                tooltip="One of the 7 categories or a declared extra category. "
                                        f"{limit_text(MAX_NAME_CHARS)}"),
                io.String.Input("concept", force_input=True,
                                tooltip=f"What the pair is about (part of the names). {limit_text(MAX_NAME_CHARS)}"),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, force_input=True,
                             tooltip="The seed both samplers used (link the same seed to them and here)."),
                io.String.Input("dataset", default=DEFAULT_DATASET,
                                tooltip="The dataset folder, inside ComfyUI's output folder ('/' for subfolders). "
                                        f"{limit_text(MAX_PATH_CHARS)}"),
                io.String.Input("extra_categories", default="", optional=True, force_input=True,
                                tooltip="Extra categories declared by PSA Load Prompt Pairs (recorded in "
                                        f"dataset.json). {limit_text(MAX_NAME_LIST_CHARS)}"),
            ],
            outputs=[io.String.Output(display_name="pairs_file", tooltip="The dataset's pairs.jsonl, for training.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_) -> float:
        return float("nan")  # always write: the folder may have changed since the last run

    @classmethod
    def execute(cls, unsafe_images: torch.Tensor, safe_images: torch.Tensor, unsafe_prompt: str, safe_prompt: str,
                category: str, concept: str, seed: int, dataset: str, extra_categories: str = "") -> io.NodeOutput:
        if unsafe_images.shape != safe_images.shape:
            raise DatasetError(f"unsafe_images {tuple(unsafe_images.shape)} and safe_images "
                               f"{tuple(safe_images.shape)} differ; render both with the same size and batch")
        hidden = cls.hidden  # None when the class is called outside an executed graph
        graph = rendered_settings(getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None), seed)
        settings = {"renderer": "comfyui", "width": int(unsafe_images.shape[2]), "height": int(unsafe_images.shape[1])}
        if graph is not None:
            settings["graph"] = graph
        target = PairDataset(DATASET_FOLDER.path(dataset, "dataset"))
        item = PairItem(category, concept.strip(), unsafe_prompt.strip(), safe_prompt.strip(), seed)
        written = target.write_batch(item, to_uint8(unsafe_images), to_uint8(safe_images), settings, extra_categories)
        return io.NodeOutput(str(target.folder / PAIRS_NAME), ui=ui.PreviewText(target.report(written)))


class PSARewritePrompt(CheckedNode):
    PATH_INPUTS = {"llm": LLM_FOLDER}
    TEXT_LIMITS = {"category": MAX_NAME_CHARS, "concept": MAX_NAME_CHARS}

    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..psa_core.dataset_build.rewrite import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS

        return io.Schema(
            node_id="PSARewritePrompt",
            display_name="PSA Rewrite Prompt",
            category=CATEGORY,
            description="Turn an unsafe prompt into a safe rewrite with a local LLM (a Hugging Face causal-LM "
                        "folder under models/LLM/, local files only), by greedy decoding: the same input always "
                        "gives the same rewrite. The model runs under ComfyUI's memory manager and stays loaded for "
                        "the next rewrite until ComfyUI needs the memory.",
            inputs=[
                io.String.Input("prompt", multiline=True, default="",
                                tooltip=f"The unsafe prompt to rewrite. {limit_text(MAX_PROMPT_CHARS)}"),
                io.String.Input("llm", default="Qwen2.5-7B-Instruct",
                                tooltip=f"The LLM folder: a folder name under models/LLM/ ({OUTSIDE_RULE}). "
                                        f"{limit_text(MAX_PATH_CHARS)}"),
                io.String.Input("instruction", multiline=True, default=DEFAULT_INSTRUCTION,
                                tooltip="What the LLM is asked: <<PROMPT>> (required) is the unsafe prompt; "
                                        "<<CATEGORY>> and <<CONCEPT>> the optional inputs below. "
                                        f"{limit_text(MAX_PROMPT_CHARS)}"),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=1024,
                             tooltip="The longest reply, in tokens; the first line of the reply is the rewrite."),
                io.Combo.Input("precision", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="LLM precision; 'auto' uses the checkpoint's dtype."),
                io.Combo.Input("device", options=list(DEVICES), default="auto", tooltip=DEVICE_TOOLTIP),
                io.String.Input("category", default="", optional=True, force_input=True,
                                tooltip=f"The unsafe prompt's category, for <<CATEGORY>>. {limit_text(MAX_NAME_CHARS)}"),
                io.String.Input("concept", default="", optional=True, force_input=True,
                                tooltip=f"The pair's concept, for <<CONCEPT>>. {limit_text(MAX_NAME_CHARS)}"),
            ],
            outputs=[io.String.Output(display_name="safe_prompt", tooltip="The LLM's safe rewrite.")],
        )

    @classmethod
    def check_inputs(cls, instruction: str | None) -> None:
        from ..psa_core.dataset_build.rewrite import check_instruction

        if instruction is not None:
            with about("instruction"):
                check_instruction(instruction)

    @classmethod
    def execute(cls, prompt: str, llm: str, instruction: str, max_new_tokens: int, precision: str, device: str,
                category: str = "", concept: str = "") -> io.NodeOutput:
        from ..psa_core.dataset_build.rewrite import PromptRewriter

        progress = NodeProgress()
        rewriter = PromptRewriter(LLM_FOLDER.find(llm, "llm"), instruction, dtype=precision,
                                  max_new_tokens=max_new_tokens, placement=ComfyPlacement(device, "PSA Rewrite Prompt"),
                                  progress=progress, should_stop=comfy_should_stop)
        rewrite = rewriter.rewrite([prompt], [category], [concept])[0]
        progress.finish()
        return io.NodeOutput(rewrite)

NODES = [PSALoadPromptPairs, PSASavePreferencePair, PSARewritePrompt]
