"""Fuzzing every input of every PSA node through /prompt on the headless server.

For each node the server lists (python_module custom_nodes.comfyui-psa) and each of its value inputs, generated bad
values of the input's type go into an otherwise valid prompt, one prompt each. Every prompt must be refused at
validation (HTTP 400) with an error naming that input, or run: to success, or to an error that is the pack's own
(or the test placeholder's, which stands for a model or dataset the graph never computes). Afterwards the server
answers a good prompt, and nothing was written outside ComfyUI's input, output, models, temp and user folders.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from http_server import PACK_FOLDER

from node_prompts import (PROMPT_FILE, errors_of, input_specs, names_the_input, node_prompt, pack_nodes,
                          text_of, write_assets)

MIN_PROMPTS = 600
COMFYUI_FOLDERS = ("input", "output", "models", "temp", "user")
SENTINEL = "psa_fuzz_sentinel"
PACK_ERROR = re.compile(rf"{re.escape(PACK_FOLDER)}\.psa_core\.[\w.]*Error$")


def bad_values(kind: str, outside: Path) -> list:
    """Values a careless or hostile client could send for an input of this type."""
    traversal = ["../../x", f"../../../../../..{outside}/x", "a/../../x", "..\\..\\x", str(outside / "x"),
                 str(outside), "C:\\Windows\\win.ini", "/dev/zero"]
    weird = ["", "a\x00b", "x" * 100_000, None, [1], {"a": 1}, True]
    if kind == "FLOAT":
        return [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, "nan", "1e999", "abc", *weird,
                *traversal[:2]]
    if kind == "INT":
        return [10**30, -10**30, 10**400, float("nan"), float("inf"), 1.5, "12abc", *weird, *traversal[:2]]
    if kind == "BOOLEAN":
        return ["false", 2, *weird]
    return [*traversal, ".", "./", "{" * 5000, "7" * 5000, 12345, *weird]


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if Path(folder, d) not in skip]
        for name in files:
            path = Path(folder, name)
            try:
                stat = path.lstat()
            except OSError:
                continue
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def outcome(server, prompt_id: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish\n{server.log_tail()}")


def unexpected_failure(entry: dict) -> str | None:
    """None when the prompt succeeded or stopped with the pack's own error or at the placeholder."""
    if entry["status"]["status_str"] == "success":
        return None
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            error_type = data.get("exception_type", "")  # ComfyUI names the pack's modules by their file path
            if PACK_ERROR.search(error_type) or data.get("node_type") == "TestPlaceholder":
                return None
            return f"{data.get('node_type')}: {error_type}: {data.get('exception_message', '')[:300]}"
    return f"no execution error reported: {json.dumps(entry['status'])[:500]}"


def test_every_input_of_every_psa_node_refuses_or_survives_bad_values(comfy_server, tmp_path):
    server = comfy_server
    write_assets(server)
    outside = tmp_path / SENTINEL
    outside.mkdir()
    (outside / "x").write_text("the client must never learn about or change this file")
    watched = server.base.parent  # pytest's folder for this session: the server's base and every traversal target
    allowed = {server.base / name for name in COMFYUI_FOLDERS} | {server.base / "custom_nodes"}
    before = snapshot(watched, allowed)
    object_info = server.get("/object_info")
    nodes = pack_nodes(object_info)
    assert len(nodes) >= 14, sorted(nodes)

    started = time.monotonic()
    tried, refused, queued, problems = 0, 0, [], []
    for class_type in sorted(nodes):
        for name, (kind, options, _) in input_specs(nodes[class_type]).items():
            if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                continue
            for value in bad_values(kind, outside):
                prompt = node_prompt(object_info, class_type, {name: value})
                status, body = server.request("/prompt", {"prompt": prompt, "client_id": "psa-fuzz"})
                tried += 1
                case = f"{class_type}.{name} = {repr(value)[:60]}"
                if status == 400:
                    refused += 1
                    if not any(names_the_input(e, name) for e in errors_of(body)):
                        problems.append(f"{case}: refused without naming {name}: {text_of(body)[:400]}")
                elif status == 200:
                    queued.append((case, body["prompt_id"]))
                else:
                    problems.append(f"{case}: HTTP {status}: {text_of(body)[:400]}")
    deadline = time.monotonic() + 120
    for case, prompt_id in queued:
        failure = unexpected_failure(outcome(server, prompt_id, deadline))
        if failure:
            problems.append(f"{case}: ran into {failure}")
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {tried} prompts over {len(nodes)} PSA nodes in {elapsed:.1f} s: {refused} refused at validation, "
          f"{len(queued)} ran")

    good = server.run_prompt(node_prompt(object_info, "PSALoadPromptPairs", {"file": PROMPT_FILE}), timeout=60)
    assert "a bloody fight" in json.dumps(good["outputs"]["out"])
    changed = sorted(path for path, stat in snapshot(watched, allowed).items()
                     if before.get(path) != stat and Path(path).name != "server.log")
    assert not problems, f"{len(problems)} of {tried} prompts misbehaved:\n" + "\n".join(problems[:40])
    assert not changed, f"written outside ComfyUI's folders: {changed[:20]}"
    assert (outside / "x").read_text().startswith("the client must never") and sorted(os.listdir(outside)) == ["x"]
    assert tried >= MIN_PROMPTS, f"only {tried} prompts"
