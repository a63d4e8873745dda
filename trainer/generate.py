"""`python -m trainer generate`: render a prompt set for a list of profiles with a base model and a PSA adapter, for
evaluation (docs/evaluation.md §3, §10), offline with diffusers.

Every row of the prompt set is rendered for every profile (InPro per level), or with `--per-row-user` once with its
own row's user (the judge). The defaults are the reference's sampler settings. Images go to `OUT/<profile>/<name>.png`
(`.jpg` with `--image-format jpeg`: PIL, quality 75, as the reference saved its images) with the manifest `OUT/generation.csv` and the settings `OUT/generation.json`; what goes where is decided by
psa_core/evaluation/generation.py. The run is resumable: a complete image of the same settings is skipped, a folder
of other settings is refused. Under `torchrun` / `accelerate launch` each process renders every world-size-th item.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from psa_core.dataset_build.prompt_pairs import MAX_SEED
from psa_core.text_limits import MAX_PROMPT_CHARS, check_text, limit_text
from psa_core.errors import PSAError
from psa_core.evaluation import EvaluationError
from psa_core.evaluation.generation import (
    BASE_PROFILE,
    IMAGE_OUTPUT_FORMATS,
    JPEG_QUALITY,
    MANIFEST_NAME,
    PNG_TEXT_KEY,
    PROMPT_SUFFIXES,
    SETTINGS_FORMAT,
    SETTINGS_NAME,
    GenerationItem,
    PromptSet,
    atomic_file,
    canonical_json,
    check_existing_settings,
    check_profile_label,
    image_key,
    image_text,
    jpeg_comment,
    output_folder_state,
    plan_items,
    read_prompt_set,
    remove_partial_files,
    shard,
    stored_caption_matches,
    text_from_jpeg_comment,
    world_from_env,
    write_manifest,
    write_settings,
)
from psa_core.embedding import USER_FILE_SUFFIXES, user_embedding_file
from psa_core.outputs import check_writable
from psa_core.precision import DEVICES, PRECISIONS, resolve_compute
from psa_core.profile import EVALUATION_USERS, read_users_table

FAMILIES = ("auto", "sd15", "sdxl")
NEGATIVE_MODES = ("same", "reference")
# The reference's default negative prompt for PSA images (docs/evaluation.md §3).
REFERENCE_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
MAX_BATCH = 64
MAX_STEPS = 1000
MAX_SCALE = 10.0
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow")


def _samplers() -> tuple[str, ...]:
    from .build_data import (
        PIPELINE_SAMPLERS,  # build_data imports torch; the tuple is all this needs
    )

    return PIPELINE_SAMPLERS


@dataclass
class GenerateConfig:
    prompts: str
    base_model: str
    out: str
    adapter: str | None = None
    family: str = "auto"
    tokenizer: str | None = None
    levels: str | None = None
    users: str | None = None
    embeddings: str | None = None
    embedding: list[str] = field(default_factory=list)
    per_row_user: bool = False
    negative_prompt: str | None = None
    negative_prompt_mode: str = "same"
    steps: int = 40
    guidance: float = 7.5
    seed: int = 2025
    width: int | None = None
    height: int | None = None
    sampler: str = "default"
    scale: float = 1.0
    device: str = "auto"
    precision: str = "auto"
    limit: int | None = None
    batch: int = 1
    image_format: str = "png"

    def validate(self) -> GenerateConfig:
        for flag, value, allowed in (("family", self.family, FAMILIES), ("sampler", self.sampler, _samplers()),
                                     ("precision", self.precision, PRECISIONS), ("device", self.device, DEVICES),
                                     ("negative-prompt-mode", self.negative_prompt_mode, NEGATIVE_MODES),
                                     ("image-format", self.image_format, tuple(IMAGE_OUTPUT_FORMATS))):
            if value not in allowed:
                raise EvaluationError(f"--{flag} {value!r} is not allowed; allowed: {', '.join(allowed)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise EvaluationError(f"--steps {self.steps} is not allowed; allowed: 1 to {MAX_STEPS}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise EvaluationError(f"--guidance {self.guidance} is not allowed; allowed: a finite number >= 0")
        if not math.isfinite(self.scale) or abs(self.scale) > MAX_SCALE:
            raise EvaluationError(f"--scale {self.scale} is not allowed; allowed: -{MAX_SCALE} to {MAX_SCALE}")
        if not 0 <= self.seed <= MAX_SEED:
            raise EvaluationError(f"--seed {self.seed} is not allowed; allowed: 0 to {MAX_SEED}")
        from psa_core.training.config import MAX_RESOLUTION  # the trainer's bound: one size limit for both

        for flag, value in (("width", self.width), ("height", self.height)):
            if value is not None and (value < 8 or value % 8 or value > MAX_RESOLUTION):
                raise EvaluationError(f"--{flag} {value} is not allowed; allowed: a multiple of 8 from 8 to "
                                      f"{MAX_RESOLUTION}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"--limit {self.limit} is not allowed; allowed: at least 1 (the first N rows)")
        if not 1 <= self.batch <= MAX_BATCH:
            raise EvaluationError(f"--batch {self.batch} is not allowed; allowed: 1 to {MAX_BATCH}")
        if self.precision == "fp16" and self.device == "cpu":
            raise EvaluationError("--precision fp16 needs --device cuda; allowed on the CPU: auto, fp32, bf16")
        prompts = Path(self.prompts)
        if prompts.suffix.lower() not in PROMPT_SUFFIXES:
            raise EvaluationError(f"--prompts {self.prompts}: allowed: a .csv (Sage file_name, caption, user_id, or a "
                                  "caption column) or a .txt with one caption per line")
        if not prompts.is_file():
            raise EvaluationError(f"--prompts {self.prompts}: file not found")
        if not Path(self.base_model).exists():
            raise EvaluationError(f"--base-model {self.base_model}: not found; allowed: a diffusers model folder or a "
                                  "single-file .safetensors checkpoint")
        if self.adapter is not None and not Path(self.adapter).is_file():
            raise EvaluationError(f"--adapter {self.adapter}: file not found; allowed: a PSA adapter (.safetensors or "
                                  "the reference .bin)")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise EvaluationError(f"--out {self.out} is a file; allowed: a folder (created, or completed when it "
                                  "holds a run of the same settings)")
        if self.negative_prompt is not None:
            check_text(self.negative_prompt, "--negative-prompt")
        if self.negative_prompt_mode == "reference" and self.negative_prompt is not None:
            raise EvaluationError("--negative-prompt cannot be combined with --negative-prompt-mode reference, which "
                                  f"uses the reference's '{REFERENCE_NEGATIVE}' for PSA images and none without "
                                  "--adapter; allowed: --negative-prompt with --negative-prompt-mode same")
        self._validate_profiles()
        return self

    def _validate_profiles(self) -> None:
        chosen = [flag for flag, value in (("--levels", self.levels), ("--users", self.users),
                                           ("--embedding", self.embedding)) if value]
        if self.per_row_user and chosen:
            raise EvaluationError(f"--per-row-user renders each row with its own row's user; it cannot be combined "
                                  f"with {', '.join(chosen)}; allowed: --per-row-user with --embeddings, or profiles "
                                  "without --per-row-user")
        if self.adapter is None:
            given = chosen + (["--embeddings"] if self.embeddings else [])
            if given:
                raise EvaluationError(f"{', '.join(given)} without --adapter: the base model renders the same image for "
                                      f"every profile; allowed: no profile flags (images go to OUT/{BASE_PROFILE}/), "
                                      "--per-row-user (one folder per row's user), or --adapter")
            return
        if self.per_row_user:
            if not self.embeddings:
                raise EvaluationError("--per-row-user needs --embeddings DIR holding {User_ID}.npy (or .safetensors) "
                                      "for every row's user_id")
        elif not chosen:
            raise EvaluationError("--adapter needs profiles: --levels (e.g. level_0,level_3), --users FILE with "
                                  "--embeddings DIR, --embedding FILE, or --per-row-user with --embeddings DIR")
        if (self.levels or self.users) and not self.embeddings:
            flag = "--levels" if self.levels else "--users"
            raise EvaluationError(f"{flag} needs --embeddings DIR holding {{User_ID}}.npy (or .safetensors) for its "
                                  "users")
        if self.embeddings and not Path(self.embeddings).is_dir():
            raise EvaluationError(f"--embeddings {self.embeddings}: not a folder; allowed: a folder of {{User_ID}}.npy "
                                  "or .safetensors files")
        for level in self.level_names():
            if level not in EVALUATION_USERS:
                raise EvaluationError(f"--levels: {level!r} is not a level user; allowed: "
                                      f"{', '.join(EVALUATION_USERS)} (comma-separated)")
        if self.users and not Path(self.users).is_file():
            raise EvaluationError(f"--users {self.users}: file not found; allowed: a users table (users.csv)")
        for file in self.embedding:
            path = Path(file)
            if path.suffix.lower() not in USER_FILE_SUFFIXES or not path.is_file():
                raise EvaluationError(f"--embedding {file}: not found or not allowed; allowed: an existing "
                                      f"{' or '.join(USER_FILE_SUFFIXES)} file with one embedding")
            check_profile_label(path.stem, f"--embedding {file}")

    def level_names(self) -> list[str]:
        return [name.strip() for name in (self.levels or "").split(",") if name.strip()]

    def negative_for_run(self) -> str:
        """The negative prompt of every image of this run: `same` uses --negative-prompt (default: the reference's)
        whatever the arm; `reference` gives PSA images the reference's and a run without adapter none."""
        if self.negative_prompt_mode == "reference":
            return REFERENCE_NEGATIVE if self.adapter else ""
        return REFERENCE_NEGATIVE if self.negative_prompt is None else self.negative_prompt


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors (unknown flags, bad numbers) also exit 2, one line
        raise EvaluationError(f"{message} (see `python -m trainer generate --help`)")


def build_parser() -> argparse.ArgumentParser:
    d = GenerateConfig("", "", "")
    parser = _Parser(
        prog="psa-trainer generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Render a prompt set for a list of profiles with a base model and (optionally) a PSA adapter into "
                    "OUT/<profile>/<name>.png (or .jpg) with a manifest OUT/generation.csv, for `score` and the judge. Defaults "
                    "are the reference's sampler settings (docs/evaluation.md §3). Resumable: complete images are "
                    "skipped when it is run again with the same settings.")
    parser.add_argument("--prompts", required=True, help="the prompt set: a Sage CSV (file_name, caption, user_id), a "
                        "CSV with a caption column (optionally file_name, category, user_id), or a .txt with one "
                        "caption per line")
    parser.add_argument("--base-model", required=True, help="diffusers model folder, or single-file .safetensors "
                        "checkpoint")
    parser.add_argument("--out", required=True, help="the output folder: new or empty (created when missing), or an "
                        "output folder of generate with the same settings, which is completed; a folder holding "
                        "anything else is refused, and no file generate did not write is replaced or deleted")
    parser.add_argument("--adapter", help="PSA adapter file; without it the base model renders (the baseline arm)")
    parser.add_argument("--family", default=d.family, help=f"model family: {', '.join(FAMILIES)}")
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder (vocab.json, merges.txt) for single-file "
                        "checkpoints; default: ComfyUI's comfy/sd1_tokenizer when the pack sits in ComfyUI")
    parser.add_argument("--levels", help=f"level users, comma-separated: {', '.join(EVALUATION_USERS)} (embeddings "
                        "from --embeddings by their User_ID)")
    parser.add_argument("--users", help="a users table (users.csv): every user in it is a profile, named by its "
                        "7-digit User_ID (embeddings from --embeddings)")
    parser.add_argument("--embeddings", help="folder of {User_ID}.npy or .safetensors embeddings")
    parser.add_argument("--embedding", action="append", default=[], help="one embedding file (.npy, .safetensors); "
                        "the profile is named after the file's stem; may be given several times")
    parser.add_argument("--per-row-user", action="store_true", help="render each row once, with its own row's "
                        "user_id (for the judge) instead of every row for every profile")
    parser.add_argument("--negative-prompt", help=f"the negative prompt of every image (mode same; default: "
                        f"'{REFERENCE_NEGATIVE}'); {limit_text(MAX_PROMPT_CHARS).lower().rstrip('.')}")
    parser.add_argument("--negative-prompt-mode", default=d.negative_prompt_mode, help="same: --negative-prompt for "
                        "every run, with or without adapter; reference: as the reference, the default negative prompt "
                        "for PSA images and none without --adapter")
    parser.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=d.seed, help="the seed of every prompt (each prompt starts from "
                        "the same noise)")
    parser.add_argument("--width", type=int, help="image width (default 512 SD1.5, 1024 SDXL)")
    parser.add_argument("--height", type=int, help="image height (default 512 SD1.5, 1024 SDXL)")
    parser.add_argument("--sampler", default=d.sampler, help=f"{', '.join(_samplers())}; default: the model folder's "
                        "own scheduler (PNDM for an SD1.5 single file, Euler discrete for SDXL)")
    parser.add_argument("--scale", type=float, default=d.scale, help="adapter scale (strength)")
    parser.add_argument("--device", default=d.device, help=f"{', '.join(DEVICES)}")
    parser.add_argument("--precision", default=d.precision, help=f"{', '.join(PRECISIONS)} (auto: fp16 on a GPU, "
                        "fp32 on the CPU)")
    parser.add_argument("--image-format", default=d.image_format, help=f"{', '.join(IMAGE_OUTPUT_FORMATS)}: png "
                        f"(lossless, OUT/<profile>/<name>.png) or jpeg (PIL, quality {JPEG_QUALITY}, as the reference "
                        "saved the images it scored; OUT/<profile>/<name>.jpg); a setting of the run, like --steps")
    parser.add_argument("--limit", type=int, help="only the first N rows of the prompt set (smoke runs)")
    parser.add_argument("--batch", type=int, default=d.batch, help="images per sampler call (each with its own "
                        "generator, so the images equal batch 1's up to floating-point noise)")
    return parser


def parse_generate_args(argv: list[str]) -> GenerateConfig:
    return GenerateConfig(**vars(build_parser().parse_args(argv))).validate()


# ---- profiles ----

@dataclass(frozen=True)
class Profile:
    label: str
    user_id: str | None
    source: str
    vector: object  # torch.Tensor [E]

    @property
    def fingerprint(self) -> str:
        """sha256 of the float32 vector: the same embedding from .npy or .safetensors is the same profile."""
        return hashlib.sha256(self.vector.float().contiguous().numpy().tobytes()).hexdigest()


def _load_one(path: Path, what: str):
    from psa_core.embedding import load_user_vector

    try:
        return load_user_vector(path)
    except PSAError as error:
        raise EvaluationError(f"{what}: {error}") from None


def _from_folder(folder: Path, user_ids: list[str], flag: str) -> dict[str, Path]:
    files, missing = {}, []
    for user_id in user_ids:
        found = user_embedding_file(folder, user_id)
        files[user_id] = found
        if found is None:
            missing.append(user_id)
    if missing:
        shown = ", ".join(f"{u}.npy" for u in missing[:10]) + (f" and {len(missing) - 10} more"
                                                               if len(missing) > 10 else "")
        raise EvaluationError(f"--embeddings {folder}: no embedding for {len(missing)} user"
                              f"{'s' if len(missing) != 1 else ''} of {flag}: {shown}; allowed: a folder with "
                              "{User_ID}.npy or .safetensors for each (never a zero vector in their place)")
    return files


def resolve_profiles(config: GenerateConfig, prompts: PromptSet) -> list[Profile]:
    """The profiles of the run, in order: levels, users-table users, single embeddings; or each row's user."""
    if config.adapter is None:
        if config.per_row_user:
            if not prompts.has_users:
                plan_items(prompts, None, config.seed)  # raises, naming the rows without a user_id
            return [Profile(u, u, "", None) for u in dict.fromkeys(row.user_id for row in prompts.rows)]
        return [Profile(BASE_PROFILE, None, "", None)]
    folder = Path(config.embeddings) if config.embeddings else None
    wanted: list[tuple[str, str, str]] = []  # (label, user_id, flag)
    if config.per_row_user:
        if not prompts.has_users:
            plan_items(prompts, None, config.seed)
        wanted = [(u, u, "--per-row-user") for u in dict.fromkeys(row.user_id for row in prompts.rows)]
    else:
        wanted += [(level, EVALUATION_USERS[level].user_id, "--levels") for level in config.level_names()]
        if config.users:
            try:
                table = read_users_table(config.users)
            except PSAError as error:
                raise EvaluationError(f"--users: {error}") from None
            wanted += [(user_id, user_id, "--users") for user_id in table]
    profiles = []
    if wanted:
        for flag in dict.fromkeys(f for _, _, f in wanted):
            ids = [u for _, u, f in wanted if f == flag]
            files = _from_folder(folder, list(dict.fromkeys(ids)), flag)
            for label, user_id, f in wanted:
                if f == flag:
                    path = files[user_id]
                    profiles.append(Profile(label, user_id, str(path), _load_one(path, f"--embeddings {path}")))
    for file in config.embedding:
        path = Path(file)
        profiles.append(Profile(path.stem, None, str(path), _load_one(path, f"--embedding {file}")))
    labels = [p.label for p in profiles]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise EvaluationError(f"profile names {duplicates} are given twice (--levels, --users, --embedding); allowed: "
                              "each profile once")
    return profiles


# ---- rendering ----

def _packages() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _check_adapter_fits(adapter, unet_family, path: str) -> None:
    same = (adapter.family.name == unet_family.name and adapter.family.context_dim == unet_family.context_dim
            and [layer.hidden for layer in adapter.family.layers] == [layer.hidden for layer in unet_family.layers])
    if not same:
        raise EvaluationError(f"--adapter {path} is for {adapter.family.describe()}, but --base-model is "
                              f"{unet_family.describe()}; allowed: an adapter trained on this base model's family")


def _stored_text(path: Path) -> str | None:
    """The text generate stored in its image (a PNG's text chunk PNG_TEXT_KEY, a JPEG's COM marker), read from what
    comes before the pixels: nothing is decoded; an error for anything that is not of the format its suffix names
    (.jpg: JPEG, else PNG) or has more pixels than the image gate allows."""
    from PIL import Image

    from psa_core.images import check_pixels

    jpeg = path.suffix.lower() == IMAGE_OUTPUT_FORMATS["jpeg"]
    with Image.open(path, formats=("JPEG",) if jpeg else ("PNG",)) as image:
        check_pixels(image, path)
        return text_from_jpeg_comment(image.info.get("comment")) if jpeg else image.info.get(PNG_TEXT_KEY)


def _existing_state(path: Path, key: str) -> str:
    """`complete` (decodes whole and carries `key`), `damaged` (re-rendered) or `other` (another item's image)."""
    from psa_core.evaluation.images import load_image

    try:
        text = _stored_text(path)
    except Exception:  # noqa: BLE001 - any unreadable file at our name is a damaged image of ours
        return "damaged"
    try:
        stored = json.loads(text) if text else {}
    except ValueError:
        stored = {}
    if stored.get("key") != key:
        return "other"
    try:
        load_image(path)
    except PSAError:
        return "damaged"
    return "complete"


def _refuse_other_images(out: Path, items: list[GenerationItem], keys: dict[int, str]) -> None:
    """Before anything is rendered: an existing file at a planned name that is not an image of generate, or one made
    for another caption, embedding or settings (its stored text says so), is refused; only files shown to be this run's images
    (damaged ones included, when their text chunk is readable) are ever skipped or rendered again."""
    others = []
    for item in items:
        path = out / item.file
        if not path.is_file():
            continue
        try:
            text = _stored_text(path)
        except Exception:  # noqa: BLE001 - a file that is no image at all cannot be shown to be ours: not replaced
            others.append(f"{item.file} (not an image made by generate)")
            continue
        try:
            stored = json.loads(text) if text else None
        except ValueError:
            stored = None
        if stored is None:
            others.append(f"{item.file} (not made by generate)")
        elif stored.get("key") != keys[item.index]:
            why = "another caption" if not stored_caption_matches(stored, item.prompt.caption) else \
                "another seed" if stored.get("seed") != item.seed else "other settings or another embedding"
            others.append(f"{item.file} ({why})")
    if others:
        shown = "; ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise EvaluationError(f"--out {out} holds images of another run: {shown}; images are not mixed or replaced: "
                              "use a new --out")


class _World:
    """torch.distributed when launched by torchrun / accelerate launch; a single process otherwise."""

    def __init__(self, device_type: str):
        self.rank, self.size, self.local_rank = world_from_env()
        self._dist = None
        self._started = False
        self.device_type = device_type
        if self.size > 1:
            import datetime as _datetime

            import torch
            import torch.distributed as dist

            if device_type == "cuda":
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                        timeout=_datetime.timedelta(hours=12))
                self._started = True
            self._dist = dist

    def broadcast(self, value):
        if self._dist is None:
            return value
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def total(self, *counts: int) -> list[int]:
        if self._dist is None:
            return list(counts)
        import torch

        tensor = torch.tensor(counts, dtype=torch.int64,
                              device=f"cuda:{self.local_rank}" if self.device_type == "cuda" else "cpu")
        self._dist.all_reduce(tensor)
        return [int(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def close(self) -> None:
        if self._started:
            self._dist.destroy_process_group()


def _sha256(path: str) -> str:
    from psa_core.fingerprint import HashMemo, model_fingerprint

    return model_fingerprint(path, HashMemo(None))


def generate(config: GenerateConfig, log=print, progress: bool | None = None) -> dict:
    """Render every planned image not yet complete; returns the counts and where the manifest is."""
    import numpy as np
    import torch
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    from tqdm import tqdm

    from psa_core.families import get_family
    from psa_core.training.config import DEFAULT_RESOLUTION

    from .build_data import load_pipeline

    started = time.perf_counter()
    prompts = read_prompt_set(config.prompts, config.limit)  # all inputs are read before a model loads
    profiles = resolve_profiles(config, prompts)
    items = plan_items(prompts, None if config.per_row_user else [p.label for p in profiles], config.seed,
                       config.image_format)
    adapter = None
    if config.adapter:
        from psa_core.adapter_file import load_adapter
        from psa_core.compatibility import check_embedding_fits
        from psa_core.embedding import UserEmbedding

        try:
            adapter = load_adapter(config.adapter)
        except PSAError as error:
            raise EvaluationError(f"--adapter: {error}") from None
        for profile in profiles:
            try:
                check_embedding_fits(adapter, UserEmbedding(profile.vector[None]))
            except PSAError as error:
                raise EvaluationError(f"profile {profile.label} ({profile.source}): {error}") from None
    out = Path(config.out)
    world = _World(resolve_compute(config.device, config.precision)[0])
    try:
        error = None
        if world.rank == 0:  # before the model loads: --out is new, empty or a run of generate, and writable
            try:
                output_folder_state(out)
                check_writable(out, f"--out {out}", EvaluationError)
            except PSAError as caught:
                error = str(caught)
        error = world.broadcast(error)
        if error:
            raise EvaluationError(error)
        pipeline, family_name, precision = load_pipeline(config.base_model, config.family, config.tokenizer,
                                                          config.sampler, config.device, config.precision)
        unet = pipeline.unet
        unet_family = get_family(family_name, unet.config.block_out_channels[0], unet.config.cross_attention_dim)
        predictor = None
        if adapter is not None:
            from .hook import DiffusersPSAPredictor

            _check_adapter_fits(adapter, unet_family, config.adapter)
            predictor = DiffusersPSAPredictor(unet, unet_family)
        width = config.width or DEFAULT_RESOLUTION[family_name]
        height = config.height or DEFAULT_RESOLUTION[family_name]
        negative = config.negative_for_run()
        scheduler_config = canonical_json({k: v for k, v in dict(pipeline.scheduler.config).items()
                                           if not k.startswith("_")})
        render = {"renderer": "diffusers", "pipeline": type(pipeline).__name__, "family": family_name,
                  "model_sha256": _sha256(config.base_model),
                  "adapter_sha256": _sha256(config.adapter) if config.adapter else None,
                  "adapter_scale": config.scale if config.adapter else None,
                  "scheduler": type(pipeline.scheduler).__name__, "scheduler_config": scheduler_config,
                  "steps": config.steps, "guidance_scale": config.guidance, "width": width, "height": height,
                  "precision": precision, "device": world.device_type, "noise": "cpu generator per image",
                  "negative_prompt_mode": config.negative_prompt_mode, "negative_prompt": negative,
                  "image_format": config.image_format}
        if config.image_format == "jpeg":
            render["image_quality"] = JPEG_QUALITY
        fingerprints = {p.label: (p.fingerprint if p.vector is not None else "none") for p in profiles}
        keys = {item.index: image_key(render, fingerprints[item.profile], item, negative) for item in items}
        labels = [p.label for p in profiles]

        error = None
        if world.rank == 0:  # one process checks and prepares the folder; the others wait for its verdict
            try:
                state = output_folder_state(out)  # again: the folder may have changed while the model loaded
                existing = check_existing_settings(out, render, fingerprints) if state == "own" else None
                _refuse_other_images(out, items, keys)
                if existing:  # only a folder of its own, and only the profile folders it made (docs/evaluation.md)
                    remove_partial_files(out, [p for p in existing["profiles"] if p in labels])
                known = dict(existing["profiles"]) if existing else {}
                known.update({p.label: {"embedding_sha256": fingerprints[p.label], "user_id": p.user_id,
                                        "source": p.source} for p in profiles})
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                write_settings(out, {
                    "format": SETTINGS_FORMAT, "version": 1, "render": render, "profiles": known,
                    "seed": config.seed, "created": existing.get("created", now) if existing else now, "updated": now,
                    "model": str(Path(config.base_model).resolve()),
                    "adapter": str(Path(config.adapter).resolve()) if config.adapter else None,
                    "prompts": {"file": str(prompts.path.resolve()), "kind": prompts.kind,
                                "sha256": _sha256(str(prompts.path)), "rows": len(prompts.rows)},
                    "config": asdict(config), "packages": _packages()})
                write_manifest(out, items)
            except PSAError as caught:
                error = str(caught)
        error = world.broadcast(error)
        if error:
            raise EvaluationError(error)

        mine = shard(items, world.rank, world.size)
        if adapter is not None:
            vectors = torch.stack([p.vector for p in profiles])
            values = adapter.user_values(vectors).per_layer  # rows: the profiles, then the null user
            device = unet.device
            values = [(layer * config.scale).to(device) for layer in values]
            row_of = {p.label: i for i, p in enumerate(profiles)}
        shape = (f"{len(prompts.rows)} prompts, each with its row's user ({len(profiles)} users)" if config.per_row_user
                 else f"{len(profiles)} profile{'s' if len(profiles) != 1 else ''} x {len(prompts.rows)} prompts")
        log(f"generate: {len(items)} images ({shape}) into {out}; "
            f"{family_name}, {render['scheduler']}, {config.steps} steps, CFG {config.guidance}, {width}x{height}, "
            f"seed {config.seed}, negative prompt {config.negative_prompt_mode}: {negative!r}"
            + (f"; process {world.rank} of {world.size}: {len(mine)} images" if world.size > 1 else ""))
        rendered = skipped = 0
        with tqdm(total=len(mine), desc="generate", unit="image", file=sys.stderr,
                  disable=None if progress is None else not progress) as bar:
            todo = []
            for item in mine:
                if (out / item.file).is_file() and _existing_state(out / item.file, keys[item.index]) == "complete":
                    skipped += 1
                    bar.update(1)
                else:
                    todo.append(item)
            for start in range(0, len(todo), config.batch):
                batch = todo[start:start + config.batch]
                if predictor is not None:
                    rows = torch.tensor([row_of[item.profile] for item in batch], device=values[0].device)
                    null = torch.full_like(rows, len(profiles))
                    predictor.set_user_values([layer[rows] for layer in values], [layer[null] for layer in values])
                generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
                with torch.inference_mode():
                    images = pipeline(prompt=[item.prompt.caption for item in batch],
                                      negative_prompt=[negative] * len(batch) if negative else None,
                                      num_inference_steps=config.steps, guidance_scale=config.guidance, width=width,
                                      height=height, generator=generators, output_type="np").images
                pixels = (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)
                for item, picture in zip(batch, pixels):
                    text = image_text(item, keys[item.index], negative)
                    image = Image.fromarray(picture, "RGB")
                    if config.image_format == "jpeg":  # PIL's own JPEG defaults otherwise, as the reference's save
                        atomic_file(out / item.file, lambda temporary, image=image, text=text: image.save(
                            temporary, format="JPEG", quality=JPEG_QUALITY, comment=jpeg_comment(text)))
                    else:
                        info = PngInfo()
                        info.add_text(PNG_TEXT_KEY, text)
                        atomic_file(out / item.file, lambda temporary, image=image, info=info:
                                    image.save(temporary, format="PNG", pnginfo=info))
                rendered += len(batch)
                bar.update(len(batch))
                if world.rank == 0:
                    write_manifest(out, items)  # what exists now, other processes' images included
        if predictor is not None:
            predictor.set_user_values(None)
        rendered_all, skipped_all = world.total(rendered, skipped)
        world.barrier()
        manifest = out / MANIFEST_NAME
        if world.rank == 0:
            write_manifest(out, items)
            log(f"generate: rendered {rendered_all}, skipped {skipped_all} already complete, in "
                f"{time.perf_counter() - started:.1f} s; manifest {manifest}, settings {out / SETTINGS_NAME}")
        return {"rendered": rendered_all, "skipped": skipped_all, "images": len(items), "manifest": str(manifest),
                "rank": world.rank, "world_size": world.size}
    finally:
        world.close()
