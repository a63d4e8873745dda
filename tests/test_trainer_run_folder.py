"""A finished trainer run can never be lost or silently replaced (issue 12, finding 4), through the command line
(`python -m trainer` in a subprocess where a run trains, its `main` in this process for the many refusals): bad
output names and outputs that cannot be written stop the run before any work (exit 2, a message naming the flag);
a repeated command keeps the earlier adapter unless --overwrite is given; every flag and config-file value is
checked first (types, ranges, names; NaN and infinite numbers), with a message instead of a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file

from psa_core.encoders.structured import STRUCTURED_ENCODER
from testkit.models import ModelSpec, build_components, save_single_file, write_tokenizer
from testkit.preference_data import write_pairs, write_profiles
from trainer.__main__ import main

REPO = Path(__file__).resolve().parents[1]
EXIT_USAGE = 2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run_folder")
    return {"base": save_single_file(build_components(ModelSpec.tiny("sd15"), seed=3), root / "base.safetensors"),
            "tokenizer": write_tokenizer(root / "tokenizer"), "pairs": write_pairs(root / "data", 4, size=32),
            "profiles": write_profiles(root / "data"), "cache": root / "cache"}


def train_args(inputs: dict[str, Path], output: Path | str, *extra: str) -> list[str]:
    return ["train", "--base-model", str(inputs["base"]), "--tokenizer", str(inputs["tokenizer"]),
            "--data", str(inputs["pairs"]), "--profiles", str(inputs["profiles"]), "--encoder", STRUCTURED_ENCODER,
            "--output", str(output), "--cache-dir", str(inputs["cache"]), "--resolution", "32", "--batch", "2",
            "--steps", "2", "--warmup-steps", "0", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32", *extra]


def trainer(inputs: dict[str, Path], output: Path | str, *extra: str) -> subprocess.CompletedProcess:
    """`python -m trainer train ...`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "trainer", *train_args(inputs, output, *extra)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600, check=False)


def in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """The same command line through trainer.__main__.main in this process (exit code and stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    return subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err)


def refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == EXIT_USAGE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]


@pytest.mark.slow  # trains in a subprocess
@pytest.mark.parametrize("name", ["", "psa_adapter.safetensors"], ids=["empty", "an existing folder"])
def test_a_bad_output_name_stops_the_run_before_training(inputs, tmp_path, name):
    output = tmp_path / "run"
    (output / "psa_adapter.safetensors").mkdir(parents=True)
    result = trainer(inputs, output, "--output-name", name)
    refused(result, "--output-name")
    assert not (output / "train_log.jsonl").exists(), "the run trained before it refused the name"
    assert sorted(p.name for p in output.iterdir()) == ["psa_adapter.safetensors"]


@pytest.mark.slow  # trains in a subprocess
def test_a_second_run_into_the_same_output_keeps_the_finished_adapter(inputs, tmp_path):
    output = tmp_path / "run"
    assert trainer(inputs, output).returncode == 0
    adapter = output / "psa_adapter.safetensors"
    first, log = adapter.read_bytes(), (output / "train_log.jsonl").read_text()
    refused(trainer(inputs, output, "--seed", "1"), str(adapter), "--overwrite")
    assert adapter.read_bytes() == first and (output / "train_log.jsonl").read_text() == log
    replaced = trainer(inputs, output, "--seed", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert adapter.read_bytes() != first
    assert [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def unwritable_output(tmp_path: Path) -> Path:
    """A folder this process cannot write in: read-only by mode, or (as root, whom modes do not stop) /proc."""
    if os.geteuid() == 0:
        return Path("/proc") / "psa-trainer-test" / "run"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "run"


@pytest.mark.skipif(sys.platform != "linux", reason="read-only folders are made with Linux's modes and /proc")
def test_an_output_that_is_a_file_or_read_only_is_refused_before_training(inputs, tmp_path, capsys):
    (tmp_path / "taken").write_text("the user's file")
    refused(in_process(train_args(inputs, tmp_path / "taken"), capsys), f"--output {tmp_path / 'taken'}: ",
            "is a file; allowed: a folder")
    refused(in_process(train_args(inputs, tmp_path / "taken" / "run"), capsys), "is a file")
    assert (tmp_path / "taken").read_text() == "the user's file"
    refused(in_process(train_args(inputs, unwritable_output(tmp_path)), capsys), "--output", "cannot write in")
    (tmp_path / "run" / "train_plot.png").mkdir(parents=True)
    refused(in_process(train_args(inputs, tmp_path / "run"), capsys), "train_plot.png is a folder")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


@pytest.mark.slow  # trains in a subprocess
def test_resume_needs_overwrite_once_the_adapter_is_finished(inputs, tmp_path, capsys):
    output = tmp_path / "run"
    assert in_process(train_args(inputs, output, "--checkpoint-every", "1"), capsys).returncode == 0
    adapter = (output / "psa_adapter.safetensors").read_bytes()
    refused(in_process(train_args(inputs, output, "--checkpoint-every", "1", "--resume", "latest"), capsys),
            "--overwrite")
    assert (output / "psa_adapter.safetensors").read_bytes() == adapter
    resumed = in_process(train_args(inputs, output, "--checkpoint-every", "1", "--resume", "latest", "--overwrite"),
                         capsys)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    continued = load_file(output / "psa_adapter.safetensors")  # the same run continued: the same weights
    assert all(torch.equal(tensor, continued[key]) for key, tensor in load(adapter).items())
    refused(in_process(train_args(inputs, tmp_path / "other", "--resume", str(tmp_path / "missing")), capsys),
            "--resume", "no such checkpoint folder")


FLAG_CASES = [
    (["--lr", "nan"], "--lr nan is not allowed; allowed: a finite number > 0"),
    (["--lr", "inf"], "--lr inf is not allowed"),
    (["--beta=-inf"], "--beta -inf is not allowed"),
    (["--max-grad-norm", "nan"], "--max-grad-norm nan is not allowed; allowed: a finite number >= 0"),
    (["--seed", "-1"], "--seed -1 is not allowed; allowed: an integer from 0 to 9223372036854775807"),
    (["--seed", "nan"], "argument --seed: invalid int value: 'nan'"),
    (["--resolution", "30"], "--resolution 30 is not allowed; allowed: a multiple of 8, from 8 to 4096"),
    (["--output-name", "../x.safetensors"], "--output-name '../x.safetensors' is not allowed; allowed: a file name "
                                            "ending in .safetensors"),
    (["--output-name", "adapter.bin"], "--output-name 'adapter.bin' is not allowed"),
]
CONFIG_CASES = [  # (file name, its text, the message)
    ("run.json", '{"seed": NaN}', "--seed nan is not allowed; allowed: an integer"),
    ("run.json", '{"lr": Infinity}', "--lr inf is not allowed"),
    ("run.yaml", "seed: .nan", "--seed nan is not allowed"),
    ("run.yaml", "steps: [1]", "--steps [1] is not allowed; allowed: an integer from 1 to 1000000"),
    ("run.yaml", "steps: 2.5", "--steps 2.5 is not allowed"),
    ("run.yaml", "lr: fast", "run.yaml: lr 'fast' is not allowed; allowed: a finite number > 0"),
    ("run.yaml", "hflip: 'yes'", "--hflip 'yes' is not allowed; allowed: true or false"),
    ("run.yaml", "output-name: 5", "--output-name 5 is not allowed"),
    ("run.yaml", "users: 101", "--users 101 is not allowed; allowed: text"),
    ("run.yaml", "cache_dir: [a, b]", "--cache-dir ['a', 'b'] is not allowed"),
    ("run.yaml", "family: 15", "--family 15 is not allowed; allowed: auto, sd15, sdxl"),
    ("run.json", "[" * 100_000, "run.json: not valid JSON (arrays/objects nested more than 64 levels deep"),
    ("run.json", '{"seed": ' + "1" * 5000 + "}", "run.json: not valid JSON (an integer of more than 4300 digits"),
    ("run.yaml", "seed: " + "1" * 5000, "run.yaml: not valid YAML"),
]


@pytest.mark.parametrize(("flags", "expected"), FLAG_CASES, ids=[" ".join(f) for f, _ in FLAG_CASES])
def test_every_flag_is_checked_before_any_work(tmp_path, capsys, flags, expected):
    paths = {"base": tmp_path / "no-model.safetensors", "tokenizer": tmp_path, "pairs": tmp_path / "pairs.jsonl",
             "profiles": tmp_path / "profiles.json", "cache": tmp_path / "cache"}
    refused(in_process(train_args(paths, tmp_path / "run", *flags), capsys), expected)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("name", "text", "expected"), CONFIG_CASES,
                         ids=[f"{name}:{text[:20]}" for name, text, _ in CONFIG_CASES])
def test_every_config_file_value_is_checked_before_any_work(tmp_path, capsys, name, text, expected):
    (tmp_path / name).write_text(text)
    refused(in_process(["train", "--config", str(tmp_path / name), "--base-model", str(tmp_path / "m.safetensors"),
                        "--data", str(tmp_path / "d"), "--output", str(tmp_path / "run")], capsys), expected)
    assert not (tmp_path / "run").exists()
