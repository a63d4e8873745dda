"""A stable train / held-out split of labelled records, and a size limit.

A record's side depends only on its own images (a hash of chosen and rejected), never on the order of the file
or on the other records, so adding data never moves an existing pair across the split, and the two parts are
always disjoint. Both labellings of one image pair (one per profile) land on the same side.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

from .errors import DatasetError
from .records import LabelledData

SPLITS = ("all", "train", "held_out")


def _bucket(chosen: str, rejected: str) -> int:
    names = "\n".join(sorted((chosen, rejected)))
    return int.from_bytes(hashlib.sha256(names.encode()).digest()[:4], "little") % 100


def split_records(data: LabelledData, split: str = "all", held_out_percent: int = 10, limit: int = 0) -> LabelledData:
    """The records of one part (`all`, `train` or `held_out`), at most `limit` of them (0: no limit)."""
    if split not in SPLITS:
        raise DatasetError(f"split {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    if not 0 <= held_out_percent <= 100:
        raise DatasetError(f"held_out_percent must be between 0 and 100, got {held_out_percent}")
    if limit < 0:
        raise DatasetError(f"limit must be 0 (no limit) or positive, got {limit}")
    records = data.records
    if split != "all":
        want_held_out = split == "held_out"
        records = tuple(r for r in records if (_bucket(r.chosen, r.rejected) < held_out_percent) == want_held_out)
    if limit:
        records = records[:limit]
    if not records:
        raise DatasetError(f"the {split} part of {data.root} holds no pairs (held_out_percent {held_out_percent}); "
                           "change the split or add data")
    return replace(data, records=records)
