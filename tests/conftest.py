from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_env import REPO, import_comfy_in_process, import_pack, put_comfyui_first_on_path  # noqa: E402
from comfy_access import registered_model_folders  # noqa: E402

put_comfyui_first_on_path()
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # psa_core and trainer as top-level packages, after ComfyUI


# Fixtures that make a test need a real ComfyUI; tests using any of them get the `comfyui` marker, and
# PSA_TEST_SCOPE=comfyui (scripts/test.sh, for the oldest supported ComfyUI) keeps only those.
COMFYUI_FIXTURES = {"folder_paths", "pack", "model_folders", "register_folders", "comfy_server", "demo_server"}
SERVER_FIXTURES = {"comfy_server", "demo_server"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(item.fixturenames)
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.http)
            item.add_marker(pytest.mark.slow)
        if fixtures & COMFYUI_FIXTURES or item.get_closest_marker("http") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.comfyui)
    scope = os.environ.get("PSA_TEST_SCOPE", "all")
    if scope not in ("all", "comfyui"):
        raise pytest.UsageError(f"PSA_TEST_SCOPE={scope!r}: allowed values are 'all' and 'comfyui'")
    if scope == "comfyui":
        kept = [item for item in items if item.get_closest_marker("comfyui")]
        config.hook.pytest_deselected(items=[item for item in items if not item.get_closest_marker("comfyui")])
        items[:] = kept


def reference_dir() -> Path:
    return Path(os.environ.get("PSA_REFERENCE_DIR") or REPO.parent / "shared" / "reference")


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not (path / "users.csv").is_file():
        pytest.fail(f"reference data not found at {path}; set PSA_REFERENCE_DIR")
    return path


@pytest.fixture(scope="session")
def folder_paths():
    """ComfyUI's `folder_paths` module, after importing ComfyUI in-process on the CPU."""
    return import_comfy_in_process()


@pytest.fixture(scope="session")
def pack(folder_paths):
    """This repository imported as a ComfyUI custom-node package (use its classes, not top-level psa_core's)."""
    return import_pack()


@pytest.fixture
def register_folders(folder_paths):
    """Call it with {model type: folder}: each folder is registered first for its type during the test."""
    with contextlib.ExitStack() as stack:
        yield lambda folders: stack.enter_context(registered_model_folders(folder_paths, folders))


@pytest.fixture
def model_folders(pack, register_folders, tmp_path):
    """Fresh, empty psa/ and psa_embeddings/ folders registered first for one test."""
    folders = {name: tmp_path / "models" / name for name in ("psa", "psa_embeddings")}
    register_folders(folders)
    return folders


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One headless ComfyUI server for the session, with this pack and the test-only nodes loaded."""
    from http_server import ComfyServer

    server = ComfyServer(tmp_path_factory.mktemp("comfy_base")).start()
    yield server
    server.stop()


DEMO_CHECKPOINT = "psa_demo_sd15.safetensors"


def demo_assets():
    """scripts/demo_assets.py, loaded by path (scripts/ is not a package)."""
    from script_modules import load_script

    return load_script("demo_assets")


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """A headless ComfyUI with the demo SD1.5 checkpoint (scripts/demo_assets.py: the real single-file layout,
    UNet + CLIP-L + VAE, random weights) as DEMO_CHECKPOINT, started with one OpenMP thread: on the small shared
    CPUs the tests run on, two OpenMP threads spin-wait on each other and make every prompt 10-20x slower."""
    from http_server import ComfyServer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # read by the server process at its start only
        server = ComfyServer(tmp_path_factory.mktemp("demo_base")).start()
    try:
        demo_assets().write_demo_checkpoint(server.models / "checkpoints" / DEMO_CHECKPOINT, seed=0)
        yield server
    finally:
        server.stop()


@pytest.fixture
def one_thread():
    """One intra-op torch thread: tiny models gain nothing from more, and on a shared 2-core machine the
    OpenMP threads spin against each other (10-100x slower). Subprocesses get OMP_NUM_THREADS=1 likewise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
