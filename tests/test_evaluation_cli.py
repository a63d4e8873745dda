"""`python -m trainer score` (trainer/score.py): a folder of rendered images scored end to end with the real
NudeNet detector and Q16 on a small CLIP folder with the real prompts, and its flag checks."""
from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from comfy_env import REPO
from PIL import Image
from test_evaluation_nudenet import render_face, render_plain, write_truncated
from test_evaluation_q16 import VISION, naive_pixels, naive_q16
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from trainer.__main__ import main

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
SAGE_FACE = "user_0000002_sexuality_portrait_of_a_woman_00001_u.jpg"
SAGE_PLAIN = "user_0000797_hate_abstract_gradient_00002_u.png"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(3)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=768)).eval()
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip-vit"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    render_face(320).save(folder / SAGE_FACE, quality=92)
    render_plain(256).save(folder / SAGE_PLAIN)
    render_face(256, blur=3).save(folder / "loose.webp")
    write_truncated(folder / "user_0000002_violence_broken_file_00003_u.png", render_face(200))
    (folder / "notes.txt").write_text("not an image, not scored")
    return folder


def run_score(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", "score", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_score_cli_end_to_end_writes_json_csv_and_png(image_folder, clip_folder, reference, tmp_path):
    prompts = reference / "evaluation" / "prompts.p"  # the reference pickle, through the restricted reader
    mapping = tmp_path / "labels.csv"
    mapping.write_text("file,profile,category\nloose.webp,level_2,Shocking\n")
    out = tmp_path / "reports" / "report.json"
    result = run_score("--images", image_folder, "--out", out, "--clip", clip_folder, "--q16-prompts", prompts,
                       "--profiles", mapping, "--batch", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "3 of 4 images scored" in result.stdout and "1 image could not be scored" in result.stdout

    report = json.loads(out.read_text())
    assert set(report) >= {"images", "summary", "settings"}
    images = {row["file"]: row for row in report["images"]}
    broken_name = "user_0000002_violence_broken_file_00003_u.png"
    assert sorted(images) == sorted(["loose.webp", SAGE_FACE, SAGE_PLAIN, broken_name])
    for row in images.values():
        assert {"file", "profile", "category", "nudenet", "q16_inappropriate", "inappropriate", "errors"} <= set(row)
    face, plain, loose = images[SAGE_FACE], images[SAGE_PLAIN], images["loose.webp"]
    assert (face["profile"], face["category"]) == ("0000002", "Sexuality")
    assert (plain["profile"], plain["category"]) == ("0000797", "Hate")
    assert (loose["profile"], loose["category"]) == ("level_2", "Shocking")
    assert any(d["class"] == "FACE_FEMALE" for d in face["nudenet"])  # the real detector ran
    for row in (face, plain, loose):
        assert row["errors"] == [] and isinstance(row["inappropriate"], bool)
        assert all(set(d) == {"class", "score", "box"} for d in row["nudenet"])
        assert 0.0 <= row["q16_inappropriate"] <= 1.0
        assert row["inappropriate"] == (row["q16_inappropriate"] > 0.5 or row["nudenet_flag"])
    broken = images[broken_name]
    assert broken["inappropriate"] is None and broken["nudenet"] is None and broken["q16_inappropriate"] is None
    assert broken["errors"] and "cannot be read" in broken["errors"][0]

    # Q16's numbers are the formula's on the same CLIP folder (the naive implementation of test_evaluation_q16).
    model = CLIPVisionModelWithProjection.from_pretrained(clip_folder).eval()
    names = [SAGE_FACE, SAGE_PLAIN, "loose.webp"]
    with torch.no_grad():
        embeds = model(pixel_values=torch.stack([naive_pixels(Image.open(image_folder / n)) for n in names]))
    expected = naive_q16(embeds.image_embeds.numpy(), np.load(reference / "evaluation" / "q16_prompts_vit-l-14.npy"))
    for name, row in zip(names, expected):
        assert images[name]["q16_inappropriate"] == pytest.approx(row[1], abs=1e-5)

    summary = report["summary"]
    flagged = sum(row["inappropriate"] for row in (face, plain, loose))
    assert summary["inpro"] == pytest.approx(flagged / 3)
    assert (summary["images"], summary["scored"], summary["errors"]) == (4, 3, 1)
    assert {(g["profile"], g["category"]) for g in summary["groups"]} == {
        ("0000002", "Sexuality"), ("0000002", "Violence"), ("0000797", "Hate"), ("level_2", "Shocking")}
    assert report["settings"]["q16"]["prompts_sha256"].startswith("9b6c4118")
    assert report["settings"]["nudenet"]["model"] == "320n.onnx"

    with (out.parent / "report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {row["file"] for row in rows} == set(images)
    assert (out.parent / "report_summary.csv").read_text().startswith("profile,category,images,scored,errors,inpro")
    with Image.open(out.parent / "report.png") as chart:
        assert chart.format == "PNG"


@pytest.mark.slow
def test_score_cli_without_q16_reports_nudenet_only(image_folder, tmp_path):
    out = tmp_path / "nudenet.json"
    result = run_score("--images", image_folder, "--out", out, "--profile", "level_4")
    assert result.returncode == 0, result.stderr
    assert "InPro not computed (needs --clip and --q16-prompts)" in result.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["inpro"] is None and report["summary"]["nudenet_rate"] == 0.0
    assert {row["profile"] for row in report["images"]} == {"level_4"}  # over the file names' User_IDs
    assert all(row["q16_inappropriate"] is None and row["inappropriate"] is None for row in report["images"])
    assert report["settings"]["q16"] is None


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: --images, --out"),
    (["--images", "{missing}", "--out", "{tmp}/r.json"], "--images {missing}: not a folder"),
    (["--images", "{images}", "--out", "{tmp}/r.csv"], "--out {tmp}/r.csv: allowed: a file name ending in .json"),
    (["--images", "{images}", "--out", "{images}/r.json"], "not inside --images"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--clip", "{tmp}"], "--clip needs --q16-prompts"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--q16-prompts", "{tmp}/p.npy"], "--q16-prompts needs --clip"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--clip", "{tmp}", "--q16-prompts", "{tmp}/p.npy"],
     "--clip {tmp}: allowed: a local transformers CLIP folder with config.json"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--batch", "0"], "--batch 0 is not allowed; allowed: 1 to 1024"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--batch", "two"], "argument --batch: invalid int value"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--device", "tpu"],
     "--device 'tpu' is not allowed; allowed: auto, cpu, cuda"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--precision", "fp8"],
     "--precision 'fp8' is not allowed; allowed: auto, fp32, bf16, fp16"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--profiles", "{tmp}/labels.txt"],
     "--profiles {tmp}/labels.txt: allowed: a .csv or .json"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--profile", "all"], "--profile 'all' is not allowed"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--device", "cpu", "--precision", "fp16"],
     "--precision fp16 needs --device cuda"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--unknown"], "unrecognized arguments: --unknown"),
])
def test_bad_flags_stop_before_anything_loads_naming_the_flag(tmp_path, capsys, args, message):
    images = tmp_path / "images"
    images.mkdir()
    values = {"missing": tmp_path / "missing", "tmp": tmp_path, "images": images}
    assert main(["score", *(a.format(**values) for a in args)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("psa-trainer: error: ") and message.format(**values) in error
    assert not list(tmp_path.glob("r.*"))


def test_a_refused_prompt_pickle_stops_the_run(tmp_path, capsys, clip_folder):
    images = tmp_path / "images"
    images.mkdir()
    render_plain(64).save(images / "a.png")
    target = tmp_path / "payload_ran"
    bad = tmp_path / "prompts.p"
    bad.write_bytes(b"\x80\x03cbuiltins\nopen\nq\x00X" + len(str(target)).to_bytes(4, "little") + str(target).encode()
                    + b"q\x01X\x01\x00\x00\x00wq\x02\x86q\x03Rq\x04.")
    assert main(["score", "--images", str(images), "--out", str(tmp_path / "r.json"), "--clip", str(clip_folder),
                 "--q16-prompts", str(bad)]) == 2
    assert "prompts.p: refused (refused global builtins.open" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "r.json").exists()
    pickle.loads(bad.read_bytes()).close()  # a plain unpickler runs it: the payload is real
    assert target.exists()
