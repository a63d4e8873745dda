"""What rendered a preference pair (psa_core.dataset_build.provenance), on plain API-prompt dicts: no ComfyUI.

The graph is the shipped dataset workflow's shape: a checkpoint, the prompt-pair loader, two text encoders and two
samplers sharing a seed link, two decoders, and the save node. Each test changes one thing on one side."""
from __future__ import annotations

import copy

import pytest

from psa_core.dataset_build.provenance import (PROMPT_MARK, SEED_MARK, first_difference, flatten, rendered_settings,
                                               upstream)
from psa_core.training.errors import DatasetError

SAVE = "11"
SEED = 11


def graph() -> dict:
    """Both images rendered alike from the loader's prompts and seed (item seed 11)."""
    seed = ["2", 4]

    def sampler(positive: str) -> dict:
        return {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": [positive, 0],
                                                     "negative": ["5", 0], "latent_image": ["6", 0], "seed": seed,
                                                     "steps": 2, "cfg": 7.5, "sampler_name": "euler",
                                                     "scheduler": "normal", "denoise": 1.0}}

    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "2": {"class_type": "PSALoadPromptPairs", "inputs": {"file": "pairs.csv", "index": 0, "base_seed": 0,
                                                             "extra_categories": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 0], "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 1], "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 2}},
        "7": sampler("3"),
        "8": sampler("4"),
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        SAVE: {"class_type": "PSASavePreferencePair", "inputs": {
            "unsafe_images": ["9", 0], "safe_images": ["10", 0], "unsafe_prompt": ["2", 0], "safe_prompt": ["2", 1],
            "category": ["2", 2], "concept": ["2", 3], "seed": seed, "dataset": "ds"}},
    }


def changed(path: tuple[str, str], value) -> dict:
    prompt = copy.deepcopy(graph())
    prompt[path[0]]["inputs"][path[1]] = value
    return prompt


def refusal(prompt: dict) -> str:
    with pytest.raises(DatasetError) as refused:
        rendered_settings(prompt, SAVE, SEED)
    return str(refused.value)


def test_identical_graphs_have_no_difference():
    prompt = graph()
    unsafe = upstream(prompt, ["9", 0], [])
    assert first_difference(unsafe, upstream(copy.deepcopy(prompt), ["9", 0], [])) is None
    assert first_difference(unsafe, unsafe) is None
    # The two sides differ only in their prompts; marked as the prompt, they are the same graph.
    sides = [upstream(prompt, [image, 0], [(PROMPT_MARK, [text, output], None)])
             for image, text, output in (("9", "2", 0), ("10", "2", 1))]
    assert first_difference(*sides) is None


def test_a_changed_widget_upstream_is_named_with_its_path():
    assert "they differ at VAEDecode.samples <- KSampler.steps: 2 (unsafe) vs 3 (safe)" in \
        refusal(changed(("8", "steps"), 3))
    two_changes = changed(("8", "cfg"), 8.0)
    two_changes["8"]["inputs"]["steps"] = 3
    assert refusal(two_changes).endswith("they differ at VAEDecode.samples <- KSampler.cfg: 7.5 (unsafe) vs 8.0 "
                                         "(safe)")  # the first difference only, in input-name order
    safe_latent = changed(("8", "latent_image"), ["12", 0])
    safe_latent["12"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 24, "height": 16, "batch_size": 2}}
    assert "differ at VAEDecode.samples <- KSampler.latent_image <- EmptyLatentImage.width: 16 (unsafe) vs 24 " \
           "(safe)" in refusal(safe_latent)


def test_a_changed_link_is_named():
    other_model = changed(("8", "model"), ["12", 0])
    other_model["12"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                "lora_name": "x.safetensors"}}
    assert "differ at VAEDecode.samples <- KSampler.model: the output of CheckpointLoaderSimple vs the output of " \
           "LoraLoader" in refusal(other_model)
    other_output = changed(("10", "vae"), ["1", 1])  # same node, another of its outputs
    assert "VAEDecode.vae" in refusal(other_output)
    with pytest.raises(DatasetError, match="links to a missing node 99"):
        rendered_settings(changed(("10", "vae"), ["99", 0]), SAVE, SEED)


def test_seed_and_prompts_must_be_the_ones_given_to_the_save_node():
    assert "differ at VAEDecode.samples <- KSampler.seed: '<seed>' (unsafe) vs 9 (safe)" in \
        refusal(changed(("8", "seed"), 9))
    both_literal = changed(("7", "seed"), 9)
    both_literal["8"]["inputs"]["seed"] = 9
    assert "not rendered with the seed given to this node (11)" in refusal(both_literal)
    literal_seed = changed(("7", "seed"), SEED)  # a literal equal to the save node's seed is that seed
    literal_seed["8"]["inputs"]["seed"] = SEED
    assert rendered_settings(literal_seed, SAVE, SEED) is not None
    assert "the unsafe images were not rendered from the unsafe_prompt given" in \
        refusal(changed(("3", "text"), "a calm street"))


def test_rendered_settings_are_the_flattened_graph_with_marks():
    settings = rendered_settings(graph(), SAVE, SEED)
    assert settings[0] == {"class_type": "VAEDecode"}
    assert {"class_type": "KSampler", "seed": SEED_MARK, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0} in settings
    assert {"class_type": "CLIPTextEncode", "text": PROMPT_MARK} in settings
    assert {"class_type": "CLIPTextEncode", "text": "lowres"} in settings
    assert {"class_type": "EmptyLatentImage", "width": 16, "height": 16, "batch_size": 2} in settings
    assert {"class_type": "CheckpointLoaderSimple", "ckpt_name": "model.safetensors"} in settings
    assert len(settings) == len({repr(entry) for entry in settings}), "each different entry once"
    # A literal equal to the seed is marked only under an input named like a seed: steps=11 stays 11.
    steps_like_seed = changed(("7", "steps"), SEED)
    steps_like_seed["8"]["inputs"]["steps"] = SEED
    sampler = next(e for e in rendered_settings(steps_like_seed, SAVE, SEED) if e["class_type"] == "KSampler")
    assert sampler["steps"] == SEED and sampler["seed"] == SEED_MARK
    assert flatten(upstream(graph(), "a literal", [])) == []


def test_no_queued_graph_means_no_settings():
    assert rendered_settings(None, SAVE, SEED) is None
    assert rendered_settings({}, SAVE, SEED) is None
    assert rendered_settings(graph(), None, SEED) is None
    assert rendered_settings(graph(), "404", SEED) is None


def test_shared_sub_graphs_are_compared_once():
    """A chain where every node feeds the next twice has 2^n paths; the diff must stay linear."""
    prompt = {"0": {"class_type": "Start", "inputs": {"value": 1}}}
    for index in range(1, 60):
        prompt[str(index)] = {"class_type": "Twice", "inputs": {"a": [str(index - 1), 0], "b": [str(index - 1), 0]}}
    unsafe = upstream(prompt, ["59", 0], [])
    safe = upstream(copy.deepcopy(prompt), ["59", 0], [])
    assert first_difference(unsafe, safe) is None
    assert flatten(unsafe) == [{"class_type": "Twice"}, {"class_type": "Start", "value": 1}]  # alike entries once
