"""ComfyUI's folders under the pack's path policy (psa_core.paths): where each file, folder or name input of a node
may point. Every node input that names a file, a folder or a file-name prefix is declared here, as a ReadPath (an
existing file or folder inside ComfyUI's input, output or model folders, extra_model_paths.yaml entries included)
or a WriteName (a plain relative name inside one folder the pack writes to), and resolved only through it; nodes
list these in CheckedNode.PATH_INPUTS so that validation applies the same policy (README, Security;
docs/comfyui.md §5).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import folder_paths

from ..psa_core.dataset_build.prompt_pairs import SUFFIXES as PROMPT_PAIR_SUFFIXES
from ..psa_core.errors import InputError, PSAError, shown
from ..psa_core.fingerprint import file_fingerprint
from ..psa_core.paths import OUTSIDE_HINT, WRITE_PART_RULE, candidates, write_name
from .model_folders import ADAPTERS, EMBEDDINGS, LLMS, default_folder

EMBEDDING_CACHE_ENV = "PSA_EMBEDDING_CACHE"

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
    (anywhere only with the owner's opt-in). `where` says in words which folders those are. Without `subfolders`
    only entries directly in the folders are allowed (and listed); `suffixes` restricts what `names` lists."""

    what: str  # e.g. "LLM folder"
    folders: Callable[[], list[Path]]
    where: str
    kind: str = "file"  # a key of KINDS
    optional: bool = False  # an empty value means "none"
    subfolders: bool = True
    suffixes: tuple[str, ...] = ()

    def allowed(self) -> str:
        folders = ", ".join(str(f) for f in self.folders())
        if not self.subfolders:
            described = f"{' or '.join(self.suffixes)} {self.kind}" if self.suffixes else self.kind
            return f"a {described} directly in {self.where} ({folders})"
        return f"a {self.kind} name inside {self.where} ({folders}) or an absolute path in those folders"

    def _given(self, value: str) -> bool:
        return not (self.optional and isinstance(value, str) and not value.strip())

    def _candidates(self, value: str, name: str) -> list[Path]:
        return candidates(value, name, self.folders(), self.allowed(), self.subfolders)

    def check(self, value: str, name: str) -> None:
        if self._given(value):
            self._candidates(value, name)

    def find(self, value: str, name: str) -> Path | None:
        """The first existing match (None for an empty optional input); refused or missing names raise InputError."""
        if not self._given(value):
            return None
        looked = self._candidates(value, name)
        for path in looked:
            if KINDS[self.kind](path):
                return path
        raise InputError(f"{name}: {self.what} {shown(value)} not found; looked in: "
                         f"{', '.join(str(p) for p in looked)}")

    def fingerprint(self, value: str, name: str) -> str:
        """For a node's fingerprint_inputs: the found file's path and version (psa_core.fingerprint), so that
        ComfyUI re-runs the node when the file changes. Never raises: a refused or missing name gives a text of
        its own, and validation or the run reports the problem."""
        try:
            path = self.find(value, name)
        except PSAError:
            return f"not found|{value!r}"
        return "none" if path is None else file_fingerprint(path)

    def names(self) -> list[str]:
        """The entries of this kind (with one of `suffixes`, if given) directly in the folders, for combo options:
        sorted per folder, in folder order, each name once."""
        found: dict[str, None] = {}
        for folder in self.folders():
            if not folder.is_dir():
                continue
            entries = sorted(entry for entry in os.listdir(folder)
                             if KINDS[self.kind](folder / entry)
                             and (not self.suffixes or entry.lower().endswith(self.suffixes)))
            found.update(dict.fromkeys(entries))
        return list(found)


@dataclass(frozen=True)
class WriteName:
    """A node input naming something the pack writes, inside one folder (the opt-in never applies).

    With `suffix` the written file ends with it: `name` becomes `name<suffix>` (a name that already ends with it,
    in any letter case, is taken without it), or with `numbered` the next free `name_<nnnnn><suffix>`."""

    what: str
    folder: Callable[[], Path]
    where: str
    subfolders: bool = False
    suffix: str = ""
    numbered: bool = False

    def allowed(self) -> str:
        folders = " ('/' for sub-folders)" if self.subfolders else " (no folders)"
        return f"a {self.what} of {WRITE_PART_RULE}{folders}, inside {self.where} ({self.folder()})"

    def check(self, value: str, name: str) -> None:
        self.relative(value, name)

    def relative(self, value: str, name: str) -> PurePosixPath:
        """The checked name, relative to the folder, as given (no suffix or counter added)."""
        return write_name(value, name, self.allowed(), self.subfolders)

    def path(self, value: str, name: str) -> Path:
        """Where to write for this value (folders are created by the writer)."""
        target = self.folder() / self.relative(value, name)
        if self.numbered:
            return _next_numbered(target, self.suffix)
        if self.suffix and target.name.lower().endswith(self.suffix.lower()):
            target = target.with_name(target.name[:-len(self.suffix)])
        return target.with_name(target.name + self.suffix)


def _next_numbered(prefix: Path, suffix: str) -> Path:
    taken = {p.name for p in prefix.parent.glob(f"{prefix.name}_*{suffix}")}
    counter = 1
    while f"{prefix.name}_{counter:05d}{suffix}" in taken:
        counter += 1
    return prefix.parent / f"{prefix.name}_{counter:05d}{suffix}"


def model_write_folder(name: str) -> Callable[[], Path]:
    return lambda: Path(default_folder(name))


def embedding_cache_folder() -> Path:
    """Where PSA Encode Profile caches embeddings: the owner's PSA_EMBEDDING_CACHE, else models/psa_cache/embeddings/
    (docs/comfyui.md §5)."""
    return Path(os.environ.get(EMBEDDING_CACHE_ENV) or Path(folder_paths.models_dir) / "psa_cache" / "embeddings")


# ---- every file, folder and name input of the pack's nodes ----

ADAPTER_FILE = ReadPath("adapter file", model_folders(ADAPTERS), "models/psa/")
EMBEDDING_FILE = ReadPath("embedding file", model_folders(EMBEDDINGS), "models/psa_embeddings/")
LLM_FOLDER = ReadPath("LLM folder", model_folders(LLMS), "models/LLM/", kind="folder")
TEMPLATE_FILE = ReadPath("template file", model_folders(ADAPTERS, LLMS), "models/psa/ or models/LLM/")
EMBEDDINGS_FOLDER = ReadPath("embedding folder", model_folders(EMBEDDINGS), "models/psa_embeddings/",
                             kind="folder")
DATA_WHERE = "ComfyUI's output folder (then its input folder)"
DATA_PATH = ReadPath("dataset", output_then_input, DATA_WHERE, kind="file or folder")
PROFILES_PATH = ReadPath("profiles file", output_then_input, DATA_WHERE, optional=True)
PROMPT_PAIR_FILE = ReadPath("prompt-pair file", lambda: [input_folder()], "ComfyUI's input folder",
                            subfolders=False, suffixes=PROMPT_PAIR_SUFFIXES)

EMBEDDING_NAME = WriteName("file name", model_write_folder(EMBEDDINGS), "models/psa_embeddings/",
                           suffix=".safetensors")
ADAPTER_PREFIX = WriteName("file name prefix", model_write_folder(ADAPTERS), "models/psa/", subfolders=True,
                           suffix=".safetensors", numbered=True)
DATASET_FOLDER = WriteName("dataset folder name", output_folder, "ComfyUI's output folder", subfolders=True)
