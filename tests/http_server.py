"""A headless ComfyUI server on 127.0.0.1 with only this pack (and the test-only helper nodes) loaded.

The server itself is scripts/comfy_server.py (shared with scripts/demo.py), loaded by path: scripts/ is not a
package and stays off sys.path.
"""
from __future__ import annotations

from pathlib import Path

from comfy_env import REPO, comfyui_path
from script_modules import load_script

_shared = load_script("comfy_server")
PACK_FOLDER: str = _shared.PACK_FOLDER
TEST_NODES_FOLDER = "psa_test_nodes"
ServerError = _shared.ServerError
free_port = _shared.free_port

DEFAULT_LINKS = {PACK_FOLDER: REPO, TEST_NODES_FOLDER: REPO / "tests" / "http_support" / TEST_NODES_FOLDER}


class ComfyServer(_shared.ComfyServer):
    """`links` are custom-node folders linked into the base directory (default: this pack and the test nodes);
    `packs` are the custom-node folder names loaded (default: the linked ones); `front_end_root` is a frontend
    build's static folder to serve instead of the bundled frontend. Always on the CPU."""

    def __init__(self, base: Path, links: dict[str, Path] | None = None, packs: list[str] | None = None,
                 front_end_root: Path | None = None):
        super().__init__(base, comfyui_path(), DEFAULT_LINKS if links is None else links, packs, cpu=True,
                         client_id="psa-tests", front_end_root=front_end_root)
