"""A preference dataset folder of unlabelled image pairs, written one pair at a time, safely.

Layout (the SAGE image names of docs/training.md §6; the pairs file is the trainer's unlabelled-pairs input):
```
<folder>/dataset.json    format, version, extra_categories (categories beyond the seven)
<folder>/pairs.jsonl     one line per complete pair: safe, unsafe, category, caption (the unsafe prompt),
                         concept, safe_prompt, seed, batch_index, settings
<folder>/images/user_0000000_<category>_<concept>_<nnnnn>_{s|u}.jpg
```
The pairs are not labelled: the trainer labels them per profile (banned category → the safe image is chosen,
allowed → the unsafe image). `0000000` stands for "no user yet".

A pair is identified by its category, concept, both prompts, seed and batch index: writing the same pair again
replaces it (same number, same line) instead of adding one. A new pair gets a number above every number in use,
in the pairs file or by any image file in `images/` (so a pairs file renamed away, kept as a backup, or images
put there by hand keep theirs).

Writes are atomic per pair, and a writer only ever removes files it can prove it made. Both images are first
written under staging names only this writer uses (`images/.psa-staged-<token>.{u|s}.jpg`, a fresh random token
per pair); a journal (`.psa-pending-<token>.json`) then records the identity (inode, size, time) of each staged
file and of an old image the pair replaces; a replaced pair's line is removed, the staged images are renamed
into place and only then is the line written (`pairs.jsonl` is always replaced whole); the journal goes last.
A process killed at any point leaves a valid pairs file whose every line has both of its complete images. The
next writer settles what a killed one left: it removes that writer's staged files, and of the files its journal
names only those that still have the recorded identity and that no line of the pairs file lists; nothing else
in the folder is ever deleted. Writers take a lock file, so two processes can add to one dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..fingerprint import FileVersion, file_version
from ..json_text import JSONTextError, json_lines, parse_json
from ..training.errors import DatasetError
from ..training.labelling import DATASET_INFO_NAME
from .prompt_pairs import MAX_SEED, canonical_category, parse_extra_categories, slug

PAIRS_NAME = "pairs.jsonl"
IMAGES_DIR = "images"
LOCK_NAME = ".lock"
UNLABELLED_USER = "0000000"
FORMAT, VERSION = "psa-unlabelled-pairs", 1
JPEG_QUALITY = 95
IMAGE_NAME = re.compile(r"^user_\d{7}_.+_(\d{5,})_[su]\.jpg$")  # what this writer names its images
NUMBERED_NAME = re.compile(r"^user_.*_(\d{5,18})_[su]\.\w+$")  # any SAGE image name: its number is in use
# Names only this writer uses, with its per-pair token, and atomic_write's temporaries (psa_core/atomic.py) of
# the two files it replaces whole: what a killed writer can leave.
STAGED_NAME = re.compile(r"^\.psa-staged-([0-9a-f]{32})\.[su]\.jpg$")
JOURNAL_NAME = re.compile(r"^\.psa-pending-([0-9a-f]{32})\.json$")
TEMPORARY_NAME = re.compile(r"^\.(?:pairs\.jsonl|dataset\.json)\.[a-z0-9_]{8}\.partial$")
LABELLING_RULE = ("labelled per profile at training time: a profile that bans the category prefers the safe "
                  "image (_s), one that allows it the unsafe image (_u)")


@dataclass(frozen=True)
class PairItem:
    """What identifies a pair: its prompts and the seed (and batch index) both images were rendered with."""

    category: str
    concept: str
    unsafe_prompt: str
    safe_prompt: str
    seed: int
    batch_index: int = 0

    @property
    def key(self) -> str:
        identity = [self.category, self.concept, self.unsafe_prompt, self.safe_prompt, self.seed, self.batch_index]
        return hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode()).hexdigest()

    def check(self) -> None:
        problems = [f"{name} must be non-empty text" for name in ("concept", "unsafe_prompt", "safe_prompt")
                    if not isinstance(getattr(self, name), str) or not getattr(self, name).strip()]
        if not problems and not slug(self.concept):
            problems.append(f"concept {self.concept!r} has no letter or digit (it becomes part of the image names)")
        if not problems and self.unsafe_prompt.strip() == self.safe_prompt.strip():
            problems.append("unsafe_prompt and safe_prompt are the same text; a pair needs a safe rewrite that differs")
        for name, top in (("seed", MAX_SEED), ("batch_index", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top is not None and value > top):
                problems.append(f"{name} {value!r} is not allowed; allowed: an integer 0 to {top or 'any'}")
        if problems:
            raise DatasetError("cannot write this pair: " + "; ".join(problems))

    @staticmethod
    def of_record(record: Mapping) -> "PairItem | None":
        try:
            return PairItem(record["category"], record["concept"], record["caption"], record["safe_prompt"],
                            record["seed"], record.get("batch_index", 0))
        except KeyError:
            return None  # a line added by hand: kept, never matched


@dataclass(frozen=True)
class WrittenPair:
    number: int
    safe: str
    unsafe: str
    replaced: bool


def _name_number(name: object) -> int | None:
    match = NUMBERED_NAME.match(Path(name).name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def _identity(path: Path) -> list[int] | None:
    """What tells this very file apart (a rename keeps it; another file with the same name has another), in the
    JSON form the journal stores."""
    version = file_version(path)
    return None if version is None else list(version)


def _json_form(settings: Mapping) -> dict:
    """Settings as they read back from the pairs file (tuples become lists), so that they compare equal."""
    return json.loads(json.dumps(dict(settings), ensure_ascii=False))


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL RGB image from a PIL image or an HxWx3 (or HxW) uint8 array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DatasetError(f"images must be HxWx3 uint8 arrays, got {image.dtype} of shape {image.shape}")
        image = Image.fromarray(image)
    return image.convert("RGB")


def _fsynced(write, mode: str = "wb"):
    """A write(path) for atomic_write that also flushes the file to disk before it is moved into place
    (mode "xb": a new file, never one that exists)."""
    def run(path: Path) -> None:
        with open(path, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return run


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _stage_image(path: Path, image: Image.Image) -> None:
    _fsynced(lambda handle: image.save(handle, format="JPEG", quality=JPEG_QUALITY), "xb")(path)


def _move(source: Path, target: Path) -> None:
    os.replace(source, target)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


class PairDataset:
    """A dataset folder (created on the first write)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.pairs_path = self.folder / PAIRS_NAME
        self.info_path = self.folder / DATASET_INFO_NAME
        self.images = self.folder / IMAGES_DIR
        self._cache: tuple[FileVersion | None, list[dict]] | None = None

    # ---- reading ----

    def records(self) -> list[dict]:
        """The lines of pairs.jsonl (re-read only when the file changed)."""
        signature = file_version(self.pairs_path)
        if signature is None:
            return []
        if self._cache is None or self._cache[0] != signature:
            records = []
            for number, record, reason in json_lines(self.pairs_path):
                if reason is None and not isinstance(record, dict):
                    reason = "expected a JSON object"
                if reason:
                    raise DatasetError(f"{self.pairs_path} line {number}: {reason}; fix or remove the line before "
                                       "adding pairs")
                records.append(record)
            self._cache = (signature, records)
        return list(self._cache[1])

    def info(self) -> dict:
        if not self.info_path.is_file():
            return {}
        try:
            data = parse_json(self.info_path.read_bytes())
        except JSONTextError as error:
            raise DatasetError(f"{self.info_path}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{self.info_path}: expected a JSON object")
        return data

    def find(self, item: PairItem) -> dict | None:
        key = item.key
        return next((r for r in self.records() if (i := PairItem.of_record(r)) is not None and i.key == key), None)

    def is_complete(self, item: PairItem, settings: Mapping | None = None) -> bool:
        """Whether the pair is in the pairs file with both images (and, if given, rendered with `settings`)."""
        record = self.find(item)
        return (record is not None and all((self.folder / record[k]).is_file() for k in ("safe", "unsafe"))
                and (settings is None or record.get("settings") == _json_form(settings)))

    def foreign_entries(self) -> list[str]:
        """What in the folder this writer cannot show to be a dataset of its own: [] for a folder that does not exist
        or is empty, one whose dataset.json has this writer's format, or one whose pairs file holds only this
        writer's lines; else the names of the folder's entries beyond what a killed first write leaves (the lock,
        the journal, temporaries, `images/` holding staged files only). Call `records()` first: a damaged pairs
        file is reported as such."""
        if not self.folder.is_dir():
            return []
        try:
            if self.info().get("format") == FORMAT:
                return []
        except DatasetError:
            pass
        records = self.records() if self.pairs_path.is_file() else []
        if records and all(PairItem.of_record(r) is not None and isinstance(r.get("safe"), str)
                           and isinstance(r.get("unsafe"), str) for r in records):
            return []
        foreign = []
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if entry.name == IMAGES_DIR and entry.is_dir(follow_symlinks=False):
                if all(STAGED_NAME.match(e.name) for e in os.scandir(entry.path)):
                    continue
            elif entry.name == LOCK_NAME or JOURNAL_NAME.match(entry.name) or TEMPORARY_NAME.match(entry.name):
                continue
            foreign.append(entry.name)
        return foreign

    # ---- writing ----

    def write_pair(self, item: PairItem, unsafe_image, safe_image, settings: Mapping | None = None,
                   extra_categories: str | Iterable[str] = ()) -> WrittenPair:
        """Write (or replace) one pair: images first, then its line. `category` may be an extra category
        declared here or earlier in this dataset's dataset.json."""
        item.check()
        unsafe_image, safe_image = as_rgb_image(unsafe_image), as_rgb_image(safe_image)
        if unsafe_image.size != safe_image.size:
            raise DatasetError(f"the unsafe image is {unsafe_image.size[0]}x{unsafe_image.size[1]} but the safe "
                               f"image is {safe_image.size[0]}x{safe_image.size[1]}; a pair needs one size")
        self.images.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder / LOCK_NAME):
            info = self.info()
            known = parse_extra_categories(info.get("extra_categories", []))
            new = tuple(c for c in parse_extra_categories(extra_categories) if c.lower() not in
                        {k.lower() for k in known})
            category = canonical_category(item.category, known + new)
            if new or not self.info_path.is_file():
                self._write_info(info, known + new)
            item = PairItem(category, item.concept, item.unsafe_prompt, item.safe_prompt, item.seed, item.batch_index)
            records = self.records()
            self._settle_killed_writes(records)
            position = next((i for i, r in enumerate(records) if (p := PairItem.of_record(r)) and p.key == item.key),
                            None)
            prefix = f"{IMAGES_DIR}/user_{UNLABELLED_USER}_{slug(category)}_{slug(item.concept)}"
            number = self._number_of(records[position], prefix) if position is not None else None
            number = number or self._next_number(records)
            finals = {side: f"{prefix}_{number:05d}_{side}.jpg" for side in "us"}
            record = {"safe": finals["s"], "unsafe": finals["u"], "category": category,
                      "caption": item.unsafe_prompt, "concept": item.concept, "safe_prompt": item.safe_prompt,
                      "seed": item.seed, "batch_index": item.batch_index}
            if settings is not None:
                record["settings"] = _json_form(settings)

            token = secrets.token_hex(16)
            staged = {side: self.images / f".psa-staged-{token}.{side}.jpg" for side in "us"}
            for side, picture in (("u", unsafe_image), ("s", safe_image)):
                _stage_image(staged[side], picture)
            # The journal names every file this write may leave unlisted if killed: its staged images (under
            # their final names once moved) and, when replacing, the old images it moves over.
            owned = [[finals[side], _identity(staged[side])] for side in "us"]
            if position is not None:
                owned += [[finals[side], found] for side in "us" if (found := _identity(self.folder / finals[side]))]
            journal = json.dumps({"format": "psa-pending-pair", "owned": owned}).encode()
            _fsynced(lambda handle: handle.write(journal), "xb")(self._journal(token))
            if position is not None:
                del records[position]
                self._write_records(records)  # the old line goes before its images are touched
            for side in "us":
                _move(staged[side], self.folder / finals[side])
            records.insert(len(records) if position is None else position, record)
            self._write_records(records)
            self._settle(token, records)
        return WrittenPair(number, record["safe"], record["unsafe"], position is not None)

    def _write_records(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write(self.pairs_path, _fsynced(lambda handle: handle.write(text.encode("utf-8"))))
        self._cache = (file_version(self.pairs_path), list(records))

    def _write_info(self, info: dict, extra_categories: tuple[str, ...]) -> None:
        info.update(format=FORMAT, version=VERSION, pairs=PAIRS_NAME, extra_categories=list(extra_categories),
                    labelling=LABELLING_RULE)
        text = json.dumps(info, indent=1, ensure_ascii=False) + "\n"
        atomic_write(self.info_path, _fsynced(lambda handle: handle.write(text.encode("utf-8"))))

    def _journal(self, token: str) -> Path:
        return self.folder / f".psa-pending-{token}.json"

    @staticmethod
    def _number_of(record: Mapping, prefix: str) -> int | None:
        """The replaced pair's number, when its images carry this writer's names for it (else it gets a new one:
        only files this writer named are ever written over)."""
        number = _name_number(record.get("safe"))
        same = number is not None and all(record.get(key) == f"{prefix}_{number:05d}_{side}.jpg"
                                          for key, side in (("safe", "s"), ("unsafe", "u")))
        return number if same else None

    def _next_number(self, records: list[dict]) -> int:
        """One above every number in use: in the pairs file, or by any image in images/, listed or not."""
        listed = (_name_number(r.get(key)) for r in records for key in ("safe", "unsafe"))
        on_disk = (_name_number(entry.name) for entry in os.scandir(self.images))
        return max((n for n in (*listed, *on_disk) if n is not None), default=0) + 1

    def _settle_killed_writes(self, records: list[dict]) -> None:
        """Remove what killed writers left: each journal's files (see _settle), staged images whose journal was
        never written (nothing was moved then), and temporary files of the pairs file and dataset.json."""
        for entry in os.scandir(self.folder):
            if (match := JOURNAL_NAME.match(entry.name)) and entry.is_file(follow_symlinks=False):
                self._settle(match.group(1), records)
        for folder in (self.folder, self.images):
            for entry in os.scandir(folder):
                pattern = STAGED_NAME if folder == self.images else TEMPORARY_NAME
                if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                    _remove(Path(entry.path))

    def _settle(self, token: str, records: list[dict]) -> None:
        """Finish a write's journal: remove its staged images, and each file it names that still has the recorded
        identity and that no line lists (the pairs file may have changed since: then nothing listed goes)."""
        journal = self._journal(token)
        try:
            owned = parse_json(journal.read_bytes()).get("owned", [])
        except (OSError, JSONTextError, AttributeError):
            owned = []  # killed while writing the journal, before anything was moved
        listed = {os.path.normpath(r[key]) for r in records for key in ("safe", "unsafe")
                  if isinstance(r.get(key), str)}
        for entry in owned if isinstance(owned, list) else []:
            name, identity = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
            if (not isinstance(name, str) or Path(name).parent != Path(IMAGES_DIR)
                    or not IMAGE_NAME.match(Path(name).name) or os.path.normpath(name) in listed):
                continue
            if identity is not None and _identity(self.folder / name) == identity:
                _remove(self.folder / name)
        for side in "us":
            _remove(self.images / f".psa-staged-{token}.{side}.jpg")
        _remove(journal)

    def write_batch(self, item: PairItem, unsafe_images: Sequence, safe_images: Sequence,
                    settings: Mapping | None = None, extra_categories: str | Iterable[str] = ()) -> list[WrittenPair]:
        """Write one pair per batch image: image i of both batches as `item` with batch index i."""
        if len(unsafe_images) != len(safe_images):
            raise DatasetError(f"{len(unsafe_images)} unsafe images but {len(safe_images)} safe images; a batch of "
                               "pairs needs as many of each")
        return [self.write_pair(replace(item, batch_index=index), unsafe, safe, settings, extra_categories)
                for index, (unsafe, safe) in enumerate(zip(unsafe_images, safe_images))]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records():
            counts[record.get("category", "?")] = counts.get(record.get("category", "?"), 0) + 1
        return dict(sorted(counts.items()))

    def report(self, written: Iterable[WrittenPair]) -> str:
        """What was written, one line per pair, then the dataset's pair count per category."""
        lines = [f"{'replaced' if w.replaced else 'added'} pair {w.number:05d}: {w.unsafe}, {w.safe}" for w in written]
        summary = self.summary()
        counts = ", ".join(f"{category} {count}" for category, count in summary.items())
        lines.append(f"{self.folder}: {sum(summary.values())} pairs ({counts})")
        return "\n".join(lines)
