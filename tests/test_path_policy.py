"""The path policy's pure logic (psa_core.paths): which names resolve inside which folders, and the owner's opt-in."""
from __future__ import annotations

import re

import pytest

from psa_core.paths import OUTSIDE_PATHS_ENV, PathPolicyError, candidates, is_inside, stays_inside, write_name

ALLOWED = "a folder name in models/LLM"


@pytest.fixture
def folders(tmp_path):
    return [tmp_path / "models" / "LLM", tmp_path / "extra" / "LLM"]


def test_relative_names_resolve_in_every_folder_in_order(folders):
    assert candidates(" Qwen2.5-7B ", "llm", folders, ALLOWED) == [f / "Qwen2.5-7B" for f in folders]
    assert candidates("org/model", "llm", folders, ALLOWED) == [f / "org" / "model" for f in folders]


@pytest.mark.parametrize("value, problem", [
    ("", "empty"), ("   ", "empty"), ("a\x00b", "contains a NUL byte"), ("../x", "contains '..'"),
    ("a/../../x", "contains '..'"), ("..\\x", "contains '..'"), ("x" * 1025, "1025 characters long, at most 1024"),
    ("a/" + "y" * 201, "a part is longer than 200 characters"), (7, "not a text"),
])
def test_names_that_could_leave_the_folders_are_refused_naming_the_input(folders, value, problem):
    with pytest.raises(PathPolicyError) as refused:
        candidates(value, "llm", folders, ALLOWED)
    message = str(refused.value)
    assert message.startswith("llm ") and f"is not allowed ({problem}); allowed: {ALLOWED}" in message
    assert len(message) < 400  # a long value is shown cut short


def test_absolute_paths_only_inside_the_folders_unless_the_owner_opts_in(folders, tmp_path, monkeypatch):
    monkeypatch.delenv(OUTSIDE_PATHS_ENV, raising=False)
    inside = folders[1] / "model"
    assert candidates(str(inside), "llm", folders, ALLOWED) == [inside]
    for outside in (tmp_path / "elsewhere", folders[0].parent / "LLM-other", tmp_path):
        with pytest.raises(PathPolicyError, match=rf"llm '.*' is not allowed \(outside ComfyUI's folders\); allowed: "
                                                  rf"{ALLOWED} \(paths elsewhere only when the server owner sets "
                                                  rf"{OUTSIDE_PATHS_ENV}=1\)"):
            candidates(str(outside), "llm", folders, ALLOWED)
    for off in ("0", "", "no"):
        monkeypatch.setenv(OUTSIDE_PATHS_ENV, off)
        with pytest.raises(PathPolicyError):
            candidates(str(tmp_path / "elsewhere"), "llm", folders, ALLOWED)
    monkeypatch.setenv(OUTSIDE_PATHS_ENV, "1")
    assert candidates(str(tmp_path / "elsewhere"), "llm", folders, ALLOWED) == [tmp_path / "elsewhere"]
    with pytest.raises(PathPolicyError, match="contains '..'"):  # the opt-in allows paths, not traversal
        candidates(str(folders[0] / ".." / ".." / "x"), "llm", folders, ALLOWED)


def test_containment_compares_whole_path_parts(tmp_path):
    assert is_inside(tmp_path / "a" / "b", tmp_path / "a") and is_inside(tmp_path / "a", tmp_path / "a")
    assert not is_inside(tmp_path / "ab", tmp_path / "a") and not is_inside(tmp_path, tmp_path / "a")
    assert stays_inside("images/x.png") and not stays_inside("/etc/x.png") and not stays_inside("../x.png")


def test_written_names_are_plain_relative_names_even_with_the_opt_in(monkeypatch):
    monkeypatch.setenv(OUTSIDE_PATHS_ENV, "1")
    assert str(write_name(" runs/psa 1 ", "dataset", "a folder", subfolders=True)) == "runs/psa 1"
    for value, problem in ((".", "a part starting with '.'"), ("a/./b", "a part starting with '.'"),
                           ("..", "contains '..'"), ("/tmp/x", "an absolute path"), ("a//b", "an empty part"),
                           ("a/", "an empty part"), ("sub/x", "contains '/'"),
                           ("naïve", "a character other than letters"), ("a\x00", "contains a NUL byte")):
        with pytest.raises(PathPolicyError, match=rf"^dataset .* is not allowed \({re.escape(problem)}"):
            write_name(value, "dataset", "a folder", subfolders=value != "sub/x")


def test_without_subfolders_only_entries_directly_in_the_folders(folders, monkeypatch):
    monkeypatch.setenv(OUTSIDE_PATHS_ENV, "1")  # the opt-in does not widen such an input
    assert candidates("pairs.csv", "file", folders, ALLOWED, subfolders=False) == [f / "pairs.csv" for f in folders]
    assert candidates(str(folders[1] / "pairs.csv"), "file", folders, ALLOWED, subfolders=False) == \
        [folders[1] / "pairs.csv"]
    for value, problem in (("sub/pairs.csv", "in a sub-folder"), ("sub\\pairs.csv", "in a sub-folder"),
                           (str(folders[0] / "sub" / "pairs.csv"), "not directly in the folder"),
                           (str(folders[0].parent / "pairs.csv"), "not directly in the folder")):
        with pytest.raises(PathPolicyError, match=rf"^file .* is not allowed \({problem}\); allowed: {ALLOWED}$"):
            candidates(value, "file", folders, ALLOWED, subfolders=False)


@pytest.mark.parametrize("value", [".", "./", " ./ ", ".\\", "./.", ".//."])
def test_a_name_of_the_folder_itself_is_refused(folders, value, monkeypatch):
    """`.` passed the policy and resolved to models/LLM itself (issue 20): the folder is a container, never an entry;
    its absolute path is refused the same, with the owner's opt-in too."""
    monkeypatch.setenv(OUTSIDE_PATHS_ENV, "1")
    for given in (value, str(folders[1]), str(folders[0]) + "/"):
        with pytest.raises(PathPolicyError) as refused:
            candidates(given, "vlm", folders, ALLOWED)
        assert str(refused.value).startswith("vlm ") and "(the folder itself); allowed: " in str(refused.value)
    assert candidates("./model", "vlm", folders, ALLOWED) == [f / "model" for f in folders]  # an entry: fine
