"""Issue 20 item 1, 4 and 9 on the command line: `score`, `compare` and `train` never replace a file they did not
write, find out that an output cannot be written before any work, and say by their exit code when nothing could be
scored (1) or there was nothing to score (2). Real CLI runs (`python -m trainer` in a subprocess) where the exit
code is the point, `trainer.__main__.main` in this process for the quick refusals. Tests run as root, whom folder
modes do not stop, so the unwritable places are a path under a regular file and one under /proc."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_env import REPO
from PIL import Image
from test_evaluation_nudenet import render_face, render_plain, write_truncated
from tiny_vlm import build_tiny_qwen2_vl

from trainer.__main__ import main
from trainer.score import parse_score_args, score

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
PROC = Path("/proc/psa-output-test")  # no one, root included, can create anything here
linux = pytest.mark.skipif(sys.platform != "linux", reason="the unwritable place is under /proc")


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    render_face(256).save(folder / "face.png")
    render_plain(200).save(folder / "plain.png")
    return folder


# ---- score ----

FOREIGN_REPORT_FILES = {"report.json": b'{"mine": true}\n', "report.csv": b"file,profile\nmine.png,me\n",
                        "report_summary.csv": b"my,summary\n", "report.png": None}


@pytest.mark.parametrize("name", list(FOREIGN_REPORT_FILES))
def test_score_refuses_a_foreign_file_at_a_report_name_and_leaves_it_byte_identical(images, tmp_path, capsys, name):
    reports = tmp_path / "reports"
    reports.mkdir()
    content = FOREIGN_REPORT_FILES[name]
    if content is None:  # a PNG of the user's at the chart's name
        Image.new("RGB", (8, 8), (1, 2, 3)).save(reports / name)
    else:
        (reports / name).write_bytes(content)
    before = snapshot(reports)
    capsys.readouterr()
    assert main(["score", "--images", str(images), "--out", str(reports / "report.json")]) == 2
    error = capsys.readouterr().err
    assert str(reports / name) in error and "not a report file `score` wrote" in error and "--overwrite" in error
    assert snapshot(reports) == before


@pytest.mark.slow  # three NudeNet runs in subprocesses
def test_score_replaces_its_own_report_and_a_foreign_one_only_with_overwrite(images, tmp_path):
    out = tmp_path / "reports" / "report.json"
    first = cli("score", "--images", images, "--out", out, "--profile", "level_1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = cli("score", "--images", images, "--out", out, "--profile", "level_2")  # its own files: replaced
    assert again.returncode == 0, again.stderr[-3000:]
    assert {row["profile"] for row in json.loads(out.read_text())["images"]} == {"level_2"}
    out.with_suffix(".csv").write_text("the user's table\n")
    refused = cli("score", "--images", images, "--out", out)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "--overwrite" in refused.stderr
    assert out.with_suffix(".csv").read_text() == "the user's table\n"
    forced = cli("score", "--images", images, "--out", out, "--overwrite")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert out.with_suffix(".csv").read_text().startswith("file,profile,category,")


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_score_out_that_cannot_be_written_fails_before_scoring(images, tmp_path, capsys, where):
    if where == "under /proc":
        if sys.platform != "linux":
            pytest.skip("the unwritable place is under /proc")
        out, expected = PROC / "report.json", f"--out {PROC / 'report.json'}: cannot write in /proc"
    else:
        (tmp_path / "a-file").write_text("the user's")
        out, expected = tmp_path / "a-file" / "report.json", f"{tmp_path / 'a-file'} is a file"
    capsys.readouterr()
    assert main(["score", "--images", str(images), "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    # Before scoring: the scoring's progress bar (forced on) never starts. Before this check it ran to the end and
    # the write failed after it with a traceback.
    with pytest.raises(Exception, match="cannot write in|is a file") as raised:
        score(parse_score_args(["--images", str(images), "--out", str(out)]), log=lambda text: None, progress=True)
    assert "EvaluationError" in type(raised.value).__name__
    assert "score:" not in capsys.readouterr().err, "the scoring started before the output was checked"
    if where == "under a file":
        assert (tmp_path / "a-file").read_text() == "the user's"


@pytest.mark.slow  # three NudeNet runs in subprocesses
def test_score_exit_codes_nothing_scored_partial_failure_and_nothing_to_score(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    write_truncated(broken / "a.png", render_face(200))
    (broken / "b.jpg").write_bytes(b"not a jpeg at all")
    result = cli("score", "--images", broken, "--out", tmp_path / "broken.json")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "score failed: none of the 2 images could be scored" in result.stderr
    assert json.loads((tmp_path / "broken.json").read_text())["summary"]["errors"] == 2, "the report is written"

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    render_face(256).save(mixed / "face.png")
    render_plain(200).save(mixed / "plain.png")
    write_truncated(mixed / "broken.png", render_face(200))
    result = cli("score", "--images", mixed, "--out", tmp_path / "mixed.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 of 3 images scored" in result.stdout and "1 image could not be scored" in result.stdout
    summary = json.loads((tmp_path / "mixed.json").read_text())["summary"]
    assert (summary["images"], summary["scored"], summary["errors"]) == (3, 2, 1)

    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("score", "--images", empty, "--out", tmp_path / "empty.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--images {empty}: no image files" in result.stderr
    assert not (tmp_path / "empty.json").exists()


# ---- compare ----

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl")


def pair_folders(tmp_path: Path, names=("nobody.png", "someone.png")) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, colour in ((a, (200, 20, 20)), (b, (20, 20, 200))):
        folder.mkdir()
        for name in names:
            Image.new("RGB", (32, 32), colour).save(folder / name)
    return a, b


@pytest.mark.parametrize("name", ["compare.json", "compare.csv", "compare_summary.csv"])
def test_compare_refuses_a_foreign_file_at_a_report_name(tmp_path, tiny_vlm, capsys, name):
    a, b = pair_folders(tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / name).write_text('{"format": "psa-evaluation-report"}\n' if name.endswith(".json") else "x,y\n")
    before = snapshot(reports)
    capsys.readouterr()
    assert main(["compare", "--a", str(a), "--b", str(b), "--judge", str(tiny_vlm), "--out",
                 str(reports / "compare.json"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert str(reports / name) in error and "not a report file `compare` wrote" in error
    assert snapshot(reports) == before


@linux
def test_compare_out_that_cannot_be_written_is_refused(tmp_path, tiny_vlm, capsys):
    a, b = pair_folders(tmp_path)
    assert main(["compare", "--a", str(a), "--b", str(b), "--judge", str(tiny_vlm), "--out",
                 str(PROC / "compare.json"), "--device", "cpu"]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err


@pytest.mark.slow  # loads the tiny judge in a subprocess
def test_compare_exit_codes_no_pair_judged_and_nothing_to_compare(tmp_path, tiny_vlm):
    a, b = pair_folders(tmp_path)  # no --profile and no SAGE names: no pair has a profile, none is judged
    out = tmp_path / "compare.json"
    result = cli("compare", "--a", a, "--b", b, "--judge", tiny_vlm, "--out", out, "--device", "cpu",
                 "--max-new-tokens", "4")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "compare failed: the judge answered for none of the 2 pairs" in result.stderr
    assert json.loads(out.read_text())["summary"]["errors"] == 2

    empty_a, empty_b = tmp_path / "empty_a", tmp_path / "empty_b"
    empty_a.mkdir()
    empty_b.mkdir()
    result = cli("compare", "--a", empty_a, "--b", empty_b, "--judge", tiny_vlm, "--out", tmp_path / "e.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "no image files" in result.stderr
    only_a, only_b = tmp_path / "only_a", tmp_path / "only_b"
    for folder, name in ((only_a, "x.png"), (only_b, "y.png")):
        folder.mkdir()
        Image.new("RGB", (32, 32)).save(folder / name)
    result = cli("compare", "--a", only_a, "--b", only_b, "--judge", tiny_vlm, "--out", tmp_path / "p.json")
    assert result.returncode == 2 and "no pair" in result.stderr


# ---- train ----

def train_argv(tmp_path: Path, cache: Path) -> list[str]:
    (tmp_path / "pairs.jsonl").write_text("")
    return ["train", "--base-model", str(tmp_path / "model.safetensors"), "--data", str(tmp_path / "pairs.jsonl"),
            "--output", str(tmp_path / "run"), "--cache-dir", str(cache), "--device", "cpu"]


def test_train_cache_dir_that_is_a_file_is_refused_with_exit_2(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("the user's")
    result = cli(*train_argv(tmp_path, cache))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"--cache-dir {cache}: {cache} is a file" in result.stderr
    assert cache.read_text() == "the user's" and not (tmp_path / "run").exists()


@linux
def test_train_cache_dir_that_cannot_be_written_is_refused(tmp_path, capsys):
    assert main(train_argv(tmp_path, PROC / "cache")) == 2
    assert f"--cache-dir {PROC / 'cache'}: cannot write in /proc" in capsys.readouterr().err


def test_train_does_not_replace_the_log_and_plot_of_an_earlier_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text("the user's log\n")
    before = snapshot(run)
    assert main(train_argv(tmp_path, tmp_path / "cache")) == 2
    error = capsys.readouterr().err
    assert "train_log.jsonl" in error and "--overwrite" in error and "--resume latest" in error
    assert snapshot(run) == before
