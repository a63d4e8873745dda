"""Prompt-pair files: what to render into a preference dataset, one unsafe/safe prompt pair per item.

A `.csv` with a header row, or a `.jsonl` of objects, with the fields
- `category`: one of the 7 PSA categories (docs/profiles.md §2, any letter case) or an extra category the
  user declares (`extra_categories`; it is recorded in the dataset's `dataset.json`);
- `concept`: what the pair is about (e.g. "knife fight"); it becomes part of the image names;
- `unsafe_prompt`: the prompt showing the category; `safe_prompt`: its safe rewrite (must differ);
- `seed` (optional): the seed both images are rendered with; without it, `base_seed + index`.

Every problem is reported with its line number (the header is line 1 of a CSV); the whole file is checked
before anything is rendered.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import shown
from ..json_text import json_lines
from ..profile import CATEGORIES
from ..text_limits import MAX_NAME_CHARS, MAX_PROMPT_CHARS, TextTooLong, check_text
from ..training.errors import DatasetError
from ..training.records import Problems

REQUIRED_FIELDS = ("category", "concept", "unsafe_prompt", "safe_prompt")
OPTIONAL_FIELDS = ("seed",)
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
SUFFIXES = (".csv", ".jsonl")
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # ComfyUI's KSampler range; torch generators accept it too
# Letters, spaces and hyphens: the category goes into SAGE image names (`user_<uid>_<category>_...`), whose
# category part the trainer reads as letters and hyphens.
_EXTRA_CATEGORY = re.compile(r"[A-Za-z](?:[A-Za-z -]{0,38}[A-Za-z])?")
_SEVEN = {c.lower(): c for c in CATEGORIES}
FORMAT_HELP = (f"a .csv with a header row or a .jsonl of objects, with fields {', '.join(REQUIRED_FIELDS)} and "
               "optionally seed")


def parse_extra_categories(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """User-declared categories beyond the seven: a comma-separated string or a list; order kept."""
    if value is None:
        return ()
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    result: list[str] = []
    for item in filter(None, items):
        if item.lower() in _SEVEN:
            raise DatasetError(f"extra category {shown(item)} is already one of the 7 categories "
                               f"({', '.join(CATEGORIES)}); declare only new ones")
        if not _EXTRA_CATEGORY.fullmatch(item):
            raise DatasetError(f"extra category {shown(item)} is not allowed; allowed: 1-40 letters, spaces and "
                               "hyphens, starting and ending with a letter")
        if item.lower() in (r.lower() for r in result):
            raise DatasetError(f"extra category {shown(item)} is declared twice")
        result.append(item)
    return tuple(result)


def category_lookup(extra_categories: Iterable[str] = ()) -> dict[str, str]:
    """lower-case name → canonical spelling, for the seven and the declared extras."""
    return {**_SEVEN, **{c.lower(): c for c in extra_categories}}


def canonical_category(name: object, extra_categories: Iterable[str] = ()) -> str:
    extras = tuple(extra_categories)
    lookup = category_lookup(extras)
    if isinstance(name, str) and name.strip().lower() in lookup:
        return lookup[name.strip().lower()]
    declared = f"; extra categories declared: {', '.join(extras)}" if extras else \
        "; declare others with extra_categories"
    raise DatasetError(f"category {shown(name)} is not allowed; allowed: {', '.join(CATEGORIES)}{declared}")


def slug(text: str) -> str:
    """The image-name form of a category or concept: lower case, runs of anything else than letters and
    digits (underscores included: they separate the name's parts) become one '-'."""
    return re.sub(r"(?:[^\w]|_)+", "-", text.strip().lower()).strip("-")[:40].strip("-")


@dataclass(frozen=True)
class PromptPair:
    """One item of a prompt-pair file (`line` is where it was read; `seed` None means base_seed + index)."""

    category: str
    concept: str
    unsafe_prompt: str
    safe_prompt: str
    seed: int | None
    line: int

    def seed_for(self, index: int, base_seed: int = 0) -> int:
        return self.seed if self.seed is not None else (base_seed + index) % (MAX_SEED + 1)


def _seed(value: object) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[0-9]{1,20}", text):  # MAX_SEED has 20 digits; longer would overflow int()
            raise ValueError(f"seed {shown(value)} is not allowed; allowed: an integer 0 to {MAX_SEED}, or empty")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed {shown(value)} is not allowed; allowed: an integer 0 to {MAX_SEED}, or empty")
    return value


def _check_item(data: object, number: int, extras: tuple[str, ...]) -> tuple[PromptPair | None, list[str]]:
    if not isinstance(data, dict):
        return None, [f"expected an object with {', '.join(FIELDS)}, found {type(data).__name__}"]
    problems = []
    unknown = sorted(str(k) for k in set(data) - set(FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}; allowed: {', '.join(FIELDS)}")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        problems.append(f"missing fields {missing}; required: {', '.join(REQUIRED_FIELDS)}")
    category = None
    if "category" in data:
        try:
            category = canonical_category(data["category"], extras)
        except DatasetError as error:
            problems.append(str(error))
    for name in ("concept", "unsafe_prompt", "safe_prompt"):
        if name in data and (not isinstance(data[name], str) or not data[name].strip()):
            problems.append(f"{name} must be non-empty text, got {shown(data[name])}")
        elif name in data:
            try:
                check_text(data[name], name, MAX_NAME_CHARS if name == "concept" else MAX_PROMPT_CHARS)
            except TextTooLong as error:
                problems.append(str(error))
    if isinstance(data.get("concept"), str) and data["concept"].strip() and not slug(data["concept"]):
        problems.append(f"concept {shown(data['concept'])} has no letter or digit (it becomes part of the image names)")
    if not problems and data["unsafe_prompt"].strip() == data["safe_prompt"].strip():
        problems.append("unsafe_prompt and safe_prompt are the same text; a pair needs a safe rewrite that differs")
    try:
        seed = _seed(data.get("seed"))
    except ValueError as error:
        problems.append(str(error))
    if problems:
        return None, problems
    return PromptPair(category, data["concept"].strip(), data["unsafe_prompt"].strip(), data["safe_prompt"].strip(),
                      seed, number), []


def _csv_rows(path: Path, problems: Problems) -> Iterable[tuple[int, object, str | None]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() if isinstance(h, str) else h for h in (reader.fieldnames or [])]
        missing = [f for f in REQUIRED_FIELDS if f not in header]
        unknown = [h for h in header if h not in FIELDS]
        if not header or missing or unknown:
            problems.bad_line(1, f"the header must name the columns {', '.join(REQUIRED_FIELDS)} (and optionally "
                                 f"seed); found {header}" + (f"; missing {missing}" if missing else "")
                              + (f"; unknown {unknown}" if unknown else ""))
            return
        reader.fieldnames = header
        for row in reader:
            extra = row.pop(None, None)
            if extra is not None:
                yield reader.line_num, None, (f"{len(extra)} more field(s) than the {len(header)} columns of the "
                                              "header (quote text that contains commas)")
            elif any(value is None for value in row.values()):
                absent = [k for k, v in row.items() if v is None]
                yield reader.line_num, None, f"too few fields: no value for {absent}"
            else:
                yield reader.line_num, row, None


@dataclass(frozen=True)
class PromptPairs:
    """The checked items of a prompt-pair file, in file order."""

    items: tuple[PromptPair, ...]
    path: Path
    extra_categories: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def item(self, index: int) -> PromptPair:
        if not 0 <= index < len(self.items):
            raise DatasetError(f"index {index} is out of range: {self.path.name} has {len(self.items)} prompt pair"
                               f"{'s' if len(self.items) != 1 else ''} (indices 0 to {len(self.items) - 1})")
        return self.items[index]


def read_prompt_pairs(path: str | Path, extra_categories: str | Iterable[str] | None = ()) -> PromptPairs:
    """Read and check a whole prompt-pair file; any problem raises DatasetError listing every bad line."""
    path = Path(path)
    extras = parse_extra_categories(extra_categories)
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError(f"{path.name}: unsupported prompt-pair file type {path.suffix!r}; allowed: "
                           f"{', '.join(SUFFIXES)} ({FORMAT_HELP})")
    if not path.is_file():
        raise DatasetError(f"prompt-pair file not found: {path}; expected {FORMAT_HELP}")
    problems = Problems(path.name)
    items: list[PromptPair] = []
    seen: dict[tuple, int] = {}
    try:
        rows = list(_csv_rows(path, problems) if path.suffix.lower() == ".csv"
                    else json_lines(path, first_line_encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path.name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DatasetError(f"{path.name}: not a readable CSV file ({error})") from None
    for number, data, reason in rows:
        if reason:
            problems.bad_line(number, reason)
            continue
        item, reasons = _check_item(data, number, extras)
        if reasons:
            problems.bad_line(number, "; ".join(reasons))
            continue
        identity = (item.category, item.concept, item.unsafe_prompt, item.safe_prompt, item.seed)
        if identity in seen:
            problems.bad_line(number, f"repeats line {seen[identity]} (same category, concept, prompts and seed); "
                                      "give it another seed or remove it")
            continue
        seen[identity] = number
        items.append(item)
    problems.raise_if_any(f"expected {FORMAT_HELP}; fix these lines")
    if not items:
        raise DatasetError(f"{path.name}: no prompt pairs; expected {FORMAT_HELP}")
    return PromptPairs(tuple(items), path, extras)
