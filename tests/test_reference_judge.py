"""The paper's judge, from the reference's own files (../shared/reference/evaluation/eval_gpt):

- the `reference` prompts (psa_core/evaluation/judge_prompts.py) equal, character for character, the text the
  reference scripts build, for every user of its user_info.csv. The oracle reads the prompt f-strings and the dicts
  they print out of evaluate_images.py and compare_images.py with `ast` (never importing or running the scripts) and
  fills them as Python would, with the table read the way pandas reads it;
- `python -m trainer report --reference-judge` (psa_core/evaluation/reference_judge.py) on the paper's own
  gpt-4.1-mini answers reproduces the published summaries.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from psa_core.evaluation.judge_prompts import pair_prompt, reference_concept, single_prompt
from psa_core.profile import read_users_table


@pytest.fixture(scope="module")
def eval_gpt(reference) -> Path:
    return reference / "evaluation" / "eval_gpt"


# ---- the oracle: the reference scripts' own expressions, evaluated without running the scripts -------------------

# pandas.read_csv's default missing-value strings (pandas >= 2.0, which added "None"): such a cell reads as NaN.
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
_INT = re.compile(r"[+-]?\d+")


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def pandas_rows(path: Path) -> list[dict]:
    """The rows as `pd.read_csv(path).iterrows()` gives them: NA strings are NaN; a column of integers (no NaN)
    holds Python ints, one of numbers floats, any other column strings (and NaN). iterrows goes through an object
    array, so the values are Python ints and floats, which json.dumps accepts."""
    with path.open(newline="", encoding="utf-8") as handle:
        raw = list(csv.DictReader(handle))
    columns: dict[str, list] = {}
    for name in raw[0]:
        cells = [row[name] for row in raw]
        present = [c for c in cells if c not in PANDAS_NA]
        if len(present) == len(cells) and all(_INT.fullmatch(c) for c in cells):
            columns[name] = [int(c) for c in cells]
        elif all(_float(c) is not None for c in present):
            columns[name] = [float(c) if c not in PANDAS_NA else float("nan") for c in cells]
        else:
            columns[name] = [c if c not in PANDAS_NA else float("nan") for c in cells]
    return [{name: values[i] for name, values in columns.items()} for i in range(len(raw))]


def function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == name)


def assigned(function_node: ast.FunctionDef, target: str, item: bool = False) -> ast.expr:
    """The value of the (only) assignment `target = ...` (`target[...] = ...` with `item`) in a function."""
    values = [node.value for node in ast.walk(function_node) if isinstance(node, ast.Assign)
              for t in node.targets
              if (not item and isinstance(t, ast.Name) and t.id == target) or
              (item and isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == target)]
    assert len(values) == 1, f"{function_node.name}: {len(values)} assignments to {target}"
    return values[0]


_METHODS = {(str, "join"), (str, "zfill"), (dict, "get")}


def evaluate(node: ast.expr, names: dict) -> object:
    """The value of the few expression forms the prompts and user dicts use; anything else fails the test."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.Dict):
        return {evaluate(k, names): evaluate(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Subscript):
        return evaluate(node.value, names)[evaluate(node.slice, names)]
    if isinstance(node, ast.Attribute):
        owner = evaluate(node.value, names)
        if owner is json and node.attr == "dumps":
            return json.dumps
        assert (type(owner), node.attr) in _METHODS, ast.unparse(node)
        return getattr(owner, node.attr)
    if isinstance(node, ast.Call):
        return evaluate(node.func, names)(*(evaluate(a, names) for a in node.args),
                                          **{k.arg: evaluate(k.value, names) for k in node.keywords})
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            else:
                assert isinstance(value, ast.FormattedValue) and value.conversion == -1 and value.format_spec is None
                parts.append(format(evaluate(value.value, names)))
        return "".join(parts)
    raise AssertionError(f"the oracle does not evaluate {ast.unparse(node)}")


def reference_user_info(script: Path, rows: list[dict]) -> dict[str, dict]:
    """load_user_info of a reference script: its own dict literal per row. Its list columns go through eval() there;
    ast.literal_eval here (the same value for these list strings)."""
    load = function(ast.parse(script.read_text()), "load_user_info")
    entry = assigned(load, "user_info", item=True)
    users = {}
    for row in rows:
        user_id = str(row["User_ID"]).zfill(7)
        lists = {name: ast.literal_eval(row[column]) if isinstance(row[column], str) else []
                 for name, column in (("banned_categories", "Banned_Categories"),
                                      ("allowed_categories", "Allowed_Categories"))}
        users[user_id] = evaluate(entry, {"row": row, "user_id": user_id, **lists})
    return users


def reference_concept_oracle(path: str) -> tuple[str, str]:
    """extract_concept_from_filename of the reference scripts, transcribed."""
    parts = os.path.basename(path).split("_")
    if len(parts) >= 4:
        return parts[2], "_".join(parts[3:-2]) if len(parts) > 5 else "unknown"
    return "unknown", "unknown"


def reference_display_name(name: str, path: str) -> str:
    level = re.search(r"level_(\d+)", path)
    return f"{name} (Level {level.group(1)})" if level else name


class ReferencePrompts:
    """The prompt strings the reference scripts build, for a user of their table."""

    def __init__(self, eval_gpt: Path):
        rows = pandas_rows(eval_gpt / "user_info.csv")
        self.rows = rows
        self.single_script, self.pair_script = eval_gpt / "evaluate_images.py", eval_gpt / "compare_images.py"
        self.single_users = reference_user_info(self.single_script, rows)
        self.pair_users = reference_user_info(self.pair_script, rows)
        single = function(ast.parse(self.single_script.read_text()), "evaluate_image")
        pair = function(ast.parse(self.pair_script.read_text()), "compare_images")
        self.single_json, self.single_prompt = assigned(single, "user_data_json"), assigned(single, "prompt")
        self.pair_json, self.pair_prompt = assigned(pair, "user_data_json"), assigned(pair, "prompt")

    def single(self, user_id: str) -> str:
        user_data = self.single_users[user_id]
        names = {"user_data": user_data, "banned_cats": user_data["Banned_Categories"],
                 "allowed_cats": user_data["Allowed_Categories"], "json": json}
        return evaluate(self.single_prompt, {**names, "user_data_json": evaluate(self.single_json, names)})

    def pair(self, user_id: str, a_path: str, b_path: str, a_name: str, b_name: str) -> str:
        user_data = self.pair_users[user_id]
        category, concept = reference_concept_oracle(a_path)
        names = {"user_data": user_data, "banned_cats": user_data["Banned_Categories"],
                 "allowed_cats": user_data["Allowed_Categories"], "json": json, "sensitive_category": category,
                 "specific_concept": concept, "model_a_display_name": reference_display_name(a_name, a_path),
                 "model_b_display_name": reference_display_name(b_name, b_path)}
        return evaluate(self.pair_prompt, {**names, "user_data_json": evaluate(self.pair_json, names)})


@pytest.fixture(scope="module")
def oracle(eval_gpt) -> ReferencePrompts:
    return ReferencePrompts(eval_gpt)


@pytest.fixture(scope="module")
def user_info(eval_gpt) -> dict:
    """The pack's read of user_info.csv (the users table `--profiles` takes): its profiles keep User_ID and
    Cluster_ID, and equal users.csv's."""
    return read_users_table(eval_gpt / "user_info.csv")


def test_user_info_reads_as_a_users_table_with_clusters(user_info, oracle, reference):
    users = read_users_table(reference / "users.csv")
    assert list(user_info) == [str(n).zfill(7) for n in range(1, 1001)]
    assert all(user_info[key] == users[key] for key in user_info)  # same attributes and bans, row for row
    assert [p.cluster_id for p in user_info.values()] == [row["Cluster_ID"] for row in oracle.rows]
    assert all(p.cluster_id is None for p in users.values())


def test_the_oracle_reads_the_table_as_pandas_does(oracle):
    """The table facts the oracle's output rests on, checked against the raw CSV."""
    rows = oracle.rows
    assert len(rows) == 1000 and rows[0]["User_ID"] == 1 and rows[-1]["User_ID"] == 1000
    religions = {r["Religion"] if isinstance(r["Religion"], str) else "NaN" for r in rows}
    assert religions == {"Christianity", "Islam", "Buddhism", "NaN"}  # the 340 "None" cells read as NaN
    assert all(isinstance(r[c], int) for r in rows for c in ("Cluster_ID", "Age"))
    assert '"Religion": NaN' in oracle.single("0000003") and '"Cluster_ID": 3,' in oracle.pair(
        "0000003", "user_0000003_a_b_c_1_u.jpg", "user_0000003_a_b_c_1_u.jpg", "base", "psa")


def test_reference_single_prompt_is_the_scripts_text_for_every_user(oracle, user_info):
    assert len(oracle.single_users) == 1000
    for profile in user_info.values():
        expected = oracle.single(profile.user_id)
        ours = single_prompt(profile, "reference", caption="ignored", file_name="user_0000001_hate_x_y_00001_u.jpg")
        assert ours == expected, f"user {profile.user_id}"


def sage_names(reference: Path) -> list[str]:
    with (reference / "evaluation" / "sage_unseen.csv").open(newline="", encoding="utf-8") as handle:
        return [row["file_name"] for row in csv.DictReader(handle)]


# Image names outside the SAGE pattern: the reference's concept rule at each of its part counts.
ODD_NAMES = ["user_0000001_hate_00001_u.jpg", "user_1_x_y.png", "a_b.png", "image.png", "user_0000002_self-harm.png"]


def test_reference_pair_prompt_is_the_scripts_text_for_every_user(oracle, reference, user_info):
    names = sage_names(reference) + ODD_NAMES
    # The reference's layout: model A (the baseline) from <dataset>/<a>/<sd15|sdxl>/, model B from the same or from
    # a level_N variant folder; " (Level N)" follows from either path.
    layouts = [("base", "psa", "eval_images/sage_unseen/base/sd15/{}", "eval_images/sage_unseen/psa/sd15/{}"),
               ("base", "user_adapter", "eval/base/sdxl/{}", "eval/user_adapter/sdxl/level_3/{}"),
               ("SafetyDPO", "PSA", "out/level_1/safetydpo/{}", "out/psa/level_5/{}")]
    for number, profile in enumerate(user_info.values()):
        name = names[number % len(names)]
        a_name, b_name, a_path, b_path = layouts[number % len(layouts)]
        a_path, b_path = a_path.format(name), b_path.format(name)
        expected = oracle.pair(profile.user_id, a_path, b_path, a_name, b_name)
        ours = pair_prompt(profile, "reference", names=(a_name, b_name), file_name=a_path, paths=(a_path, b_path))
        assert ours == expected, f"user {profile.user_id}, {a_path} vs {b_path}"


def test_reference_concepts_follow_the_scripts_rule(reference):
    for name in sage_names(reference) + ODD_NAMES:
        assert reference_concept(f"some/folder/{name}") == reference_concept_oracle(f"some/folder/{name}"), name
    assert reference_concept("user_0000001_hate_00001_u.jpg") == ("hate", "unknown")  # 5 parts: category only
    assert reference_concept(None) == ("unknown", "unknown")


# ---- python -m trainer report --reference-judge: the paper's own judge answers -----------------------------------

SINGLE_FILES = [f"sage_unseen_{method}_{base}_results.json.gz" for method in ("base", "safetydpo", "psa")
                for base in ("sd15", "sdxl")]
PAIR_FILES = [f"sage_unseen_{base}_{a}_vs_psa_comparison_results.json.gz" for base in ("sd15", "sdxl")
              for a in ("base", "safetydpo")]
# The published summaries print percentages; the report keeps fractions. 1e-9 is far below the 1/1050 step of
# a rate and far above the rounding of the two float divisions (about 1e-14).
TOLERANCE = 1e-9


def run_report(*args, timeout=120) -> subprocess.CompletedProcess:
    from comfy_env import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "trainer", "report", *map(str, args)], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def paper_report(eval_gpt, tmp_path_factory) -> tuple[dict, Path, str]:
    """One real CLI run over all ten shared Sage-unseen files."""
    out = tmp_path_factory.mktemp("report") / "paper.json"
    result = run_report("--reference-judge", *(eval_gpt / name for name in SINGLE_FILES + PAIR_FILES), "--out", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), out, result.stdout


def close(ours: float, published: float) -> bool:
    return abs(100.0 * ours - published) <= TOLERANCE


def test_single_image_files_reproduce_the_published_pass_and_respected_rates(paper_report, eval_gpt):
    report, _, _ = paper_report
    published = json.loads((eval_gpt / "evaluation_summary_sage_unseen.json").read_text())["sage_unseen"]
    for name in SINGLE_FILES:
        entry = report["files"][name]
        summary, expected = entry["summary"], published[name.removeprefix("sage_unseen_").removesuffix(
            "_results.json.gz")]
        assert entry["kind"] == "single" and entry["refused"] == [] and entry["errors"] == [], name
        assert summary["judged"] == expected["total_valid"] == summary["images"] == 1050, name
        for ours, theirs in (("pass_rate", "pass_rate"), ("banned_respected_rate", "banned_respected_rate"),
                             ("allowed_respected_rate", "allowed_respected_rate")):
            assert close(summary[ours], expected[theirs]), (name, ours, summary[ours], expected[theirs])
        assert abs(summary["mean_quality"] - expected["avg_scores"]["quality"]) <= TOLERANCE, name
        # The reference counts a missing appropriateness_score as 0 over all valid records; the report averages
        # the scores there are. Both are the same sum.
        total = summary["mean_appropriateness"] * summary["appropriateness_scored"]
        assert abs(total - expected["avg_scores"]["appropriateness"] * 1050) <= 1e-6, name
    scored = {name: report["files"][name]["summary"]["appropriateness_scored"] for name in SINGLE_FILES}
    assert scored == {**{name: 1050 for name in SINGLE_FILES}, SINGLE_FILES[0]: 1048, SINGLE_FILES[2]: 1049}


def test_pair_files_reproduce_the_published_win_tie_and_loss_rates(paper_report, eval_gpt):
    report, _, _ = paper_report
    for name in PAIR_FILES:
        base, a = name.split("_")[2], name.split("_")[3]
        published = json.loads((eval_gpt / f"{a}_vs_psa_comparison_summary_sage_unseen.json").read_text())
        expected = published["sage_unseen"][base]["overall"]
        entry = report["files"][name]
        summary = entry["summary"]
        assert entry["kind"] == "pair" and entry["refused"] == [] and entry["errors"] == [], name
        assert summary["pairs"] == summary["pairs_judged"] == expected["total"] == 1050, name
        assert (summary["wins"], summary["ties"], summary["losses"]) == (
            expected["model_b_wins"], expected["equal"], expected["model_a_wins"]), name
        for ours, theirs in (("win_rate", "model_b_win_rate"), ("tie_rate", "equal_rate"),
                             ("loss_rate", "model_a_win_rate")):
            assert close(summary[ours], expected[theirs]), (name, ours, summary[ours], expected[theirs])
        for side in ("a", "b"):
            image = summary[f"image_{side}"]
            assert close(image["banned_respected_rate"], expected[f"banned_control_model_{side}"]), name
            assert close(image["allowed_respected_rate"], expected[f"allowed_control_model_{side}"]), name
            assert abs(image["mean_quality"] - expected[f"quality_model_{side}"]) <= TOLERANCE, name
        assert abs(summary["mean_improvement"] - expected["avg_improvement"]) <= TOLERANCE, name


def test_the_report_pools_files_and_splits_by_category_and_user(paper_report):
    report, out, stdout = paper_report
    assert report["format"] == "psa-reference-judge-report" and sorted(report["files"]) == sorted(
        SINGLE_FILES + PAIR_FILES)
    summary = report["summary"]
    assert summary["judged"] == 6 * 1050 and summary["pairs"] == 4 * 1050
    assert summary["passed"] == sum(report["files"][n]["summary"]["passed"] for n in SINGLE_FILES)
    assert summary["wins"] == sum(report["files"][n]["summary"]["wins"] for n in PAIR_FILES)
    for name in SINGLE_FILES + PAIR_FILES:
        entry = report["files"][name]["summary"]
        count = "judged" if name in SINGLE_FILES else "pairs"
        success = "passed" if name in SINGLE_FILES else "wins"
        assert [row["category"] for row in entry["categories"]] == [
            "Hate", "Harassment", "Violence", "Self-Harm", "Sexuality", "Shocking", "Propaganda"], name
        for rows in (entry["categories"], entry["users"]):
            assert sum(row[count] for row in rows) == entry[count] == 1050, name
            assert sum(row[success] for row in rows) == entry[success], name
        assert all(re.fullmatch(r"\d{7}", row["user"]) for row in entry["users"]), name
    assert [s["sha256"] for s in report["settings"]["inputs"]] and "refused" not in stdout
    with Image.open(out.with_suffix(".png")) as chart:
        assert chart.format == "PNG" and chart.width >= 640 and chart.height > 300


# ---- small files: refusals, errors, the output rule --------------------------------------------------------------

GOOD = {"banned_categories_respected": True, "banned_categories_found": [], "allowed_categories_respected": True,
        "quality_score": 80, "overall_assessment": "PASS", "explanation": "fine", "appropriateness_score": 90}
ASSESS = {"banned_categories_respected": True, "banned_categories_found": [], "allowed_categories_respected": True,
          "quality_score": 70, "appropriateness_score": 60}
PAIR = {"image_a_assessment": ASSESS, "image_b_assessment": ASSESS, "comparison_explanation": "x",
        "better_content_control": "B", "recommendation": "B", "improvement_score": 50}
NAME = "user_0000002_violence_knife_fight_00001_u.jpg"


def single_records() -> list:
    return [{**GOOD, "image_path": f"x/{NAME}", "user_id": "0000002"},
            {**GOOD, "overall_assessment": "FAIL", "banned_categories_respected": False,
             "image_path": "x/user_0000003_hate_crowd_00002_u.jpg", "user_id": "0000003"},
            {**GOOD, "overall_assessment": "PASS if appropriate", "image_path": "x/user_0000003_hate_sign_00003_u.jpg",
             "user_id": "0000003"},
            {"error": "timeout (retried 3 times)", "image_path": "x/user_0000004_hate_y_00004_u.jpg",
             "user_id": "0000004"}]


def pair_records() -> list:
    names = {"model_a_image_name": NAME, "model_a_image_path": f"a/{NAME}", "model_b_image_path": f"b/{NAME}",
             "model_b_image_name": NAME, "model_a_name": "base", "model_b_name": "psa", "user_id": "0000002"}
    return [{**PAIR, **names}, {**PAIR, "better_content_control": "A", **names},
            {**PAIR, "better_content_control": "Image B", **names},
            {"error": "bad gateway (retried 3 times)", "model_a_image_path": f"a/{NAME}",
             "model_b_image_path": f"b/{NAME}", "user_id": "0000002"}]


def test_refused_answers_and_errors_are_counted_and_named(tmp_path, capsys):
    from trainer.__main__ import main

    single, pair = tmp_path / "x_results.json", tmp_path / "x_comparison_results.json"
    single.write_text(json.dumps(single_records()))
    pair.write_text(json.dumps(pair_records()))
    out = tmp_path / "small.json"
    assert main(["report", "--reference-judge", str(single), str(pair), "--out", str(out)]) == 0
    assert "refused record 2 (user_0000003_hate_sign_00003_u.jpg): overall_assessment" in capsys.readouterr().out
    files = json.loads(out.read_text())["files"]
    one = files["x_results.json"]
    assert one["refused"] == [{"index": 2, "image": "user_0000003_hate_sign_00003_u.jpg",
                               "problem": 'overall_assessment is "PASS if appropriate"; allowed: PASS, FAIL'}]
    assert one["errors"] == [{"index": 3, "image": "user_0000004_hate_y_00004_u.jpg",
                              "error": "timeout (retried 3 times)"}]
    s = one["summary"]
    assert (s["images"], s["judged"], s["no_verdict"], s["errors"], s["passed"]) == (4, 2, 1, 1, 1)
    assert (s["pass_rate"], s["banned_respected_rate"], s["allowed_respected_rate"]) == (0.5, 0.5, 1.0)
    assert {row["user"]: row["judged"] for row in s["users"]} == {"0000002": 1, "0000003": 1, "0000004": 0}
    two = files["x_comparison_results.json"]
    assert [item["index"] for item in two["refused"]] == [2] and "allowed: A, B, EQUAL" in two["refused"][0]["problem"]
    p = two["summary"]
    # Three pairs as the reference counts them (the error is not one); the refused answer is in no numerator.
    assert (p["pair_records"], p["pair_errors"], p["pairs"], p["pairs_judged"], p["pairs_no_verdict"]) == (
        4, 1, 3, 2, 1)
    assert (p["win_rate"], p["tie_rate"], p["loss_rate"]) == (1 / 3, 0.0, 1 / 3)


def test_the_report_replaces_only_its_own_files_and_names_bad_input(tmp_path, capsys):
    from trainer.__main__ import main

    source = tmp_path / "x_results.json"
    source.write_text(json.dumps(single_records()))
    out = tmp_path / "report.json"
    out.write_text('{"format": "psa-evaluation-report"}')
    assert main(["report", "--reference-judge", str(source), "--out", str(out)]) == 2
    assert "is not a report of `python -m trainer report`" in capsys.readouterr().err
    assert out.read_text() == '{"format": "psa-evaluation-report"}' and not out.with_suffix(".png").exists()
    fresh = tmp_path / "fresh.json"
    fresh.with_suffix(".png").write_bytes(b"someone's chart")
    assert main(["report", "--reference-judge", str(source), "--out", str(fresh)]) == 2
    assert "fresh.png exists and was not written" in capsys.readouterr().err
    assert fresh.with_suffix(".png").read_bytes() == b"someone's chart" and not fresh.exists()
    own = tmp_path / "own.json"
    for _ in range(2):  # the second run replaces the first run's report and chart
        assert main(["report", "--reference-judge", str(source), "--out", str(own)]) == 0
    assert json.loads(own.read_text())["files"]["x_results.json"]["summary"]["judged"] == 2
    assert main(["report", "--reference-judge", str(source), "--out", str(source)]) == 2
    assert "--reference-judge" in capsys.readouterr().err and json.loads(source.read_text()) == single_records()
    bad = {"missing.json": None, "list.json": '{"a": 1}', "mixed_results.json": json.dumps(
        [single_records()[0], pair_records()[0]]), "text.json.gz": "not gzip"}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert main(["report", "--reference-judge", str(tmp_path / name), "--out", str(tmp_path / "n.json")]) == 2
        message = capsys.readouterr().err
        assert f"--reference-judge {tmp_path / name}" in message and message.count("\n") == 1, message
    assert main(["report", "--reference-judge", str(source), str(source), "--out", str(tmp_path / "n.json")]) == 2
    assert "two files named x_results.json" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "n.json")]) == 2
    assert "--reference-judge" in capsys.readouterr().err
    assert main(["report", "--reference-judge", str(source), "--out", str(tmp_path / "n.csv")]) == 2
    assert "ending in .json" in capsys.readouterr().err
