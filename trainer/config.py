"""Command line and config file of `python -m trainer train`.

The flags are psa_core.training.config.TrainingConfig's fields, with their defaults, allowed values and help. A
config file (`--config run.yaml` or `.json`) holds the same settings, keyed by flag name (`base-model` or
`base_model`); flags given on the command line override it. Every value, from either, is checked by
TrainingConfig (type, range, allowed names) before anything else runs.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import yaml

from psa_core.errors import shown
from psa_core.json_text import JSONTextError, parse_json
from psa_core.training.config import (
    GROUPS,
    SettingError,
    TrainingConfig,
    allowed_text,
    kind_of,
    setting_of,
)
from psa_core.training.errors import TrainingError

REQUIRED = ("base_model", "data", "output")


def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def build_parser(config_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The `psa-trainer` parser, one flag per TrainingConfig field; `config_defaults` (from a config file) replace
    the built-in defaults."""
    parser = argparse.ArgumentParser(prog="psa-trainer", description="Train PSA adapters with Diffusion-DPO.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an adapter",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train a PSA adapter on a frozen SD1.5/SDXL base with Diffusion-DPO. "
                                "Runs on the CPU, one GPU, or several via `accelerate launch` / torchrun.")
    train.add_argument("--config", help="JSON or YAML file of settings keyed by flag name; flags override it")
    groups = {name: train.add_argument_group(name) for name in GROUPS}
    for item in fields(TrainingConfig):
        meta, (kind, _) = setting_of(item.name), kind_of(item.name)
        options: dict = {"default": item.default, "help": meta.help or None}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif meta.choices:
            options["choices"] = meta.choices
        elif kind in (int, float):
            options["type"] = kind
        groups[meta.group].add_argument(flag(item.name), **options)
    if config_defaults:
        train.set_defaults(**config_defaults)
    return parser


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"config file not found: {path}")
    syntax = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_json(text) if syntax == "JSON" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingError(f"--config {path}: cannot be read ({error})") from None
    except (JSONTextError, yaml.YAMLError, RecursionError, ValueError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:300]
        raise TrainingError(f"{path.name}: not valid {syntax} ({reason})") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path.name}: expected a mapping of settings, found {type(data).__name__}")
    names = {item.name for item in fields(TrainingConfig)}
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise TrainingError(f"{path.name}: unknown setting {shown(key)}; allowed: "
                                f"{', '.join(sorted(n.replace('_', '-') for n in names))}")
        kind, _ = kind_of(name)
        if kind in (int, float) and isinstance(value, str):  # YAML reads 1e-4 as text, as a flag's value is
            try:
                value = kind(value.strip())
            except ValueError:
                raise TrainingError(f"{path.name}: {key} {shown(value)} is not allowed; allowed: "
                                    f"{allowed_text(name)}") from None
        settings[name] = value
    return settings


def parse_train_args(argv: list[str]) -> TrainingConfig:
    """Parse `train ...` arguments: built-in defaults < config file < command-line flags. Every value is checked
    (TrainingError naming the flag and what is allowed) before anything runs."""
    args = build_parser().parse_args(argv)
    if args.config:
        args = build_parser(read_config_file(args.config)).parse_args(argv)
    values = {item.name: getattr(args, item.name) for item in fields(TrainingConfig)}
    for name in REQUIRED:
        if values[name] in ("", None):
            raise TrainingError(f"{flag(name)} is required (on the command line or in --config)")
    try:
        return TrainingConfig(**values)
    except SettingError as error:
        raise TrainingError(error.describe(flag(error.name))) from None
