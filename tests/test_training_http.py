"""The shipped training workflow end to end over HTTP: a headless ComfyUI trains an adapter on the demo
checkpoint from a generated dataset, saves it into models/psa/ and samples with it for two profiles; a
following prompt loads the saved file with PSA Load Adapter and samples again."""
from __future__ import annotations

import json

import numpy as np
import pytest
from comfy_env import REPO
from conftest import DEMO_CHECKPOINT
from http_server import ServerError
from PIL import Image

from psa_core.embedding import UserEmbedding, save_embedding
from psa_core.encoders.structured import StructuredEncoder
from psa_core.profile import profile_from_dict
from testkit.preference_data import BANS_CATEGORY, write_pairs, write_profiles

TRAIN_WORKFLOW = REPO / "workflows" / "psa_train_adapter.json"
SAMPLE_WORKFLOW = REPO / "workflows" / "psa_sd15_text_to_image.json"
SIZE = 64


def _api(server, workflow) -> tuple[dict, dict[str, list[str]]]:
    from comfy_cli.workflow_to_api import convert_ui_to_api

    prompt = convert_ui_to_api(json.loads(workflow.read_text()), server.get("/object_info"))
    ids: dict[str, list[str]] = {}
    for node_id, node in prompt.items():
        ids.setdefault(node["class_type"], []).append(node_id)
    return prompt, ids


def _images(server, entry: dict, node_id: str) -> list[Image.Image]:
    files = entry["outputs"][node_id]["images"]
    return [Image.open(server.base / f.get("type", "output") / f.get("subfolder", "") / f["filename"]) for f in files]


@pytest.fixture(scope="module")
def server(demo_server):
    """The demo server with a generated dataset: 6 pairs and two profiles in output/psa_http_training/."""
    dataset = demo_server.output / "psa_http_training"
    write_pairs(dataset, 6, size=SIZE, seed=3, style="tint")
    write_profiles(dataset)
    return demo_server


def test_training_workflow_trains_saves_and_samples_then_the_file_loads(server):
    prompt, ids = _api(server, TRAIN_WORKFLOW)
    prompt[ids["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"] = DEMO_CHECKPOINT
    prompt[ids["PSALoadSageDataset"][0]]["inputs"].update(path="psa_http_training/pairs.jsonl",
                                                          profiles="psa_http_training/profiles.json",
                                                          split="all", resolution=SIZE)
    prompt[ids["PSATrainAdapter"][0]]["inputs"].update(steps=2, batch=2, accumulation=1, lr=1e-3)
    prompt[ids["PSASaveAdapter"][0]]["inputs"]["filename_prefix"] = "http/trained"
    prompt[ids["EmptyLatentImage"][0]]["inputs"].update(width=SIZE, height=SIZE)
    prompt[ids["KSampler"][0]]["inputs"]["steps"] = 2
    entry = server.run_prompt(prompt, timeout=600)

    saved = server.models / "psa" / "http" / "trained_00001.safetensors"
    assert saved.is_file()
    assert "saved models/psa/http/trained_00001.safetensors" in json.dumps(entry["outputs"][ids["PSASaveAdapter"][0]])
    loss_graph = _images(server, entry, ids["PreviewImage"][0])
    assert len(loss_graph) == 1 and loss_graph[0].size[0] > 100
    profiles_batch = _images(server, entry, ids["SaveImage"][0])
    assert [image.size for image in profiles_batch] == [(SIZE, SIZE)] * 2
    first, second = (np.asarray(image, dtype=float) for image in profiles_batch)
    assert np.abs(first - second).mean() > 0, "the two profiles sample differently with the trained adapter"

    # A following prompt: the saved file as PSA Load Adapter lists it, with one profile's structured embedding.
    info = server.get("/object_info/PSALoadAdapter")["PSALoadAdapter"]["input"]["required"]["adapter_name"]
    assert "http/trained_00001.safetensors" in json.dumps(info)
    vector = StructuredEncoder().encode_uncached([profile_from_dict(BANS_CATEGORY)])
    save_embedding(UserEmbedding(vector, "psa-structured-v1"), server.models / "psa_embeddings" / "bans.safetensors")
    sample, ids = _api(server, SAMPLE_WORKFLOW)
    sample[ids["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"] = DEMO_CHECKPOINT
    sample[ids["PSALoadAdapter"][0]]["inputs"]["adapter_name"] = "http/trained_00001.safetensors"
    sample[ids["PSALoadEmbedding"][0]]["inputs"]["embedding_name"] = "bans.safetensors"
    sample[ids["EmptyLatentImage"][0]]["inputs"].update(width=SIZE, height=SIZE)
    sample[ids["KSampler"][0]]["inputs"].update(steps=2, seed=2025)
    images = _images(server, server.run_prompt(sample), ids["SaveImage"][0])
    assert [image.size for image in images] == [(SIZE, SIZE)]


@pytest.mark.parametrize("change, message", [
    ({"path": "psa_http_missing/pairs.jsonl"}, "path: dataset 'psa_http_missing/pairs.jsonl' not found"),
    ({"profiles": ""}, "need profiles"),
])
def test_training_input_problems_are_reported_over_http(server, change, message):
    prompt, ids = _api(server, TRAIN_WORKFLOW)
    prompt[ids["CheckpointLoaderSimple"][0]]["inputs"]["ckpt_name"] = DEMO_CHECKPOINT
    inputs = prompt[ids["PSALoadSageDataset"][0]]["inputs"]
    inputs.update(path="psa_http_training/pairs.jsonl", profiles="psa_http_training/profiles.json")
    inputs.update(change)
    with pytest.raises(ServerError, match=message):
        server.run_prompt(prompt)
