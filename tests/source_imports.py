"""What a Python module imports, read from its source (nothing is run)."""
from __future__ import annotations

import ast


def imported_top_level_modules(source: str | bytes) -> set[str]:
    """The top-level names a module's import statements name (relative imports left out)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


# Top-level folders of the repository that are development only (.comfyignore): no shipped module may import them.
DEVELOPMENT_PACKAGES = frozenset({"testkit", "tests", "bench", "scripts"})


def development_imports(source: str | bytes) -> list[str]:
    """The development-only packages a module imports, sorted."""
    return sorted(imported_top_level_modules(source) & DEVELOPMENT_PACKAGES)
