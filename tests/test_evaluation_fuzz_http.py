"""Fuzzing the evaluation nodes (PSA Safety Check, PSA Load Judge, PSA Judge Image) through /prompt on the headless
server, in graphs that really run them: EmptyImage pictures, a PSA User Profile, a tiny random Qwen2-VL in
models/LLM/ as the judge, the CLIP_VISION stand-in for Q16.

Cases: every widget gets the node fuzz test's bad values (test_input_fuzz.bad_values: NaN, huge numbers, wrong types,
empty and 100 000-character strings, traversal); IMAGE batches no ComfyUI node makes (empty, other ranks and channel
counts, integers, NaN, infinity) and literals in place of links; files that are not what they claim (garbage, a
folder, a pickle that would run code, prompts of another width, a VLM folder that is empty or holds garbage); and
combinations the nodes refuse. Each prompt must be refused at validation with an error naming the input, or fail
when it runs with the pack's own error naming the input (or the file given), or run to success; a 100 000-character
caption must be refused at validation. Afterwards the server answers a good prompt, nothing outside ComfyUI's
output, temp and user folders changed (names, sizes, mtimes), and the pickle's payload never ran.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np

from node_prompts import NODE, errors_of, names_the_input, node_prompt, text_of
from test_input_fuzz import PACK_ERROR, bad_values, outcome, snapshot
from tiny_vlm import build_tiny_qwen2_vl

VLM = "psa_fuzz_vlm"
Q16 = "psa_fuzz_q16.npy"  # [e0, e1]: 4-d like the CLIP_VISION stand-in's embeddings
WRITABLE = ("output", "temp", "user", "custom_nodes")
SENTINEL = "psa_eval_fuzz_sentinel"
LONG = 10_000  # strings longer than this are never sent to the real judge: they must be refused at validation
IMAGE_KINDS = ("empty", "rank 3", "rank 5", "1 channel", "5 channels", "zero height", "uint8", "nan", "inf")


class Pickled:
    """Unpickling this would create the file `path` (it must never happen)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def write_evaluation_assets(server, outside: Path) -> None:
    models = server.models
    build_tiny_qwen2_vl(models / "LLM" / VLM)
    (models / "LLM" / "psa_fuzz_empty_vlm").mkdir(parents=True, exist_ok=True)
    garbage_vlm = models / "LLM" / "psa_fuzz_garbage_vlm"
    garbage_vlm.mkdir(exist_ok=True)
    (garbage_vlm / "config.json").write_bytes(b"{\x00\xff not json" * 10)
    (models / "LLM" / "psa_fuzz_a_file").write_text("a file, not a folder")
    psa = models / "psa"
    np.save(psa / Q16, np.eye(2, 4, dtype=np.float32))
    np.save(psa / "psa_fuzz_q16_wide.npy", np.eye(2, 8, dtype=np.float32))
    np.save(psa / "psa_fuzz_q16_nan.npy", np.full((2, 4), np.nan, dtype=np.float32))
    np.save(psa / "psa_fuzz_q16_3rows.npy", np.eye(3, 4, dtype=np.float32))
    (psa / "psa_fuzz_garbage.npy").write_bytes(os.urandom(256))
    (psa / "psa_fuzz_text.safetensors").write_text("not a safetensors file")
    (psa / "psa_fuzz_dir.npy").mkdir(exist_ok=True)
    (psa / "psa_fuzz_payload.p").write_bytes(pickle.dumps(Pickled(outside / "pwned")))


def profile_node(object_info: dict) -> dict:
    return node_prompt(object_info, "PSAUserProfile", {"preset": "level_3 (0000002)"})[NODE]


def images_node(kind: str | None) -> dict:
    if kind is None:
        return {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 0x808080}}
    return {"class_type": "TestImageBatch", "inputs": {"kind": kind}}


def safety_prompt(object_info: dict, values: dict, kind: str | None = None, q16: bool = False) -> dict:
    """PSA Safety Check on two grey images for level_3; `q16`: the CLIP_VISION stand-in and the prompts file."""
    inputs = {"images": ["img", 0], "violating": "blur", "profile": ["prof", 0], "q16_prompts": ""}
    prompt = {"img": images_node(kind), "prof": profile_node(object_info)}
    if q16:
        inputs.update(clip_vision=["clip", 0], q16_prompts=Q16)
        prompt["clip"] = {"class_type": "TestRedFlagClipVision", "inputs": {}}
    inputs.update(values)
    prompt[NODE] = {"class_type": "PSASafetyCheck", "inputs": inputs}
    prompt["out"] = {"class_type": "PreviewAny", "inputs": {"source": [NODE, 2]}}
    return prompt


def judge_prompt(object_info: dict, judge_values: dict, load_values: dict | None = None, kind: str | None = None,
                 placeholder: bool = False) -> dict:
    """PSA Load Judge (the tiny VLM, 2 new tokens) into PSA Judge Image on two grey images for level_3; the judge
    under test is node "1" unless `load_values` is given, then PSA Load Judge is. `placeholder`: the judge is the
    test placeholder, which stops the prompt if it ever gets that far."""
    load = {"vlm": VLM, "precision": "float32", "device": "cpu", "max_new_tokens": 2, **(load_values or {})}
    load_id, judge_id = ("load", NODE) if load_values is None else (NODE, "judge")
    judged = {"images": ["img", 0], "profile": ["prof", 0], "judge": [load_id, 0], "mode": "blind",
              "caption": "a street at night", **judge_values}
    prompt = {"img": images_node(kind), "prof": profile_node(object_info),
              load_id: ({"class_type": "TestPlaceholder", "inputs": {"stands_for": "PSA_JUDGE"}} if placeholder
                        else {"class_type": "PSALoadJudge", "inputs": load}),
              judge_id: {"class_type": "PSAJudgeImage", "inputs": judged},
              "out": {"class_type": "PreviewAny", "inputs": {"source": [judge_id, 2]}}}
    return prompt


ANY, REFUSED, AT_VALIDATION = "refused or ran", "refused", "refused at validation"
NOT_CLEAN = "refused, or ran with no image clean"


def cases(object_info: dict, outside: Path) -> list[tuple[str, dict, tuple[str, ...], str]]:
    """(label, prompt, words one of which a refusal must contain, what is required: ANY, REFUSED (at validation or
    when the node runs; running to success is wrong), NOT_CLEAN (a run must report 0 clean images) or
    AT_VALIDATION)."""
    found = []
    for name, kind in (("violating", "COMBO"), ("q16_prompts", "STRING")):
        for value in bad_values(kind, outside):
            found.append((f"PSASafetyCheck.{name} = {value!r:.60}", safety_prompt(object_info, {name: value}),
                          (name,), ANY))
    for name, kind in (("vlm", "STRING"), ("precision", "COMBO"), ("device", "COMBO"), ("max_new_tokens", "INT")):
        for value in bad_values(kind, outside):
            found.append((f"PSALoadJudge.{name} = {value!r:.60}", judge_prompt(object_info, {}, {name: value}),
                          (name,), ANY))
    for name, kind in (("mode", "COMBO"), ("caption", "STRING")):
        for value in bad_values(kind, outside):
            long = isinstance(value, str) and len(value) > LONG
            found.append((f"PSAJudgeImage.{name} = {value!r:.60}",
                          judge_prompt(object_info, {name: value}, placeholder=long), (name,),
                          AT_VALIDATION if long else ANY))
    for caption in ("x" * 1_000_000, "a street at night " * 60_000):
        found.append((f"PSAJudgeImage.caption of {len(caption)} characters",
                      judge_prompt(object_info, {"caption": caption}, placeholder=True), ("caption",),
                      AT_VALIDATION))

    for kind in IMAGE_KINDS:  # image batches no ComfyUI node makes, and literals in place of links
        found.append((f"PSASafetyCheck.images: {kind}", safety_prompt(object_info, {}, kind=kind, q16=True),
                      ("images",), REFUSED))
        found.append((f"PSAJudgeImage.images: {kind}", judge_prompt(object_info, {}, kind=kind), ("images",),
                      REFUSED))
    for name, value in (("images", "abc"), ("images", 12345), ("images", {"a": 1}), ("profile", "level_3"),
                        ("profile", 7), ("clip_vision", "ViT-L"), ("judge", "x")):
        if name != "judge":
            found.append((f"PSASafetyCheck.{name} literal {value!r}",
                          safety_prompt(object_info, {name: value}, q16=name == "clip_vision"), (name,),
                          ANY if name == "clip_vision" else REFUSED))
        if name not in ("clip_vision",):
            found.append((f"PSAJudgeImage.{name} literal {value!r}", judge_prompt(object_info, {name: value}),
                          (name,), REFUSED))

    # Prompts of another width than the stand-in's embeddings: the stand-in shows no projection width, so the
    # mismatch is found on the first embedding and is each image's error (not clean, docs/evaluation.md §7).
    for value in ("psa_fuzz_missing.npy", "psa_fuzz_garbage.npy", "psa_fuzz_text.safetensors", "psa_fuzz_dir.npy",
                  "psa_fuzz_payload.p", "psa_fuzz_q16_wide.npy", "psa_fuzz_q16_nan.npy", "psa_fuzz_q16_3rows.npy",
                  "../psa/" + Q16, "psa/" + Q16):
        found.append((f"PSASafetyCheck.q16_prompts file {value}",
                      safety_prompt(object_info, {"q16_prompts": value}, q16=True), ("q16_prompts", value),
                      NOT_CLEAN if value == "psa_fuzz_q16_wide.npy" else REFUSED))
    for value in ("psa_fuzz_missing_vlm", "psa_fuzz_empty_vlm", "psa_fuzz_garbage_vlm", "psa_fuzz_a_file",
                  f"{VLM}/..", f"{VLM}/../{VLM}", f"./{VLM}/"):
        found.append((f"PSALoadJudge.vlm folder {value}", judge_prompt(object_info, {}, {"vlm": value}),
                      ("vlm", value), ANY if value.startswith("./") else REFUSED))
    q16_alone = safety_prompt(object_info, {"q16_prompts": Q16})  # a prompts file without a CLIP_VISION model
    clip_alone = safety_prompt(object_info, {"q16_prompts": ""}, q16=True)  # a CLIP_VISION model without prompts
    found += [("PSASafetyCheck q16_prompts without clip_vision", q16_alone, ("q16_prompts",), REFUSED),
              ("PSASafetyCheck clip_vision without q16_prompts", clip_alone, ("q16_prompts",), REFUSED),
              ("PSASafetyCheck empty batch, pass through", safety_prompt(object_info, {"violating": "pass through"},
                                                                         kind="empty"), ("images",), REFUSED),
              ("PSAJudgeImage empty batch, reference", judge_prompt(object_info, {"mode": "reference"}, kind="empty"),
               ("images",), REFUSED)]
    return found


def problem_of(entry: dict, words: tuple[str, ...], need: str) -> str | None:
    """None when the prompt stopped with the pack's own error naming one of `words`, or (unless `need` is REFUSED)
    ran to success."""
    if entry["status"]["status_str"] == "success":
        text = preview(entry)
        if need == REFUSED or (need == NOT_CLEAN and not text.startswith("PSA Safety Check: 0 of ")):
            return f"ran to success: {text[:200]!r}"
        return None
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            error_type, message = data.get("exception_type", ""), data.get("exception_message", "")
            if PACK_ERROR.search(error_type) and any(str(word) in message for word in words):
                return None
            return f"{data.get('node_type')}: {error_type}: {message[:300]}"
    return f"no execution error reported: {json.dumps(entry['status'])[:500]}"


def preview(entry: dict) -> str:
    return "".join(entry["outputs"]["out"]["text"])


def test_evaluation_nodes_refuse_or_survive_bad_values_files_and_batches(comfy_server, tmp_path):
    server = comfy_server
    outside = tmp_path / SENTINEL
    outside.mkdir()
    (outside / "x").write_text("the client must never learn about or change this file")
    write_evaluation_assets(server, outside)
    object_info = server.get("/object_info")
    watched = server.base.parent  # pytest's folder for this session: the server's base and every traversal target
    allowed = {server.base / name for name in WRITABLE}
    before = snapshot(watched, allowed)

    started = time.monotonic()
    all_cases = cases(object_info, outside)
    refused, queued, problems = 0, [], []
    for label, prompt, words, need in all_cases:
        status, body = server.request("/prompt", {"prompt": prompt, "client_id": "psa-eval-fuzz"})
        if status == 400:
            refused += 1
            node_ids = list(body.get("node_errors", {})) or [NODE]
            errors = [e for node_id in node_ids for e in errors_of(body, node_id)]
            if not any(names_the_input(e, word) for e in errors for word in words):
                problems.append(f"{label}: refused without naming {words[0]}: {text_of(body)[:400]}")
        elif status == 200:
            if need == AT_VALIDATION:
                problems.append(f"{label}: accepted; it must be refused at validation naming {words[0]}")
            else:
                queued.append((label, body["prompt_id"], words, need))
        else:
            problems.append(f"{label}: HTTP {status}: {text_of(body)[:400]}")
    deadline = time.monotonic() + 300
    for label, prompt_id, words, need in queued:
        failure = problem_of(outcome(server, prompt_id, deadline), words, need)
        if failure:
            problems.append(f"{label}: ran into {failure}")
    print(f"\nevaluation fuzz: {len(all_cases)} prompts in {time.monotonic() - started:.1f} s: {refused} refused at "
          f"validation, {len(queued)} ran")

    unverified = server.run_prompt(safety_prompt(object_info, {}, q16=True), timeout=120)
    assert preview(unverified).startswith("PSA Safety Check: 0 of 2 images clean, 2 not verified; profile bans: "), \
        preview(unverified)  # level_3's bans besides Sexuality: nothing but a judge can clear them
    checked = safety_prompt(object_info, {"judge": ["judge", 0]}, q16=True)
    checked["judge"] = {"class_type": "TestScriptedJudge", "inputs": {"found": ""}}
    clean = server.run_prompt(checked, timeout=120)
    assert preview(clean).startswith("PSA Safety Check: 2 of 2 images clean; profile bans: "), preview(clean)
    judged = server.run_prompt(judge_prompt(object_info, {}), timeout=120)
    assert preview(judged).startswith("PSA Judge Image (blind prompt): 0 of 2 images PASS, 2 without a verdict")
    changed = sorted(path for path, stat in snapshot(watched, allowed).items()
                     if before.get(path) != stat and Path(path).name != "server.log")
    assert not problems, f"{len(problems)} of {len(all_cases)} prompts misbehaved:\n" + "\n".join(problems[:60])
    assert not changed, f"written outside ComfyUI's output, temp and user folders: {changed[:20]}"
    assert sorted(os.listdir(outside)) == ["x"], "the pickle's payload ran, or a traversal wrote into the sentinel"
    assert len(all_cases) >= 150, len(all_cases)
