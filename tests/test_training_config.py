"""TrainingConfig is the one source of the training settings: the trainer's flags and config-file keys are its
fields with their defaults and checks, and the node's configuration is the same class."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from psa_core.training.config import SettingError, TrainingConfig, default_of, setting_of, short_run_warmup
from psa_core.training.errors import TrainingError
from trainer.config import flag, parse_train_args

REQUIRED = ["--base-model", "m", "--data", "d", "--output", "o"]


def test_every_setting_is_a_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["train", "--help"])
    shown = capsys.readouterr().out
    for item in fields(TrainingConfig):
        assert flag(item.name) in shown, item.name
        for choice in setting_of(item.name).choices or ():
            assert choice in shown
    assert parse_train_args(["train", *REQUIRED]) == TrainingConfig(base_model="m", data="d", output="o")


def test_a_new_setting_reaches_flags_config_files_and_checks(tmp_path):
    assert default_of("adam_epsilon") == 1e-8
    assert parse_train_args(["train", *REQUIRED, "--adam-epsilon", "1e-6"]).adam_epsilon == 1e-6
    (tmp_path / "run.json").write_text(json.dumps({"base-model": "m", "data": "d", "output": "o",
                                                   "adam-epsilon": 1e-7}))
    assert parse_train_args(["train", "--config", str(tmp_path / "run.json")]).adam_epsilon == 1e-7
    with pytest.raises(TrainingError, match=r"--adam-epsilon 0\.0 is not allowed; allowed: a finite number > 0"):
        parse_train_args(["train", *REQUIRED, "--adam-epsilon", "0"])
    with pytest.raises(SettingError, match=r"adam_epsilon nan is not allowed"):
        TrainingConfig(adam_epsilon=float("nan"))


@pytest.mark.parametrize("name, value", [("lr", 0.0), ("beta", float("inf")), ("batch", 0), ("seed", -1),
                                         ("precision", "no"), ("caption_dropout", 1.5), ("hflip", 1),
                                         ("steps", 2.0), ("output_name", "../x.safetensors")])
def test_bad_values_are_refused_by_name(name, value):
    with pytest.raises(SettingError) as refused:
        TrainingConfig(**{name: value})
    assert refused.value.name == name and str(refused.value).startswith(f"{name} {value!r} is not allowed; allowed: ")


def test_one_precision_vocabulary():
    assert setting_of("precision").choices == ("auto", "fp32", "bf16", "fp16")


def test_short_runs_warm_up_for_a_tenth_of_their_steps():
    assert [short_run_warmup(steps) for steps in (1, 9, 10, 600, 5000, 50_000)] == [0, 0, 1, 60, 500, 500]


@pytest.mark.parametrize("name, too_large, allowed", [
    ("resolution", 1_000_000_000, "a multiple of 8, from 8 to 4096 (or leave it out)"),
    ("batch", 257, "an integer from 1 to 256"), ("cache_batch", 257, "an integer from 1 to 256"),
    ("accumulation", 1025, "an integer from 1 to 1024"), ("steps", 1_000_001, "an integer from 1 to 1000000"),
    ("warmup_steps", 1_000_001, "an integer from 0 to 1000000"),
    ("checkpoint_every", 1_000_001, "an integer from 1 to 1000000"),
    ("keep_checkpoints", 1_000_001, "an integer from 0 to 1000000"),
])
def test_sizes_are_bounded_and_the_bound_itself_is_allowed(name, too_large, allowed):
    with pytest.raises(TrainingError, match=rf"^{flag(name)} {too_large} is not allowed; allowed: "
                                            rf"{allowed.replace('(', '[(]').replace(')', '[)]')}$"):
        parse_train_args(["train", *REQUIRED, flag(name), str(too_large)])
    largest = setting_of(name).bounds.high
    assert getattr(parse_train_args(["train", *REQUIRED, flag(name), str(largest)]), name) == largest


def test_an_absurd_resolution_exits_2_before_anything_loads(tmp_path):
    # The real command line. --base-model and --data do not exist: had anything been read or loaded before the
    # settings were checked, the message would be about them (and the run took minutes, ending in MemoryError).
    repo = Path(__file__).resolve().parent.parent
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "--base-model", str(tmp_path / "model"),
                             "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                             "--resolution", "1000000000"], cwd=repo, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(repo)))
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["psa-trainer: error: --resolution 1000000000 is not allowed; allowed: a multiple of 8, from 8 "
                     "to 4096 (or leave it out)"], result.stderr
    assert not (tmp_path / "out").exists() and elapsed < 60  # importing torch is most of it (a few seconds)
