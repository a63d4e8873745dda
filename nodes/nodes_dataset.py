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

import os
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..psa_core.dataset_build import (PAIRS_NAME, PairDataset, PairItem, PromptPairs, parse_extra_categories,
                                      read_prompt_pairs)
from ..psa_core.dataset_build.prompt_pairs import MAX_SEED, SUFFIXES
from ..psa_core.encoders import DTYPE_CHOICES
from ..psa_core.errors import InputError, shown
from ..psa_core.paths import candidates
from ..psa_core.training.errors import DatasetError
from .checked_node import CheckedNode, about
from .comfy_paths import LLM_FOLDER, OUTSIDE_RULE, WriteName, input_folder, output_folder
from .nodes_profile import DEVICES, _after_release, _before_load

CATEGORY = "PSA/dataset"
DEFAULT_DATASET = "psa_dataset"
PROMPT_MARK, SEED_MARK = "<prompt>", "<seed>"
MAX_INDEX = 10_000_000
_parsed: dict[tuple, PromptPairs] = {}  # (path, size, mtime, extras) → parsed file; V3 nodes keep no state


def _prompt_files() -> list[str]:
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(SUFFIXES) and os.path.isfile(os.path.join(folder, name)))


def _prompt_file_path(file: str) -> Path:
    folder = input_folder()
    allowed = f"a .csv or .jsonl file directly in ComfyUI's input folder ({folder})"
    (path,) = candidates(file, "file", [folder], allowed)
    if path.parent != folder:
        raise InputError(f"file {shown(file)} is not allowed (in a sub-folder); allowed: {allowed}")
    return path


def load_prompt_pairs(file: str, extra_categories: str) -> PromptPairs:
    path = _prompt_file_path(file)
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat and stat.st_size, stat and stat.st_mtime_ns, extra_categories)
    if key not in _parsed:
        pairs = read_prompt_pairs(path, extra_categories)  # raises for a missing file, naming it
        _parsed.clear()
        _parsed[key] = pairs
    return _parsed[key]


class PSALoadPromptPairs(CheckedNode):
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
                io.Combo.Input("file", options=_prompt_files(),
                               tooltip="A .csv or .jsonl prompt-pair file in ComfyUI's input folder."),
                io.Int.Input("index", default=0, min=0, max=MAX_INDEX, control_after_generate=True,
                             tooltip="Which item (0 = the first pair of the file). Set it to 'increment' after "
                                     "generating and queue 'count' prompts to render every item."),
                io.Int.Input("base_seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Items without a seed in the file are rendered with base_seed + index."),
                io.String.Input("extra_categories", default="",
                                tooltip="Categories beyond the seven that the file may use, comma-separated (letters, "
                                        "spaces, hyphens). They are recorded in the dataset's dataset.json; no "
                                        "profile can ban them, so training always prefers their unsafe image."),
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
                with about("file"):
                    pairs = load_prompt_pairs(file, extra_categories)
            except OSError as error:
                raise DatasetError(f"file {shown(file)} cannot be read ({error.strerror})") from None
            if index is not None:
                pairs.item(index)

    @classmethod
    def fingerprint_inputs(cls, file: str, index: int, base_seed: int, extra_categories: str) -> str:
        path = _prompt_file_path(file)
        stat = path.stat() if path.is_file() else None
        return f"{path}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}:{index}:{base_seed}:{extra_categories}"

    @classmethod
    def execute(cls, file: str, index: int, base_seed: int, extra_categories: str) -> io.NodeOutput:
        pairs = load_prompt_pairs(file, extra_categories)
        item = pairs.item(index)
        return io.NodeOutput(item.unsafe_prompt, item.safe_prompt, item.category, item.concept,
                             item.seed_for(index, base_seed), len(pairs), ", ".join(pairs.extra_categories))


# ---- what rendered the images: the queued graph upstream of each image input ----

def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def upstream(prompt: dict, source, marks: list[tuple[str, object, str | None]]) -> object:
    """The graph that produced `source` (a link or a value) as nested data: each node as {node, output, inputs}.
    Values matching a mark (mark, value, input-name fragment or None) are replaced by the mark's name; a literal
    only matches where the input's name contains the fragment (so a seed of 5 does not mark steps=5)."""
    memo: dict[tuple, dict] = {}

    def expand(value, name: str):
        for mark, target, fragment in marks:
            if (value == target and _is_link(value) == _is_link(target) and type(value) is type(target)
                    and (_is_link(value) or fragment is None or fragment in name)):
                return mark
        if not _is_link(value):
            return value
        key = tuple(value)
        if key not in memo:
            node = prompt.get(value[0])
            if node is None:
                raise DatasetError(f"the queued graph links to a missing node {value[0]}")
            memo[key] = {"node": node.get("class_type"), "output": value[1],
                         "inputs": {k: expand(v, k) for k, v in sorted(node.get("inputs", {}).items())}}
        return memo[key]

    return expand(source, "")


def _short(value) -> str:
    if isinstance(value, dict) and "node" in value:
        return f"the output of {value['node']}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def first_difference(a, b, where: str = "", compared: set | None = None) -> str | None:
    """Where two upstream graphs differ first, as `Node.input <- Node.input: a vs b`, or None. Each pair of shared
    sub-graphs is compared once, so long chains of nodes that feed each other twice stay cheap."""
    compared = set() if compared is None else compared
    if isinstance(a, dict) and isinstance(b, dict) and "node" in a and "node" in b:
        if (id(a), id(b)) in compared:
            return None
        compared.add((id(a), id(b)))
        if (a["node"], a["output"]) != (b["node"], b["output"]):
            return f"{where or 'image'}: {_short(a)} vs {_short(b)}"
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            found = first_difference(a["inputs"].get(name, "(absent)"), b["inputs"].get(name, "(absent)"),
                                     f"{where + ' <- ' if where else ''}{a['node']}.{name}", compared)
            if found:
                return found
        return None
    if a == b:
        return None
    return f"{where}: {_short(a)} (unsafe) vs {_short(b)} (safe)"


def _contains(graph, mark: str, visited: set | None = None) -> bool:
    visited = set() if visited is None else visited
    if graph == mark:
        return True
    if isinstance(graph, dict) and id(graph) not in visited:
        visited.add(id(graph))
        return any(_contains(v, mark, visited) for v in graph["inputs"].values())
    return False


def _flatten(graph) -> list[dict]:
    """The upstream nodes, image first, with their literal inputs (each different entry once): what the record
    keeps as settings."""
    nodes, seen = [], set()

    def walk(value):
        if not isinstance(value, dict) or id(value) in seen:
            return
        seen.add(id(value))
        entry = {"class_type": value["node"], **{k: v for k, v in value["inputs"].items() if not isinstance(v, dict)}}
        if entry not in nodes:
            nodes.append(entry)
        for v in value["inputs"].values():
            walk(v)

    walk(graph)
    return nodes


def rendered_settings(prompt: dict | None, node_id: str | None, seed: int) -> list[dict] | None:
    """Check that both images come from the same graph apart from their prompts, with this node's prompts and
    seed, and return that graph (flattened). None when the queued graph is not available."""
    if not prompt or node_id not in prompt:
        return None
    inputs = prompt[node_id].get("inputs", {})
    seed_marks = [(SEED_MARK, seed, "seed")] + ([(SEED_MARK, inputs["seed"], None)] if _is_link(inputs.get("seed"))
                                               else [])
    graphs = {}
    for side in ("unsafe", "safe"):
        marks = [(PROMPT_MARK, inputs.get(f"{side}_prompt"), None), *seed_marks]
        graphs[side] = upstream(prompt, inputs.get(f"{side}_images"), marks)
        if not _contains(graphs[side], PROMPT_MARK):
            raise DatasetError(f"the {side} images were not rendered from the {side}_prompt given to this node; link "
                               f"the same prompt to the {side} sampler's text encoder and to {side}_prompt here")
    difference = first_difference(graphs["unsafe"], graphs["safe"])
    if difference:
        raise DatasetError("the unsafe and safe images must be rendered with the same seed, model and settings, "
                           f"differing only in their prompts; they differ at {difference}")
    if not _contains(graphs["unsafe"], SEED_MARK):
        raise DatasetError(f"the images were not rendered with the seed given to this node ({seed}); link the same "
                           "seed to both samplers and to this node's seed")
    return _flatten(graphs["unsafe"])


DATASET_FOLDER = WriteName("dataset folder name", output_folder, "ComfyUI's output folder", subfolders=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] floats in 0..1 → uint8, as SaveImage converts them."""
    return np.clip(255.0 * images.cpu().float().numpy(), 0, 255).astype(np.uint8)


class PSASavePreferencePair(CheckedNode):
    PATH_INPUTS = {"dataset": DATASET_FOLDER}

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
                io.String.Input("unsafe_prompt", force_input=True, tooltip="The prompt of the unsafe images."),
                io.String.Input("safe_prompt", force_input=True, tooltip="The prompt of the safe images."),
                io.String.Input("category", force_input=True,
                                tooltip="One of the 7 categories or a declared extra category."),
                io.String.Input("concept", force_input=True, tooltip="What the pair is about (part of the names)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, force_input=True,
                             tooltip="The seed both samplers used (link the same seed to them and here)."),
                io.String.Input("dataset", default=DEFAULT_DATASET,
                                tooltip="The dataset folder, inside ComfyUI's output folder ('/' for subfolders)."),
                io.String.Input("extra_categories", default="", optional=True, force_input=True,
                                tooltip="Extra categories declared by PSA Load Prompt Pairs (recorded in "
                                        "dataset.json)."),
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
        written = []
        for batch_index, (unsafe, safe) in enumerate(zip(to_uint8(unsafe_images), to_uint8(safe_images))):
            item = PairItem(category, concept.strip(), unsafe_prompt.strip(), safe_prompt.strip(), seed, batch_index)
            written.append(target.write_pair(item, unsafe, safe, settings, extra_categories))
        lines = [f"{'replaced' if w.replaced else 'added'} pair {w.number:05d}: {w.unsafe}, {w.safe}" for w in written]
        counts = ", ".join(f"{k} {v}" for k, v in target.summary().items())
        lines.append(f"{target.folder}: {sum(target.summary().values())} pairs ({counts})")
        return io.NodeOutput(str(target.folder / PAIRS_NAME), ui=ui.PreviewText("\n".join(lines)))

class PSARewritePrompt(CheckedNode):
    PATH_INPUTS = {"llm": LLM_FOLDER}

    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..psa_core.dataset_build.rewrite import DEFAULT_INSTRUCTION, DEFAULT_MAX_NEW_TOKENS

        return io.Schema(
            node_id="PSARewritePrompt",
            display_name="PSA Rewrite Prompt",
            category=CATEGORY,
            description="Turn an unsafe prompt into a safe rewrite with a local LLM (a Hugging Face causal-LM "
                        "folder under models/LLM/, local files only), by greedy decoding: the same input always "
                        "gives the same rewrite. The model is loaded for the call and released afterwards.",
            inputs=[
                io.String.Input("prompt", multiline=True, default="", tooltip="The unsafe prompt to rewrite."),
                io.String.Input("llm", default="Qwen2.5-7B-Instruct",
                                tooltip=f"The LLM folder: a folder name under models/LLM/ ({OUTSIDE_RULE})."),
                io.String.Input("instruction", multiline=True, default=DEFAULT_INSTRUCTION,
                                tooltip="What the LLM is asked: <<PROMPT>> (required) is the unsafe prompt; "
                                        "<<CATEGORY>> and <<CONCEPT>> the optional inputs below."),
                io.Int.Input("max_new_tokens", default=DEFAULT_MAX_NEW_TOKENS, min=1, max=1024,
                             tooltip="The longest reply, in tokens; the first line of the reply is the rewrite."),
                io.Combo.Input("precision", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="LLM precision; 'auto' uses the checkpoint's dtype."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="Where the LLM runs: ComfyUI's device (models are moved out first and the "
                                       "memory is given back afterwards) or the CPU."),
                io.String.Input("category", default="", optional=True, force_input=True,
                                tooltip="The unsafe prompt's category, for <<CATEGORY>>."),
                io.String.Input("concept", default="", optional=True, force_input=True,
                                tooltip="The pair's concept, for <<CONCEPT>>."),
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
        import comfy.model_management as mm

        from ..psa_core.dataset_build.rewrite import PromptRewriter

        model_dir = LLM_FOLDER.find(llm, "llm")
        rewriter = PromptRewriter(model_dir, instruction, dtype=precision, max_new_tokens=max_new_tokens,
                                  device=mm.get_torch_device() if device == "auto" else torch.device("cpu"),
                                  before_load=_before_load, after_release=_after_release)
        return io.NodeOutput(rewriter.rewrite([prompt], [category], [concept])[0])

NODES = [PSALoadPromptPairs, PSASavePreferencePair, PSARewritePrompt]
