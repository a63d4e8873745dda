"""Which profile and category each scored image belongs to (docs/evaluation.md §7).

For each image, first match wins:

- **profile**: the mapping file's row (`--labels`) for the image; the one profile given for the whole folder
  (`--profile`, e.g. `level_3` for a set generated with one level user, whose file names still carry the prompt rows' own
  users); the User_ID of a SAGE image name; otherwise `unknown`.
- **category**: the mapping file's row; the category of a SAGE image name; otherwise `unknown`.

SAGE image names are `user_<7 digits>_<category>_<concept words joined by _>_<5 digits>_u.<ext>`, category one
of the seven in lower case (`self-harm`), ext jpg, jpeg, png or webp. The seven categories are stored in their
canonical spelling (`Self-Harm`); other labels (another benchmark's own categories) are kept as written.

A judge needs the attributes behind a profile label (`profile_for_label`): `level_0`..`level_5` are the evaluation
users (psa_core.profile.EVALUATION_USERS), a 7-digit User_ID is looked up in a users table (`--profiles
users.csv`); any other label has no attributes and cannot be judged.

A mapping file is a `.csv` with a header row, or a `.json` list of objects (or one object keyed by file name),
with `file` (or `file_name`) and at least one of `profile` (or `user_id`; a number is zero-padded to 7 digits, as
in the SAGE prompt sets) and `category`. So `--labels sage_unseen.csv` labels images named after its rows.
"""
from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

from ..errors import shown
from ..json_text import JSONTextError, parse_json
from ..profile import CATEGORIES, EVALUATION_USERS, USER_ID_DIGITS, UserProfile
from ..text_limits import check_text
from .errors import EvaluationError

UNKNOWN = "unknown"
MAX_LABEL = 64
MAX_MAPPING_BYTES = 64 << 20
_CATEGORY_NAMES = {name.lower(): name for name in CATEGORIES}
_CATEGORY_PATTERN = "|".join(re.escape(name.lower()) for name in CATEGORIES)
SAGE_IMAGE_NAME = re.compile(rf"^user_(\d{{7}})_({_CATEGORY_PATTERN})_(.+)_(\d{{5}})_u\.(jpe?g|png|webp)$",
                             re.IGNORECASE)


class ImageLabel(NamedTuple):
    profile: str = UNKNOWN
    category: str = UNKNOWN


def canonical_category(value: str) -> str:
    """One of the seven categories in its canonical spelling, or the label as written."""
    return _CATEGORY_NAMES.get(value.strip().lower(), value.strip())


def check_label(value: object, what: str) -> str:
    """A profile or category label: text of 1..64 characters without control characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EvaluationError(f"{what} {shown(value)} is not allowed; allowed: text of 1 to {MAX_LABEL} characters")
    text = str(value).strip()
    if not text or len(text) > MAX_LABEL or any(unicodedata.category(c).startswith("C") for c in text):
        raise EvaluationError(f"{what} {shown(value)} is not allowed; allowed: text of 1 to {MAX_LABEL} characters, "
                              f"no control characters")
    if text.lower() == "all":
        raise EvaluationError(f"{what} 'all' is not allowed: the summary uses it for the rows over all profiles or "
                              f"categories")
    return text


def sage_label(name: str) -> ImageLabel | None:
    """Profile (the User_ID) and category of a SAGE image name, or None when the name does not follow it."""
    match = SAGE_IMAGE_NAME.match(name)
    if not match:
        return None
    return ImageLabel(match.group(1), _CATEGORY_NAMES[match.group(2).lower()])


def _profile_value(row: dict, where: str) -> str | None:
    for key in ("profile", "user_id"):
        value = row.get(key)
        if value not in (None, ""):
            if key == "user_id" and (isinstance(value, int) and not isinstance(value, bool) or
                                     isinstance(value, str) and value.strip().isdigit()):
                text = str(value).strip()
                if len(text) > 7:
                    raise EvaluationError(f"{where}: user_id {shown(value)} has more than 7 digits")
                return text.zfill(7)
            return check_label(value, f"{where}: {key}")
    return None


def _row_label(row: dict, where: str) -> tuple[str, ImageLabel | dict]:
    row = {str(key).strip().lower(): value for key, value in row.items() if key is not None}
    name = row.get("file", row.get("file_name"))
    if not isinstance(name, str) or not name.strip():
        raise EvaluationError(f"{where}: no file name (a 'file' or 'file_name' field)")
    profile = _profile_value(row, where)
    category = row.get("category")
    category = canonical_category(check_label(category, f"{where}: category")) if category not in (None, "") else None
    caption = row.get("caption")
    caption = check_text(caption, f"{where}: caption") if isinstance(caption, str) and caption.strip() else None
    if profile is None and category is None and caption is None:
        raise EvaluationError(f"{where}: neither a profile (or user_id), a category nor a caption")
    return Path(name.strip()).name, {"profile": profile, "category": category, "caption": caption}


def read_label_mapping(path: str | Path) -> dict[str, dict]:
    """{image file name: {"profile": str | None, "category": str | None, "caption": str | None}} from a mapping file
    (module docstring); the caption is what CLIPScore and the judge's blind prompt read."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--labels {path}: file not found")
    if path.stat().st_size > MAX_MAPPING_BYTES:
        raise EvaluationError(f"--labels {path.name}: larger than {MAX_MAPPING_BYTES} bytes")
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"--labels {path.name}: cannot be read as UTF-8 text ({error})") from None
    if suffix == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            for number, row in enumerate(reader, start=2):
                rows.append((f"{path.name} line {number}", row))
        except csv.Error as error:
            raise EvaluationError(f"--labels {path.name}: not valid CSV ({error})") from None
    elif suffix == ".json":
        try:
            data = parse_json(text)
        except JSONTextError as error:
            raise EvaluationError(f"--labels {path.name}: not valid JSON ({error})") from None
        if isinstance(data, dict):
            data = [{"file": key, **value} if isinstance(value, dict) else value for key, value in data.items()]
        if not isinstance(data, list):
            raise EvaluationError(f"--labels {path.name}: expected a list of objects or an object keyed by file name")
        for number, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise EvaluationError(f"--labels {path.name} entry {number}: expected an object, found "
                                      f"{type(row).__name__}")
            rows.append((f"{path.name} entry {number}", row))
    else:
        raise EvaluationError(f"--labels {path.name}: allowed: a .csv or .json mapping of file names to profile "
                              f"and category")
    mapping: dict[str, dict] = {}
    for where, row in rows:
        name, label = _row_label(row, where)
        if name in mapping and mapping[name] != label:
            raise EvaluationError(f"{where}: {name!r} is listed twice with different labels")
        mapping[name] = label
    return mapping


def label_for(name: str, mapping: dict[str, dict] | None = None, profile: str | None = None) -> ImageLabel:
    """The profile and category of the image file `name` (module docstring for the order)."""
    listed = (mapping or {}).get(name, {})
    sage = sage_label(name) or ImageLabel(UNKNOWN, UNKNOWN)
    return ImageLabel(listed.get("profile") or profile or sage.profile, listed.get("category") or sage.category)


def profile_for_label(label: str, users: dict[str, UserProfile] | None = None) -> UserProfile:
    """The profile a judge reads for the label `label` (module docstring); EvaluationError when it has none."""
    if label in EVALUATION_USERS:
        return EVALUATION_USERS[label]
    if len(label) == USER_ID_DIGITS and label.isdigit():
        if users is None:
            raise EvaluationError(f"profile {label}: a User_ID needs a users table (--profiles users.csv) to give "
                                  f"the judge its attributes")
        if label not in users:
            raise EvaluationError(f"profile {label}: not in the users table ({len(users)} users"
                                  f"{f', {min(users)} to {max(users)}' if users else ''})")
        return users[label]
    levels = ", ".join(EVALUATION_USERS)
    raise EvaluationError(f"profile {label!r} has no attributes for the judge; allowed: {levels}, or a 7-digit "
                          f"User_ID of the users table (--profiles)")
