"""ComfyUI model folders of the pack: `models/psa/` (adapters), `models/psa_embeddings/` and `models/LLM/`.

Paths already registered under these names (from extra_model_paths.yaml, keys `psa:`, `psa_embeddings:` and
`LLM:`) are kept; the default folder under ComfyUI's models directory is added.
"""
from __future__ import annotations

import os

import folder_paths

ADAPTERS = "psa"
EMBEDDINGS = "psa_embeddings"
LLMS = "LLM"  # Hugging Face model folders for the profile encoder and the prompt rewriter
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
    folder_paths.add_model_folder_path(LLMS, os.path.join(folder_paths.models_dir, LLMS))


def default_folder(name: str) -> str:
    """Where the pack saves new files of this kind: the first registered folder."""
    return folder_paths.get_folder_paths(name)[0]
