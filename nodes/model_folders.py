"""ComfyUI model folders of the pack: `models/psa/` (adapters) and `models/psa_embeddings/`.

Paths already registered under these names (from extra_model_paths.yaml, keys `psa:` and
`psa_embeddings:`) are kept; the default folder under ComfyUI's models directory is added.
"""
from __future__ import annotations

import os

import folder_paths

ADAPTERS = "psa"
EMBEDDINGS = "psa_embeddings"
EMBEDDING_EXTENSIONS = {".npy", ".safetensors", ".sft"}


def _register(name: str, extensions: set[str]) -> None:
    default = os.path.join(folder_paths.models_dir, name)
    paths = list(folder_paths.folder_names_and_paths.get(name, ([], set()))[0])
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def register_model_folders() -> None:
    _register(ADAPTERS, set(folder_paths.supported_pt_extensions))
    _register(EMBEDDINGS, EMBEDDING_EXTENSIONS)


def default_folder(name: str) -> str:
    """Where the pack saves new files of this kind: the first registered folder."""
    return folder_paths.get_folder_paths(name)[0]
