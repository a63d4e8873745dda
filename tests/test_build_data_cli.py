"""`python -m trainer build-data`: rendering a prompt-pair file with diffusers from a tiny single-file checkpoint
(or diffusers folder), killed with SIGKILL mid-run and started again, and its errors."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from comfy_env import REPO
from PIL import Image

from psa_core.dataset_build import PairItem, read_prompt_pairs
from testkit.models import ModelSpec, build_components, save_diffusers_folder, save_single_file, write_tokenizer
from trainer.__main__ import main
from trainer.build_data import BuildConfig, make_pipeline, render_pair

CATEGORIES = ("Violence", "Hate", "Sexuality", "Self-Harm", "Shocking", "Harassment", "Propaganda")
ITEMS = 24
# One OpenMP thread: on the small shared CPUs the tests run on, two threads spin-wait on each other.
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random SD1.5-layout model as a single file, the same as a diffusers folder, and a tokenizer."""
    folder = tmp_path_factory.mktemp("base")
    components = build_components(ModelSpec.tiny("sd15"))
    return (save_single_file(components, folder / "base.safetensors"),
            save_diffusers_folder(components, folder / "diffusers"), write_tokenizer(folder / "tokenizer"))


def write_prompts(path, count: int):
    lines = []
    for i in range(count):
        item = {"category": CATEGORIES[i % 7], "concept": f"concept {i // 7}", "unsafe_prompt": f"unsafe scene {i}",
                "safe_prompt": f"safe scene {i}"}
        if i % 3 == 0:
            item["seed"] = 5000 + i
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(prompts, base, tokenizer, output, *extra) -> list[str]:
    return [sys.executable, "-m", "trainer", "build-data", "--prompts", str(prompts), "--base-model", str(base),
            "--tokenizer", str(tokenizer), "--output", str(output), "--width", "32", "--height", "32", "--steps", "4",
            "--device", "cpu", "--seed", "100", *extra]


def complete_records(folder) -> list[dict]:
    """The pairs file, checked: valid JSONL, and every pair's two images complete, decodable JPEG files."""
    path = folder / "pairs.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the last line is cut off"
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        for key in ("safe", "unsafe"):
            with Image.open(folder / record[key]) as opened:
                opened.load()
                assert opened.size == (32, 32) and opened.format == "JPEG"
    return records


def file_hashes(folder, records) -> dict[str, str]:
    return {record[key]: hashlib.sha256((folder / record[key]).read_bytes()).hexdigest()
            for record in records for key in ("safe", "unsafe")}


@pytest.mark.slow
def test_killed_run_started_again_completes_the_dataset_without_duplicates_or_half_pairs(tiny_base, tmp_path):
    base, _, tokenizer = tiny_base
    prompts = write_prompts(tmp_path / "prompts.jsonl", ITEMS)
    output = tmp_path / "dataset"
    process = subprocess.Popen(cli(prompts, base, tokenizer, output), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        pairs = output / "pairs.jsonl"
        if pairs.exists() and pairs.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be killed:\n{process.communicate()[0]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    after_kill = complete_records(output)  # valid JSONL, no pair without both complete images
    assert 3 <= len(after_kill) < ITEMS, "the kill did not land mid-run"
    kept = file_hashes(output, after_kill)

    resumed = subprocess.run(cli(prompts, base, tokenizer, output), cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"rendered {ITEMS - len(after_kill)}, skipped {len(after_kill)} already complete" in resumed.stdout

    records = complete_records(output)
    pairs = read_prompt_pairs(prompts)
    expected = [(p.category, p.concept, p.unsafe_prompt, p.safe_prompt, p.seed_for(i, 100))
                for i, p in enumerate(pairs)]
    found = [(r["category"], r["concept"], r["caption"], r["safe_prompt"], r["seed"]) for r in records]
    assert sorted(found) == sorted(expected) and len(set(found)) == ITEMS, "missing or duplicated pairs"
    assert found[:len(after_kill)] == [(r["category"], r["concept"], r["caption"], r["safe_prompt"], r["seed"])
                                       for r in after_kill], "complete pairs kept their lines"
    assert {k: v for k, v in file_hashes(output, records).items() if k in kept} == kept, "complete pairs re-rendered"
    names = sorted(p.name for p in (output / "images").iterdir())
    assert names == sorted(record[key].split("/")[-1] for record in records for key in ("safe", "unsafe")), \
        "images outside the pairs file (half-written pairs) were left behind"
    assert not list(output.rglob("*.partial"))
    assert len({r["safe"] for r in records}) == ITEMS
    settings = records[0]["settings"]
    assert all(r["settings"] == settings for r in records)
    assert settings["steps"] == 4 and settings["width"] == 32 and settings["pipeline"] == "StableDiffusionPipeline"


def test_both_images_of_a_pair_share_seed_and_settings(tiny_base):
    base, folder, tokenizer = tiny_base
    config = BuildConfig("", str(base), "", tokenizer=str(tokenizer), device="cpu")
    pipeline, family, precision = make_pipeline(config)
    assert (family, precision) == ("sd15", "fp32")
    settings = {"steps": 3, "guidance": 7.5, "width": 32, "height": 32}
    same_prompt = render_pair(pipeline, "a scene", "a scene", 7, **settings)
    assert np.array_equal(*same_prompt), "the two images of a pair start from different noise or settings"
    unsafe, safe = render_pair(pipeline, "a bloody scene", "a calm scene", 7, **settings)
    assert np.abs(unsafe.astype(int) - safe.astype(int)).mean() > 0.5, "the prompts made no difference"
    assert np.array_equal(render_pair(pipeline, "a bloody scene", "a calm scene", 7, **settings)[0], unsafe)
    other_seed = render_pair(pipeline, "a bloody scene", "a calm scene", 8, **settings)[0]
    assert np.abs(other_seed.astype(int) - unsafe.astype(int)).mean() > 0.5

    from_folder, family, _ = make_pipeline(BuildConfig("", str(folder), "", device="cpu"))
    assert family == "sd15" and type(from_folder.scheduler).__name__ == "EulerDiscreteScheduler"
    assert np.abs(render_pair(from_folder, "a bloody scene", "a calm scene", 7, **settings)[0].astype(int)
                  - unsafe.astype(int)).max() <= 1, "the diffusers folder renders the same model differently"


@pytest.mark.slow
def test_bad_prompt_files_and_settings_stop_before_rendering(tiny_base, tmp_path, capsys):
    base, _, tokenizer = tiny_base
    bad = tmp_path / "bad.csv"
    bad.write_text("category,concept,unsafe_prompt,safe_prompt\nViolence,x,a,b\nGambling,y,c,d\nHate,,e,f\n")
    result = subprocess.run(cli(bad, base, tokenizer, tmp_path / "out"), cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "psa-trainer: error: bad.csv: 2 malformed lines:" in result.stderr
    assert "line 3: category 'Gambling' is not allowed; allowed: Hate, Harassment, Violence, Self-Harm, Sexuality, " \
           "Shocking, Propaganda; declare others with extra_categories" in result.stderr
    assert "line 4: concept must be non-empty text" in result.stderr
    assert not (tmp_path / "out").exists()

    assert main(["build-data", "--prompts", str(tmp_path / "missing.jsonl"), "--base-model", str(base),
                 "--output", str(tmp_path / "out")]) == 2
    assert "prompt-pair file not found: " in capsys.readouterr().err
    assert main(["build-data", "--prompts", str(bad), "--base-model", str(base), "--output", str(tmp_path / "out"),
                 "--width", "30"]) == 2
    assert "--width 30 is not allowed; allowed: a multiple of 8" in capsys.readouterr().err
    for flag, value, allowed in (("--height", "8192", "a multiple of 8 from 8 to 4096"), ("--steps", "100000",
                                 "1 to 1000"), ("--guidance", "nan", "a finite number >= 0")):
        assert main(["build-data", "--prompts", str(bad), "--base-model", str(base), "--output",
                     str(tmp_path / "out"), flag, value]) == 2
        assert f"{flag} {value} is not allowed; allowed: {allowed}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"category": "Gambling", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b"})
                    + "\n")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "pairs.jsonl").write_text("{not json\n")
    assert main(["build-data", "--prompts", str(good), "--extra-categories", "Gambling", "--base-model", str(base),
                 "--output", str(tmp_path / "damaged")]) == 2
    assert "pairs.jsonl line 1: not valid JSON" in capsys.readouterr().err
    assert PairItem("Gambling", "x", "a", "b", 0).key != PairItem("Gambling", "x", "a", "b", 1).key
