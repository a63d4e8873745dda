"""`python -m trainer compare` (trainer/compare.py): pairs of images judged by a tiny Qwen2-VL folder (its random
answers are no verdict) and by a recording answer function (wins, ties, losses, both orders), and its flag checks."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from test_evaluation_cli import write_users_table
from test_evaluation_judge import PAIR, build_tiny_qwen2_vl

from psa_core.evaluation import VLMJudge
from trainer import compare as compare_module
from trainer.__main__ import main

RED, BLUE = (220, 20, 20), (20, 20, 220)
SAGE = "user_0000002_violence_knife_00001_u.png"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


def folders(tmp_path):
    a, b = tmp_path / "base", tmp_path / "psa"
    a.mkdir()
    b.mkdir()
    for name in (SAGE, "user_0000001_hate_crowd_00002_u.png", "nobody.png", "only_a.png"):
        Image.new("RGB", (40, 40), RED).save(a / name)
    for name in (SAGE, "user_0000001_hate_crowd_00002_u.png", "nobody.png", "only_b.png"):
        Image.new("RGB", (40, 40), BLUE).save(b / name)
    return a, b


def test_compare_with_a_tiny_qwen2_vl_counts_no_verdicts_and_lists_missing_partners(tmp_path, tiny_vlm, capsys):
    a, b = folders(tmp_path)
    out = tmp_path / "reports" / "compare.json"
    assert main(["compare", "--a", str(a), "--b", str(b), "--judge", str(tiny_vlm), "--out", str(out),
                 "--profiles", str(write_users_table(tmp_path / "users.csv")), "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    assert "0 of 3 pairs with a verdict" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "psa-comparison-report"
    assert report["missing"] == {"only_in_a": ["only_a.png"], "only_in_b": ["only_b.png"]}
    pairs = {pair["file"]: pair for pair in report["pairs"]}
    assert sorted(pairs) == sorted([SAGE, "user_0000001_hate_crowd_00002_u.png", "nobody.png"])
    judged = pairs[SAGE]
    assert judged["better"] == "NO_VERDICT" and judged["mode"] == "blind" and judged["error"] is None
    assert [order["order"] for order in judged["orders"]] == ["AB", "BA"]
    assert all(order["better"] == "NO_VERDICT" and order["raw"] and order["problem"] for order in judged["orders"])
    assert (judged["profile"], judged["category"]) == ("0000002", "Violence")
    assert pairs["nobody.png"]["orders"] == [] and "has no attributes" in pairs["nobody.png"]["error"]
    summary = report["summary"]
    assert (summary["pairs"], summary["judged"], summary["no_verdict"], summary["errors"]) == (3, 0, 2, 1)
    assert summary["win_rate"] is None
    with (tmp_path / "reports" / "compare.csv").open(newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows[SAGE]["result"] == "no verdict" and rows[SAGE]["order_ba"] == "NO_VERDICT"
    assert (tmp_path / "reports" / "compare_summary.csv").read_text().startswith(
        "profile,category,pairs,judged,wins,ties,losses,win_rate")


@pytest.mark.parametrize("mode, calls, better", [("blind", 6, "B"), ("reference", 3, "B")])
def test_compare_counts_wins_over_both_orders(tmp_path, monkeypatch, mode, calls, better):
    a, b = folders(tmp_path)
    seen = []

    def answer(prompt, images):  # prefers the blue image (folder B) wherever it is shown
        seen.append((prompt, [image.getpixel((0, 0)) for image in images]))
        return json.dumps({**PAIR, "better_content_control": "A" if images[0].getpixel((0, 0)) == BLUE else "B"})

    monkeypatch.setattr(compare_module, "make_judge", lambda config, log: VLMJudge(answer))
    (tmp_path / "judge").mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        (tmp_path / "judge" / name).write_text("{}")
    out = tmp_path / "r.json"
    config = compare_module.parse_compare_args(
        ["--a", str(a), "--b", str(b), "--judge", str(tmp_path / "judge"), "--out", str(out), "--mode", mode,
         "--names", "SD1.5,PSA", "--profile", "level_3"])
    result = compare_module.compare(config, log=lambda text: None, progress=False)
    assert len(seen) == calls
    if mode == "blind":
        assert [pixels for _, pixels in seen[:2]] == [[RED, BLUE], [BLUE, RED]]
        assert all("SD1.5" not in prompt for prompt, _ in seen)
    else:
        assert all(pixels == [RED, BLUE] and "Image A is from SD1.5 and Image B is from PSA" in prompt
                   for prompt, pixels in seen)
    summary = result["summary"]
    assert (summary["pairs"], summary["judged"], summary["wins"], summary["win_rate"]) == (3, 3, 3, 1.0)
    report = json.loads(out.read_text())
    assert {pair["better"] for pair in report["pairs"]} == {better}
    assert {pair["profile"] for pair in report["pairs"]} == {"level_3"}
    assert {(g["profile"], g["category"]) for g in summary["groups"]} == {
        ("level_3", "Violence"), ("level_3", "Hate"), ("level_3", "unknown")}


def test_orders_that_disagree_are_ties(tmp_path, monkeypatch):
    a, b = folders(tmp_path)
    monkeypatch.setattr(compare_module, "make_judge", lambda config, log: VLMJudge(
        lambda prompt, images: json.dumps({**PAIR, "better_content_control": "A"})))  # always the first shown
    (tmp_path / "judge").mkdir()
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        (tmp_path / "judge" / name).write_text("{}")
    config = compare_module.parse_compare_args(["--a", str(a), "--b", str(b), "--judge", str(tmp_path / "judge"),
                                                "--out", str(tmp_path / "r.json"), "--profile", "level_1"])
    summary = compare_module.compare(config, log=lambda text: None, progress=False)["summary"]
    assert (summary["ties"], summary["tie_rate"], summary["order_disagreements"]) == (3, 1.0, 3)


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: --a, --b, --out"),
    (["--a", "{a}", "--b", "{b}", "--out", "{tmp}/r.json"], "compare needs a judge: --judge DIR"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--judge-url", "http://127.0.0.1:1/v1", "--out", "{tmp}/r.json"],
     "--judge and --judge-url are alternatives"),
    (["--a", "{a}", "--b", "{b}", "--judge-url", "http://127.0.0.1:1/v1", "--out", "{tmp}/r.json"],
     "--judge-url needs --judge-model"),
    (["--a", "{a}", "--b", "{b}", "--judge-url", "file:///etc/passwd", "--judge-model", "m", "--out", "{tmp}/r.json"],
     "judge URL 'file:///etc/passwd' is not allowed; allowed: http:// or https://"),
    (["--a", "{tmp}/missing", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json"], ("--a {tmp}/missing: not a "
                                                                                       "folder")),
    (["--a", "{a}", "--b", "{a}", "--judge", "{tmp}", "--out", "{tmp}/r.json"], "are the same folder"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.csv"], "allowed: a file name ending in .json"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{a}/r.json"], "not inside --a or --b"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json", "--names", "one"],
     "--names 'one' is not allowed"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json", "--mode", "fair"],
     "--mode 'fair' is not allowed; allowed: blind, reference"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json"], "--judge {tmp}: no config.json"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json", "--device", "tpu"],
     "--device 'tpu' is not allowed"),
    (["--a", "{a}", "--b", "{b}", "--judge", "{tmp}", "--out", "{tmp}/r.json", "--profile", "all"],
     "--profile 'all' is not allowed"),
])
def test_bad_flags_stop_before_the_model_loads(tmp_path, capsys, args, message):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    values = {"tmp": tmp_path, "a": a, "b": b}
    assert main(["compare", *(arg.format(**values) for arg in args)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("psa-trainer: error: ") and message.format(**values) in error, error
