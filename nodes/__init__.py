"""ComfyUI layer of the pack (V3 schema). Import only relatively: ComfyUI owns the top-level name `nodes`."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .model_folders import register_model_folders

register_model_folders()

from . import nodes_inference  # noqa: E402  (the folders must exist before schemas list their files)
from . import nodes_dataset  # noqa: E402
from . import nodes_profile  # noqa: E402
from . import nodes_training  # noqa: E402
from . import nodes_evaluation  # noqa: E402
from . import nodes_judge  # noqa: E402

FEATURE_MODULES = [nodes_inference, nodes_profile, nodes_dataset, nodes_training, nodes_evaluation, nodes_judge]


class PSAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in FEATURE_MODULES for node in module.NODES]


async def comfy_entrypoint() -> PSAExtension:
    return PSAExtension()
