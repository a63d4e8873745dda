"""Every setting of a training run, in one place: its default, its allowed values, its help and its check.

`TrainingConfig` is the one source of truth for both front ends. The standalone trainer derives its command-line
flags and config-file keys from the fields (trainer/config.py); the training node builds it by keyword from its
widgets and the dataset, and constructing it checks every value, linked ones included. Adding a setting means
adding a field here (with `setting(...)`) and using it. Defaults are PSAlign's SD1.5 recipe (docs/training.md §5).
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..adapter_file import SAVE_DTYPES
from ..errors import shown
from ..families import FAMILY_NAMES
from ..precision import DEVICES, PRECISION_DTYPES, PRECISIONS  # noqa: F401  (re-exported for the front ends)
from .cache import STORAGE_DTYPES
from .errors import TrainingError
from .inputs import DATA_FORMATS
from .loss import BETA_HELP, DEFAULT_BETA
from .optim import LR_SCHEDULES, OPTIMIZERS

MAX_SEED = 2**63 - 1  # every random number of a run comes from derived_seed(seed, ...), which takes any of these
DEFAULT_RESOLUTION = {"sd15": 512, "sdxl": 1024}  # the families' native training sizes
ADAPTER_SUFFIX = ".safetensors"
GROUPS = ("model", "data", "training")
# Upper bounds on sizes, checked with every other value before anything loads (docs/training.md §5): a size past
# them can only end in an out-of-memory error after the model has loaded. The same as the training node's widgets.
MAX_RESOLUTION = 4096  # 4 x SDXL's native 1024 (a 512 x 512 latent); generate's width/height bound too
MAX_BATCH = 256  # pairs per micro-batch (512 UNet samples), and images per VAE call while caching
MAX_ACCUMULATION = 1024  # micro-batches per optimizer step
MAX_STEPS = 1_000_000  # 200 x PSAlign's 5000 steps; bounds warmup, checkpoint interval and kept checkpoints too


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


@dataclass(frozen=True)
class Setting:
    """What a field of TrainingConfig means to the front ends."""

    group: str
    help: str = ""
    choices: tuple[str, ...] | None = None
    bounds: Bounds | None = None
    file_name: bool = False  # a plain file name ending in ADAPTER_SUFFIX, without folders


def setting(default: object, group: str, help: str = "", *, choices: tuple[str, ...] | None = None,
            bounds: Bounds | None = None, file_name: bool = False):
    if group not in GROUPS:
        raise ValueError(f"setting group {group!r}; allowed: {', '.join(GROUPS)}")
    return field(default=default, metadata={"setting": Setting(group, help, choices, bounds, file_name)})


class SettingError(TrainingError):
    """A value of the wrong type, out of range or not among the allowed names; `name` is the field."""

    def __init__(self, name: str, value: object, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(self.describe(name))

    def describe(self, spelled: str) -> str:
        return f"{spelled} {shown(self.value)} is not allowed; allowed: {self.allowed}"


@dataclass(frozen=True)
class TrainingConfig:
    """One training run's settings. Paths are the trainer's; the node leaves them empty (its models, data and
    output come from the graph)."""

    # model
    base_model: str = setting("", "model", "diffusers model folder, or single-file .safetensors checkpoint")
    family: str = setting("auto", "model", choices=("auto", *FAMILY_NAMES))
    tokenizer: str | None = setting(None, "model", "CLIP tokenizer folder (vocab.json, merges.txt) for single-file "
                                    "checkpoints; default: ComfyUI's comfy/sd1_tokenizer when the pack sits in "
                                    "ComfyUI")
    # data
    data: str = setting("", "data", "SAGE folder (metadata.jsonl + images) or unlabelled pairs file (.jsonl/.csv "
                        "with safe, unsafe, category, caption)")
    data_format: str = setting("auto", "data", choices=DATA_FORMATS)
    profiles: str | None = setting(None, "data", "profiles to label unlabelled pairs with (users.csv, .json or "
                                   ".jsonl); for SAGE data with --encoder: the users table giving each User_ID's "
                                   "Banned categories")
    users: str | None = setting(None, "data", "comma-separated User_IDs to use from --profiles (default: all)")
    embeddings: str | None = setting(None, "data", "folder of {User_ID}.npy user embeddings (the reference layout)")
    encoder: str | None = setting(None, "data", "profile encoder name: without --embeddings the embeddings are "
                                  "computed with it (psa-structured-v1 needs no model); with --embeddings it names "
                                  "their encoder")
    skip_invalid: bool = setting(False, "data", "leave out malformed lines and pairs with missing images (listed in "
                                 "the log) instead of stopping")
    resolution: int | None = setting(None, "data", "training resolution (default 512 SD1.5, 1024 SDXL)",
                                     bounds=Bounds(8, MAX_RESOLUTION, multiple=8))
    hflip: bool = setting(True, "data", "random horizontal flips, the same for winner and loser (caches both "
                          "variants)")
    caption_dropout: float = setting(0.2, "data", "probability of training a pair with the empty caption (applied "
                                     "once)", bounds=Bounds(0, 1))
    embedding_dropout: float = setting(0.0, "data", "probability of a zero user embedding, which trains the null "
                                       "user (off in the reference)", bounds=Bounds(0, 1))
    cache_dir: str | None = setting(None, "data", "where VAE latents and text conditioning are cached (default: "
                                    "<data folder>/.psa_cache)")
    cache_dtype: str = setting("float16", "data", choices=tuple(STORAGE_DTYPES))
    cache_batch: int = setting(8, "data", "images per VAE call while caching", bounds=Bounds(1, MAX_BATCH))
    # training
    output: str = setting("", "training", "output folder (adapter, log, plot, checkpoints)")
    steps: int = setting(5000, "training", "optimizer steps", bounds=Bounds(1, MAX_STEPS))
    lr: float = setting(5e-6, "training", "learning rate", bounds=Bounds(0, above_low=True))
    lr_schedule: str = setting("constant_with_warmup", "training", choices=LR_SCHEDULES)
    warmup_steps: int = setting(500, "training", bounds=Bounds(0, MAX_STEPS))
    optimizer: str = setting("adamw", "training", choices=OPTIMIZERS)
    weight_decay: float = setting(1e-2, "training", bounds=Bounds(0))
    adam_epsilon: float = setting(1e-8, "training", "AdamW's epsilon (the optimizer's denominator term)",
                                  bounds=Bounds(0, above_low=True))
    batch: int = setting(1, "training", "pairs per process per micro-batch", bounds=Bounds(1, MAX_BATCH))
    accumulation: int = setting(1, "training", "micro-batches per optimizer step",
                                bounds=Bounds(1, MAX_ACCUMULATION))
    beta: float = setting(DEFAULT_BETA, "training", BETA_HELP, bounds=Bounds(0, above_low=True))
    precision: str = setting("auto", "training", "the UNet's compute precision; trainable weights stay fp32 (auto: "
                             "the trainer picks bf16 on GPUs that support it, else fp32; the node keeps the dtype "
                             "the graph loaded the model in)", choices=PRECISIONS)
    gradient_checkpointing: bool = setting(False, "training")
    max_grad_norm: float = setting(1.0, "training", "gradient clipping (0: off)", bounds=Bounds(0))
    seed: int = setting(0, "training", bounds=Bounds(0, MAX_SEED))
    checkpoint_every: int = setting(500, "training", "steps between checkpoints", bounds=Bounds(1, MAX_STEPS))
    keep_checkpoints: int = setting(3, "training", "0 keeps all", bounds=Bounds(0, MAX_STEPS))
    resume: str | None = setting(None, "training", "'latest' or a checkpoint folder to continue from")
    device: str = setting("auto", "training", choices=DEVICES)
    save_dtype: str = setting("float32", "training", choices=tuple(SAVE_DTYPES))
    output_name: str = setting("psa_adapter.safetensors", "training", "file name of the trained adapter in --output "
                               f"(ending in {ADAPTER_SUFFIX})", file_name=True)
    overwrite: bool = setting(False, "training", "replace a finished adapter of the same name in --output (without "
                              "it, such a run stops before it starts)")

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if not _allowed(name, value):
                raise SettingError(name, value, allowed_text(name))

    def to_dict(self) -> dict:
        return asdict(self)

    def resolution_for(self, family_name: str) -> int:
        return self.resolution or DEFAULT_RESOLUTION[family_name]

    def user_ids(self) -> list[str]:
        return [u.strip() for u in (self.users or "").split(",") if u.strip()]


def short_run_warmup(steps: int) -> int:
    """PSAlign warms up for 500 of 5000 steps; a shorter run warms up for the same tenth."""
    return min(default_of("warmup_steps"), steps // 10)


def setting_of(name: str) -> Setting:
    return _FIELDS[name].metadata["setting"]


def default_of(name: str) -> object:
    return _FIELDS[name].default


def kind_of(name: str) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a TrainingConfig field."""
    hint = _HINTS[name]
    args = typing.get_args(hint) or (hint,)
    return next(a for a in args if a is not type(None)), type(None) in args


def allowed_text(name: str) -> str:
    kind, optional = kind_of(name)
    meta = setting_of(name)
    if meta.choices:
        return ", ".join(meta.choices)
    if meta.file_name:
        return f"a file name ending in {ADAPTER_SUFFIX}, without folders (it is written into --output)"
    if kind is bool:
        return "true or false"
    text = meta.bounds.describe(kind) if meta.bounds else {int: "an integer", float: "a finite number",
                                                           str: "text without NUL characters"}[kind]
    return text + (" (or leave it out)" if optional else "")


def _plain_file_name(name: str) -> bool:
    return (name == Path(name).name and "\\" not in name and name.endswith(ADAPTER_SUFFIX)
            and name != ADAPTER_SUFFIX and len(name.encode("utf-8", "replace")) <= 255)


def _allowed(name: str, value: object) -> bool:
    kind, optional = kind_of(name)
    meta = setting_of(name)
    if value is None:
        return optional
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is str:
        return (isinstance(value, str) and "\0" not in value and value in (meta.choices or (value,))
                and (not meta.file_name or _plain_file_name(value)))
    if not isinstance(value, (float, int) if kind is float else int) or not math.isfinite(value):
        return False
    return meta.bounds is None or meta.bounds.allows(value)


_FIELDS = {f.name: f for f in fields(TrainingConfig)}
_HINTS = typing.get_type_hints(TrainingConfig)
