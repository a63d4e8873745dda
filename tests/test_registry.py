"""Registry readiness with the real comfy-cli: `comfy --skip-prompt node validate` passes, and the archive
`comfy node pack` makes holds the pack without development files or reference data, and, unpacked alone into
a fresh ComfyUI's custom_nodes/, loads every node the pack registers.

`comfy node pack` zips git-tracked files only. So that the archive reflects the working tree a commit would
hold (new files not yet added included), the test copies the files `git ls-files --cached --others
--exclude-standard` lists (tracked plus untracked-but-not-ignored) into a temporary folder, makes that a git
repository of its own with every file added (the repository under test is never touched), and runs comfy-cli
there. In a fresh clone (CI) that is exactly the committed tree.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from types import ModuleType

import pytest

from comfy_env import REPO, registered_nodes
from http_server import PACK_FOLDER, ComfyServer
from source_imports import DEVELOPMENT_PACKAGES, development_imports

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]  # comfy-cli runs and a fresh ComfyUI

COMFY_CLI = Path(sys.executable).with_name("comfy")
ARCHIVE = "node.zip"  # comfy-cli's NODE_ZIP_FILENAME
# Development-only top-level paths that must stay out of the archive.
EXCLUDED_ROOTS = ("tests", "testkit", "bench", ".ci", "scripts", ".cache", ".venv", ".git", ".github", ".whl",
                  ".devcarry", "requirements-test.txt")
# Everything the archive may hold at its top level: what ComfyUI loads, the standalone trainer, the example
# workflows, the docs and the registry's files.
ARCHIVE_ROOTS = {"__init__.py", "nodes", "psa_core", "trainer", "workflows", "docs", "pyproject.toml",
                 "requirements.txt", "README.md", "LICENSE"}
PYTHON_PACKAGES = ("nodes", "psa_core", "trainer")  # the shipped Python, with the root __init__.py
# Test and benchmark fixtures: the development-only packages and folders, and fixture-like module names.
FIXTURE_MODULE = re.compile(r"(^|/)(synthetic\w*|tiny_\w+|comfy_tiny|conftest|test_\w+|\w*fixtures?)\.py$")
# What ComfyUI and the registry need from the archive.
REQUIRED_FILES = ("__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE",
                  "nodes/__init__.py", "psa_core/__init__.py")
RUNTIME_FOLDERS = ("nodes", "psa_core")
OFFLINE_CLI_ENV = {"DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "COMFY_NO_UPDATE_CHECK": "1"}


def working_tree_files() -> list[str]:
    """The files a commit of the working tree would hold: tracked ones still present, plus untracked, not ignored."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (REPO / name).is_file()})


def run_cli(args: list[str], cwd: Path, home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """comfy-cli from this venv, offline: no telemetry, no update check, its config under `home`."""
    environment = dict(os.environ, HOME=str(home), **OFFLINE_CLI_ENV)
    return subprocess.run([str(COMFY_CLI), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def describe(result: subprocess.CompletedProcess) -> str:
    return f"`{' '.join(result.args)}` exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def release_tree(tmp_path_factory) -> Path:
    """A copy of the working tree's committable files, as a git repository of its own with all of them added."""
    tree = tmp_path_factory.mktemp("release") / PACK_FOLDER
    for name in working_tree_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(command, cwd=tree, check=True, capture_output=True)
    return tree


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_home")


@pytest.fixture(scope="module")
def archive(release_tree: Path, cli_home: Path) -> Path:
    assert COMFY_CLI.is_file(), f"comfy-cli not installed in {COMFY_CLI.parent}: run scripts/bootstrap.sh"
    result = run_cli(["--skip-prompt", "node", "pack"], release_tree, cli_home)
    assert result.returncode == 0, describe(result)
    path = release_tree / ARCHIVE
    assert path.is_file(), f"comfy node pack made no {ARCHIVE}\n{describe(result)}"
    return path


def archive_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return [name for name in archive.namelist() if not name.endswith("/")]


def reference_hashes(root: Path) -> dict[str, str]:
    """sha256 -> name of every file of the published reference data (shared/reference)."""
    files = [path for path in root.rglob("*") if path.is_file()]
    return {hashlib.sha256(path.read_bytes()).hexdigest(): str(path.relative_to(root)) for path in files}


def expected_node_ids(pack: ModuleType) -> set[str]:
    """Every node id the pack registers, asked from the pack itself (so new nodes are covered as they come)."""
    return set(registered_nodes(pack))


def unpack(path: Path, destination: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        unsafe = [n for n in archive.namelist() if PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts]
        assert not unsafe, f"archive members escape the pack folder: {unsafe}"
        archive.extractall(destination)


# ---- tests ---------------------------------------------------------------------------------------------

def test_comfy_node_validate_passes_offline(release_tree: Path, cli_home: Path):
    result = run_cli(["--skip-prompt", "node", "validate"], release_tree, cli_home)
    assert result.returncode == 0, describe(result)
    output = result.stdout + result.stderr  # comfy-cli prints its verdict through rich, on stderr
    assert "Security warnings found" not in output, f"ruff security warnings (S102/S307/E702):\n{describe(result)}"
    assert "All validation checks passed" in output, describe(result)


def test_archive_holds_the_pack_and_no_development_files_or_reference_data(archive: Path, release_tree: Path,
                                                                          reference: Path):
    names = archive_names(archive)
    development = [n for n in names if PurePosixPath(n).parts[0] in EXCLUDED_ROOTS]
    assert not development, f"development files in {ARCHIVE}: {development[:20]}"
    caches = [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not caches, f"bytecode in {ARCHIVE}: {caches[:10]}"
    missing = [n for n in REQUIRED_FILES if n not in names]
    assert not missing, f"{ARCHIVE} lacks {missing}"
    runtime = [str(p.relative_to(release_tree)) for folder in RUNTIME_FOLDERS
               for p in (release_tree / folder).rglob("*.py")]
    assert sorted(set(runtime) - set(names)) == [], "runtime modules left out of the archive"
    assert any(n.endswith(".json") and "workflow" in PurePosixPath(n).parts[0] for n in names), "no example workflow"
    hashes = reference_hashes(reference)
    with zipfile.ZipFile(archive) as opened:
        copies = {n: hashes[h] for n in names if (h := hashlib.sha256(opened.read(n)).hexdigest()) in hashes}
    assert not copies, f"reference data copied into the archive: {copies}"
    assert not [n for n in names if n.endswith(".npy")], "embedding files in the archive"


def test_archive_members_are_the_pack_and_no_test_or_bench_fixture(archive: Path, release_tree: Path):
    names = archive_names(archive)
    listing = f"{ARCHIVE} members:\n" + "\n".join(names)
    unexpected = sorted({PurePosixPath(n).parts[0] for n in names} - ARCHIVE_ROOTS)
    assert not unexpected, f"top-level entries beyond the pack's: {unexpected}\n{listing}"
    fixtures = [n for n in names if PurePosixPath(n).parts[0] in DEVELOPMENT_PACKAGES or FIXTURE_MODULE.search(n)]
    assert not fixtures, f"test or bench fixtures in {ARCHIVE}: {fixtures}\n{listing}"
    python = [n for n in names if n.endswith(".py")]
    stray = [n for n in python if n != "__init__.py" and PurePosixPath(n).parts[0] not in PYTHON_PACKAGES]
    assert not stray, f"Python outside the shipped packages: {stray}\n{listing}"
    shipped = sorted(str(p.relative_to(release_tree)) for folder in PYTHON_PACKAGES
                     for p in (release_tree / folder).rglob("*.py"))
    assert sorted(set(shipped) - set(python)) == [], f"shipped modules left out\n{listing}"
    with zipfile.ZipFile(archive) as opened:
        imports = {n: development_imports(opened.read(n)) for n in python}
    development = {n: found for n, found in imports.items() if found}
    assert not development, f"shipped modules import development-only packages: {development}"


def test_unpacked_archive_loads_every_psa_node_in_a_fresh_comfyui(archive: Path, pack: ModuleType, tmp_path: Path):
    expected = expected_node_ids(pack)
    assert {"PSALoadAdapter", "PSALoadEmbedding", "PSAApply"} <= expected, expected
    unpack(archive, tmp_path / "custom_nodes" / PACK_FOLDER)
    server = ComfyServer(tmp_path, links={}, packs=[PACK_FOLDER]).start()
    try:
        object_info = server.get("/object_info")
        log = server.log()
    finally:
        server.stop()
    missing = sorted(expected - set(object_info))
    assert not missing, f"nodes not loaded from the unpacked archive: {missing}\n{log[-3000:]}"
    foreign = {i: object_info[i].get("python_module") for i in expected
               if object_info[i].get("python_module") != f"custom_nodes.{PACK_FOLDER}"}
    assert not foreign, f"nodes not served by custom_nodes/{PACK_FOLDER}: {foreign}"
