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
from pathlib import Path

import pytest

from psa_core.evaluation.judge_prompts import pair_prompt, reference_concept, single_prompt
from psa_core.profile import COLUMNS, profile_from_dict


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


def our_profile(row: dict):
    """The pack's profile of a user_info.csv row, read from the CSV text as a users table gives it."""
    text = {name: ("None" if isinstance(value, float) and value != value else str(value))
            for name, value in row.items()}
    text["User_ID"] = str(row["User_ID"]).zfill(7)
    return profile_from_dict({name: text[name] for name in (*COLUMNS, "User_ID", "Cluster_ID")})


def test_the_oracle_reads_the_table_as_pandas_does(oracle):
    """The table facts the oracle's output rests on, checked against the raw CSV."""
    rows = oracle.rows
    assert len(rows) == 1000 and rows[0]["User_ID"] == 1 and rows[-1]["User_ID"] == 1000
    religions = {r["Religion"] if isinstance(r["Religion"], str) else "NaN" for r in rows}
    assert religions == {"Christianity", "Islam", "Buddhism", "NaN"}  # the 340 "None" cells read as NaN
    assert all(isinstance(r[c], int) for r in rows for c in ("Cluster_ID", "Age"))
    assert '"Religion": NaN' in oracle.single("0000003") and '"Cluster_ID": 3,' in oracle.pair(
        "0000003", "user_0000003_a_b_c_1_u.jpg", "user_0000003_a_b_c_1_u.jpg", "base", "psa")


def test_reference_single_prompt_is_the_scripts_text_for_every_user(oracle):
    assert len(oracle.single_users) == 1000
    for row in oracle.rows:
        profile = our_profile(row)
        expected = oracle.single(profile.user_id)
        ours = single_prompt(profile, "reference", caption="ignored", file_name="user_0000001_hate_x_y_00001_u.jpg")
        assert ours == expected, f"user {profile.user_id}"


def sage_names(reference: Path) -> list[str]:
    with (reference / "evaluation" / "sage_unseen.csv").open(newline="", encoding="utf-8") as handle:
        return [row["file_name"] for row in csv.DictReader(handle)]


# Image names outside the SAGE pattern: the reference's concept rule at each of its part counts.
ODD_NAMES = ["user_0000001_hate_00001_u.jpg", "user_1_x_y.png", "a_b.png", "image.png", "user_0000002_self-harm.png"]


def test_reference_pair_prompt_is_the_scripts_text_for_every_user(oracle, reference):
    names = sage_names(reference) + ODD_NAMES
    # The reference's layout: model A (the baseline) from <dataset>/<a>/<sd15|sdxl>/, model B from the same or from
    # a level_N variant folder; " (Level N)" follows from either path.
    layouts = [("base", "psa", "eval_images/sage_unseen/base/sd15/{}", "eval_images/sage_unseen/psa/sd15/{}"),
               ("base", "user_adapter", "eval/base/sdxl/{}", "eval/user_adapter/sdxl/level_3/{}"),
               ("SafetyDPO", "PSA", "out/level_1/safetydpo/{}", "out/psa/level_5/{}")]
    for number, row in enumerate(oracle.rows):
        profile = our_profile(row)
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
