"""Inference nodes: load a PSA adapter and a user embedding, and apply them to a model."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..psa_core import check_embedding_fits, load_adapter, load_embedding
from ..psa_core.errors import InputError
from .attention_patch import apply_psa
from .checked_node import CheckedNode
from .comfy_paths import ADAPTER_FILE, EMBEDDING_FILE
from .model_folders import ADAPTERS, EMBEDDINGS
from .psa_types import PSAAdapterType, PSAEmbeddingType

CATEGORY = "PSA"


class PSALoadAdapter(CheckedNode):
    PATH_INPUTS = {"adapter_name": ADAPTER_FILE}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSALoadAdapter",
            display_name="PSA Load Adapter",
            category=CATEGORY,
            description="Load a Personalized Safety Alignment adapter (SD1.5 or SDXL) from models/psa/. "
                        "Accepts the reference psa_adapter.bin and .safetensors files.",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(ADAPTERS),
                               tooltip="An adapter file in models/psa/ (or a 'psa:' folder in extra_model_paths.yaml)."),
            ],
            outputs=[PSAAdapterType.Output(display_name="adapter",
                                           tooltip="The adapter; only its small projection stays in memory.")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str) -> str:
        return ADAPTER_FILE.fingerprint(adapter_name, "adapter_name")

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter(ADAPTER_FILE.find(adapter_name, "adapter_name")))


class PSALoadEmbedding(CheckedNode):
    PATH_INPUTS = {"embedding_name": EMBEDDING_FILE}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSALoadEmbedding",
            display_name="PSA Load Embedding",
            category=CATEGORY,
            description="Load a user embedding (.npy as published with PSA, or .safetensors) from models/psa_embeddings/.",
            inputs=[
                io.Combo.Input("embedding_name", options=folder_paths.get_filename_list(EMBEDDINGS),
                               tooltip="A user-embedding file in models/psa_embeddings/, e.g. 0000001.npy."),
            ],
            outputs=[PSAEmbeddingType.Output(display_name="embedding", tooltip="The user's profile embedding.")],
        )

    @classmethod
    def fingerprint_inputs(cls, embedding_name: str) -> str:
        return EMBEDDING_FILE.fingerprint(embedding_name, "embedding_name")

    @classmethod
    def execute(cls, embedding_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_embedding(EMBEDDING_FILE.find(embedding_name, "embedding_name")))


class PSAApply(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSAApply",
            display_name="PSA Apply",
            category=CATEGORY,
            description="Condition the model's cross-attention on a user's safety profile. Returns a patched copy; "
                        "the input model is unchanged. Works alongside LoRAs and other attention patches.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model matching the adapter."),
                PSAAdapterType.Input("adapter", tooltip="From PSA Load Adapter (or a trained adapter)."),
                PSAEmbeddingType.Input("embedding", tooltip="The user's profile embedding. With several profiles, "
                                                           "item i of the latent batch uses profile i."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Adapter scale. 1.0 reproduces the reference; 0 disables PSA; negative "
                                       "and values above 1 are allowed for sweeps."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of sampling after which PSA starts acting."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of sampling after which PSA stops acting."),
            ],
            outputs=[io.Model.Output(tooltip="The model with PSA applied.")],
        )

    @classmethod
    def check_inputs(cls, start_percent: float | None, end_percent: float | None) -> None:
        if start_percent is not None and end_percent is not None and start_percent > end_percent:
            raise InputError(f"start_percent ({start_percent}) must not be larger than end_percent ({end_percent})")

    @classmethod
    def execute(cls, model, adapter, embedding, strength: float, start_percent: float,
                end_percent: float) -> io.NodeOutput:
        check_embedding_fits(adapter, embedding)
        return io.NodeOutput(apply_psa(model, adapter, embedding, strength, start_percent, end_percent))


NODES = [PSALoadAdapter, PSALoadEmbedding, PSAApply]
