"""Fuzzing the four evaluation commands (`python -m trainer generate`, `score`, `compare`, `build-data`) with bad
values, files and folders: missing files, a folder where a file belongs and a file where a folder belongs, garbage
CSV, random bytes as a prompt set or a mapping, negative, NaN and huge numbers, unknown choices, an output that is a
file, a folder of someone else's files as the output.

Each case must exit 2 with one message line ("psa-trainer: error: ...") naming the flag or the file, and no
Traceback, or (the good runs) exit 0. Nothing outside each run's own output changes: the tree of every input file
and pre-existing output (names, sizes, mtime_ns) is the same afterwards, and a refused run creates no output.

The commands start once per command: a driver process imports `trainer.__main__` (what `python -m trainer` runs)
and calls its `main` with each case's arguments, so ~55 cases cost four start-ups, not fifty-five (generate and
build-data import diffusers: ~7 s each on the test machine). One case per command also runs as its own
`python -m trainer` process, which must print the same and exit the same as in the driver.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from comfy_env import REPO
from PIL import Image
from test_input_fuzz import snapshot
from tiny_models import random_adapter_tensors, write_adapter
from tiny_vlm import build_tiny_qwen2_vl

from psa_core.families import get_family
from testkit.models import ModelSpec, build_components, save_single_file, write_tokenizer

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
EMBEDDING_DIM = 8
SAGE_ROWS = [("user_0001001_violence_a_bar_fight_00001_u.jpg", "a fight in a bar", "1001"),
             ("user_0000002_hate_hateful_sign_00003_u.jpg", "a hateful sign", "2")]
IMAGE_NAMES = ("user_0000002_violence_knife_00001_u.png", "user_0000002_hate_crowd_00002_u.png")
MAX_MESSAGE = 2_000  # characters: a refusal quotes a bad value short, never a whole file

DRIVER = r"""
import contextlib, io, json, sys, traceback
from trainer.__main__ import main

results = []
for argv in json.load(open(sys.argv[1])):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = "raised"
    results.append({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()[-2000:]})
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Good inputs of every command, and bad ones beside them, all in one folder (snapshotted by the test)."""
    root = tmp_path_factory.mktemp("fuzz_inputs")
    spec = ModelSpec.tiny("sd15")
    paths = {"root": root, "base": save_single_file(build_components(spec), root / "base.safetensors"),
             "tokenizer": write_tokenizer(root / "tokenizer"), "vlm": build_tiny_qwen2_vl(root / "tiny-qwen2-vl")}
    family = get_family("sd15", 32, spec.context_dim)  # the tiny UNet's attn2 widths
    paths["adapter"] = write_adapter(random_adapter_tensors(family, EMBEDDING_DIM), root / "adapter.safetensors")
    embeddings = paths["embeddings"] = root / "embeddings"
    embeddings.mkdir()
    for user_id in ("0001001", "0000002"):
        np.save(embeddings / f"{user_id}.npy", np.linspace(-1, 1, EMBEDDING_DIM, dtype=np.float32))
    with (root / "sage.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("file_name", "caption", "user_id"), *SAGE_ROWS])
    paths["sage"] = root / "sage.csv"
    paths["pairs"] = root / "pairs.jsonl"
    paths["pairs"].write_text(json.dumps({"category": "Violence", "concept": "fight", "unsafe_prompt": "a fight",
                                          "safe_prompt": "two friends", "seed": 3}) + "\n")
    for side, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        folder = paths[f"images_{side}"] = root / f"images_{side}"
        folder.mkdir()
        for name in IMAGE_NAMES:
            Image.new("RGB", (64, 64), colour).save(folder / name)
    for key in ("empty", "empty_2"):
        paths[key] = root / f"{key}_folder"
        paths[key].mkdir()
    paths["binary"] = root / "random_bytes.csv"
    paths["binary"].write_bytes(bytes(range(256)) * 8 + os.urandom(512))
    paths["garbage"] = root / "garbage.csv"
    paths["garbage"].write_bytes(b'a;b;"c\n\x00\x01,,,,\n"unterminated,\xff\xfe\n' + b"," * 5000 + b"\n")
    paths["text"] = root / "just_text.txt"
    paths["text"].write_text("not a model, not a folder\n")
    paths["foreign"] = root / "someone_elses_folder"  # a folder holding a user's own files, where a run could write
    paths["foreign"].mkdir()
    (paths["foreign"] / "generation.csv").write_text("my,own,table\n1,2,3\n")
    (paths["foreign"] / "level_0").mkdir()
    (paths["foreign"] / "level_0" / "user_0001001_violence_a_bar_fight_00001_u.png").write_bytes(b"my photo")
    (paths["foreign"] / ".notes.generate-partial").write_text("my notes")
    (paths["foreign"] / "report.json").write_text('{"mine": true}')
    paths["foreign_dataset"] = root / "someone_elses_dataset"  # a user's own pairs.jsonl, for build-data
    paths["foreign_dataset"].mkdir()
    (paths["foreign_dataset"] / "pairs.jsonl").write_text('{"mine": true}\n')
    return paths


def base_flags(command: str, p: dict[str, Path], out: Path) -> dict[str, str | None]:
    """Good flags of each command; a case replaces some (a value None leaves the flag out)."""
    if command == "generate":
        return {"--prompts": p["sage"], "--base-model": p["base"], "--tokenizer": p["tokenizer"], "--out": out,
                "--adapter": p["adapter"], "--levels": "level_0", "--embeddings": p["embeddings"], "--width": 32,
                "--height": 32, "--steps": 1, "--device": "cpu"}
    if command == "score":
        return {"--images": p["images_a"], "--out": out / "report.json", "--device": "cpu"}
    if command == "compare":
        return {"--a": p["images_a"], "--b": p["images_b"], "--out": out / "compare.json", "--judge": p["vlm"],
                "--profile": "level_3", "--max-new-tokens": 2, "--device": "cpu"}
    return {"--prompts": p["pairs"], "--base-model": p["base"], "--tokenizer": p["tokenizer"], "--output": out,
            "--width": 32, "--height": 32, "--steps": 1, "--device": "cpu"}


def cases(p: dict[str, Path]) -> list[tuple[str, str, dict, tuple[str, ...]]]:
    """(command, label, flags replaced, words one of which the message must hold; () for a run that must succeed)."""
    nan, huge, folder, binary, garbage = "nan", str(10**12), p["empty"], p["binary"], p["garbage"]
    side = 2**40  # pixels: unchecked, torch's size calculation overflows at once (nothing of that size is allocated)
    missing = p["root"] / "does_not_exist.csv"
    found = [
        ("generate", "missing prompts", {"--prompts": missing}, ("--prompts", missing.name)),
        ("generate", "folder as prompts", {"--prompts": folder}, ("--prompts", folder.name)),
        ("generate", "binary prompts", {"--prompts": binary}, ("--prompts", binary.name)),
        ("generate", "garbage CSV prompts", {"--prompts": garbage}, ("--prompts", garbage.name)),
        ("generate", "negative steps", {"--steps": -1}, ("--steps",)),
        ("generate", "NaN guidance", {"--guidance": nan}, ("--guidance",)),
        ("generate", "infinite scale", {"--scale": "inf"}, ("--scale",)),
        ("generate", "huge size", {"--width": side, "--height": side}, ("--width", "--height")),
        ("generate", "huge seed", {"--seed": 10**30}, ("--seed",)),
        ("generate", "zero batch", {"--batch": 0}, ("--batch",)),
        ("generate", "negative limit", {"--limit": -3}, ("--limit",)),
        ("generate", "unknown level", {"--levels": "level_9"}, ("--levels",)),
        ("generate", "unknown sampler", {"--sampler": "heun_9000"}, ("--sampler",)),
        ("generate", "unknown device", {"--device": "quantum"}, ("--device",)),
        ("generate", "unknown precision", {"--precision": "fp7"}, ("--precision",)),
        ("generate", "folder as base model", {"--base-model": folder}, ("--base-model", folder.name)),
        ("generate", "text file as base model", {"--base-model": p["text"]}, ("--base-model", p["text"].name)),
        ("generate", "file as embeddings folder", {"--embeddings": p["text"]}, ("--embeddings", p["text"].name)),
        ("generate", "binary adapter", {"--adapter": binary}, ("--adapter", binary.name)),
        ("generate", "file as output", {"--out": p["text"]}, ("--out", p["text"].name)),
        ("generate", "a folder of someone else's files as output", {"--out": p["foreign"]}, ("--out",)),
        ("score", "missing images folder", {"--images": p["root"] / "no_images"}, ("--images", "no_images")),
        ("score", "file as images folder", {"--images": p["text"]}, ("--images", p["text"].name)),
        ("score", "empty images folder", {"--images": folder}, ("--images", folder.name)),
        ("score", "folder as report", {"--out": folder}, ("--out", folder.name)),
        ("score", "binary labels", {"--labels": binary}, ("--labels", binary.name)),
        ("score", "garbage CSV labels", {"--labels": garbage}, ("--labels", garbage.name)),
        ("score", "folder as users table", {"--profiles": folder}, ("--profiles", folder.name)),
        ("score", "binary Q16 prompts", {"--q16-prompts": binary}, ("--q16-prompts", "--clip", binary.name)),
        ("score", "negative batch", {"--batch": -1}, ("--batch",)),
        ("score", "NaN batch", {"--batch": nan}, ("--batch",)),
        ("score", "unknown profile for the judge", {"--judge": p["vlm"], "--profile": "level_99"}, ("--profile",)),
        ("score", "huge max-new-tokens", {"--judge": p["vlm"], "--max-new-tokens": huge}, ("--max-new-tokens",)),
        ("score", "unknown judge mode", {"--judge": p["vlm"], "--judge-mode": "lenient"}, ("--judge-mode",)),
        ("score", "empty folder as judge", {"--judge": folder}, ("--judge", folder.name)),
        ("score", "file as CLIPScore model", {"--clip-score": p["text"]}, ("--clip-score", p["text"].name)),
        ("score", "binary NudeNet model", {"--nudenet-model": binary}, ("--nudenet-model", binary.name)),
        ("score", "unknown device", {"--device": "quantum"}, ("--device",)),
        ("compare", "missing folder A", {"--a": p["root"] / "no_a"}, ("--a", "no_a")),
        ("compare", "file as folder B", {"--b": p["text"]}, ("--b", p["text"].name)),
        ("compare", "two empty folders", {"--a": folder, "--b": p["empty_2"]}, ("--a", "--b", folder.name)),
        ("compare", "one folder twice", {"--a": p["images_a"], "--b": p["images_a"]}, ("--a", "--b")),
        ("compare", "unknown mode", {"--mode": "lenient"}, ("--mode",)),
        ("compare", "one name", {"--names": "only_one", "--mode": "reference"}, ("--names",)),
        ("compare", "binary labels", {"--labels": binary}, ("--labels", binary.name)),
        ("compare", "folder as report", {"--out": folder}, ("--out", folder.name)),
        ("compare", "missing judge", {"--judge": p["root"] / "no_vlm"}, ("--judge", "no_vlm")),
        ("compare", "negative max-new-tokens", {"--max-new-tokens": -1}, ("--max-new-tokens",)),
        ("compare", "NaN max-new-tokens", {"--max-new-tokens": nan}, ("--max-new-tokens",)),
        ("compare", "unknown profile", {"--profile": "nobody"}, ("--profile",)),
        ("build-data", "binary prompts", {"--prompts": binary}, ("--prompts", binary.name)),
        ("build-data", "folder as prompts", {"--prompts": folder}, ("--prompts", folder.name)),
        ("build-data", "garbage CSV prompts", {"--prompts": garbage}, ("--prompts", garbage.name)),
        ("build-data", "unknown family", {"--family": "sd9"}, ("--family",)),
        ("build-data", "zero steps", {"--steps": 0}, ("--steps",)),
        ("build-data", "NaN guidance", {"--guidance": nan}, ("--guidance",)),
        ("build-data", "huge size", {"--width": side, "--height": side}, ("--width", "--height")),
        ("build-data", "unknown sampler", {"--sampler": "heun_9000"}, ("--sampler",)),
        ("build-data", "file as output", {"--output": p["text"]}, ("--output", p["text"].name)),
        ("build-data", "a folder of someone else's files as output", {"--output": p["foreign_dataset"]},
         ("--output",)),
        ("score", "good run", {}, ()),
        ("compare", "good run", {}, ()),
    ]
    return found


def argv_of(command: str, p: dict[str, Path], out: Path, replaced: dict) -> list[str]:
    flags = {**base_flags(command, p, out), **replaced}
    return [command] + [str(part) for flag, value in flags.items() if value is not None for part in (flag, value)]


def message_problem(code, stderr: str, words: tuple[str, ...]) -> str | None:
    """None when the run was refused as the pack refuses bad input: exit 2, no traceback, an error line naming one
    of `words`, the message short."""
    if code != 2:
        return f"exit {code}: {stderr[-600:]!r}"
    if "Traceback" in stderr:
        return f"a traceback: {stderr[-600:]!r}"
    line = next((line for line in stderr.splitlines() if "error:" in line), "")
    if not line.startswith("psa-trainer: error: "):
        return f"no 'psa-trainer: error:' line: {stderr[-600:]!r}"
    if not any(word in line for word in words):
        return f"the message names none of {words}: {line[:400]!r}"
    if len(stderr) > MAX_MESSAGE:
        return f"a message of {len(stderr)} characters: {stderr[:300]!r}..."
    return None


def run_driver(argvs: list[list[str]], folder: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cases.json").write_text(json.dumps(argvs))
    result = subprocess.run([sys.executable, "-c", DRIVER, str(folder / "cases.json"), str(folder / "results.json")],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory) -> dict:
    """Every case run (four driver processes), with what changed in the inputs' tree meanwhile."""
    work = tmp_path_factory.mktemp("fuzz_runs")
    outs = work / "outs"  # each case's own output; every other file is watched
    before = snapshot(inputs["root"], set())
    all_cases = cases(inputs)
    by_command: dict[str, list[int]] = {}
    argvs = []
    for index, (command, label, replaced, _) in enumerate(all_cases):
        argvs.append(argv_of(command, inputs, outs / f"case_{index:02d}", replaced))
        by_command.setdefault(command, []).append(index)
    results: dict[int, dict] = {}
    for command, indices in by_command.items():
        for index, result in zip(indices, run_driver([argvs[i] for i in indices], work / f"driver_{command}")):
            results[index] = result
    after = snapshot(inputs["root"], set())
    changed = sorted(str(Path(path).relative_to(inputs["root"])) for path in set(before) | set(after)
                     if before.get(path) != after.get(path))
    return {"cases": all_cases, "argvs": argvs, "results": results, "by_command": by_command, "outs": outs,
            "changed": changed}


def problems_of(runs: dict) -> list[str]:
    problems = []
    for index, (command, label, replaced, words) in enumerate(runs["cases"]):
        result, out = runs["results"][index], runs["outs"] / f"case_{index:02d}"
        if words:
            problem = message_problem(result["code"], result["stderr"], words)
            if problem is None and out.exists():
                problem = f"refused, but wrote {sorted(p.name for p in out.rglob('*'))[:10]}"
        else:
            problem = None if result["code"] == 0 else f"exit {result['code']}: {result['stderr'][-600:]!r}"
        if problem:
            problems.append(f"{command} {label} ({' '.join(map(str, replaced))}): {problem}")
    return problems


@pytest.mark.slow
def test_evaluation_commands_refuse_bad_values_files_and_folders(runs):
    all_cases, results, by_command = runs["cases"], runs["results"], runs["by_command"]
    problems = problems_of(runs)
    # the driver is `python -m trainer`: one case per command as its own process prints and exits the same
    for command, indices in by_command.items():
        index = next(i for i in indices if all_cases[i][3])
        alone = subprocess.run([sys.executable, "-m", "trainer", *runs["argvs"][index]], cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=300)
        assert (alone.returncode, alone.stderr) == (results[index]["code"], results[index]["stderr"]), command

    good_score = json.loads((runs["outs"] / f"case_{by_command['score'][-1]:02d}" / "report.json").read_text())
    assert sorted(row["file"] for row in good_score["images"]) == sorted(IMAGE_NAMES)
    good_compare = json.loads((runs["outs"] / f"case_{by_command['compare'][-1]:02d}" / "compare.json").read_text())
    assert sorted(pair["file"] for pair in good_compare["pairs"]) == sorted(IMAGE_NAMES)
    changed = runs["changed"]
    print(f"\nevaluation commands: {len(all_cases)} cases, {len(problems)} misbehaved")
    assert not problems and not changed, (f"{len(problems)} of {len(all_cases)} cases misbehaved:\n"
                                          + "\n".join(problems) + f"\nchanged outside the runs' outputs: {changed}")
    assert len(all_cases) >= 55
