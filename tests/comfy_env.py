"""A real ComfyUI for the tests: where it is, importing it in-process, and importing this pack into it.

ComfyUI comes from `COMFYUI_PATH` (scripts/test.sh sets it for each ComfyUI of the tested matrix) or, by default,
the newest tested one that scripts/bootstrap.sh extracts to .cache/ (scripts/comfy_server.py's find_comfyui).
ComfyUI owns the top-level module name `nodes`, so its directory goes first on sys.path and the pack is
imported as the package `comfyui_psa` (the name is ours; ComfyUI uses the folder name).
"""
from __future__ import annotations

import asyncio
import importlib.abc
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


class _CoreAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes the pack's `comfyui_psa.psa_core...` the very modules `psa_core...` (which the trainer and most tests
    import): one copy of every core class in the test process, so an object from one side is an instance of the
    other's class. ComfyUI's own loading of the pack is unaffected (it runs in other processes, or without this)."""

    PREFIX = f"{PACK_PACKAGE}.psa_core"

    def find_spec(self, name, path=None, target=None):
        if name == self.PREFIX or name.startswith(self.PREFIX + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("psa_core" + spec.name[len(self.PREFIX):])

    def exec_module(self, module) -> None:
        pass  # already executed under its own name


def import_pack():
    """Import the repository as a ComfyUI custom-node package, as ComfyUI's loader does (its psa_core being the
    test process's `psa_core`, see _CoreAlias)."""
    if PACK_PACKAGE in sys.modules:
        return sys.modules[PACK_PACKAGE]
    if not any(isinstance(finder, _CoreAlias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CoreAlias())
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
