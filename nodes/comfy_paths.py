"""ComfyUI's folders under the pack's path policy (psa_core.paths): where each file, folder or name input of a node
may point. Reading inputs resolve inside ComfyUI's input, output or model folders (extra_model_paths.yaml entries
included); writing inputs are plain relative names inside one folder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import folder_paths

from ..psa_core.errors import InputError, shown
from ..psa_core.paths import OUTSIDE_HINT, WRITE_PART_RULE, candidates, write_name
from .model_folders import ADAPTERS, LLMS, default_folder

KINDS = {"file": Path.is_file, "folder": Path.is_dir, "file or folder": Path.exists}
OUTSIDE_RULE = f"absolute paths inside those folders; {OUTSIDE_HINT}"  # for tooltips


def model_folders(*names: str) -> Callable[[], list[Path]]:
    """The registered folders of these model kinds, looked up when called (extra_model_paths.yaml included)."""
    return lambda: [Path(p) for name in names for p in folder_paths.get_folder_paths(name)]


def input_folder() -> Path:
    return Path(folder_paths.get_input_directory())


def output_folder() -> Path:
    return Path(folder_paths.get_output_directory())


def output_then_input() -> list[Path]:
    return [output_folder(), input_folder()]


@dataclass(frozen=True)
class ReadPath:
    """A node input naming an existing file or folder: a relative name in `folders`, or an absolute path inside them
    (anywhere only with the owner's opt-in). `where` says in words which folders those are."""

    what: str  # e.g. "LLM folder"
    folders: Callable[[], list[Path]]
    where: str
    kind: str = "file"  # a key of KINDS
    optional: bool = False  # an empty value means "none"

    def allowed(self) -> str:
        folders = ", ".join(str(f) for f in self.folders())
        return f"a {self.kind} name inside {self.where} ({folders}) or an absolute path in those folders"

    def _given(self, value: str) -> bool:
        return not (self.optional and isinstance(value, str) and not value.strip())

    def check(self, value: str, name: str) -> None:
        if self._given(value):
            candidates(value, name, self.folders(), self.allowed())

    def find(self, value: str, name: str) -> Path | None:
        """The first existing match (None for an empty optional input); refused or missing names raise InputError."""
        if not self._given(value):
            return None
        looked = candidates(value, name, self.folders(), self.allowed())
        for path in looked:
            if KINDS[self.kind](path):
                return path
        raise InputError(f"{name}: {self.what} {shown(value)} not found; looked in: "
                         f"{', '.join(str(p) for p in looked)}")


@dataclass(frozen=True)
class WriteName:
    """A node input naming something the pack writes, inside one folder (the opt-in never applies)."""

    what: str
    folder: Callable[[], Path]
    where: str
    subfolders: bool = False

    def allowed(self) -> str:
        folders = " ('/' for sub-folders)" if self.subfolders else " (no folders)"
        return f"a {self.what} of {WRITE_PART_RULE}{folders}, inside {self.where} ({self.folder()})"

    def check(self, value: str, name: str) -> None:
        self.path(value, name)

    def path(self, value: str, name: str) -> Path:
        return self.folder() / write_name(value, name, self.allowed(), self.subfolders)


LLM_FOLDER = ReadPath("LLM folder", model_folders(LLMS), "models/LLM/", kind="folder")
TEMPLATE_FILE = ReadPath("template file", model_folders(ADAPTERS, LLMS), "models/psa/ or models/LLM/")


def model_write_folder(name: str) -> Callable[[], Path]:
    return lambda: Path(default_folder(name))
