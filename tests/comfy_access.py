"""The few places where the tests reach past ComfyUI's public paths (API prompts, `/object_info`, the
`folder_paths` setters and getters, `ModelPatcher`'s `set_*` methods), one function per concept, so that a change
in ComfyUI's internals is mended here alone. Import only after ComfyUI is on sys.path (see comfy_env).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


@contextmanager
def registered_model_folders(folder_paths: ModuleType, folders: dict[str, Path]) -> Iterator[None]:
    """Each `model type -> folder` registered first for its type (folder_paths.add_model_folder_path), for the
    duration of the block. ComfyUI has no public way to remove a folder again or to drop its file-list cache, so
    the clean-up edits its table: here alone."""
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(name, str(folder), is_default=True)
    try:
        yield
    finally:
        for name, folder in folders.items():
            paths = folder_paths.folder_names_and_paths[name][0]
            while str(folder) in paths:
                paths.remove(str(folder))
        folder_paths.filename_list_cache.clear()


@contextmanager
def comfy_directories(folder_paths: ModuleType, input: Path | None = None, output: Path | None = None,
                      temp: Path | None = None) -> Iterator[None]:
    """ComfyUI's input, output and temp folders moved for the duration of the block, through its setters."""
    moves = [(folder, getter, setter) for folder, getter, setter in (
        (input, folder_paths.get_input_directory, folder_paths.set_input_directory),
        (output, folder_paths.get_output_directory, folder_paths.set_output_directory),
        (temp, folder_paths.get_temp_directory, folder_paths.set_temp_directory)) if folder is not None]
    saved = [getter() for _, getter, _ in moves]
    for folder, _, setter in moves:
        Path(folder).mkdir(parents=True, exist_ok=True)
        setter(str(folder))
    try:
        yield
    finally:
        for (_, _, setter), previous in zip(moves, saved):
            setter(previous)


def attn2_output_patches(model_or_options) -> list:
    """The attn2 output patches attached to a ModelPatcher, or in the `transformer_options` a model function wrapper
    receives (`args["c"]["transformer_options"]`: the objects this very call uses; ComfyUI 0.3.x deep-copies
    model_options on every clone), in the order they run. ComfyUI keeps what `set_model_attn2_output_patch` adds
    there; there is no getter."""
    if hasattr(model_or_options, "model_options"):
        options = model_or_options.model_options.get("transformer_options", {})
    else:
        options = model_or_options
    return list(options.get("patches", {}).get("attn2_output_patch", []))
