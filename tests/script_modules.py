"""Modules of scripts/ for the tests, loaded by path: scripts/ is not a package and stays off sys.path."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from comfy_env import REPO


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `psa_scripts_<name>` (loaded once per process)."""
    module_name = f"psa_scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
