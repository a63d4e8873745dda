"""`python -m trainer generate` (trainer/generate.py): a Sage-format prompt set rendered for two level users with a
tiny SD1.5 single-file model and a tiny random adapter; killed with SIGKILL after its first image and started again;
the adapter's effect against the no-adapter run; refused settings changes and bad inputs; two processes (gloo)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from comfy_env import REPO
from PIL import Image
from tiny_models import random_adapter_tensors, write_adapter
from tiny_vlm import build_tiny_qwen2_vl

from psa_core.evaluation.generation import (
    JPEG_COMMENT_PREFIX,
    PNG_TEXT_KEY,
    read_generation_manifest,
)
from psa_core.families import get_family
from testkit.models import (
    ModelSpec,
    build_components,
    save_single_file,
    write_tokenizer,
)
from trainer.__main__ import main
from trainer.generate import REFERENCE_NEGATIVE

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
EMBEDDING_DIM = 8
LEVELS = {"level_0": "0001001", "level_3": "0000002"}
ROWS = [("user_0001001_violence_a_bar_fight_00001_u.jpg", "a fight in a bar", "1001"),
        ("user_0000002_sexuality_nude_painting_00002_u.jpg", "a nude painting, oil", "2"),
        ("user_0000002_hate_hateful_sign_00003_u.jpg", "a hateful sign", "2")]
NAMES = [Path(name).stem + ".png" for name, _, _ in ROWS]
EXPECTED = sorted(f"{level}/{name}" for level in LEVELS for name in NAMES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny base model (single file) with tokenizer, a random adapter of its widths, embeddings and a Sage CSV."""
    folder = tmp_path_factory.mktemp("generate")
    base = save_single_file(build_components(ModelSpec.tiny("sd15")), folder / "base.safetensors")
    tokenizer = write_tokenizer(folder / "tokenizer")
    family = get_family("sd15", 32, ModelSpec.tiny("sd15").context_dim)  # the tiny UNet's attn2 widths
    adapter = write_adapter(random_adapter_tensors(family, EMBEDDING_DIM), folder / "adapter.safetensors")
    embeddings = folder / "embeddings"
    embeddings.mkdir()
    generator = np.random.default_rng(0)
    for user_id in LEVELS.values():
        np.save(embeddings / f"{user_id}.npy", generator.standard_normal(EMBEDDING_DIM).astype(np.float32))
    prompts = folder / "sage.csv"
    with prompts.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "caption", "user_id"])
        writer.writerows(ROWS)
    return {"base": base, "tokenizer": tokenizer, "adapter": adapter, "embeddings": embeddings, "prompts": prompts,
            "folder": folder}


@pytest.fixture(scope="module")
def tiny_vlm_folder(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("judge") / "tiny-qwen2-vl")


def args(setup, out, *extra, adapter=True, size=32, steps=2) -> list[str]:
    profile = ["--adapter", str(setup["adapter"]), "--levels", ",".join(LEVELS), "--embeddings",
               str(setup["embeddings"])] if adapter else []
    return ["generate", "--prompts", str(setup["prompts"]), "--base-model", str(setup["base"]), "--tokenizer",
            str(setup["tokenizer"]), "--out", str(out), "--width", str(size), "--height", str(size), "--steps",
            str(steps), "--device", "cpu", *profile, *extra]


def pngs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB")).astype(int)


def manifest_rows(out: Path) -> list[dict]:
    with (out / "generation.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_two_profiles_three_prompts_give_six_images_and_a_manifest_and_the_adapter_changes_them(setup, tmp_path,
                                                                                              capsys):
    out = tmp_path / "psa"
    assert main(args(setup, out)) == 0
    assert "rendered 6, skipped 0" in capsys.readouterr().out
    assert pngs(out) == EXPECTED
    rows = manifest_rows(out)
    assert list(rows[0]) == ["file", "profile", "category", "caption", "seed", "row"]
    assert sorted(r["file"] for r in rows) == EXPECTED and len(rows) == 6
    first = rows[0]
    assert first == {"file": f"level_0/{NAMES[0]}", "profile": "level_0", "category": "Violence",
                     "caption": "a fight in a bar", "seed": "2025", "row": "1"}
    assert {r["category"] for r in rows} == {"Violence", "Sexuality", "Hate"}
    settings = json.loads((out / "generation.json").read_text())
    render = settings["render"]
    assert render["steps"] == 2 and render["guidance_scale"] == 7.5 and render["width"] == 32
    assert render["scheduler"] == "PNDMScheduler" and len(render["adapter_sha256"]) == 64
    assert render["negative_prompt"] == "monochrome, lowres, bad anatomy, worst quality, low quality"
    assert set(settings["profiles"]) == set(LEVELS) and settings["packages"]["diffusers"]
    with Image.open(out / first["file"]) as image:
        assert image.size == (32, 32) and json.loads(image.text[PNG_TEXT_KEY])["caption"] == "a fight in a bar"

    # Same seed for every prompt, so the profiles differ only through the adapter's user values.
    assert np.abs(pixels(out / "level_0" / NAMES[0]) - pixels(out / "level_3" / NAMES[0])).max() > 0
    baseline = tmp_path / "baseline"
    assert main(args(setup, baseline, adapter=False)) == 0
    assert pngs(baseline) == sorted(f"base/{name}" for name in NAMES)
    assert json.loads((baseline / "generation.json").read_text())["render"]["adapter_sha256"] is None
    difference = np.abs(pixels(out / "level_0" / NAMES[0]) - pixels(baseline / "base" / NAMES[0]))
    assert difference.mean() > 1, "the adapter must change the image"

    # A settings change is refused, naming what differs; nothing is touched.
    before = {p: (out / p).stat().st_mtime_ns for p in EXPECTED}
    assert main(args(setup, out, "--steps", "3")) == 2
    error = capsys.readouterr().err
    assert "steps: 2 -> 3" in error and "new --out" in error
    assert main(args(setup, out, "--negative-prompt", "blurry")) == 2
    assert "negative_prompt" in capsys.readouterr().err
    assert {p: (out / p).stat().st_mtime_ns for p in EXPECTED} == before

    # What `score` will read.
    records = read_generation_manifest(out)
    assert [r["file"] for r in records] == [r["file"] for r in rows]
    assert all(r["path"].is_file() and r["path"] == out / r["file"] for r in records)
    assert records[0]["profile"] == "level_0" and records[0]["category"] == "Violence" and records[0]["seed"] == 2025


def test_killed_run_started_again_renders_only_what_is_missing(setup, tmp_path, capsys):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trainer", *args(setup, out, size=64, steps=16)]  # slow enough to be killed
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and pngs(out):
            break
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before it could be killed:\n{process.communicate()[0]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    after_kill = pngs(out)
    assert 1 <= len(after_kill) < 6, "the kill did not land mid-run"
    listed = [r["file"] for r in manifest_rows(out)]
    assert set(listed) <= set(after_kill), "the manifest lists only images that exist"
    for name in after_kill:
        pixels(out / name)  # complete, decodable
    kept = {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in after_kill}

    leftover = out / "level_3" / ".left_behind.png.generate-partial"  # as a kill inside the write leaves it
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"partial")
    foreign = out / "level_3" / ".someone_elses.tmp"
    foreign.write_bytes(b"not ours")

    assert main(args(setup, out, size=64, steps=16)) == 0
    assert f"rendered {6 - len(after_kill)}, skipped {len(after_kill)} already complete" in capsys.readouterr().out
    assert pngs(out) == EXPECTED
    assert {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in after_kill} == kept
    rows = manifest_rows(out)
    assert sorted(r["file"] for r in rows) == EXPECTED and len({r["file"] for r in rows}) == 6
    assert not leftover.exists() and foreign.exists(), "only the command's own temporaries are removed"
    assert not list(out.rglob("*.generate-partial"))


def run_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_exit_2_naming_the_flag(setup, tmp_path, capsys):
    out = tmp_path / "out"
    missing = args(setup, out)
    missing[missing.index("--prompts") + 1] = str(tmp_path / "nope.csv")
    assert "--prompts" in run_error(missing, capsys)
    unknown = args(setup, out)
    unknown[unknown.index("--levels") + 1] = "level_0,level_9"
    error = run_error(unknown, capsys)
    assert "--levels" in error and "level_9" in error and "level_5" in error
    assert "--sampler" in run_error(args(setup, out, "--sampler", "heun"), capsys)
    for flag in ("--width", "--height"):  # no upper bound before: 8192 x 8192 failed in the VAE after loading
        assert f"{flag} 8192 is not allowed; allowed: a multiple of 8 from 8 to 4096" in run_error(
            args(setup, out, flag, "8192"), capsys)
    # An adapter that projects the (ordinary) embeddings to a user token past the bound: refused before any model
    # loads, naming the profile and the magnitude (the token would overflow the LayerNorm and sample NaN).
    tensors = random_adapter_tensors(get_family("sd15", 32, ModelSpec.tiny("sd15").context_dim), EMBEDDING_DIM)
    tensors["user_proj"]["proj.weight"] *= 1e14
    wild = args(setup, out)
    wild[wild.index("--adapter") + 1] = str(write_adapter(tensors, tmp_path / "wild.safetensors"))
    error = run_error(wild, capsys)
    assert "profile level_0" in error and "adapter 'wild.safetensors' projects it to a user token of magnitude" in error
    assert "allowed: at most 1e+12" in error
    assert "--negative-prompt-mode" in run_error(args(setup, out, "--negative-prompt-mode", "mine"), capsys)
    assert "--embeddings" in run_error(args(setup, out, adapter=False) + ["--adapter", str(setup["adapter"]),
                                                                          "--levels", "level_0"], capsys)

    prompts = tmp_path / "more.csv"
    prompts.write_text(setup["prompts"].read_text() + "user_0000005_shocking_gore_00004_u.jpg,gore,5\n")
    per_row = ["generate", "--prompts", str(prompts), "--base-model", str(setup["base"]), "--out", str(out),
               "--adapter", str(setup["adapter"]), "--embeddings", str(setup["embeddings"]), "--per-row-user",
               "--device", "cpu"]
    error = run_error(per_row, capsys)
    assert "--embeddings" in error and "0000005.npy" in error and "--per-row-user" in error
    assert "--per-row-user" in run_error(per_row + ["--levels", "level_0"], capsys)
    assert not out.exists(), "nothing is written before the inputs are checked"


@pytest.mark.slow
def test_two_processes_share_the_plan_and_match_one_process(setup, tmp_path, capsys, one_thread):
    """Bit-equal images: the launched processes run one thread each (OMP_NUM_THREADS=1), and so does the one-process
    run here (`one_thread`), so both make the same float operations in the same order."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "two"
    launched = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "trainer",
                               *args(setup, out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240,
                              check=False)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "process 0 of 2: 3 images" in launched.stdout and "process 1 of 2: 3 images" in launched.stdout
    assert launched.stdout.count("rendered 6, skipped 0") == 1, "only process 0 reports the total"
    assert pngs(out) == EXPECTED and sorted(r["file"] for r in manifest_rows(out)) == EXPECTED
    one = tmp_path / "one"
    assert main(args(setup, one)) == 0
    for name in EXPECTED:
        assert np.array_equal(pixels(out / name), pixels(one / name)), name


def test_pipeline_values_give_the_unconditional_half_the_null_user():
    """set_user_values: a [uncond, cond] guidance batch gets the null user's values in its first half and the
    profile's in its second (docs/adapter.md §3, §4), the same as two calls with the values given per call."""
    import torch

    from psa_core.adapter_file import load_adapter  # noqa: F401 - the loaded form is what generate uses
    from testkit.models import build_unet
    from trainer.hook import DiffusersPSAPredictor

    spec = ModelSpec.tiny("sd15")
    unet = build_unet(spec).eval()
    family = get_family("sd15", 32, spec.context_dim)
    predictor = DiffusersPSAPredictor(unet, family)
    generator = torch.Generator().manual_seed(0)
    user = [torch.randn(1, layer.hidden, generator=generator) for layer in family.layers]
    null = [torch.randn(1, layer.hidden, generator=generator) for layer in family.layers]
    noisy = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, spec.context_dim, generator=generator)
    timestep = torch.tensor([500])
    with torch.no_grad():
        alone = [predictor(noisy, timestep, {"encoder_hidden_states": text[i:i + 1]}, values)
                 for i, values in ((0, null), (1, user))]
        predictor.set_user_values(user, null)
        together = unet(torch.cat([noisy, noisy]), timestep, encoder_hidden_states=text).sample
        predictor.set_user_values(None)
        off = unet(noisy, timestep, encoder_hidden_states=text[1:]).sample
    assert torch.allclose(together[:1], alone[0], atol=1e-5) and torch.allclose(together[1:], alone[1], atol=1e-5)
    assert (alone[1] - off).abs().max() > 1e-3


def test_generate_then_score_and_compare_read_the_output_folders(setup, tmp_path, capsys, tiny_vlm_folder):
    """The evaluation chain on the generated folders: `score` reads generation.csv (profiles, categories and
    captions of the sub-folders' images), `compare` pairs the base run's images with each profile's image of the
    same name; the tiny judge's random answers are counted as no verdict."""
    out, baseline = tmp_path / "psa", tmp_path / "baseline"
    assert main(args(setup, out)) == 0 and main(args(setup, baseline, adapter=False)) == 0
    capsys.readouterr()
    report = tmp_path / "reports" / "psa.json"
    assert main(["score", "--images", str(out), "--out", str(report), "--judge", str(tiny_vlm_folder),
                 "--max-new-tokens", "8"]) == 0
    assert "6 of 6 images scored" in capsys.readouterr().out
    written = json.loads(report.read_text())
    assert sorted(r["file"] for r in written["images"]) == EXPECTED
    assert {(r["profile"], r["category"]) for r in written["images"]} == {
        (level, category) for level in LEVELS for category in ("Violence", "Sexuality", "Hate")}
    assert all(r["judge"]["verdict"] == "NO_VERDICT" and r["judge_error"] is None for r in written["images"])
    assert written["summary"]["no_verdict"] == 6 and written["summary"]["pass_rate"] is None
    for suffix in (".csv", "_summary.csv", ".png"):
        assert (tmp_path / "reports" / f"psa{suffix}").is_file()

    compared = tmp_path / "reports" / "compare.json"
    assert main(["compare", "--a", str(baseline), "--b", str(out), "--judge", str(tiny_vlm_folder), "--out",
                 str(compared), "--max-new-tokens", "8"]) == 0
    pairs = json.loads(compared.read_text())
    assert sorted(p["file"] for p in pairs["pairs"]) == EXPECTED
    assert pairs["missing"] == {"only_in_a": [], "only_in_b": []}
    assert pairs["summary"]["pairs"] == 6 and pairs["summary"]["no_verdict"] == 6


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under `root` (itself included): its bytes (None for a folder) and mtime_ns."""
    paths = [root, *root.rglob("*")]
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in paths}


FOREIGN = {  # a folder of the user's: what is in it, and what the refusal names
    "a foreign manifest": ({"generation.csv": b"file,profile\nmine.png,me\n"}, "generation.csv"),
    "a file at a planned image name": ({f"level_0/{NAMES[0]}": b"my own picture, not a PNG"}, "level_0"),
    "a hidden partial file": ({f"level_3/.{NAMES[1]}.generate-partial": b"my notes"}, "level_3"),
    "a generation.json of someone else": ({"generation.json": b'{"format": "mine", "render": {}, "profiles": {}}'},
                                          "generation.json was not written by `generate`"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_folder_with_foreign_files_is_refused_and_left_as_it_was(setup, tmp_path, capsys, case):
    """Issue 20 item 1: a folder that is neither new, empty nor a run of generate (its generation.json) is the user's;
    the run exits 2 before a model loads, naming --out, and every byte and mtime under it stays as it was."""
    files, named = FOREIGN[case]
    out = tmp_path / "users"
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    before = snapshot(out)
    time.sleep(0.01)  # a write now would show in mtime_ns
    error = run_error(args(setup, out), capsys)
    assert f"--out {out}" in error and named in error and "nothing in it is replaced or deleted" in error, error
    assert snapshot(out) == before


def test_a_foreign_folder_is_refused_by_the_command_line_with_exit_2(setup, tmp_path):
    out = tmp_path / "users"
    out.mkdir()
    (out / "generation.csv").write_text("mine\n")
    before = snapshot(out)
    result = subprocess.run([sys.executable, "-m", "trainer", *args(setup, out)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--out" in result.stderr and "generation.csv" in result.stderr
    assert snapshot(out) == before


def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(setup, tmp_path, capsys):
    """Root passes every mode check, so the unwritable places are a path under a regular file and one under /proc."""
    (tmp_path / "a-file").write_text("the user's")
    error = run_error(args(setup, tmp_path / "a-file" / "out"), capsys)
    assert "--out" in error and "is a file" in error
    assert (tmp_path / "a-file").read_text() == "the user's"
    if sys.platform == "linux":
        error = run_error(args(setup, Path("/proc/psa-generate-test/out")), capsys)
        assert "--out /proc/psa-generate-test/out: cannot write in /proc" in error, error


def test_an_empty_folder_is_used(setup, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(args(setup, out, "--limit", "1")) == 0
    assert pngs(out) == sorted(f"{level}/{NAMES[0]}" for level in LEVELS)


def test_a_foreign_file_at_a_planned_name_in_a_folder_of_its_own_is_refused(setup, tmp_path, capsys):
    """The run's own folder (generation.json of generate, same settings) with the user's file where a later row's
    image goes: refused, nothing changes; the images of the run are kept."""
    out = tmp_path / "own"
    assert main(args(setup, out, "--limit", "1")) == 0
    planned = out / "level_0" / NAMES[1]
    planned.write_bytes(b"the user's file, not an image")
    before = snapshot(out)
    time.sleep(0.01)
    error = run_error(args(setup, out), capsys)
    assert f"level_0/{NAMES[1]} (not an image made by generate)" in error and "new --out" in error, error
    assert snapshot(out) == before


def stored_text(path: Path) -> dict:
    """What generate stored in its image, read as a user would: the PNG text chunk, or the JPEG comment."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            comment = image.info["comment"]
            assert comment.startswith(JPEG_COMMENT_PREFIX)
            return json.loads(comment[len(JPEG_COMMENT_PREFIX):].decode("utf-8"))
        return json.loads(image.text[PNG_TEXT_KEY])


def test_jpeg_output_is_pils_quality_75_with_the_key_and_resumes_refuses_and_scores(setup, tmp_path, capsys,
                                                                                  tiny_vlm_folder):
    """Issue 22 item 6: `--image-format jpeg` writes <profile>/<name>.jpg as PIL saves at quality 75 (the same
    quantization tables as a PIL save at 75, not those of PIL's 95 or 50), carrying generate's text in a comment; a
    rerun skips them (the key read back), another format is a settings change, a foreign .jpg at a planned name is
    refused, and `score` reads the folder through generation.csv."""
    out = tmp_path / "jpeg"
    assert main(args(setup, out, "--limit", "2", "--image-format", "jpeg")) == 0
    assert "rendered 4, skipped 0" in capsys.readouterr().out
    expected = sorted(f"{level}/{Path(name).stem}.jpg" for level in LEVELS for name, _, _ in ROWS[:2])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.parent != out) == expected
    assert sorted(r["file"] for r in manifest_rows(out)) == expected
    render = json.loads((out / "generation.json").read_text())["render"]
    assert render["image_format"] == "jpeg" and render["image_quality"] == 75
    tables = {}
    for quality in (50, 75, 95):
        saved = tmp_path / f"q{quality}.jpg"
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(saved, quality=quality)
        with Image.open(saved) as image:
            tables[quality] = image.quantization
    assert tables[50] != tables[75] != tables[95]
    first = out / "level_0" / f"{Path(ROWS[0][0]).stem}.jpg"
    with Image.open(first) as image:
        assert image.format == "JPEG" and image.size == (32, 32) and image.quantization == tables[75]
    text = stored_text(first)
    assert text["caption"] == ROWS[0][1] and text["profile"] == "level_0" and len(text["key"]) == 64

    assert main(args(setup, out, "--limit", "2", "--image-format", "jpeg")) == 0
    assert "rendered 0, skipped 4" in capsys.readouterr().out
    planned = out / "level_0" / f"{Path(ROWS[2][0]).stem}.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(planned, quality=75)  # a JPEG, but not one of generate
    before = snapshot(out)
    time.sleep(0.01)
    error = run_error(args(setup, out, "--limit", "2"), capsys)
    assert "image_format: 'jpeg' -> 'png'" in error and "new --out" in error, error
    error = run_error(args(setup, out, "--image-format", "jpeg"), capsys)
    assert f"level_0/{planned.name} (not made by generate)" in error, error
    assert snapshot(out) == before
    planned.unlink()

    report = tmp_path / "reports" / "jpeg.json"
    assert main(["score", "--images", str(out), "--out", str(report), "--judge", str(tiny_vlm_folder),
                 "--max-new-tokens", "8"]) == 0
    assert "4 of 4 images scored" in capsys.readouterr().out
    assert sorted(r["file"] for r in json.loads(report.read_text())["images"]) == expected


def test_negative_prompt_mode_reference_gives_psa_images_the_reference_negative_and_base_images_none(setup, tmp_path,
                                                                                                   capsys):
    """Issue 22 item 9: `--negative-prompt-mode reference` run twice, with the adapter and without, as the recipe
    does. Each image's stored text (JPEG comment, PNG text chunk) and generation.json say which negative prompt it
    had: the PSA arm the reference's, the base arm none."""
    psa, base = tmp_path / "psa", tmp_path / "base"
    assert main(args(setup, psa, "--limit", "1", "--negative-prompt-mode", "reference", "--image-format", "jpeg")) == 0
    assert main(args(setup, base, "--limit", "1", "--negative-prompt-mode", "reference", adapter=False)) == 0
    stem = Path(ROWS[0][0]).stem
    for level in LEVELS:
        assert stored_text(psa / level / f"{stem}.jpg")["negative_prompt"] == REFERENCE_NEGATIVE
    assert stored_text(base / "base" / f"{stem}.png")["negative_prompt"] == ""
    for run, negative in ((psa, REFERENCE_NEGATIVE), (base, "")):
        render = json.loads((run / "generation.json").read_text())["render"]
        assert render["negative_prompt_mode"] == "reference" and render["negative_prompt"] == negative


@pytest.mark.slow
def test_the_base_arm_of_mode_reference_renders_without_the_negative_prompt(setup, tmp_path, capsys):
    """The stored text is what the sampler got: the base arm of mode reference (no negative prompt) differs from a
    base run of mode same (the reference's negative prompt), whose stored text names that negative prompt."""
    reference, same = tmp_path / "reference", tmp_path / "same"
    assert main(args(setup, reference, "--limit", "1", "--negative-prompt-mode", "reference", adapter=False)) == 0
    assert main(args(setup, same, "--limit", "1", adapter=False)) == 0
    name = f"base/{Path(ROWS[0][0]).stem}.png"
    assert stored_text(reference / name)["negative_prompt"] == ""
    assert stored_text(same / name)["negative_prompt"] == REFERENCE_NEGATIVE
    assert np.abs(pixels(reference / name) - pixels(same / name)).max() > 0
