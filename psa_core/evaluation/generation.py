"""The pure part of `python -m trainer generate` (docs/evaluation.md §3, §10): the prompt set, the plan of images,
file names, the manifest, per-image identity keys and the split of the plan over several processes.

No ComfyUI and no diffusers import: the command line (trainer/generate.py) renders, this module decides what and
where. Layout of an output folder:

    OUT/<profile>/<image name>.png     one image per (profile, prompt row); `.jpg` with --image-format jpeg
    OUT/generation.csv                 the manifest: file, profile, category, caption, seed, row
    OUT/generation.json                the settings every image in OUT was rendered with

The image name is the prompt set's `file_name` stem (a Sage CSV), else `prompt_<row, 5 digits>`; rows count from 1.
Every file is written through a temporary file of this module's own naming (`.<name>.generate-partial`, same
folder) and `os.replace`, so a killed run leaves complete files and temporaries that the next run removes.

The output folder is the user's until `generate` has written its `generation.json` there (`output_folder_state`): a
run starts only in a folder that does not exist, is empty, or holds a `generation.json` of `generate` (whose
settings must then match, `check_existing_settings`). Only in such a folder of its own does a run remove leftover
temporaries, and only in the folder itself and the profile folders its `generation.json` lists; a folder holding
anything else is refused before a model loads, and nothing in it is replaced or deleted.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..errors import PSAError, shown
from ..profile import ProfileError, check_user_id
from ..text_limits import check_text
from .errors import EvaluationError
from .labels import canonical_category, sage_label

MANIFEST_NAME = "generation.csv"
SETTINGS_NAME = "generation.json"
MANIFEST_COLUMNS = ("file", "profile", "category", "caption", "seed", "row")
PARTIAL_SUFFIX = ".generate-partial"
PNG_TEXT_KEY = "psa-generation"  # the PNG text chunk that says which item and settings an image was made with
# The image file formats of a run and their suffixes; JPEG as the reference saved its images: PIL, quality 75
# (docs/evaluation.md §3).
IMAGE_OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg"}
JPEG_QUALITY = 75
# A JPEG carries the same text as the PNG's text chunk in a COM marker, after this prefix (a marker holds at most
# 65533 bytes: a longer text keeps sha256s of the caption and negative prompt in their place).
JPEG_COMMENT_PREFIX = PNG_TEXT_KEY.encode() + b":"
MAX_JPEG_COMMENT = 65533
# Render settings that decide the file, not the pixels: kept out of an image's key, so a PNG run of an earlier
# version (whose generation.json has no image_format) resumes.
FILE_SETTINGS = ("image_format", "image_quality")
SETTINGS_FORMAT = "psa-generation"
PROMPT_SUFFIXES = (".csv", ".txt")
BASE_PROFILE = "base"  # the profile label of a run without adapter (outside --per-row-user)
MAX_NAME = 200
_PROFILE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class PromptRow:
    """One prompt of the set. `row` counts from 1 (the first data row); `name` is the image name without `.png`."""

    row: int
    caption: str
    name: str
    category: str = ""
    user_id: str | None = None  # 7 digits, from a `user_id` column


@dataclass(frozen=True)
class PromptSet:
    path: Path
    kind: str  # "sage", "csv" or "txt"
    rows: tuple[PromptRow, ...]

    @property
    def has_users(self) -> bool:
        return bool(self.rows) and all(row.user_id is not None for row in self.rows)


@dataclass(frozen=True)
class GenerationItem:
    """One image of the plan: `index` is its place in the whole plan (what the split over processes uses)."""

    index: int
    profile: str
    prompt: PromptRow
    seed: int
    suffix: str = ".png"  # IMAGE_OUTPUT_FORMATS

    @property
    def file(self) -> str:
        """The image's path relative to the output folder, '/'-separated."""
        return f"{self.profile}/{self.prompt.name}{self.suffix}"

    def manifest_row(self) -> dict[str, str]:
        return {"file": self.file, "profile": self.profile, "category": self.prompt.category,
                "caption": self.prompt.caption, "seed": str(self.seed), "row": str(self.prompt.row)}


# ---- the prompt set ----

def check_image_name(value: str, where: str) -> str:
    """An image name (the stem of a file in a profile folder): no path, no leading dot, no control characters."""
    name = value.strip()
    if (not name or len(name) > MAX_NAME or name.startswith(".") or "/" in name or "\\" in name
            or any(unicodedata.category(c).startswith("C") for c in name)):
        raise EvaluationError(f"{where}: file_name {shown(value)} is not allowed; allowed: a file name of 1 to "
                              f"{MAX_NAME} characters without '/', '\\', control characters or a leading '.'")
    return name


def check_profile_label(value: str, what: str) -> str:
    """A profile label becomes a folder name: letters, digits, '_' and '-', starting with a letter or digit."""
    if not _PROFILE_LABEL.fullmatch(value) or value.lower() == "all":
        raise EvaluationError(f"{what}: profile name {shown(value)} is not allowed; allowed: 1 to 64 letters, digits, "
                              "'_' and '-', starting with a letter or digit (not 'all'), e.g. level_3 or 0000002")
    return value


def _row_user(value: str, where: str) -> str | None:
    if value.strip() == "":
        return None
    try:
        user_id = check_user_id(value)
    except ProfileError as error:
        raise EvaluationError(f"{where}: {error}") from None
    if not user_id.isdigit():
        raise EvaluationError(f"{where}: user_id {shown(value)} is not allowed; allowed: a User_ID of up to 7 digits")
    return user_id


def _csv_rows(path: Path, text: str) -> tuple[str, list[PromptRow]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    if "caption" not in columns:
        raise EvaluationError(f"--prompts {path}: no 'caption' column (columns: {', '.join(columns) or 'none'}); "
                              "allowed: a Sage CSV (file_name, caption, user_id) or a CSV with a caption column "
                              "(optionally file_name, category, user_id)")
    kind = "sage" if {"file_name", "caption", "user_id"} <= set(columns) else "csv"
    rows = []
    for number, raw in enumerate(reader, start=1):
        record = {(k or "").strip(): (v or "") for k, v in raw.items() if k is not None}
        where = f"--prompts {path.name} row {number}"
        caption = check_text(record.get("caption", "").strip(), f"{where}: the caption")
        if not caption:
            raise EvaluationError(f"{where}: the caption is empty; allowed: a non-empty prompt")
        file_name = record.get("file_name", "").strip()
        name = check_image_name(Path(check_image_name(file_name, where)).stem, where) if file_name \
            else f"prompt_{number:05d}"
        category = record.get("category", "").strip()
        if category:
            category = canonical_category(category)
        elif file_name and (label := sage_label(file_name)) is not None:
            category = label.category
        rows.append(PromptRow(number, caption, name, category, _row_user(record.get("user_id", ""), where)))
    return kind, rows


def read_prompt_set(path: str | Path, limit: int | None = None) -> PromptSet:
    """The prompts of a Sage CSV, a CSV with a `caption` column, or a .txt of one caption per line (blank lines are
    skipped). With `limit`, only the first `limit` rows. Image names must be unique."""
    path = Path(path)
    if path.suffix.lower() not in PROMPT_SUFFIXES:
        raise EvaluationError(f"--prompts {path}: allowed: a .csv (Sage file_name, caption, user_id, or a caption "
                              "column) or a .txt with one caption per line")
    if not path.is_file():
        raise EvaluationError(f"--prompts {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise EvaluationError(f"--prompts {path}: not a readable UTF-8 text file ({error})") from None
    if path.suffix.lower() == ".txt":
        kind = "txt"
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        rows = [PromptRow(n, check_text(caption, f"--prompts {path.name} row {n}: the caption"), f"prompt_{n:05d}")
                for n, caption in enumerate(captions, start=1)]
    else:
        try:
            kind, rows = _csv_rows(path, text)
        except csv.Error as error:
            raise EvaluationError(f"--prompts {path}: not a readable CSV ({error})") from None
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvaluationError(f"--prompts {path}: no prompts; allowed: at least one row with a caption")
    seen: dict[str, int] = {}
    for row in rows:
        if row.name.lower() in seen:  # case-insensitive: two names must not meet on a case-insensitive disk
            raise EvaluationError(f"--prompts {path.name}: rows {seen[row.name.lower()]} and {row.row} give the same "
                                  f"image name {row.name!r}; allowed: unique file_name values")
        seen[row.name.lower()] = row.row
    return PromptSet(path, kind, tuple(rows))


# ---- the plan and its split over processes ----

def plan_items(prompts: PromptSet, profiles: Sequence[str] | None, seed: int,
               image_format: str = "png") -> list[GenerationItem]:
    """Every row for every profile, profile by profile (`profiles`), or with `profiles=None` each row once with its
    own row's user (`--per-row-user`). Every item gets the same seed: each prompt starts from the same noise. The
    file suffix is `image_format`'s (IMAGE_OUTPUT_FORMATS)."""
    if image_format not in IMAGE_OUTPUT_FORMATS:
        raise EvaluationError(f"--image-format {shown(image_format)} is not allowed; allowed: "
                              f"{', '.join(IMAGE_OUTPUT_FORMATS)}")
    suffix = IMAGE_OUTPUT_FORMATS[image_format]
    if profiles is None:
        missing = [row.row for row in prompts.rows if row.user_id is None]
        if missing:
            raise EvaluationError(f"--per-row-user: rows {shown(missing[:10])} of {prompts.path.name} have no user_id; "
                                  "allowed: a CSV with a user_id in every row (a Sage CSV)")
        pairs = [(row.user_id, row) for row in prompts.rows]
    else:
        if len(set(profiles)) != len(profiles):
            raise EvaluationError(f"profiles {list(profiles)}: a profile is given twice; allowed: each once")
        pairs = [(profile, row) for profile in profiles for row in prompts.rows]
    return [GenerationItem(index, profile, row, seed, suffix) for index, (profile, row) in enumerate(pairs)]


def shard(items: Sequence[GenerationItem], rank: int, world_size: int) -> list[GenerationItem]:
    """The items process `rank` of `world_size` renders: those whose plan index is `rank` modulo `world_size`."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise EvaluationError(f"process rank {rank} of {world_size} is not allowed; allowed: 0 <= rank < world size")
    return [item for item in items if item.index % world_size == rank]


def world_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) as `torchrun` and `accelerate launch` set them; (0, 1, 0) otherwise."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise EvaluationError(f"RANK/WORLD_SIZE/LOCAL_RANK {shown([env.get(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')])}"
                              " are not numbers; allowed: the values torchrun or accelerate launch set") from None
    if world < 1 or not 0 <= rank < world:
        raise EvaluationError(f"RANK {rank} / WORLD_SIZE {world}: allowed: 0 <= RANK < WORLD_SIZE")
    return rank, world, local


# ---- identity of an image ----

def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def image_key(render_settings: Mapping[str, object], profile_fingerprint: str, item: GenerationItem,
              negative_prompt: str) -> str:
    """sha256 of everything that decides one image's pixels: the render settings, the profile's embedding, the caption,
    the seed and the negative prompt (FILE_SETTINGS left out). Stored in the image, compared on a restart."""
    settings = {name: value for name, value in render_settings.items() if name not in FILE_SETTINGS}
    return hashlib.sha256(canonical_json({
        "settings": settings, "profile": item.profile, "embedding": profile_fingerprint,
        "caption": item.prompt.caption, "seed": item.seed, "negative_prompt": negative_prompt}).encode()).hexdigest()


def image_text(item: GenerationItem, key: str, negative_prompt: str) -> str:
    """The text an image of generate carries (PNG text chunk PNG_TEXT_KEY, or JPEG comment): its key, profile,
    caption, seed, row and the negative prompt it was rendered with ("" for none)."""
    return canonical_json({"key": key, "profile": item.profile, "caption": item.prompt.caption, "seed": item.seed,
                           "row": item.prompt.row, "negative_prompt": negative_prompt})


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def jpeg_comment(text: str) -> bytes:
    """`image_text` as a JPEG COM marker's bytes (JPEG_COMMENT_PREFIX + UTF-8 JSON); a text too long for one marker
    keeps `caption_sha256` / `negative_prompt_sha256` in place of the caption and negative prompt."""
    data = JPEG_COMMENT_PREFIX + text.encode("utf-8")
    if len(data) <= MAX_JPEG_COMMENT:
        return data
    content = json.loads(text)
    for name in ("caption", "negative_prompt"):
        content[f"{name}_sha256"] = _sha256_text(content.pop(name))
    return JPEG_COMMENT_PREFIX + canonical_json(content).encode("utf-8")


def text_from_jpeg_comment(comment: object) -> str | None:
    """The text of a JPEG comment written by `jpeg_comment`; None for any other comment (or none)."""
    if isinstance(comment, str):
        comment = comment.encode("utf-8", "surrogateescape")
    if not isinstance(comment, bytes) or not comment.startswith(JPEG_COMMENT_PREFIX):
        return None
    try:
        return comment[len(JPEG_COMMENT_PREFIX):].decode("utf-8")
    except UnicodeDecodeError:
        return None


def stored_caption_matches(stored: Mapping[str, object], caption: str) -> bool:
    """Whether an image's stored text (`image_text`, or its shortened JPEG form) names `caption`."""
    if "caption_sha256" in stored:
        return stored["caption_sha256"] == _sha256_text(caption)
    return stored.get("caption") == caption


def settings_differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """The keys whose values differ, each as `key: old -> new`."""
    return [f"{key}: {shown(old.get(key))} -> {shown(new.get(key))}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def check_existing_settings(folder: str | Path, render: Mapping[str, object],
                            profiles: Mapping[str, str]) -> dict | None:
    """Refuse to add to `folder` when its generation.json has other render settings, or another embedding under one
    of these profile names. Returns the existing file's content (None when there is none)."""
    path = Path(folder) / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
        old_render, old_profiles = existing["render"], existing["profiles"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise EvaluationError(f"--out {folder}: {SETTINGS_NAME} is not readable ({error}); allowed: an output folder "
                              "of `generate`, or a new --out") from None
    if isinstance(old_render, dict):  # a run of a version before --image-format wrote PNG
        old_render = {"image_format": "png", **old_render}
    differences = settings_differences(old_render, {"image_format": "png", **render})
    changed = [name for name, fingerprint in profiles.items()
               if name in old_profiles and old_profiles[name].get("embedding_sha256") != fingerprint]
    if differences or changed:
        what = "; ".join(differences + [f"profile {name}: another embedding" for name in changed])
        raise EvaluationError(f"--out {folder} holds images rendered with other settings ({what}); images of "
                              "different settings are not mixed in one folder: use a new --out (or the old settings)")
    return existing


# ---- files ----

def _is_own_settings(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return (isinstance(content, dict) and content.get("format") == SETTINGS_FORMAT
            and isinstance(content.get("render"), dict) and isinstance(content.get("profiles"), dict))


def output_folder_state(folder: str | Path) -> str:
    """`new` (not there yet), `empty`, or `own` (it holds a generation.json written by `generate`); any other folder
    is refused (EvaluationError naming --out and what is in it), so that no file `generate` did not write is ever
    replaced or deleted. Whether an own folder's settings match is `check_existing_settings`' question."""
    folder = Path(folder)
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        raise EvaluationError(f"--out {folder} is a file; allowed: a folder (created, or completed when it holds a "
                              "run of the same settings)")
    settings = folder / SETTINGS_NAME
    if settings.is_file() and not settings.is_symlink() and _is_own_settings(settings):
        return "own"
    entries = sorted(path.name for path in folder.iterdir())
    if not entries:
        return "empty"
    why = (f"its {SETTINGS_NAME} was not written by `generate`" if SETTINGS_NAME in entries
           else f"it holds files `generate` did not write and no {SETTINGS_NAME} of a run")
    listed = ", ".join(shown(name) for name in entries[:5]) + (f" and {len(entries) - 5} more"
                                                                if len(entries) > 5 else "")
    raise EvaluationError(f"--out {folder}: {why} ({listed}); nothing in it is replaced or deleted; allowed: a new "
                          "or empty folder, or an output folder of `generate`")


def partial_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


def atomic_file(target: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(temporary)`, then `os.replace` onto `target`. The temporary has this module's fixed name, so a process
    killed in between leaves a file `remove_partial_files` recognises (and nothing else is ever removed)."""
    return atomic_write(target, write, partial_path(target))


def remove_partial_files(folder: str | Path, profiles: Sequence[str]) -> int:
    """Remove leftover temporaries of `atomic_file` in `folder` and its profile folders; returns how many."""
    folder = Path(folder)
    removed = 0
    for directory in [folder, *(folder / p for p in profiles)]:
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _csv_text(rows: Sequence[Mapping[str, str]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_manifest(folder: str | Path, items: Sequence[GenerationItem]) -> Path:
    """`OUT/generation.csv` listing the items of the plan whose image exists (images are only ever complete: they
    are written atomically), in plan order. Written atomically."""
    folder = Path(folder)
    rows = [item.manifest_row() for item in items if (folder / item.file).is_file()]
    text = _csv_text(rows)
    return atomic_file(folder / MANIFEST_NAME, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_settings(folder: str | Path, content: Mapping[str, object]) -> Path:
    text = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_file(Path(folder) / SETTINGS_NAME, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def read_generation_manifest(folder: str | Path) -> list[dict]:
    """The images of a `generate` output folder: dicts with `file` (relative to the folder, '/'-separated), `path`
    (absolute), `profile`, `category` (may be empty), `caption`, `seed` and `row` (ints), in manifest order."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise EvaluationError(f"{folder}: no {MANIFEST_NAME}; allowed: an output folder of `python -m trainer "
                              "generate`")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise EvaluationError(f"{path}: missing columns {missing}; expected: {', '.join(MANIFEST_COLUMNS)}")
            records = []
            for number, row in enumerate(reader, start=2):
                file = row["file"] or ""
                parts = file.split("/")
                if len(parts) != 2 or any(p in ("", ".", "..") for p in parts) or "\\" in file:
                    raise EvaluationError(f"{path} line {number}: file {shown(file)} is not allowed; allowed: "
                                          "<profile>/<image name>.png (or .jpg)")
                records.append({"file": file, "path": folder.joinpath(*parts), "profile": row["profile"],
                                "category": row["category"] or "",
                                "caption": check_text(row["caption"] or "", f"{path} line {number}: caption"),
                                "seed": int(row["seed"]), "row": int(row["row"])})
    except (csv.Error, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, PSAError):
            raise
        raise EvaluationError(f"{path}: not a readable manifest ({error})") from None
    return records
