"""Command line and config file of `python -m trainer train`.

A config file (`--config run.yaml` or `.json`) holds the same settings as the flags, keyed by flag name
(`base-model` or `base_model`); flags given on the command line override it. Every value, from either, is
checked (type, range, allowed names) before anything else runs.
"""
from __future__ import annotations

import argparse
import math
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from psa_core.adapter_file import SAVE_DTYPES
from psa_core.json_text import JSONTextError, parse_json
from psa_core.training.errors import TrainingError
from psa_core.training.loop import DEFAULTS, MAX_SEED
from psa_core.training.loss import BETA_HELP, DEFAULT_BETA
from psa_core.training.optim import LR_SCHEDULES, OPTIMIZERS

PRECISIONS = ("auto", "no", "fp16", "bf16")
ADAPTER_SUFFIX = ".safetensors"
CHOICES = {"family": ("auto", "sd15", "sdxl"), "precision": PRECISIONS, "optimizer": OPTIMIZERS,
           "lr_schedule": LR_SCHEDULES, "data_format": ("auto", "sage", "pairs"), "device": ("auto", "cpu", "cuda"),
           "save_dtype": tuple(SAVE_DTYPES), "cache_dtype": ("float16", "float32")}


@dataclass
class TrainConfig:
    # model
    base_model: str = ""
    family: str = "auto"
    tokenizer: str | None = None
    # data
    data: str = ""
    data_format: str = "auto"
    profiles: str | None = None
    users: str | None = None
    embeddings: str | None = None
    encoder: str | None = None
    skip_invalid: bool = False
    resolution: int | None = None
    hflip: bool = DEFAULTS.hflip
    caption_dropout: float = DEFAULTS.caption_dropout
    embedding_dropout: float = DEFAULTS.embedding_dropout
    cache_dir: str | None = None
    cache_dtype: str = DEFAULTS.cache_dtype
    cache_batch: int = 8
    # training
    output: str = ""
    steps: int = 5000
    lr: float = DEFAULTS.lr
    lr_schedule: str = DEFAULTS.lr_schedule
    warmup_steps: int = DEFAULTS.warmup_steps
    optimizer: str = DEFAULTS.optimizer
    weight_decay: float = DEFAULTS.weight_decay
    batch: int = 1
    accumulation: int = 1
    beta: float = DEFAULT_BETA
    precision: str = "auto"
    gradient_checkpointing: bool = False
    max_grad_norm: float = DEFAULTS.max_grad_norm
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None
    device: str = "auto"
    save_dtype: str = "float32"
    output_name: str = "psa_adapter.safetensors"
    overwrite: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> TrainConfig:
        """Refuse any value of the wrong type, out of range or not among the allowed names (TrainingError naming
        the flag and what is allowed)."""
        for name in ("base_model", "data", "output"):
            if getattr(self, name) in ("", None):
                raise TrainingError(f"{_flag(name)} is required (on the command line or in --config)")
        for name, hint in typing.get_type_hints(TrainConfig).items():
            value = getattr(self, name)
            if not _allowed(name, value, hint):
                raise TrainingError(f"{_flag(name)} {_shown(value)} is not allowed; allowed: "
                                    f"{_allowed_text(name, hint)}")
        return self


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float | None = None
    above_low: bool = False  # the low end itself is not allowed
    multiple: int = 1

    def allows(self, value: float) -> bool:
        return ((value > self.low if self.above_low else value >= self.low)
                and (self.high is None or value <= self.high) and (self.multiple == 1 or value % self.multiple == 0))

    def describe(self, kind: type) -> str:
        what = f"a multiple of {self.multiple}," if self.multiple > 1 else "an integer" if kind is int else \
            "a finite number"
        if self.high is not None:
            return f"{what} from {self.low:g} to {self.high}"
        return f"{what} {'>' if self.above_low else '>='} {self.low:g}"


BOUNDS = {"steps": Bounds(1), "batch": Bounds(1), "accumulation": Bounds(1), "checkpoint_every": Bounds(1),
          "cache_batch": Bounds(1), "warmup_steps": Bounds(0), "keep_checkpoints": Bounds(0),
          "seed": Bounds(0, MAX_SEED), "resolution": Bounds(8, multiple=8), "lr": Bounds(0, above_low=True),
          "beta": Bounds(0, above_low=True), "weight_decay": Bounds(0), "max_grad_norm": Bounds(0),
          "caption_dropout": Bounds(0, 1), "embedding_dropout": Bounds(0, 1)}


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _kind(hint: object) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a TrainConfig field."""
    args = typing.get_args(hint) or (hint,)
    return next(a for a in args if a is not type(None)), type(None) in args


def _plain_file_name(name: str) -> bool:
    return (name == Path(name).name and "\\" not in name and name.endswith(ADAPTER_SUFFIX)
            and name != ADAPTER_SUFFIX and len(name.encode("utf-8", "replace")) <= 255)


def _allowed(name: str, value: object, hint: object) -> bool:
    kind, optional = _kind(hint)
    if value is None:
        return optional
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is str:
        return (isinstance(value, str) and "\0" not in value and value in CHOICES.get(name, (value,))
                and (name != "output_name" or _plain_file_name(value)))
    if not isinstance(value, (float, int) if kind is float else int) or not math.isfinite(value):
        return False
    return name not in BOUNDS or BOUNDS[name].allows(value)


def _allowed_text(name: str, hint: object) -> str:
    kind, optional = _kind(hint)
    if name in CHOICES:
        return ", ".join(CHOICES[name])
    if name == "output_name":
        return f"a file name ending in {ADAPTER_SUFFIX}, without folders (it is written into --output)"
    if kind is bool:
        return "true or false"
    text = BOUNDS[name].describe(kind) if name in BOUNDS else {int: "an integer", float: "a finite number",
                                                                 str: "text without NUL characters"}[kind]
    return text + (" (or leave it out)" if optional else "")


def build_parser(config_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The `psa-trainer` parser; `config_defaults` (from a config file) replace the built-in defaults."""
    parser = argparse.ArgumentParser(prog="psa-trainer", description="Train PSA adapters with Diffusion-DPO.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an adapter",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train a PSA adapter on a frozen SD1.5/SDXL base with Diffusion-DPO. "
                                "Runs on the CPU, one GPU, or several via `accelerate launch` / torchrun.")
    train.add_argument("--config", help="JSON or YAML file of settings keyed by flag name; flags override it")
    d = TrainConfig()
    model = train.add_argument_group("model")
    model.add_argument("--base-model", help="diffusers model folder, or single-file .safetensors checkpoint")
    model.add_argument("--family", choices=CHOICES["family"], default=d.family)
    model.add_argument("--tokenizer", help="CLIP tokenizer folder (vocab.json, merges.txt) for single-file "
                       "checkpoints; default: ComfyUI's comfy/sd1_tokenizer when the pack sits in ComfyUI")
    data = train.add_argument_group("data")
    data.add_argument("--data", help="SAGE folder (metadata.jsonl + images) or unlabelled pairs file (.jsonl/.csv "
                      "with safe, unsafe, category, caption)")
    data.add_argument("--data-format", choices=CHOICES["data_format"], default=d.data_format)
    data.add_argument("--profiles", help="profiles to label unlabelled pairs with (users.csv, .json or .jsonl); "
                      "for SAGE data with --encoder: the users table giving each User_ID's Banned categories")
    data.add_argument("--users", help="comma-separated User_IDs to use from --profiles (default: all)")
    data.add_argument("--embeddings", help="folder of {User_ID}.npy user embeddings (the reference layout)")
    data.add_argument("--encoder", help="profile encoder name: without --embeddings the embeddings are computed "
                      "with it (psa-structured-v1 needs no model); with --embeddings it names their encoder")
    data.add_argument("--skip-invalid", action=argparse.BooleanOptionalAction, default=d.skip_invalid,
                      help="leave out malformed lines and pairs with missing images (listed in the log) "
                      "instead of stopping")
    data.add_argument("--resolution", type=int, help="training resolution (default 512 SD1.5, 1024 SDXL)")
    data.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=d.hflip,
                      help="random horizontal flips, the same for winner and loser (caches both variants)")
    data.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                      help="probability of training a pair with the empty caption (applied once)")
    data.add_argument("--embedding-dropout", type=float, default=d.embedding_dropout,
                      help="probability of a zero user embedding, which trains the null user (off in the reference)")
    data.add_argument("--cache-dir", help="where VAE latents and text conditioning are cached "
                      "(default: <data folder>/.psa_cache)")
    data.add_argument("--cache-dtype", choices=CHOICES["cache_dtype"], default=d.cache_dtype)
    data.add_argument("--cache-batch", type=int, default=d.cache_batch, help="images per VAE call while caching")
    run = train.add_argument_group("training")
    run.add_argument("--output", help="output folder (adapter, log, plot, checkpoints)")
    run.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    run.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    run.add_argument("--lr-schedule", choices=CHOICES["lr_schedule"], default=d.lr_schedule)
    run.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    run.add_argument("--optimizer", choices=CHOICES["optimizer"], default=d.optimizer)
    run.add_argument("--weight-decay", type=float, default=d.weight_decay)
    run.add_argument("--batch", type=int, default=d.batch, help="pairs per process per micro-batch")
    run.add_argument("--accumulation", type=int, default=d.accumulation, help="micro-batches per optimizer step")
    run.add_argument("--beta", type=float, default=d.beta, help=BETA_HELP)
    run.add_argument("--precision", choices=CHOICES["precision"], default=d.precision,
                     help="autocast for the frozen UNet; trainable weights stay fp32 (auto: bf16 on GPUs "
                     "that support it, else no)")
    run.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                     default=d.gradient_checkpointing)
    run.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping (0: off)")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="0 keeps all")
    run.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    run.add_argument("--device", choices=CHOICES["device"], default=d.device)
    run.add_argument("--save-dtype", choices=CHOICES["save_dtype"], default=d.save_dtype)
    run.add_argument("--output-name", default=d.output_name,
                     help=f"file name of the trained adapter in --output (ending in {ADAPTER_SUFFIX})")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=d.overwrite,
                     help="replace a finished adapter of the same name in --output (without it, such a run stops "
                     "before it starts)")
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
    hints = typing.get_type_hints(TrainConfig)
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            raise TrainingError(f"{path.name}: unknown setting {_shown(key)}; allowed: "
                                f"{', '.join(sorted(n.replace('_', '-') for n in hints))}")
        kind, _ = _kind(hints[name])
        if kind in (int, float) and isinstance(value, str):  # YAML reads 1e-4 as text, as a flag's value is
            try:
                value = kind(value.strip())
            except ValueError:
                raise TrainingError(f"{path.name}: {key} {_shown(value)} is not allowed; allowed: "
                                    f"{_allowed_text(name, hints[name])}") from None
        settings[name] = value
    return settings


def parse_train_args(argv: list[str]) -> TrainConfig:
    """Parse `train ...` arguments: built-in defaults < config file < command-line flags."""
    args = build_parser().parse_args(argv)
    if args.config:
        args = build_parser(read_config_file(args.config)).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values).validate()
