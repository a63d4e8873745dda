"""API prompts around one PSA node, for the input tests over HTTP: the node (id "1") with chosen widget values,
cheap providers for its linked inputs, and an output node consuming it, so that ComfyUI validates it.

Providers: tiny PSA files written into the server's folders for adapters and embeddings, PSA User Profile for
profiles, ComfyUI's EmptyImage and Primitive nodes for images, strings and numbers, and the test-only
TestPlaceholder for anything heavy (a model, a dataset), which stops the prompt if it ever runs.
"""
from __future__ import annotations

import json

import numpy as np

import tiny_models as tm
from http_server import PACK_FOLDER
from psa_core import get_family

NODE = "1"
PACK_MODULE = f"custom_nodes.{PACK_FOLDER}"
ADAPTER_NAME = "psa_inputs_tiny.safetensors"
EMBEDDING_NAME = "psa_inputs_tiny.npy"
PROMPT_FILE = "psa_inputs_pairs.csv"
ASSETS = (ADAPTER_NAME, EMBEDDING_NAME, PROMPT_FILE)
EMBEDDING_DIM = 33  # the structured encoder's, so an encoded profile fits the tiny adapter too
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
PRIMITIVES = {"STRING": ("PrimitiveString", "x"), "INT": ("PrimitiveInt", 0), "FLOAT": ("PrimitiveFloat", 0.5),
              "BOOLEAN": ("PrimitiveBoolean", False)}


def write_assets(server) -> None:
    """The files the providers and the pack's file combos list: a tiny adapter, an embedding, a prompt-pair file."""
    family = get_family("sd15", 8, 16, channel_mult=(1, 1, 1, 1))
    tm.write_adapter(tm.random_adapter_tensors(family, EMBEDDING_DIM), server.models / "psa" / ADAPTER_NAME)
    np.save(server.models / "psa_embeddings" / EMBEDDING_NAME, np.linspace(-1, 1, EMBEDDING_DIM, dtype=np.float32))
    (server.base / "input").mkdir(exist_ok=True)
    (server.base / "input" / PROMPT_FILE).write_text(
        "category,concept,unsafe_prompt,safe_prompt,seed\nViolence,fight,a bloody fight,two friends talking,3\n")


def pack_nodes(object_info: dict) -> dict[str, dict]:
    return {name: info for name, info in object_info.items() if info.get("python_module") == PACK_MODULE}


def input_specs(info: dict) -> dict[str, tuple[str, dict, bool]]:
    """name -> (type, options, required) for every input of a node (not the hidden ones)."""
    specs = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list):  # the old combo form: the options themselves
                kind, options = "COMBO", {**options, "options": kind}
            specs[name] = (kind, options, section == "required")
    return specs


def default_value(kind: str, options: dict):
    if "default" in options:
        return options["default"]
    if kind == "COMBO":  # the file combos list other tests' files too: prefer the assets written here
        listed = options.get("options") or [""]
        return next((name for name in ASSETS if name in listed), listed[0])
    return {"INT": 0, "FLOAT": 0.0, "STRING": "x", "BOOLEAN": False}[kind]


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def node_prompt(object_info: dict, class_type: str, values: dict | None = None) -> dict:
    """The prompt around `class_type`: widgets at their defaults unless given in `values` (which may also give
    literal values to linked inputs), required links fed by providers."""
    values = values or {}
    prompt: dict = {}
    inputs = {}
    for name, (kind, options, required) in input_specs(object_info[class_type]).items():
        if name in values:
            inputs[name] = values[name]
        elif is_widget(kind, options):
            inputs[name] = default_value(kind, options)
        elif required:
            inputs[name] = [_provider(object_info, prompt, name, kind), 0]
    prompt[NODE] = {"class_type": class_type, "inputs": inputs}
    if not object_info[class_type].get("output_node"):
        prompt["out"] = {"class_type": "PreviewAny", "inputs": {"source": [NODE, 0]}}
    return prompt


def _provider(object_info: dict, prompt: dict, name: str, kind: str) -> str:
    node_id = f"p_{name}"
    if kind == "PSA_ADAPTER":
        prompt[node_id] = {"class_type": "PSALoadAdapter", "inputs": {"adapter_name": ADAPTER_NAME}}
    elif kind == "PSA_EMBEDDING":
        prompt[node_id] = {"class_type": "PSALoadEmbedding", "inputs": {"embedding_name": EMBEDDING_NAME}}
    elif kind == "PSA_PROFILE":
        profile = node_prompt(object_info, "PSAUserProfile")[NODE]
        prompt[node_id] = profile
    elif kind == "IMAGE":
        prompt[node_id] = {"class_type": "EmptyImage",
                           "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    elif kind in PRIMITIVES:
        class_type, value = PRIMITIVES[kind]
        prompt[node_id] = {"class_type": class_type, "inputs": {"value": value}}
    else:
        prompt[node_id] = {"class_type": "TestPlaceholder", "inputs": {"stands_for": kind}}
    return node_id


def errors_of(body: dict, node_id: str = NODE) -> list[dict]:
    return body.get("node_errors", {}).get(node_id, {}).get("errors", [])


def names_the_input(error: dict, name: str) -> bool:
    """ComfyUI's own refusals name the input in extra_info; the pack's (custom validation, reported once per
    input its validate_inputs takes, as 'that input - message') must name it in the message itself."""
    if error.get("type") != "custom_validation_failed":
        return error.get("extra_info", {}).get("input_name") == name
    message = error.get("details", "").partition(" - ")[2]
    return name in message


def text_of(body: dict) -> str:
    return json.dumps(body)
