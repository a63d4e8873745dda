"""Command line and config file of `python -m trainer train`.

A config file (`--config run.yaml` or `.json`) holds the same settings as the flags, keyed by flag name
(`base-model` or `base_model`); flags given on the command line override it.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from psa_core.training.errors import TrainingError
from psa_core.training.loop import DEFAULTS
from psa_core.training.loss import BETA_HELP, DEFAULT_BETA
from psa_core.training.optim import LR_SCHEDULES, OPTIMIZERS

PRECISIONS = ("auto", "no", "fp16", "bf16")


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

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> TrainConfig:
        for name in ("base_model", "data", "output"):
            if not getattr(self, name):
                raise TrainingError(f"--{name.replace('_', '-')} is required (on the command line or in --config)")
        checks = [("family", self.family, ("auto", "sd15", "sdxl")), ("precision", self.precision, PRECISIONS),
                  ("optimizer", self.optimizer, OPTIMIZERS), ("lr-schedule", self.lr_schedule, LR_SCHEDULES),
                  ("data-format", self.data_format, ("auto", "sage", "pairs")),
                  ("device", self.device, ("auto", "cpu", "cuda")),
                  ("save-dtype", self.save_dtype, ("float32", "float16", "bfloat16")),
                  ("cache-dtype", self.cache_dtype, ("float16", "float32"))]
        for flag, value, allowed in checks:
            if value not in allowed:
                raise TrainingError(f"--{flag} {value!r} is not allowed; allowed: {', '.join(allowed)}")
        positive = [("steps", self.steps), ("batch", self.batch), ("accumulation", self.accumulation),
                    ("checkpoint-every", self.checkpoint_every), ("cache-batch", self.cache_batch)]
        for flag, value in positive:
            if value < 1:
                raise TrainingError(f"--{flag} must be at least 1, got {value}")
        if self.lr <= 0 or self.beta <= 0:
            raise TrainingError("--lr and --beta must be positive")
        if self.resolution is not None and self.resolution < 8:
            raise TrainingError(f"--resolution {self.resolution} is too small")
        for flag, value in (("caption-dropout", self.caption_dropout), ("embedding-dropout", self.embedding_dropout)):
            if not 0 <= value <= 1:
                raise TrainingError(f"--{flag} must be between 0 and 1, got {value}")
        return self


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
    model.add_argument("--family", choices=("auto", "sd15", "sdxl"), default=d.family)
    model.add_argument("--tokenizer", help="CLIP tokenizer folder (vocab.json, merges.txt) for single-file "
                       "checkpoints; default: ComfyUI's comfy/sd1_tokenizer when the pack sits in ComfyUI")
    data = train.add_argument_group("data")
    data.add_argument("--data", help="SAGE folder (metadata.jsonl + images) or unlabelled pairs file (.jsonl/.csv "
                      "with safe, unsafe, category, caption)")
    data.add_argument("--data-format", choices=("auto", "sage", "pairs"), default=d.data_format)
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
    data.add_argument("--cache-dtype", choices=("float16", "float32"), default=d.cache_dtype)
    data.add_argument("--cache-batch", type=int, default=d.cache_batch, help="images per VAE call while caching")
    run = train.add_argument_group("training")
    run.add_argument("--output", help="output folder (adapter, log, plot, checkpoints)")
    run.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    run.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    run.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule)
    run.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    run.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    run.add_argument("--weight-decay", type=float, default=d.weight_decay)
    run.add_argument("--batch", type=int, default=d.batch, help="pairs per process per micro-batch")
    run.add_argument("--accumulation", type=int, default=d.accumulation, help="micro-batches per optimizer step")
    run.add_argument("--beta", type=float, default=d.beta, help=BETA_HELP)
    run.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                     help="autocast for the frozen UNet; trainable weights stay fp32 (auto: bf16 on GPUs "
                     "that support it, else no)")
    run.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                     default=d.gradient_checkpointing)
    run.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping (0: off)")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="0 keeps all")
    run.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    run.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default=d.save_dtype)
    run.add_argument("--output-name", default=d.output_name, help="file name of the trained adapter")
    if config_defaults:
        train.set_defaults(**config_defaults)
    return parser


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise TrainingError(f"{path.name}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                            f"({error})") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path.name}: expected a mapping of settings, found {type(data).__name__}")
    allowed = {f.name for f in fields(TrainConfig)}
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            raise TrainingError(f"{path.name}: unknown setting {key!r}; allowed: "
                                f"{', '.join(sorted(n.replace('_', '-') for n in allowed))}")
        settings[name] = value
    return settings


def parse_train_args(argv: list[str]) -> TrainConfig:
    """Parse `train ...` arguments: built-in defaults < config file < command-line flags."""
    args = build_parser().parse_args(argv)
    if args.config:
        args = build_parser(read_config_file(args.config)).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values).validate()
