"""The shipped comparison workflow (workflows/psa_profile_comparison.json) over HTTP in a headless ComfyUI: its five
PSA Encode Profile nodes load the LLM once, the kept LLM is let go when ComfyUI unloads its models (Unload Models,
`POST /free`), and a re-run serves every profile from the embedding cache without loading a model.

The loads are counted from the lines nodes/model_memory.py logs for every use of the LLM (`[PSA] LLM loaded: ...`,
`[PSA] LLM reused: ...`), read from the server's log: the nodes run in the server's own process.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest
from comfy_env import REPO
from conftest import DEMO_CHECKPOINT, demo_assets
from safetensors.torch import load_file, save_file
from tiny_llm import build_tiny_llm
from workflow_check import check_api_prompt, ui_to_api

WORKFLOW = REPO / "workflows" / "psa_profile_comparison.json"
LLM_NAME = "tiny-qwen2-http"
LABEL = f"{LLM_NAME} (float32)"
ADAPTER = "psa_http_tiny_llm.safetensors"
SIZE = 64


def comparison_prompt(server) -> dict:
    """The workflow as the frontend converts it, on the demo checkpoint, a random adapter for the tiny LLM's 32-wide
    embeddings, 64 px and one step (the CPU)."""
    object_info = server.get("/object_info")
    prompt = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
    by_type: dict[str, list[dict]] = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert len(by_type["PSAEncodeProfile"]) == 5 and len(by_type["PSAUserProfile"]) == 5
    by_type["CheckpointLoaderSimple"][0]["ckpt_name"] = DEMO_CHECKPOINT
    by_type["PSALoadAdapter"][0]["adapter_name"] = ADAPTER
    for encode in by_type["PSAEncodeProfile"]:
        assert encode["encoder"] == "llm" and encode["device"] == "auto" and encode["use_cache"] is True
        encode.update(llm=LLM_NAME, precision="float32")
    by_type["EmptyLatentImage"][0].update(width=SIZE, height=SIZE)
    by_type["KSampler"][0]["steps"] = 1
    by_type["ImageGrid"][0].update(cell_width=SIZE, cell_height=SIZE)
    by_type["SaveImage"][0]["filename_prefix"] = "psa_llm_memory/comparison"
    assert check_api_prompt(prompt, server.get("/object_info")) == []
    return prompt


def wait_for_log(server, start: int, text: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()[start:]
        if text in log:
            return log
        time.sleep(0.25)
    raise AssertionError(f"{text!r} not logged within {timeout:.0f} s; the log ends:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def comparison_server(demo_server, reference):
    models = demo_server.models
    text = (reference / "get_embeds.txt").read_text(encoding="utf-8")
    build_tiny_llm(models / "LLM" / LLM_NAME, [text] * 3)
    shutil.copy(reference / "get_embeds.txt", models / "psa" / "get_embeds.txt")
    adapter = demo_assets().write_demo_adapter(models / "psa" / ADAPTER, seed=3, embedding_dim=32, scale=0.05)
    save_file(load_file(str(adapter)), str(adapter), metadata={"psa.encoder": "hf-qwen2-32x2"})
    shutil.rmtree(models / "psa_cache", ignore_errors=True)  # the embedding cache (docs/profiles.md §6)
    return demo_server


def test_comparison_workflow_loads_the_llm_once_for_five_profiles(comparison_server):
    server = comparison_server
    prompt = comparison_prompt(server)
    start = len(server.log())
    entry = server.run_prompt(prompt, timeout=600)
    log = server.log()[start:]
    assert log.count(f"[PSA] LLM loaded: {LABEL} for PSA Encode Profile") == 1, log
    assert log.count(f"[PSA] LLM reused: {LABEL} for PSA Encode Profile") == 4, log
    assert "of this prompt, no weights read" in log  # reused within the prompt run
    assert "on the CPU (cpu): ComfyUI runs on the CPU" in log  # where it ran, and why
    (grid,) = server.saved_images(entry)
    assert grid.is_file()

    # Unload Models (the queue's "unload models" flag, set by POST /free) makes ComfyUI unload every model: the pack
    # lets the LLM go with it. free_memory also drops ComfyUI's node cache, so the same prompt runs every node again.
    # ComfyUI's prompt worker reads the flag when its queue wait returns; a POST that lands while the worker is
    # between reading the flags and waiting again goes unnoticed until the next wake-up (up to 1000 s), so the
    # request is repeated until the worker has acted on it.
    start = len(server.log())
    deadline = time.monotonic() + 120
    while True:
        status, _ = server.request("/free", {"unload_models": True, "free_memory": True})
        assert status == 200
        try:
            wait_for_log(server, start, f"[PSA] LLM released: {LABEL}", timeout=5)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    start = len(server.log())
    again = server.run_prompt(prompt, timeout=600)
    log = server.log()[start:]
    assert "[PSA] LLM loaded" not in log and "[PSA] LLM reused" not in log, log
    assert log.count("from the embedding cache, no model loaded") == 5, log
    assert len(server.saved_images(again)) == 1
