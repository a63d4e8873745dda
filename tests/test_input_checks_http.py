"""Bad node inputs in API prompts over HTTP: refused at validation (HTTP 400) with the pack's own message naming the
input and what is allowed, while ComfyUI's own range checks keep working for every other input."""
from __future__ import annotations

import json

import pytest

from http_server import ServerError
from node_prompts import PROMPT_FILE, errors_of, names_the_input, node_prompt, text_of, write_assets


@pytest.fixture(scope="module")
def server(comfy_server):
    write_assets(comfy_server)
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def refusal(server, prompt: dict, name: str) -> str:
    """The node's refusal messages; fails unless the prompt is refused at validation naming `name`."""
    status, body = server.request("/prompt", {"prompt": prompt})
    assert status == 400, f"accepted: {body}"
    errors = errors_of(body)
    assert any(names_the_input(e, name) for e in errors), f"no error names {name}: {text_of(body)}"
    return "\n".join(f"{e['message']}: {e['details']}" for e in errors)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 11.0, "nan", "-inf"])
def test_apply_refuses_a_strength_that_is_not_a_finite_number_in_range(server, object_info, value):
    prompt = node_prompt(object_info, "PSAApply", {"strength": value})
    assert "allowed: a finite number from -10 to 10" in refusal(server, prompt, "strength")


@pytest.mark.parametrize("name, value", [("start_percent", -5.0), ("start_percent", float("nan")),
                                         ("end_percent", 1.5), ("end_percent", float("inf"))])
def test_apply_refuses_percents_outside_zero_to_one(server, object_info, name, value):
    prompt = node_prompt(object_info, "PSAApply", {name: value})
    assert "allowed: a finite number from 0 to 1" in refusal(server, prompt, name)


def test_ranges_comfyui_checks_and_combos_the_pack_checks_are_both_enforced(server, object_info):
    prompt = node_prompt(object_info, "PSALoadSageDataset", {"held_out_percent": 101})
    status, body = server.request("/prompt", {"prompt": prompt})
    assert status == 400 and [e["type"] for e in errors_of(body)] == ["value_bigger_than_max"]
    # Combos the pack checks itself, on every ComfyUI (0.3.x checks no V3 combo value), naming the allowed values.
    message = refusal(server, node_prompt(object_info, "PSAUserProfile", {"gender": "robot"}), "gender")
    assert "gender 'robot' is not allowed; allowed: " in message and "female" in message


@pytest.mark.parametrize("node, name, value", [
    ("PSAEncodeProfile", "llm", "/etc"),
    ("PSAEncodeProfile", "llm", "../../../../etc"),
    ("PSAEncodeProfile", "template", "/etc/hostname"),
    ("PSAEncodeProfile", "template", "../../input/x.txt"),
    ("PSARewritePrompt", "llm", "/usr/lib"),
    ("PSALoadSageDataset", "path", "/etc/passwd"),
    ("PSALoadSageDataset", "path", "../../../etc"),
    ("PSALoadSageDataset", "profiles", "/etc/passwd"),
    ("PSALoadSageDataset", "profiles", "..\\..\\users.csv"),
])
def test_file_and_folder_inputs_stay_inside_comfyui_folders(server, object_info, node, name, value):
    message = refusal(server, node_prompt(object_info, node, {name: value}), name)
    assert f"{name} {value!r} is not allowed (" in message
    assert "PSA_ALLOW_OUTSIDE_PATHS=1" in message if value.startswith("/") else "contains '..'" in message


@pytest.mark.parametrize("node, name, value", [
    ("PSASavePreferencePair", "dataset", "."),
    ("PSASavePreferencePair", "dataset", "./"),
    ("PSASavePreferencePair", "dataset", "runs/../../x"),
    ("PSASaveAdapter", "filename_prefix", "../psa_escape"),
    ("PSASaveAdapter", "filename_prefix", "/tmp/psa_escape"),
    ("PSASaveAdapter", "filename_prefix", "sub/.hidden"),
    ("PSASaveEmbedding", "filename", "sub/name"),
])
def test_written_names_are_checked_at_validation(server, object_info, node, name, value):
    before = sorted(p for p in server.base.rglob("*") if "custom_nodes" not in p.parts)
    message = refusal(server, node_prompt(object_info, node, {name: value}), name)
    assert f"{name} {value!r} is not allowed (" in message and "allowed: a " in message
    assert sorted(p for p in server.base.rglob("*") if "custom_nodes" not in p.parts) == before


@pytest.mark.parametrize("node, name", [("PSAEncodeProfile", "llm"), ("PSAEncodeProfile", "template"),
                                        ("PSALoadSageDataset", "path"), ("PSALoadPromptPairs", "file"),
                                        ("PSASaveAdapter", "filename_prefix"), ("PSASaveEmbedding", "filename")])
def test_nul_bytes_are_refused_before_they_reach_the_file_system(server, object_info, node, name):
    message = refusal(server, node_prompt(object_info, node, {name: "name\x00.txt"}), name)
    assert "is not allowed" in message and "exception" not in message.lower()


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000, "arrays/objects nested more than 64 levels deep"),
    ('{"Age": ' + "7" * 5000 + "}", "an integer of more than 4300 digits"),
    ('{"Age": 30, "Gender": "male", "Religion": "None", "Physical_Condition": "healthy", '
     '"Mental_Condition": "healthy", "Banned_Categories": [' * 1 + "[" * 70 + "]" * 70 + "]}",
     "arrays/objects nested more than 64 levels deep"),
])
def test_profile_json_that_python_cannot_parse_is_the_packs_error(server, object_info, text, problem):
    message = refusal(server, node_prompt(object_info, "PSAProfileFromJSON", {"json": text}), "json")
    assert f"json: malformed profile JSON: {problem}" in message


def test_a_huge_profile_value_is_not_echoed_whole(server, object_info):
    # 90 000 characters: within the json input's bound (100 000), so the profile check sees it (a longer text is
    # refused by its length: tests/test_bounded_inputs_http.py).
    profile = {"Age": 30, "Gender": "x" * 90_000, "Religion": "None", "Physical_Condition": "healthy",
               "Mental_Condition": "healthy", "Banned_Categories": []}
    status, body = server.request("/prompt", {"prompt": node_prompt(object_info, "PSAProfileFromJSON",
                                                                      {"json": json.dumps(profile)})})
    assert status == 400, body
    assert "json: Gender 'xxxxxxxx" in text_of(body) and "is not allowed; allowed: 'male'" in text_of(body)
    assert len(text_of(body)) < 5_000


@pytest.mark.parametrize("line, problem", [
    ('{"category": "Hate", "concept": ' + "[" * 5000 + "]" * 5000 + "}",
     "arrays/objects nested more than 64 levels deep"),
    ('{"category": "Hate", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b", "seed": ' + "9" * 5000 + "}",
     "an integer of more than 4300 digits"),
])
def test_prompt_pair_json_that_python_cannot_parse_is_reported_by_line(server, object_info, line, problem):
    name = "psa_inputs_hostile.jsonl"
    hostile = server.base / "input" / name
    hostile.write_text(line + "\n")
    try:
        message = refusal(server, node_prompt(object_info, "PSALoadPromptPairs", {"file": name}), "file")
    finally:
        hostile.unlink()
    assert f"file: {name}: 1 malformed line" in message and f"line 1: not valid JSON ({problem})" in message


def test_a_good_prompt_still_runs(server, object_info):
    entry = server.run_prompt(node_prompt(object_info, "PSALoadPromptPairs", {"file": PROMPT_FILE}), timeout=60)
    assert "a bloody fight" in json.dumps(entry["outputs"]["out"])


@pytest.mark.parametrize("class_type, value", [("PrimitiveInt", 1000), ("PrimitiveInt", -3)])
def test_a_linked_number_is_checked_when_the_node_runs(server, object_info, class_type, value):
    """A link arrives as None at validation (neither ComfyUI nor the pack can check it then), so the node checks
    the value it is given when it runs: an age of 1000 from a Primitive node stops the prompt, naming the input."""
    prompt = node_prompt(object_info, "PSAUserProfile", {"age": ["age_source", 0]})
    prompt["age_source"] = {"class_type": class_type, "inputs": {"value": value}}
    with pytest.raises(ServerError) as failed:
        server.run_prompt(prompt, timeout=60)
    assert f"age {value} is out of range; allowed: " in str(failed.value)
