"""Bounded inputs over HTTP (issue 20): a megabyte of text into PSA Judge Image, PSA Rewrite Prompt or PSA Profile
From JSON is refused at validation naming the input, a linked one when the node runs; a judge generating for a long
time stops within seconds of POST /interrupt, the prompt ends as interrupted, and the server runs the next one."""
from __future__ import annotations

import json
import time

import pytest
from http_server import ServerError
from node_prompts import errors_of, names_the_input, node_prompt, text_of
from test_bounded_inputs import suppress_end_of_answer
from tiny_vlm import build_tiny_qwen2_vl

from psa_core.text_limits import MAX_JSON_CHARS, MAX_PROMPT_CHARS

MEGABYTE = 1_000_000
SLOW_VLM = "psa-slow-judge"
INTERRUPT_WITHIN_S = 5.0  # the acceptance bound of issue 20


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def profile_json(length: int) -> str:
    """A well-formed profile JSON of `length` characters (its explanation field pads it)."""
    head = {"Age": 30, "Gender": "male", "Religion": "None", "Physical_Condition": "healthy",
            "Mental_Condition": "healthy", "Banned_Categories": ["Hate"], "note": ""}
    text = json.dumps(head)
    return text[:-2] + "x" * (length - len(text)) + text[-2:]


@pytest.mark.parametrize("node, name, value, limit", [
    ("PSAJudgeImage", "caption", "a street at night " * (MEGABYTE // 18), MAX_PROMPT_CHARS),
    ("PSARewritePrompt", "prompt", "a bloody fight " * (MEGABYTE // 15), MAX_PROMPT_CHARS),
    ("PSAProfileFromJSON", "json", profile_json(MEGABYTE), MAX_JSON_CHARS),
])
def test_a_megabyte_of_text_is_refused_at_validation_naming_the_input(comfy_server, object_info, node, name, value,
                                                                      limit):
    status, body = comfy_server.request("/prompt", {"prompt": node_prompt(object_info, node, {name: value})})
    assert status == 400, f"accepted: {text_of(body)[:500]}"
    assert any(names_the_input(e, name) for e in errors_of(body)), text_of(body)[:2000]
    assert f"{name} is {len(value)} characters long; allowed: at most {limit} characters" in text_of(body)
    assert len(text_of(body)) < 10_000  # the text is not echoed back


def test_a_linked_megabyte_is_refused_when_the_node_runs(comfy_server, object_info):
    """ComfyUI's own PrimitiveString takes any length; the link arrives at PSA Rewrite Prompt only when it runs,
    which refuses it before looking for its LLM (which does not exist)."""
    prompt = node_prompt(object_info, "PSARewritePrompt", {"prompt": ["long", 0], "llm": "no-such-llm"})
    prompt["long"] = {"class_type": "PrimitiveString", "inputs": {"value": "x" * MEGABYTE}}
    with pytest.raises(ServerError) as failed:
        comfy_server.run_prompt(prompt, timeout=60)
    assert f"prompt is {MEGABYTE} characters long; allowed: at most {MAX_PROMPT_CHARS}" in str(failed.value)
    assert "no-such-llm" not in str(failed.value).split("prompt failed:")[1][:2000]


def judge_prompt(object_info: dict, max_new_tokens: int) -> dict:
    """An empty image judged by the slow tiny judge for the default profile; unnamed widgets at their defaults."""
    prompt = {
        "image": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "profile": {"class_type": "PSAUserProfile", "inputs": {}},
        "load": {"class_type": "PSALoadJudge", "inputs": {"vlm": SLOW_VLM, "precision": "float32", "device": "cpu",
                                                          "max_new_tokens": max_new_tokens}},
        "judge": {"class_type": "PSAJudgeImage", "inputs": {"images": ["image", 0], "profile": ["profile", 0],
                                                            "judge": ["load", 0], "caption": "a plain square"}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["judge", 0]}},
    }
    for node in prompt.values():
        defaults = node_prompt(object_info, node["class_type"])["1"]["inputs"]
        node["inputs"] = {**{k: v for k, v in defaults.items() if not isinstance(v, list)}, **node["inputs"]}
    return prompt


def finished(server, prompt_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s\n{server.log_tail()}")


def test_interrupt_stops_a_long_judge_within_seconds_and_the_server_runs_the_next_prompt(comfy_server,
                                                                                          object_info):
    """The tiny judge with 16 text layers and its end of answer suppressed generates all 8192 tokens: about a
    minute on the test machine (7 ms a token, tests/test_bounded_inputs.py), so only a check between tokens
    ends it within INTERRUPT_WITHIN_S (the check between images alone would wait for the whole answer)."""
    server = comfy_server
    suppress_end_of_answer(build_tiny_qwen2_vl(server.models / "LLM" / SLOW_VLM, text_layers=16))
    prompt = judge_prompt(object_info, 8192)
    loaded = f"LLM loaded: {SLOW_VLM} (float32) for PSA Judge Image"
    seen = server.log().count(loaded)
    prompt_id = server.queue_prompt(prompt)
    deadline = time.monotonic() + 120
    while server.log().count(loaded) == seen:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    time.sleep(1.0)  # well into the answer
    asked = time.monotonic()
    status, _ = server.request("/interrupt", {})
    assert status == 200
    entry = finished(server, prompt_id, timeout=120)
    took = time.monotonic() - asked
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, \
        f"{entry['status']}\n{server.log_tail(3000)}"
    assert "execution_error" not in kinds
    assert took < INTERRUPT_WITHIN_S, f"{took:.1f} s from /interrupt to the end of the prompt"
    print(f"\n/interrupt to the prompt's end: {took:.2f} s")

    entry = server.run_prompt(judge_prompt(object_info, 4), timeout=120)
    assert entry["status"]["status_str"] == "success"
