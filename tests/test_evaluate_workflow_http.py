"""The shipped evaluation workflow (workflows/psa_evaluate.json) over HTTP in a headless ComfyUI, as the frontend
converts it: one prompt for three profiles through PSA Apply, each image through PSA Safety Check (real NudeNet)
and PSA Judge Image (a tiny random Qwen2-VL from models/LLM/, so every verdict is 'no verdict'), and the grid of
the three judged images. The profile encoder is a tiny Qwen2 with the reference template."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from comfy_env import REPO
from conftest import DEMO_CHECKPOINT, demo_assets
from pinned_packages import require_nudenet
from tiny_llm import build_tiny_llm
from tiny_vlm import build_tiny_qwen2_vl
from workflow_check import check_api_prompt, ui_to_api

require_nudenet()  # a failure, not a skip: requirements-test.txt pins nudenet

WORKFLOW = REPO / "workflows" / "psa_evaluate.json"
LLM_NAME, VLM_NAME = "tiny-qwen2-evaluate", "tiny-qwen2-vl-evaluate"
ADAPTER = "psa_http_evaluate.safetensors"
SIZE = 64


@pytest.fixture(scope="module")
def evaluate_server(demo_server, reference):
    models = demo_server.models
    build_tiny_llm(models / "LLM" / LLM_NAME, [(reference / "get_embeds.txt").read_text(encoding="utf-8")] * 3)
    build_tiny_qwen2_vl(models / "LLM" / VLM_NAME)
    shutil.copy(reference / "get_embeds.txt", models / "psa" / "get_embeds.txt")
    adapter = demo_assets().write_demo_adapter(models / "psa" / ADAPTER, seed=4, embedding_dim=32, scale=0.05)
    save_file(load_file(str(adapter)), str(adapter), metadata={"psa.encoder": "hf-qwen2-32x2"})
    return demo_server


def evaluate_prompt(server) -> dict:
    """The workflow on the demo checkpoint and the tiny models, at 64 px and one step (the CPU)."""
    object_info = server.get("/object_info")
    prompt = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
    by_type: dict[str, list[dict]] = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert len(by_type["PSAUserProfile"]) == 3 and len(by_type["PSASafetyCheck"]) == 3
    assert len(by_type["PSAJudgeImage"]) == 3 and len(by_type["PSALoadJudge"]) == 1
    assert all(judge["mode"] == "blind" and judge["caption"] for judge in by_type["PSAJudgeImage"])
    # the judge checks every banned category in the Safety Check too (its note: NudeNet alone sees only Sexuality)
    assert all(check["judge"] == by_type["PSAJudgeImage"][0]["judge"] and check["unchecked"] == "blur"
               for check in by_type["PSASafetyCheck"])
    by_type["CheckpointLoaderSimple"][0]["ckpt_name"] = DEMO_CHECKPOINT
    by_type["PSALoadAdapter"][0]["adapter_name"] = ADAPTER
    for encode in by_type["PSAEncodeProfile"]:
        encode.update(llm=LLM_NAME, precision="float32")
    by_type["PSALoadJudge"][0].update(vlm=VLM_NAME, precision="float32", max_new_tokens=8)
    by_type["EmptyLatentImage"][0].update(width=SIZE, height=SIZE)
    by_type["KSampler"][0]["steps"] = 1
    by_type["ImageGrid"][0].update(cell_width=SIZE, cell_height=SIZE)
    by_type["SaveImage"][0]["filename_prefix"] = "psa_evaluate/grid"
    assert check_api_prompt(prompt, object_info) == []
    return prompt


def test_evaluation_workflow_checks_and_judges_each_profiles_image(evaluate_server):
    server = evaluate_server
    prompt = evaluate_prompt(server)
    start = len(server.log())
    entry = server.run_prompt(prompt, timeout=900)
    log = server.log()[start:]
    assert log.count(f"[PSA] LLM loaded: {VLM_NAME} (float32) for PSA Judge Image") == 1, log  # loaded once
    # reused by the other two judged images and the level_3 and level_5 Safety Checks (level_0 bans nothing: no call)
    assert log.count(f"[PSA] LLM reused: {VLM_NAME} (float32) for PSA Judge Image") == 4, log

    (grid_path,) = server.saved_images(entry)
    with Image.open(grid_path) as grid:
        pixels = np.asarray(grid.convert("RGB"), dtype=np.int16)
    assert pixels.shape[1] >= 3 * SIZE and pixels.shape[0] >= SIZE

    verdicts = sorted("".join(output["text"]) for output in entry["outputs"].values() if "text" in output)
    assert len(verdicts) == 3
    bans = {"profile bans: nothing", "profile bans: Propaganda, Self-Harm, Sexuality, Shocking",
            "profile bans: Harassment, Hate, Propaganda, Self-Harm, Sexuality, Shocking, Violence"}
    assert {line.split("; ")[-1] for text in verdicts for line in text.splitlines()[:1]} == bans
    for text in verdicts:
        head, line = text.splitlines()
        assert "PSA Judge Image (blind prompt): 0 of 1 images PASS, 1 without a verdict" in head
        assert line.startswith("image 1: no verdict (")  # a random model's text is never a pass


def test_a_workflow_saved_before_the_judge_input_still_loads(evaluate_server):
    """A Safety Check saved before issue 22 (two widget values, three outputs, no judge input) converts to a valid
    prompt: the new input and the new output are optional and last, so old links by index stay right."""
    server = evaluate_server
    object_info = server.get("/object_info")
    workflow = json.loads(WORKFLOW.read_text())
    judge_links = set()
    for node in workflow["nodes"]:
        if node["type"] == "PSASafetyCheck":
            judge_links |= {i["link"] for i in node["inputs"] if i["name"] == "judge"}
            node["inputs"] = [i for i in node["inputs"] if i["name"] != "judge"]
            node["outputs"], node["widgets_values"] = node["outputs"][:3], node["widgets_values"][:2]
    workflow["links"] = [link for link in workflow["links"] if link[0] not in judge_links]
    for node in workflow["nodes"]:
        for output in node["outputs"]:
            output["links"] = [link for link in output.get("links") or [] if link not in judge_links]
    prompt = ui_to_api(workflow, object_info)
    checks = [node["inputs"] for node in prompt.values() if node["class_type"] == "PSASafetyCheck"]
    assert len(checks) == 3 and all("judge" not in check and check["violating"] == "blur" for check in checks)
    assert [p for p in check_api_prompt(prompt, object_info) if "PSASafetyCheck" in p] == []
    assert all(node["inputs"]["images"][1] == 0 for node in prompt.values()
               if node["class_type"] == "PSAJudgeImage")  # still the Safety Check's first output
