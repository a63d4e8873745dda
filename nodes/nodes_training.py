"""Training nodes: load preference pairs, train a PSA adapter on the graph's own models, save it to models/psa/.

PSA Load Sage Dataset reads a SAGE folder or an unlabelled pairs file (labelled once per profile); PSA Train
Adapter trains on the MODEL, CLIP and VAE already in the graph (training_run.py) and hands the adapter straight
to PSA Apply; PSA Save Adapter writes it where PSA Load Adapter lists it.
"""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..psa_core import LoadedAdapter, save_adapter
from ..psa_core.adapter_file import SAVE_DTYPES
from ..psa_core.encoders.structured import STRUCTURED_ENCODER
from ..psa_core.paths import outside_paths_allowed
from ..psa_core.training.inputs import DATA_FORMATS, read_training_data
from ..psa_core.training.config import MAX_SEED, PRECISIONS, default_of
from ..psa_core.training.report import render_history
from ..psa_core.text_limits import MAX_PATH_CHARS, limit_text
from ..psa_core.training.split import SPLITS, split_records
from .checked_node import CheckedNode
from .comfy_paths import ADAPTER_PREFIX, DATA_PATH, EMBEDDINGS_FOLDER, OUTSIDE_RULE, PROFILES_PATH
from .psa_types import PSAAdapterType, PSADatasetType
from .training_run import PSADataset, in_graph_config, train_in_graph

CATEGORY = "PSA/training"
FOLDER_PREFIX = "folder: "


def embedding_sources() -> list[str]:
    """The in-process profile encoder, then every sub-folder of models/psa_embeddings/ ({User_ID}.npy files)."""
    return [STRUCTURED_ENCODER] + [FOLDER_PREFIX + name for name in EMBEDDINGS_FOLDER.names()]


def _embeddings_folder(source: str) -> str:
    return str(EMBEDDINGS_FOLDER.find(source[len(FOLDER_PREFIX):], "embedding_source"))


class PSALoadSageDataset(CheckedNode):
    PATH_INPUTS = {"path": DATA_PATH, "profiles": PROFILES_PATH}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSALoadSageDataset",
            display_name="PSA Load Sage Dataset",
            category=CATEGORY,
            description="Preference pairs for PSA training: a SAGE folder (metadata.jsonl with chosen, rejected, "
                        "caption and user_data, images beside it), or an unlabelled pairs file (pairs.jsonl/.csv "
                        "with safe, unsafe, category, caption, e.g. written by PSA Save Preference Pair) that the "
                        "profiles file labels once per profile. Every problem is reported with its line number.",
            inputs=[
                io.String.Input("path", default="psa_dataset/pairs.jsonl",
                                tooltip="A SAGE folder, its metadata.jsonl, or a pairs file, relative to ComfyUI's "
                                        f"output folder (then its input folder; {OUTSIDE_RULE}). Its image names "
                                        f"must stay inside its folder. {limit_text(MAX_PATH_CHARS)}"),
                io.String.Input("profiles", default="",
                                tooltip="users.csv, .json or .jsonl of profiles: required for a pairs file (each pair "
                                        "is labelled per profile: the safe image wins where the profile bans the "
                                        "category); for SAGE data it supplies Banned_Categories to the "
                                        f"{STRUCTURED_ENCODER} encoder. Same path rules as 'path'. "
                                        f"{limit_text(MAX_PATH_CHARS)}"),
                io.Combo.Input("format", options=list(DATA_FORMATS), default="auto",
                               tooltip="auto: a folder or metadata.jsonl is SAGE, anything else a pairs file."),
                io.Combo.Input("split", options=list(SPLITS), default="all",
                               tooltip="all pairs, or a stable part of them: train / held_out are disjoint and chosen "
                                       "by a hash of each pair's images, so adding data never moves a pair."),
                io.Int.Input("held_out_percent", default=10, min=0, max=100,
                             tooltip="Share of image pairs in the held_out part (used by split)."),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=8,
                             tooltip="Training resolution (short side resized, then centre-cropped square). "
                                     "0: the model's native size (512 for SD1.5, 1024 for SDXL)."),
                io.Int.Input("limit", default=0, min=0, max=10_000_000,
                             tooltip="Use at most this many labelled pairs (0: all)."),
            ],
            outputs=[PSADatasetType.Output(display_name="dataset",
                                           tooltip="Labelled pairs; PSA Train Adapter encodes them with the graph's "
                                                   "VAE and CLIP.")],
        )

    @classmethod
    def execute(cls, path: str, profiles: str, format: str, split: str, held_out_percent: int, resolution: int,
                limit: int) -> io.NodeOutput:
        source = DATA_PATH.find(path, "path")
        profiles_file = PROFILES_PATH.find(profiles, "profiles")
        profiles_path = str(profiles_file) if profiles_file else None
        data = read_training_data(source, format, profiles_path, contained=not outside_paths_allowed())
        data = split_records(data, split, held_out_percent, limit)
        description = f"{source} ({split}, {len(data.records)} labelled pairs)"
        return io.NodeOutput(PSADataset(data, profiles_path, resolution, description))

class PSATrainAdapter(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSATrainAdapter",
            display_name="PSA Train Adapter",
            category=CATEGORY,
            description="Train a PSA adapter with Diffusion-DPO on the graph's own SD1.5/SDXL model, on this GPU. "
                        "The pairs are encoded once with the graph's VAE and CLIP, other models are unloaded, and "
                        "the UNet is used in place (no second copy). The node shows loss and accuracy as it goes; "
                        "Cancel stops it cleanly. Connect the adapter to PSA Apply to sample with it, and to PSA "
                        "Save Adapter to keep it.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 or SDXL model to train for (its LoRAs are kept)."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the captions once before training."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the images once before training."),
                PSADatasetType.Input("dataset", tooltip="From PSA Load Sage Dataset."),
                io.Combo.Input("embedding_source", options=embedding_sources(), default=STRUCTURED_ENCODER,
                               tooltip=f"{STRUCTURED_ENCODER}: compute each user's embedding from the profile here. "
                                       "'folder: NAME': {User_ID}.npy files in models/psa_embeddings/NAME (e.g. the "
                                       "reference Qwen2.5 embeddings); every user of the data needs one."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000,
                             tooltip="Optimizer steps. The LR warms up over the first tenth (at most 500)."),
                io.Float.Input("lr", default=default_of("lr"), min=1e-8, max=1.0, step=1e-6, round=False,
                               tooltip="AdamW learning rate (PSAlign: 5e-6 for 5000 steps; short runs need more)."),
                io.Int.Input("batch", default=default_of("batch"), min=1, max=256, tooltip="Pairs per micro-batch."),
                io.Int.Input("accumulation", default=default_of("accumulation"), min=1, max=1024,
                             tooltip="Micro-batches per optimizer step (more pairs per step, same memory)."),
                io.Float.Input("beta", default=default_of("beta"), min=1.0, max=1e6, step=100.0,
                               tooltip="DPO beta: how strongly the preference is enforced (PSAlign: 5000)."),
                io.Int.Input("seed", default=default_of("seed"), min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Adapter initialisation, pair order and noise. Same seed and data: same adapter. "
                                     "Change it to train again."),
                io.Combo.Input("precision", options=list(PRECISIONS), default=default_of("precision"),
                               tooltip="The UNet's compute dtype while training. auto: as the graph loaded it (no "
                                       "extra memory); another dtype casts each layer on the fly. fp16 compute "
                                       "(chosen, or auto on an fp16-loaded model) uses loss scaling: a step whose "
                                       "gradients overflow is skipped. The adapter itself always trains in fp32."),
                io.Boolean.Input("gradient_checkpointing", default=default_of("gradient_checkpointing"),
                                 tooltip="Recompute UNet activations during backward: much less memory for larger "
                                         "batches, about a third slower."),
                PSAAdapterType.Input("adapter", optional=True,
                                     tooltip="Optional: an adapter to continue training (same family and embedding "
                                             "size)."),
            ],
            outputs=[
                PSAAdapterType.Output(display_name="adapter", tooltip="The trained adapter, for PSA Apply."),
                io.Image.Output(display_name="loss_graph",
                                tooltip="DPO loss and implicit accuracy per step, with moving averages."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset: PSADataset, embedding_source: str, steps: int, lr: float, batch: int,
                accumulation: int, beta: float, seed: int, precision: str, gradient_checkpointing: bool,
                adapter: LoadedAdapter | None = None) -> io.NodeOutput:
        config = in_graph_config(dataset, steps, lr=lr, batch=batch, accumulation=accumulation, beta=beta,
                                 seed=seed, precision=precision, gradient_checkpointing=gradient_checkpointing)
        folder = _embeddings_folder(embedding_source) if embedding_source.startswith(FOLDER_PREFIX) else None
        encoder = None if folder else embedding_source
        result = train_in_graph(model, clip, vae, dataset, config, folder, encoder, adapter)
        graph = np.asarray(render_history(result.history.rows), dtype=np.float32) / 255.0
        return io.NodeOutput(result.adapter, torch.from_numpy(graph)[None])


class PSASaveAdapter(CheckedNode):
    PATH_INPUTS = {"filename_prefix": ADAPTER_PREFIX}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSASaveAdapter",
            display_name="PSA Save Adapter",
            category=CATEGORY,
            description="Save a PSA adapter into models/psa/ as .safetensors (the reference's flat keys, readable by "
                        "PSAlign's loader, plus metadata on how it was trained). PSA Load Adapter lists it at once.",
            inputs=[
                PSAAdapterType.Input("adapter", tooltip="From PSA Train Adapter (or PSA Load Adapter)."),
                io.String.Input("filename_prefix", default="psa_trained",
                                tooltip="File name start inside models/psa/ ('/' makes sub-folders); a counter is "
                                        f"added: psa_trained_00001.safetensors. {limit_text(MAX_PATH_CHARS)}"),
                io.Combo.Input("dtype", options=list(SAVE_DTYPES), default="float32",
                               tooltip="Stored precision; float16 halves the file."),
            ],
            outputs=[io.String.Output(display_name="adapter_name",
                                      tooltip="The saved file's name as PSA Load Adapter lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter: LoadedAdapter, filename_prefix: str, dtype: str) -> io.NodeOutput:
        path = ADAPTER_PREFIX.path(filename_prefix, "filename_prefix")
        save_adapter(adapter, path, SAVE_DTYPES[dtype])
        name = path.relative_to(ADAPTER_PREFIX.folder()).as_posix()
        return io.NodeOutput(name, ui={"text": [f"saved models/psa/{name}"]})

NODES = [PSALoadSageDataset, PSATrainAdapter, PSASaveAdapter]
