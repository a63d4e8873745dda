"""File fingerprints (psa_core.fingerprint): which version of a file this is, and the memo of content hashes."""
from __future__ import annotations

import hashlib
import os

from psa_core.fingerprint import HashMemo, file_fingerprint, file_version


def test_a_rewrite_or_a_replace_is_another_version_and_a_missing_file_is_named(tmp_path):
    path = tmp_path / "pairs.csv"
    assert file_version(path) is None and file_fingerprint(path) == f"{path}|missing"
    path.write_text("a")
    first = file_fingerprint(path)
    assert first.startswith(f"{path}|") and first == file_fingerprint(path)
    path.write_text("ab")  # in place: another size
    assert file_fingerprint(path) != first
    stat = path.stat()
    replacement = tmp_path / "new.csv"
    replacement.write_text("cd")  # same size, same mtime, renamed over the old file: another inode
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = file_fingerprint(path)
    os.replace(replacement, path)
    assert file_fingerprint(path) != before
    assert file_version(path).size == 2


def test_hash_memo_rehashes_only_a_changed_file(tmp_path):
    path, memo_file = tmp_path / "model.safetensors", tmp_path / "hashes.json"
    path.write_bytes(b"weights")
    memo = HashMemo(memo_file)
    assert memo.sha256(path) == hashlib.sha256(b"weights").hexdigest()
    memo.save()
    path.write_bytes(b"other weights")
    assert HashMemo(memo_file).sha256(path) == hashlib.sha256(b"other weights").hexdigest()
