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
from tiny_vlm import build_tiny_qwen2_vl
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from psa_core.profile import EVALUATION_USERS
from trainer.__main__ import main

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
SAGE_FACE = "user_0000002_sexuality_portrait_of_a_woman_00001_u.jpg"
SAGE_PLAIN = "user_0000797_hate_abstract_gradient_00002_u.png"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


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
                       "--labels", mapping, "--batch", "2", "--device", "cpu")
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
    (["--images", "{images}", "--out", "{tmp}/r.json", "--labels", "{tmp}/labels.txt"],
     "--labels {tmp}/labels.txt: allowed: a .csv or .json"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--profiles", "{tmp}/users.json"],
     "--profiles {tmp}/users.json: allowed: an existing users table, a .csv in the users.csv format"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--judge", "{tmp}"],
     "--judge {tmp}: no config.json; expected a local chat vision-language model folder"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--judge-mode", "fair"],
     "--judge-mode 'fair' is not allowed; allowed: blind, reference"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--max-new-tokens", "0"],
     "--max-new-tokens 0 is not allowed; allowed: 1 to 8192"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--profile", "all"], "--profile 'all' is not allowed"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--device", "cpu", "--precision", "fp16"],
     "--precision fp16 needs --device cuda"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--unknown"], "unrecognized arguments: --unknown"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--clip-score", "{tmp}"],
     "--clip-score {tmp}: allowed: a local transformers CLIPModel folder with config.json"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--fid-weights", "{tmp}/w.pth"],
     "--fid-weights needs --fid-reference"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--fid-weights", "{tmp}/w.pth", "--fid-reference", "{tmp}"],
     "--fid-weights {tmp}/w.pth: file not found; allowed: pytorch-fid's pt_inception-2015-12-05-6726825d.pth"),
    (["--images", "{images}", "--out", "{tmp}/r.json", "--fid-reference", "{tmp}/stats.txt"],
     "--fid-reference needs --fid-weights"),
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


def test_a_prompt_pickle_with_crafted_dtype_flags_stops_the_run_with_a_message(tmp_path, capsys, clip_folder):
    # numpy's own pickle of a float32 (2, 3) array with the dtype state's flags (0) set to 0x3f, object flags:
    # a plain unpickler dies with numpy's SystemError; the CLI exits 2 naming the file.
    images = tmp_path / "images"
    images.mkdir()
    render_plain(64).save(images / "a.png")
    plain = pickle.dumps(np.arange(6, dtype=np.float32).reshape(2, 3), protocol=3)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # ..., elsize -1, alignment -1, flags 0)
    assert plain.count(flags) == 1
    bad = tmp_path / "prompts.p"
    bad.write_bytes(plain.replace(flags, flags[:-3] + b"K\x3ft"))
    assert main(["score", "--images", str(images), "--out", str(tmp_path / "r.json"), "--clip", str(clip_folder),
                 "--q16-prompts", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "prompts.p: refused (numpy.dtype('f4') given the state (3, '<', None, None, None, -1, -1, 63)" in error
    assert "Traceback" not in error and not (tmp_path / "r.json").exists()


def write_users_table(path, count: int = 2):
    """A users.csv of `count` rows (User_IDs 0000001..), each the level_3 user's attributes."""
    row = EVALUATION_USERS["level_3"].to_reference_row()
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerows([row] * count)
    return path


def test_score_with_the_judge_records_verdicts_and_counts_no_verdicts(tmp_path, tiny_vlm, capsys):
    images = tmp_path / "images"
    images.mkdir()
    render_plain(96).save(images / SAGE_FACE)                                  # User_ID 0000002: in the table
    render_plain(80).save(images / "user_0000009_hate_x_00001_u.png")         # not in the table
    render_plain(64).save(images / "loose.png")                               # profile from --labels
    render_plain(64).save(images / "nobody.png")                              # unknown: no attributes
    labels = tmp_path / "labels.csv"
    labels.write_text("file,profile\nloose.png,level_5\n")
    out = tmp_path / "report.json"
    assert main(["score", "--images", str(images), "--out", str(out), "--labels", str(labels), "--profiles",
                 str(write_users_table(tmp_path / "users.csv")), "--judge", str(tiny_vlm), "--max-new-tokens", "8",
                 "--device", "cpu"]) == 0
    log = capsys.readouterr().out
    assert "judge (blind): no verdict to rate (0 PASS of 0 verdicts); 2 answers gave no verdict; 2 images not judged" \
        in log
    report = json.loads(out.read_text())
    rows = {row["file"]: row for row in report["images"]}
    for name in (SAGE_FACE, "loose.png"):
        assert rows[name]["judge"]["verdict"] == "NO_VERDICT" and rows[name]["judge"]["raw"]
        assert rows[name]["judge_error"] is None and rows[name]["errors"] == []
    assert "not in the users table" in rows["user_0000009_hate_x_00001_u.png"]["judge_error"]
    assert "has no attributes for the judge" in rows["nobody.png"]["judge_error"]
    assert rows["nobody.png"]["judge"] is None and rows["nobody.png"]["errors"] == []  # NudeNet's result stands
    summary = report["summary"]
    assert (summary["pass_rate"], summary["judged"], summary["no_verdict"], summary["judge_errors"]) == (None, 0, 2, 2)
    assert summary["quality_mean"] is None and summary["nudenet_rate"] == 0.0
    judge = report["settings"]["judge"]
    assert judge["mode"] == "blind" and judge["max_tokens"] == {"image": 8, "pair": 8}  # the flag sets both kinds
    assert (judge["temperature"], judge["json_mode"], judge["decoding"]) == (0.0, False, "greedy")  # blind's defaults
    with (tmp_path / "report.csv").open(newline="") as handle:
        csv_rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert csv_rows["loose.png"]["judge_verdict"] == "NO_VERDICT" and csv_rows["nobody.png"]["judge_verdict"] == ""
    header = (tmp_path / "report_summary.csv").read_text().splitlines()[0]
    assert ",pass_rate,judged,passed,no_verdict,judge_errors,quality_mean,appropriateness_mean," in header


def test_score_with_clip_score_and_fid(tmp_path, capsys, one_thread):
    """CLIPScore from the captions of a --labels mapping and FID against a folder of reference images, each the
    same number as the library computes directly (float64 distance on float32 features: the same code path, so
    equal to rounding of the one summation order, 1e-9 relative)."""
    from test_evaluation_clip_score import TEXT, VISION as CLIP_VISION
    from test_evaluation_fid import calibrated_fid_state
    from transformers import CLIPConfig, CLIPModel

    from psa_core.evaluation import CLIPScorer, FIDFeatureExtractor, compute_statistics, frechet_distance
    from psa_core.evaluation.fid import statistics_from_features
    from testkit.models import write_tokenizer

    torch.manual_seed(0)
    clip = tmp_path / "tiny-clip"
    CLIPModel(CLIPConfig(text_config=TEXT, vision_config=CLIP_VISION, projection_dim=24)).eval().save_pretrained(clip)
    write_tokenizer(clip)
    weights = tmp_path / "pt_inception.pth"
    torch.save(calibrated_fid_state(), weights)
    rng = np.random.default_rng(1)
    images, reference = tmp_path / "images", tmp_path / "reference"
    images.mkdir()
    reference.mkdir()
    names = [f"image_{i}.png" for i in range(4)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / name)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(reference / f"ref_{i}.png")
    captions = ["a red house", "two dogs", "a city at night", None]  # the last image has no caption
    profiles = ["level_0", "level_0", "level_0", "level_3"]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption", "profile"])
        writer.writerows([name, caption or "", profile] for name, caption, profile in zip(names, captions, profiles))
    out = tmp_path / "report" / "r.json"
    assert main(["score", "--images", str(images), "--out", str(out), "--labels", str(labels), "--clip-score",
                 str(clip), "--fid-weights", str(weights), "--fid-reference", str(reference), "--device", "cpu"]) == 0
    logged = capsys.readouterr().out
    assert "CLIPScore" in logged and "over 3 images with a caption" in logged and "FID" in logged
    report = json.loads(out.read_text())
    by_file = {r["file"]: r for r in report["images"]}
    expected = CLIPScorer.from_folder(clip).clip_score([images / n for n in names[:3]], captions[:3])
    assert [by_file[n]["clip_score"] for n in names[:3]] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert by_file[names[3]]["clip_score"] is None
    summary = report["summary"]
    assert summary["clip_scored"] == 3 and summary["clip_score_mean"] == pytest.approx(np.mean(expected), rel=1e-9)
    extractor = FIDFeatureExtractor.from_file(weights)
    features = extractor.features([images / n for n in names])
    reference_stats = compute_statistics(sorted(reference.iterdir()), extractor)
    overall = frechet_distance(*statistics_from_features(features), *reference_stats)
    level_0 = frechet_distance(*statistics_from_features(features[:3]), *reference_stats)
    assert summary["fid"] == pytest.approx(overall, rel=1e-9)
    rows = {row["profile"]: row for row in summary["profiles"]}
    assert rows["level_0"]["fid"] == pytest.approx(level_0, rel=1e-9) and rows["level_3"]["fid"] is None  # 1 image
    assert report["settings"]["fid"]["fid_variant"] == "pytorch-fid" and report["settings"]["clip_score"]
    with Image.open(out.with_suffix(".png")) as chart:
        assert chart.height > 400  # the bars and, below them, the safety-quality trade-off
    with open(out.with_name("r_summary.csv"), newline="") as handle:
        assert {"clip_score_mean", "fid"} <= set(next(csv.reader(handle)))
