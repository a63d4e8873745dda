"""End to end over HTTP: a headless ComfyUI with only this pack lists, validates and runs the PSA nodes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models as tm
from comfy_env import REPO, registered_nodes
from http_server import PACK_FOLDER
from workflow_check import check_api_prompt
import psa_core

PSA_NODE_IDS = {"PSALoadAdapter", "PSALoadEmbedding", "PSAApply", "PSALoadPromptPairs", "PSASavePreferencePair",
                "PSARewritePrompt"}
LOADER_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "PSALoadAdapter": "psa", "PSALoadEmbedding": "psa_embeddings",
                  "UNETLoader": "diffusion_models", "LoraLoader": "loras",
                  "PSALoadPromptPairs": "../input"}  # relative to models/: prompt-pair files live in input/
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def test_pack_imports_and_lists_its_nodes(pack, comfy_server):
    object_info = comfy_server.get("/object_info")
    registered = set(registered_nodes(pack))
    assert PSA_NODE_IDS <= registered
    missing = registered - set(object_info)
    assert not missing, f"missing {missing}; server log:\n{comfy_server.log()[-3000:]}"
    foreign = {i: object_info[i].get("python_module") for i in registered
               if object_info[i].get("python_module") != f"custom_nodes.{PACK_FOLDER}"}
    assert not foreign, f"nodes not served by custom_nodes/{PACK_FOLDER}: {foreign}"
    apply_inputs = object_info["PSAApply"]["input"]["required"]
    assert apply_inputs["adapter"][0] == "PSA_ADAPTER" and apply_inputs["embedding"][0] == "PSA_EMBEDDING"
    assert apply_inputs["strength"][1]["default"] == 1.0 and apply_inputs["strength"][1]["min"] < 0
    assert object_info["PSALoadAdapter"]["output"] == ["PSA_ADAPTER"]
    assert "psa" in comfy_server.get("/models")


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_converts_to_a_valid_api_prompt(comfy_server, workflow_path):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    workflow = json.loads(workflow_path.read_text())
    for node in workflow["nodes"]:  # placeholder model files, so that model combos can list the names
        folder = LOADER_FOLDERS.get(node["type"])
        if folder:
            placeholder = comfy_server.models / folder / node["widgets_values"][0]
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.touch()
    object_info = comfy_server.get("/object_info")
    prompt = convert_ui_to_api(workflow, object_info)
    # A Note is a node only where the server lists it (0.28.2 does, 0.3.75 keeps it in the frontend alone).
    runnable = [n for n in workflow["nodes"] if n.get("mode", 0) == 0 and (n["type"] in object_info or "Note" not in n["type"])]
    assert len(prompt) == len(runnable), "some nodes failed to convert"
    assert check_api_prompt(prompt, object_info) == []
    assert {n["class_type"] for n in prompt.values()} & PSA_NODE_IDS


@pytest.fixture(scope="module")
def detectable_sd15(folder_paths, comfy_server):
    """A full-layout SD1.5 UNet, 320 channels at every level and context 768, which ComfyUI detects as SD15."""
    model = tm.build_model("sd15", model_channels=320, context_dim=768, channel_mult=[1, 1, 1, 1])
    state = {k: v.to(torch.float16).contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    save_file(state, str(comfy_server.models / "diffusion_models" / "psa_e2e_sd15.safetensors"))
    return model


def api_prompt(adapter: str, strength: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "psa_e2e_sd15.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PSALoadAdapter", "inputs": {"adapter_name": adapter}},
        "3": {"class_type": "PSALoadEmbedding", "inputs": {"embedding_name": "0000001.npy"}},
        "4": {"class_type": "PSAApply", "inputs": {"model": ["1", 0], "adapter": ["2", 0], "embedding": ["3", 0],
                                                   "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        "5": {"class_type": "TestRandomConditioning", "inputs": {"seed": 1, "context_dim": 768, "tokens": 77}},
        "6": {"class_type": "TestRandomConditioning", "inputs": {"seed": 2, "context_dim": 768, "tokens": 77}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": 2025, "steps": 2, "cfg": 7.5,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": prefix}},
    }


def saved_latent(server, entry) -> Path:
    latents = entry["outputs"]["9"]["latents"]
    path = server.output / latents[0]["subfolder"] / latents[0]["filename"]
    assert path.is_file(), f"no output file at {path}"
    return path


def test_prompt_with_psa_nodes_runs_and_writes_its_output(folder_paths, pack, comfy_server, detectable_sd15, reference):
    family = psa_core.get_family("sd15", 320, 768, channel_mult=(1, 1, 1, 1))
    tm.write_adapter(tm.random_adapter_tensors(family, 3584, scale=0.02), comfy_server.models / "psa" / "psa_e2e.bin")
    shutil.copy(reference / "embeddings" / "0000001.npy", comfy_server.models / "psa_embeddings" / "0000001.npy")

    with_psa = saved_latent(comfy_server, comfy_server.run_prompt(api_prompt("psa_e2e.bin", 1.0, "latents/psa_on")))
    without = saved_latent(comfy_server, comfy_server.run_prompt(api_prompt("psa_e2e.bin", 0.0, "latents/psa_off")))
    on, off = load_file(str(with_psa))["latent_tensor"], load_file(str(without))["latent_tensor"]
    assert torch.isfinite(on).all() and (on.float() - off.float()).abs().max() > 1e-3


def test_bad_adapter_over_http_reports_the_file(comfy_server, detectable_sd15):
    (comfy_server.models / "psa" / "broken.safetensors").write_bytes(b"\x00" * 64)
    status, body = comfy_server.request("/prompt", {"prompt": api_prompt("broken.safetensors", 1.0, "latents/bad")})
    assert status == 200
    history = {}
    for _ in range(240):
        history = comfy_server.get(f"/history/{body['prompt_id']}").get(body["prompt_id"], {})
        if history.get("status", {}).get("completed") is not None:
            break
        import time
        time.sleep(0.25)
    assert history["status"]["status_str"] == "error"
    messages = json.dumps(history["status"]["messages"])
    assert "broken.safetensors: not a readable safetensors file" in messages
