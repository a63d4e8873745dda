"""The SAGE training layout: `<root>/metadata.jsonl`, images beside it (docs/training.md §6).

Each line is one labelled pair: `chosen`, `rejected` (image names relative to the root), `caption`, and
`user_data` with at least `User_ID` (`file_name` may be present and is ignored). Every malformed line is
reported with its line number and every missing image by name, and so is a line that repeats an earlier one
(the same chosen, rejected, caption and user_data); by default any problem stops the run, and with
`skip_invalid=True` the offending lines are left out (a repeat's first line is kept) and the report is returned
(never silently). A User_ID whose lines give two different `user_data` objects anywhere in the file always stops
the run, before any split: leaving lines out cannot tell which profile is meant (docs/training.md §6).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..json_text import json_lines
from ..profile import CATEGORIES, ProfileError, check_user_id
from .errors import MissingDataError
from .records import (
    SKIPPED_REPORT,
    LabelledData,
    PairRecord,
    ProfileLines,
    Problems,
    canonical_user_data,
    check_records,
    image_name_problems,
)

METADATA_NAME = "metadata.jsonl"
# user_<uid7>_<category>_<concept>_<nnnnn>_{s|u}.<ext>: "_s" from the safe prompt, "_u" from the unsafe one.
SAGE_IMAGE_NAME = re.compile(r"user_(\d+)_([A-Za-z-]+)_.*_\d+_([su])\.[A-Za-z]+$")
_CATEGORY_LOOKUP = {c.lower(): c for c in CATEGORIES}


def sage_name_info(name: str) -> tuple[str | None, bool | None]:
    """(category, is_safe_image) read from a SAGE image name, or (None, None) when it does not follow it."""
    match = SAGE_IMAGE_NAME.search(Path(name).name)
    if not match:
        return None, None
    return _CATEGORY_LOOKUP.get(match.group(2).lower()), match.group(3) == "s"


def _check_line(data: object, contained: bool) -> tuple[dict | None, str | None]:
    if not isinstance(data, dict):
        return None, f"expected a JSON object, found {type(data).__name__}"
    problems = image_name_problems(data, ("chosen", "rejected"), contained)
    if not isinstance(data.get("caption"), str):
        problems.append("'caption' must be a string (may be empty)")
    user = data.get("user_data")
    if not isinstance(user, dict):
        problems.append("'user_data' must be an object with at least User_ID")
    elif "User_ID" not in user:
        problems.append("'user_data' has no User_ID")
    else:
        try:
            check_user_id(user["User_ID"])
        except ProfileError as error:
            problems.append(str(error))
    if not problems and data["chosen"] == data["rejected"]:
        problems.append(f"chosen and rejected are the same image {data['chosen']!r}")
    return (None, "; ".join(problems)) if problems else (data, None)


def read_sage(root: str | Path, skip_invalid: bool = False, contained: bool = False) -> LabelledData:
    """Read `<root>/metadata.jsonl` and check that every image exists (with `contained`, inside the folder)."""
    root = Path(root)
    metadata = root / METADATA_NAME if root.is_dir() else root
    if not metadata.is_file():
        raise MissingDataError(f"no SAGE metadata at {metadata}; expected <data folder>/{METADATA_NAME} with one "
                               "JSON object per line (chosen, rejected, caption, user_data)")
    root = metadata.parent
    problems = Problems(metadata.name)
    candidates: list[tuple[int, dict]] = []
    seen: dict[tuple, int] = {}
    profiles = ProfileLines(metadata.name)
    for number, data, reason in json_lines(metadata):
        if reason is None:
            data, reason = _check_line(data, contained)
        if reason:
            problems.bad_line(number, reason)
            continue
        user_id = check_user_id(data["user_data"]["User_ID"])
        user_data = canonical_user_data({**data["user_data"], "User_ID": user_id})
        profiles.add(user_id, user_data, number)
        identity = (data["chosen"], data["rejected"], data["caption"], user_data)
        if identity in seen:
            problems.bad_line(number, f"repeats line {seen[identity]} (same chosen, rejected, caption and "
                                      "user_data); remove it")
            continue
        seen[identity] = number
        for key in ("chosen", "rejected"):
            if not (root / data[key]).is_file():
                problems.missing_file(data[key], number)
        candidates.append((number, data))
    profiles.raise_if_any()
    if problems and not skip_invalid:
        problems.raise_if_any("fix these lines or images, or pass --skip-invalid to leave them out (the trainer "
                              f"then lists them in {SKIPPED_REPORT} in its output folder)")
    bad = problems.lines_with_problems()
    records = []
    for number, data in candidates:
        if number in bad:
            continue
        user = dict(data["user_data"])
        user["User_ID"] = check_user_id(user["User_ID"])
        category, chosen_is_safe = sage_name_info(data["chosen"])
        records.append(PairRecord(data["chosen"], data["rejected"], data["caption"], user["User_ID"],
                                  canonical_user_data(user), category, chosen_is_safe,
                                  f"{metadata.name}:{number}"))
    check_records(records, str(metadata))
    return LabelledData(tuple(records), root, "sage", (problems.describe(),) if problems else ())
