"""TrainingConfig is the one source of the training settings: the trainer's flags and config-file keys are its
fields with their defaults and checks, and the node's configuration is the same class."""
from __future__ import annotations

import json
from dataclasses import fields

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
