"""A real ComfyUI for the tests: where it is, importing it in-process, and importing this pack into it.

ComfyUI comes from `COMFYUI_PATH` (scripts/test.sh sets it for each ComfyUI of the tested matrix) or, by default,
the newest tested one that scripts/bootstrap.sh extracts to .cache/ (scripts/comfy_server.py's find_comfyui).
ComfyUI owns the top-level module name `nodes`, so its directory goes first on sys.path and the pack is
imported as the package `comfyui_psa` (the name is ours; ComfyUI uses the folder name).
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_PACKAGE = "comfyui_psa"


def comfyui_path() -> Path:
    from script_modules import load_script

    return load_script("comfy_server").find_comfyui()


def put_comfyui_first_on_path() -> Path:
    path = comfyui_path()
    if sys.path[:1] != [str(path)]:
        sys.path.insert(0, str(path))
    return path


def import_comfy_in_process(cpu: bool = True):
    """Import ComfyUI's core (on the CPU unless told otherwise), as main.py would, without parsing our argv."""
    put_comfyui_first_on_path()
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.sample  # noqa: F401
    import folder_paths

    return folder_paths


def import_pack():
    """Import the repository as a ComfyUI custom-node package, exactly as ComfyUI's loader does."""
    if PACK_PACKAGE in sys.modules:
        return sys.modules[PACK_PACKAGE]
    spec = importlib.util.spec_from_file_location(PACK_PACKAGE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def registered_nodes(pack) -> dict[str, type]:
    """Node id -> class for every node the pack's extension registers with ComfyUI."""
    extension = asyncio.run(pack.comfy_entrypoint())
    return {node.define_schema().node_id: node for node in asyncio.run(extension.get_node_list())}
