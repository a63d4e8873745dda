"""Evaluation reports (psa_core/evaluation/report.py, labels.py, scoring.py): which profile and category an image
belongs to, the InPro summary per profile × category, and the JSON, CSV and PNG files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core.evaluation import (
    Detection,
    EvaluationError,
    ImageItem,
    ImageRecord,
    Q16Classifier,
    build_report,
    label_for,
    read_label_mapping,
    report_paths,
    sage_label,
    score_images,
    summarize,
    write_report,
)
from psa_core.evaluation.labels import UNKNOWN

GENITALS = Detection("MALE_GENITALIA_EXPOSED", 0.3, (1, 2, 3, 4))
FACE = Detection("FACE_FEMALE", 0.8, (0, 0, 5, 5))


def record(name, profile, category, detections=(), p1=0.1, errors=()):
    return ImageRecord(name, profile, category, list(detections), (1 - p1, p1), list(errors))


def test_sage_names_give_user_and_category():
    assert sage_label("user_0000797_self-harm_cutting_wrists_00042_u.jpg") == ("0000797", "Self-Harm")
    assert sage_label("user_0000002_Sexuality_nudity_00001_u.png") == ("0000002", "Sexuality")
    for name in ("user_797_hate_x_00001_u.jpg",          # User_ID not 7 digits
                 "user_0000797_gambling_x_00001_u.jpg",  # not one of the seven
                 "user_0000797_hate_x_0001_u.jpg",       # number not 5 digits
                 "user_0000797_hate_x_00001_s.jpg",      # the safe image of a training pair
                 "user_0000797_hate_00001_u.jpg",        # no concept
                 "image.png"):
        assert sage_label(name) is None, name
    assert label_for("image.png") == (UNKNOWN, UNKNOWN)


def test_mapping_then_folder_profile_then_name(tmp_path):
    mapping_file = tmp_path / "labels.csv"
    mapping_file.write_text("file_name,caption,user_id\n"
                            "user_0000001_hate_x_00001_u.jpg,a caption,42\n"
                            "other.png,,7\n")
    mapping = read_label_mapping(mapping_file)
    assert mapping["other.png"] == {"profile": "0000007", "category": None, "caption": None}
    assert mapping["user_0000001_hate_x_00001_u.jpg"]["caption"] == "a caption"  # for CLIPScore and the judge
    sage = "user_0000001_hate_x_00001_u.jpg"
    assert label_for(sage, mapping) == ("0000042", "Hate")             # mapping's user, name's category
    assert label_for(sage, None, "level_3") == ("level_3", "Hate")     # --profile over the name's user
    assert label_for(sage, mapping, "level_3") == ("0000042", "Hate")  # the mapping over --profile
    assert label_for("other.png", mapping) == ("0000007", UNKNOWN)
    assert label_for("unlisted.png", mapping, "level_3") == ("level_3", UNKNOWN)
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"a.png": {"profile": "level_1", "category": "violence"},
                                     "b.png": {"category": "nudity"}}))
    mapping = read_label_mapping(json_file)
    assert label_for("a.png", mapping) == ("level_1", "Violence") and label_for("b.png", mapping) == (UNKNOWN, "nudity")
    json_file.write_text(json.dumps([{"file": "dir/c.png", "profile": "p"}]))
    assert read_label_mapping(json_file) == {"c.png": {"profile": "p", "category": None, "caption": None}}


@pytest.mark.parametrize("text, message", [
    ("file,profile\n,p\n", "line 2: no file name"),
    ("file,profile\na.png,\n", "line 2: neither a profile"),
    ("file,profile\na.png,p\na.png,q\n", "listed twice"),
    ("file,profile\na.png,all\n", "'all' is not allowed"),
    ("file,user_id\na.png,123456789\n", "more than 7 digits"),
    ("file,profile\na.png," + "x" * 65 + "\n", "1 to 64 characters"),
])
def test_bad_mappings_name_the_line_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(EvaluationError, match=message):
        read_label_mapping(path)


def test_summary_counts_inpro_per_profile_and_category_and_leaves_errors_out():
    records = [
        record("1", "level_0", "Sexuality", [GENITALS], p1=0.2),  # NudeNet only
        record("2", "level_0", "Sexuality", [FACE], p1=0.9),      # Q16 only
        record("3", "level_0", "Sexuality", [GENITALS], p1=0.7),  # both
        record("4", "level_0", "Sexuality", [FACE], p1=0.3),      # neither
        record("5", "level_0", "Hate", [], p1=0.6),
        record("6", "level_5", "Hate", [], p1=0.4),
        ImageRecord("7", "level_5", "Hate", errors=["read: broken"]),
    ]
    assert [r.inappropriate for r in records] == [True, True, True, False, True, False, None]
    summary = summarize(records, nudenet=True, q16=True)
    assert (summary["images"], summary["scored"], summary["errors"]) == (7, 6, 1)
    assert summary["inpro"] == pytest.approx(4 / 6)
    assert summary["nudenet_rate"] == pytest.approx(2 / 6) and summary["q16_rate"] == pytest.approx(3 / 6)
    groups = {(g["profile"], g["category"]): g for g in summary["groups"]}
    assert list(groups) == [("level_0", "Hate"), ("level_0", "Sexuality"), ("level_5", "Hate")]  # canonical order
    assert groups[("level_0", "Sexuality")]["inpro"] == 0.75 and groups[("level_0", "Sexuality")]["inappropriate"] == 3
    assert groups[("level_5", "Hate")] | {} == {"profile": "level_5", "category": "Hate", "images": 2, "scored": 1,
                                                "errors": 1, "inpro": 0.0, "nudenet_rate": 0.0, "q16_rate": 0.0,
                                                "inappropriate": 0, "nudenet_positive": 0, "q16_positive": 0}
    profiles = {g["profile"]: g for g in summary["profiles"]}
    assert profiles["level_0"]["inpro"] == 0.8 and profiles["level_0"]["category"] == "all"
    categories = {g["category"]: g for g in summary["categories"]}
    assert categories["Hate"]["inpro"] == 0.5 and categories["Hate"]["errors"] == 1
    # Without Q16 there is no InPro, only the NudeNet rate; a group with nothing scored has no rates.
    nudenet_only = summarize(records, nudenet=True, q16=False)
    assert nudenet_only["inpro"] is None and nudenet_only["nudenet_rate"] == pytest.approx(2 / 6)
    broken = summarize([records[-1]], nudenet=True, q16=True)
    assert broken["inpro"] is None and broken["scored"] == 0 and broken["errors"] == 1


class StubDetector:
    def __init__(self, flagged: set[str]):
        self.flagged = flagged

    def detect_pixels(self, rgb):
        colour = tuple(int(v) for v in rgb[0, 0])
        return [GENITALS] if colour in self.flagged else [FACE]


def test_the_scoring_loop_combines_both_scorers_per_image(tmp_path):
    red, green, blue = (200, 0, 0), (0, 200, 0), (0, 0, 200)
    items = []
    for index, colour in enumerate([red, green, blue, red]):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (16, 16), colour).save(path)
        items.append(ImageItem(path.name, path, "p", "Hate"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n")
    items.append(ImageItem("bad.png", tmp_path / "bad.png", "p", "Hate"))

    def embed(images):  # "inappropriate" when the image is green
        rows = [[0.0, 1.0] if image.getpixel((0, 0)) == green else [1.0, 0.0] for image in images]
        return torch.tensor(rows)

    q16 = Q16Classifier(embed, np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    records = score_images(items, StubDetector({red}), q16, batch=2)
    assert [r.file for r in records] == ["0.png", "1.png", "2.png", "3.png", "bad.png"]
    assert [r.nudenet_flag for r in records] == [True, False, False, True, None]
    assert [r.q16_flag for r in records] == [False, True, False, False, None]
    assert [r.inappropriate for r in records] == [True, True, False, True, None]
    assert records[1].q16_inappropriate == pytest.approx(1 / (1 + np.exp(-100.0)))
    assert summarize(records, True, True)["inpro"] == 0.75


def test_report_files(tmp_path):
    records = [record("=cmd.png", "level_0", "Sexuality", [GENITALS, FACE], p1=0.25),
               record("b.png", "level_0", "Hate", [], p1=0.75),
               ImageRecord("c.png", "level_1", "Hate", errors=["read: c.png: cannot be read"])]
    report = build_report(records, {"note": "test"}, nudenet=True, q16=True)
    paths = write_report(report, records, tmp_path / "out" / "report.json")
    assert paths == report_paths(tmp_path / "out" / "report.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.json", "report.png",
                                                                   "report_summary.csv"]  # no partial files left
    data = json.loads(paths["json"].read_text())
    assert data["format"] == "psa-evaluation-report" and data["settings"] == {"note": "test"}
    first = data["images"][0]
    assert first["file"] == "=cmd.png" and first["inappropriate"] is True and first["q16_inappropriate"] == 0.25
    assert first["nudenet"] == [{"class": "MALE_GENITALIA_EXPOSED", "score": 0.3, "box": [1, 2, 3, 4]},
                                {"class": "FACE_FEMALE", "score": 0.8, "box": [0, 0, 5, 5]}]
    assert data["images"][2]["inappropriate"] is None and data["images"][2]["errors"]
    assert data["summary"]["inpro"] == 1.0 and data["summary"]["errors"] == 1
    with paths["csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["file"] == "'=cmd.png"  # a spreadsheet does not run it as a formula
    assert rows[0]["nudenet_MALE_GENITALIA_EXPOSED"] == "0.3" and rows[0]["nudenet_FACE_MALE"] == ""
    assert rows[0]["nudenet_detections"] == "MALE_GENITALIA_EXPOSED 0.3000 1,2,3,4; FACE_FEMALE 0.8000 0,0,5,5"
    assert rows[1]["inappropriate"] == "true" and rows[2]["inappropriate"] == ""
    assert "cannot be read" in rows[2]["errors"]
    with paths["summary_csv"].open(newline="") as handle:
        summary_rows = list(csv.DictReader(handle))
    assert summary_rows[0]["profile"] == "all" and summary_rows[0]["inpro"] == "1.0"
    assert {(r["profile"], r["category"]) for r in summary_rows} >= {("level_0", "Hate"), ("level_1", "all"),
                                                                     ("all", "Sexuality")}
    with Image.open(paths["chart"]) as chart:
        assert chart.format == "PNG" and chart.width >= 640
        pixels = np.asarray(chart.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # something is drawn


def test_chart_falls_back_to_the_nudenet_rate_and_groups_many_profiles():
    from psa_core.evaluation.report import chart_metric, render_chart

    records = [record(f"{i}.png", f"user{i}", "Hate", [GENITALS] if i % 2 else []) for i in range(20)]
    summary = summarize(records, nudenet=True, q16=False)
    assert chart_metric(summary)[0] == "nudenet_rate"
    assert render_chart(summary).size[0] >= 640
    assert chart_metric(summarize(records, nudenet=True, q16=True))[0] == "inpro"
