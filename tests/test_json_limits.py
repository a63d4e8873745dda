"""JSON that Python's reader fails on other than with a JSONDecodeError (nesting deeper than its recursion limit,
integers of more than 4300 digits) and NaN seeds, in the prompt-pair, pairs, SAGE metadata and dataset.json files
the pack and the trainer read (issue 12, the weak class): each is the pack's own error naming the file and line,
never a RecursionError or ValueError."""
from __future__ import annotations

import json
import re

import pytest

from psa_core.dataset_build import PairDataset, read_prompt_pairs
from psa_core.training.errors import DatasetError
from psa_core.training.labelling import read_unlabelled_pairs
from psa_core.training.sage import read_sage
from testkit.preference_data import write_profiles
from trainer.__main__ import EXIT_BAD_INPUT, main

DEEP = "[" * 100_000 + "]" * 100_000
LONG = "1" * 5000
PROMPT_PAIR = {"category": "Violence", "concept": "knife fight", "unsafe_prompt": "a knife fight",
               "safe_prompt": "two chefs"}
HOSTILE_LINES = [f'{{"category": {DEEP}}}', f'{{"seed": {LONG}}}', "\xff not UTF-8"]
EXPECTED = [r"line 2: not valid JSON \(arrays/objects nested more than 64 levels deep\)",
            r"line 3: not valid JSON \(an integer of more than 4300 digits\)",
            r"line 4: not UTF-8 text \(invalid start byte at byte 1 of the line\)"]


def write_lines(path, first: dict, lines: list[str] = HOSTILE_LINES):
    """A good first line, then the hostile ones (a line starting with \\xff is written as that byte: not UTF-8)."""
    encoded = [json.dumps(first).encode()] + [line.encode("latin-1" if line.startswith("\xff") else "utf-8")
                                              for line in lines]
    path.write_bytes(b"\n".join(encoded) + b"\n")
    return path


def check_message(message: str, name: str) -> None:
    assert f"{name}: 3 malformed lines" in message, message[:2000]
    for expected in EXPECTED:
        assert re.search(expected, message), (expected, message[:2000])
    assert len(message) < 3000, "the hostile text is not echoed"


def test_prompt_pair_files(tmp_path):
    path = write_lines(tmp_path / "prompts.jsonl", PROMPT_PAIR)
    with pytest.raises(DatasetError) as caught:
        read_prompt_pairs(path)
    check_message(str(caught.value), "prompts.jsonl")
    nan_seed = tmp_path / "nan.jsonl"
    nan_seed.write_text(json.dumps(PROMPT_PAIR) + "\n" + json.dumps({**PROMPT_PAIR, "seed": float("nan")}) + "\n")
    with pytest.raises(DatasetError, match=r"nan.jsonl: 1 malformed line:\s+line 2: seed nan is not allowed; allowed: "
                                           "an integer 0 to 18446744073709551615"):
        read_prompt_pairs(nan_seed)
    assert main(["build-data", "--prompts", str(path), "--base-model", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT


def test_the_trainers_pairs_and_sage_files(tmp_path, capsys):
    pair = {"safe": "s.png", "unsafe": "u.png", "category": "Violence", "caption": "c"}
    (tmp_path / "s.png").write_bytes(b"x")
    (tmp_path / "u.png").write_bytes(b"x")
    pairs = write_lines(tmp_path / "pairs.jsonl", pair)
    with pytest.raises(DatasetError) as caught:
        read_unlabelled_pairs(pairs)
    check_message(str(caught.value), "pairs.jsonl")
    sage = tmp_path / "sage"
    sage.mkdir()
    write_lines(sage / "metadata.jsonl", {"chosen": "../s.png", "rejected": "../u.png", "caption": "c",
                                          "user_data": {"User_ID": "0000001"}})
    with pytest.raises(DatasetError) as caught:
        read_sage(sage)
    check_message(str(caught.value), "metadata.jsonl")

    capsys.readouterr()
    code = main(["train", "--base-model", str(tmp_path / "m.safetensors"), "--data", str(pairs), "--profiles",
                 str(write_profiles(tmp_path)), "--output", str(tmp_path / "run"), "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "psa-trainer: error: pairs.jsonl: 3 malformed lines" in error, error[:2000]

    (tmp_path / "dataset.json").write_text(f'{{"extra_categories": {DEEP}}}')
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON \(arrays/objects nested more than 64 levels deep"):
        read_unlabelled_pairs(pairs)


def test_a_dataset_folder_being_written(tmp_path):
    write_lines(tmp_path / "pairs.jsonl", {"safe": "images/a_s.jpg", "unsafe": "images/a_u.jpg"}, [f"[{LONG}]"])
    with pytest.raises(DatasetError, match=r"pairs.jsonl line 2: not valid JSON \(an integer of more than 4300 digits"
                                           r".*; fix or remove the line before adding pairs"):
        PairDataset(tmp_path).records()
    (tmp_path / "pairs.jsonl").unlink()
    (tmp_path / "dataset.json").write_text(DEEP)
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON \(arrays/objects nested more than 64 levels deep"):
        PairDataset(tmp_path).info()
