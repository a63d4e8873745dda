"""Unlabelled safe/unsafe pairs, labelled per user profile.

An unlabelled pair is (safe image, unsafe image, category, caption): the two images were generated from a
safe and an unsafe version of one prompt, and the unsafe one shows `category`. For a profile that **bans**
the category the safe image is chosen; for one that **allows** it the unsafe image is chosen
(docs/training.md §6: the SAGE rule, the allowed case as presumed there). So the same pair appears once per
profile, with opposite labels for users who disagree.

Pairs come from a `.jsonl` file (objects with safe, unsafe, category, caption) or a `.csv` with those columns;
the optional fields a built dataset adds (psa_core.dataset_build: concept, safe_prompt, seed, batch_index,
settings) are accepted, and a `dataset.json` beside the pairs file may declare `extra_categories` beyond the
seven (no profile can ban those, so their unsafe image is always chosen). Profiles come from a reference
users.csv, or a `.json`/`.jsonl` of profile objects (psa_core.profile schema).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..json_text import JSONTextError, json_lines, parse_json
from ..profile import (
    CATEGORIES,
    ProfileError,
    UserProfile,
    profile_from_dict,
    read_users_table,
)
from .errors import DatasetError, MissingDataError
from .records import (
    SKIPPED_REPORT,
    LabelledData,
    PairRecord,
    Problems,
    canonical_user_data,
    check_records,
    image_name_problems,
)

PAIR_FIELDS = ("safe", "unsafe", "category", "caption")
OPTIONAL_PAIR_FIELDS = ("concept", "safe_prompt", "seed", "batch_index", "settings")  # written by dataset_build
DATASET_INFO_NAME = "dataset.json"  # beside the pairs file; its "extra_categories" extend the seven
_CATEGORY_LOOKUP = {c.lower(): c for c in CATEGORIES}


@dataclass(frozen=True)
class UnlabelledPair:
    safe: str
    unsafe: str
    category: str
    caption: str
    line: int


def read_extra_categories(pairs_path: Path) -> tuple[str, ...]:
    """The `extra_categories` declared in the `dataset.json` beside a pairs file (none without the file)."""
    info = pairs_path.parent / DATASET_INFO_NAME
    if not info.is_file():
        return ()
    try:
        data = parse_json(info.read_bytes())
    except JSONTextError as error:
        raise DatasetError(f"{info}: not valid JSON ({error})") from None
    extras = data.get("extra_categories", []) if isinstance(data, dict) else None
    if not isinstance(extras, list) or not all(isinstance(c, str) and c.strip() for c in extras):
        raise DatasetError(f"{info}: 'extra_categories' must be a list of category names, got {extras!r}")
    return tuple(c.strip() for c in extras)


def _optional_field_problems(data: dict) -> list[str]:
    problems = [f"'{key}' must be a string" for key in ("concept", "safe_prompt")
                if key in data and not isinstance(data[key], str)]
    problems += [f"'{key}' must be a non-negative integer" for key in ("seed", "batch_index") if key in data
                 and (isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0)]
    if data.get("settings") is not None and not isinstance(data["settings"], dict):
        problems.append("'settings' must be an object")
    return problems


def _check_pair(data: object, extra_categories: tuple[str, ...] = (), contained: bool = False
                ) -> tuple[UnlabelledPair | None, str | None]:
    if not isinstance(data, dict):
        return None, f"expected an object with {', '.join(PAIR_FIELDS)}, found {type(data).__name__}"
    problems = image_name_problems(data, ("safe", "unsafe"), contained)
    lookup = {**_CATEGORY_LOOKUP, **{c.lower(): c for c in extra_categories}}
    category = data.get("category")
    if not isinstance(category, str) or category.strip().lower() not in lookup:
        problems.append(f"category {category!r} is not one of {', '.join(CATEGORIES)}"
                        + (f" or the extra categories of {DATASET_INFO_NAME} ({', '.join(extra_categories)})"
                           if extra_categories else ""))
    if not isinstance(data.get("caption"), str):
        problems.append("'caption' must be a string (may be empty)")
    unknown = sorted(set(data) - set(PAIR_FIELDS) - set(OPTIONAL_PAIR_FIELDS))
    if unknown:
        problems.append(f"unknown fields {unknown}; allowed: {', '.join(PAIR_FIELDS)} "
                        f"(optional: {', '.join(OPTIONAL_PAIR_FIELDS)})")
    problems += _optional_field_problems(data)
    if not problems and data["safe"] == data["unsafe"]:
        problems.append(f"safe and unsafe are the same image {data['safe']!r}")
    if problems:
        return None, "; ".join(problems)
    return UnlabelledPair(data["safe"], data["unsafe"], lookup[category.strip().lower()], data["caption"], 0), None


def _rows(path: Path) -> Iterable[tuple[int, object | None, str | None]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            try:
                missing = [f for f in PAIR_FIELDS if f not in (reader.fieldnames or [])]
                if missing:
                    raise DatasetError(f"{path.name}: missing columns {missing}; expected: {', '.join(PAIR_FIELDS)}")
                for row in reader:
                    yield reader.line_num, dict(row), None
            except (UnicodeDecodeError, csv.Error) as error:
                raise DatasetError(f"{path.name} line {reader.line_num + 1}: not readable CSV text ({error})") from None
        return
    yield from json_lines(path)


def read_unlabelled_pairs(path: str | Path, skip_invalid: bool = False, extra_categories: Sequence[str] = (),
                          contained: bool = False) -> tuple[list[UnlabelledPair], Problems]:
    """Read and check the pairs file; images are looked up relative to its folder (with `contained`, only inside
    it)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"pairs file not found: {path}; expected .jsonl or .csv with columns "
                               f"{', '.join(PAIR_FIELDS)}")
    root = path.parent
    extra_categories = tuple(extra_categories) + read_extra_categories(path)
    problems = Problems(path.name)
    pairs = []
    seen: dict[tuple, int] = {}
    for number, data, reason in _rows(path):
        pair = None
        if reason is None:
            pair, reason = _check_pair(data, extra_categories, contained)
        if reason:
            problems.bad_line(number, reason)
            continue
        identity = (pair.safe, pair.unsafe, pair.category, pair.caption)
        if identity in seen:
            problems.bad_line(number, f"repeats line {seen[identity]} (same safe, unsafe, category and caption); "
                                      "remove it")
            continue
        seen[identity] = number
        for name in (pair.safe, pair.unsafe):
            if not (root / name).is_file():
                problems.missing_file(name, number)
        pairs.append(UnlabelledPair(pair.safe, pair.unsafe, pair.category, pair.caption, number))
    if problems and not skip_invalid:
        problems.raise_if_any("fix these lines or images, or pass --skip-invalid to leave them out (the trainer "
                              f"then lists them in {SKIPPED_REPORT} in its output folder)")
    bad = problems.lines_with_problems()
    return [p for p in pairs if p.line not in bad], problems


def read_profiles(path: str | Path, user_ids: Sequence[str] = ()) -> list[UserProfile]:
    """Profiles from a reference users.csv (optionally only `user_ids`) or a .json / .jsonl of profile objects."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"profiles file not found: {path}; expected users.csv, .json or .jsonl")
    if path.suffix.lower() == ".csv":
        table = read_users_table(path)
        if not user_ids:
            return list(table.values())
        wanted = [str(u).strip().zfill(7) for u in user_ids]
        missing = [u for u in wanted if u not in table]
        if missing:
            raise DatasetError(f"{path.name}: no users {missing}; it has User_IDs {min(table)} to {max(table)}")
        return [table[u] for u in wanted]
    if path.suffix.lower() == ".jsonl":
        objects = []
        for number, data, reason in json_lines(path):
            if reason:
                raise DatasetError(f"{path.name} line {number}: {reason}")
            objects.append((number, data))
    elif path.suffix.lower() == ".json":
        try:
            data = parse_json(path.read_bytes())
        except JSONTextError as error:
            raise DatasetError(f"{path.name}: not valid JSON ({error})") from None
        data = data.get("profiles", data) if isinstance(data, dict) else data
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DatasetError(f"{path.name}: expected a profile object, a list of them, or {{\"profiles\": [...]}}")
        objects = list(enumerate(data, start=1))
    else:
        raise DatasetError(f"{path.name}: unsupported profiles file; allowed: .csv (users table), .json, .jsonl")
    profiles = []
    for number, data in objects:
        try:
            profiles.append(profile_from_dict(data))
        except ProfileError as error:
            raise DatasetError(f"{path.name} entry {number}: {error}") from None
    if user_ids:
        wanted = {str(u).strip().zfill(7) for u in user_ids}
        profiles = [p for p in profiles if p.user_id in wanted]
    if not profiles:
        raise DatasetError(f"{path.name}: no profiles" + (f" with User_IDs {sorted(user_ids)}" if user_ids else ""))
    return profiles


def profile_user_data(profile: UserProfile) -> dict[str, object]:
    data = profile.to_dict()
    data["User_ID"] = profile.label
    return data


def label_pairs(pairs: Sequence[UnlabelledPair], profiles: Sequence[UserProfile], source: str = "pairs"
                ) -> list[PairRecord]:
    """One record per (profile, pair): banned category → safe image chosen; allowed → unsafe image chosen."""
    labels = [p.label for p in profiles]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DatasetError(f"profiles {duplicates} appear more than once; give each profile one User_ID")
    records = []
    for profile in profiles:
        user_data = canonical_user_data(profile_user_data(profile))
        for pair in pairs:
            banned = pair.category in profile.banned
            chosen, rejected = (pair.safe, pair.unsafe) if banned else (pair.unsafe, pair.safe)
            records.append(PairRecord(chosen, rejected, pair.caption, profile.label, user_data, pair.category,
                                      banned, f"{source}:{pair.line}"))
    return records


def read_labelled_pairs(pairs_path: str | Path, profiles: Sequence[UserProfile],
                        skip_invalid: bool = False, contained: bool = False) -> LabelledData:
    pairs_path = Path(pairs_path)
    pairs, problems = read_unlabelled_pairs(pairs_path, skip_invalid, contained=contained)
    records = label_pairs(pairs, profiles, pairs_path.name)
    check_records(records, str(pairs_path))
    return LabelledData(tuple(records), pairs_path.parent, "pairs", (problems.describe(),) if problems else ())
