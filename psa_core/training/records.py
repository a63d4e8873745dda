"""Labelled preference records (what one training pair is) and the report of unusable input lines."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import stays_inside
from .errors import DatasetError

MAX_LISTED_PROBLEMS = 20
SKIPPED_REPORT = "skipped_data.txt"  # where the trainer writes what --skip-invalid left out


@dataclass(frozen=True)
class PairRecord:
    """One labelled pair for one user. Image paths are relative to the data root (or absolute)."""

    chosen: str
    rejected: str
    caption: str
    user_id: str
    user_data: str  # canonical JSON of the user's profile / SAGE user_data object
    category: str | None = None
    safe_chosen: bool | None = None  # True when the chosen image is the one from the safe prompt
    source: str = ""  # "file:line" the record came from

    def user_mapping(self) -> dict:
        return json.loads(self.user_data)


def image_name_problems(data: Mapping, keys: Sequence[str], contained: bool) -> list[str]:
    """Each image name must be non-empty text; with `contained`, one that stays inside the data folder."""
    problems = []
    for key in keys:
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"'{key}' must be a non-empty image name")
        elif contained and not stays_inside(data[key]):
            problems.append(f"'{key}' leaves the data folder (an absolute path or '..'); allowed: an image name "
                            "relative to the folder")
    return problems


def canonical_user_data(data: Mapping) -> str:
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Problems:
    """Malformed lines (with line numbers) and missing files (by name), collected while reading."""

    source: str
    malformed: list[tuple[int, str]] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)

    def bad_line(self, line: int, reason: str) -> None:
        self.malformed.append((line, reason))

    def missing_file(self, name: str, line: int) -> None:
        self.missing.append((name, line))

    def __bool__(self) -> bool:
        return bool(self.malformed or self.missing)

    def lines_with_problems(self) -> set[int]:
        return {line for line, _ in self.malformed} | {line for _, line in self.missing}

    def describe(self) -> str:
        parts = []
        if self.malformed:
            parts.append(f"{len(self.malformed)} malformed line{'s' if len(self.malformed) != 1 else ''}")
        if self.missing:
            names = {name for name, _ in self.missing}
            parts.append(f"{len(names)} missing file{'s' if len(names) != 1 else ''}")
        lines = [f"{self.source}: {' and '.join(parts)}:"]
        for line, reason in self.malformed[:MAX_LISTED_PROBLEMS]:
            lines.append(f"  line {line}: {reason}")
        if len(self.malformed) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(self.malformed) - MAX_LISTED_PROBLEMS} more malformed lines")
        seen: dict[str, list[int]] = {}
        for name, line in self.missing:
            seen.setdefault(name, []).append(line)
        for name, where in list(seen.items())[:MAX_LISTED_PROBLEMS]:
            lines.append(f"  missing: {name} (line{'s' if len(where) > 1 else ''} {', '.join(map(str, where[:5]))}"
                         f"{', ...' if len(where) > 5 else ''})")
        if len(seen) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(seen) - MAX_LISTED_PROBLEMS} more missing files")
        return "\n".join(lines)

    def raise_if_any(self, hint: str) -> None:
        if self:
            raise DatasetError(f"{self.describe()}\n{hint}")


@dataclass
class ProfileLines:
    """The first profile (canonical user_data) of each User_ID in a file, and every later line that differs: one
    User_ID must mean one profile in the whole file, whichever part of a split its lines fall in."""

    source: str
    first: dict[str, tuple[str, int]] = field(default_factory=dict)
    conflicts: list[tuple[str, int, int, list[str]]] = field(default_factory=list)

    def add(self, user_id: str, user_data: str, line: int) -> None:
        known, known_line = self.first.setdefault(user_id, (user_data, line))
        if known != user_data:
            before, after = json.loads(known), json.loads(user_data)
            keys = sorted(str(key) for key in set(before) | set(after) if before.get(key) != after.get(key))
            self.conflicts.append((user_id, known_line, line, keys))

    def raise_if_any(self) -> None:
        if not self.conflicts:
            return
        users = sorted({user_id for user_id, *_ in self.conflicts})
        lines = [f"{self.source}: {len(users)} User_ID{'s' if len(users) != 1 else ''} with two different "
                 f"profiles (user_data):"]
        for user_id, first, line, keys in self.conflicts[:MAX_LISTED_PROBLEMS]:
            shown_keys = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            lines.append(f"  line {line}: User_ID {user_id} differs from line {first} in {shown_keys}")
        if len(self.conflicts) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(self.conflicts) - MAX_LISTED_PROBLEMS} more lines")
        raise DatasetError("\n".join(lines) + "\none User_ID must mean one profile: give the other profile its own "
                           "User_ID or correct its user_data (--skip-invalid cannot choose between them)")


@dataclass(frozen=True)
class LabelledData:
    """Records ready for caching, the folder their image paths are relative to, and what was skipped."""

    records: tuple[PairRecord, ...]
    root: Path
    kind: str  # "sage" or "pairs"
    skipped: tuple[str, ...] = ()  # one human-readable report per input file with problems

    def image_path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def summary(self) -> dict[str, object]:
        """What the adapter metadata records about its training data."""
        users = Counter(r.user_id for r in self.records)
        categories = Counter(r.category for r in self.records if r.category)
        pairs = {frozenset((r.chosen, r.rejected)) for r in self.records}
        safe_known = [r.safe_chosen for r in self.records if r.safe_chosen is not None]
        summary: dict[str, object] = {
            "kind": self.kind, "records": len(self.records), "image_pairs": len(pairs), "users": len(users),
            "captions": len({r.caption for r in self.records}),
        }
        if categories:
            summary["categories"] = dict(sorted(categories.items()))
        if safe_known:
            summary["safe_image_chosen"] = sum(safe_known)
            summary["unsafe_image_chosen"] = len(safe_known) - sum(safe_known)
        if self.skipped:
            summary["skipped_lines_reported"] = True
        return summary


def unique_users(records: Iterable[PairRecord]) -> list[tuple[str, str]]:
    """(user_id, user_data) in order of first appearance; a user id with two different profiles is an error."""
    seen: dict[str, str] = {}
    for record in records:
        known = seen.setdefault(record.user_id, record.user_data)
        if known != record.user_data:
            raise DatasetError(f"User_ID {record.user_id} appears with two different user_data objects "
                               f"({record.source} differs from an earlier line); one id must mean one profile")
    return list(seen.items())


def check_records(records: Sequence[PairRecord], source: str) -> None:
    if not records:
        raise DatasetError(f"{source}: no usable training pairs")
