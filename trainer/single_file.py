"""Single-file checkpoints (the .safetensors files ComfyUI users have) → diffusers components, offline.

diffusers' `from_single_file` fetches model configs from the Hub; here the configs are derived from the
checkpoint's own tensor shapes, and diffusers' key-conversion helpers (which need no network) rename the
LDM keys (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` / `conditioner.*`).

Head counts are not visible in the shapes; the rule is the real models': SD1.5 has 8 heads per attention
layer, SDXL 64-channel heads (and CLIP text encoders 64-channel heads). Tiny test models follow the same rule
(at least one head).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from psa_core.training.errors import TrainingError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
VAE_SCALING = {"sd15": 0.18215, "sdxl": 0.13025}
SD15_HEADS = 8
HEAD_CHANNELS = 64


def sdxl_heads(width: int) -> int:
    return max(1, width // HEAD_CHANNELS)


def clip_heads(hidden: int) -> int:
    return max(1, hidden // HEAD_CHANNELS)


class CheckpointFile:
    """Lazy access to the tensors of a .safetensors checkpoint."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".safetensors", ".sft"):
            raise TrainingError(f"{self.path.name}: single-file checkpoints must be .safetensors (pickled .ckpt "
                                "files are refused because loading them can run arbitrary code)")
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                names = handle.keys()  # a safe_open handle, not a dict
                self.shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in names}
        except (SafetensorError, OSError) as error:
            raise TrainingError(f"{self.path.name}: not a readable safetensors file ({error})") from error

    def keys_with(self, prefix: str) -> list[str]:
        return [k for k in self.shapes if k.startswith(prefix)]

    def load(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        with safe_open(str(self.path), framework="pt") as handle:
            return {k: (t.to(dtype) if dtype is not None and t.is_floating_point() else t)
                    for k in keys for t in (handle.get_tensor(k),)}


def detect_family(checkpoint: CheckpointFile) -> str:
    if checkpoint.keys_with(SDXL_TEXT2_PREFIX):
        return "sdxl"
    if checkpoint.keys_with(SD15_TEXT_PREFIX):
        return "sd15"
    if checkpoint.keys_with("cond_stage_model.model."):
        raise TrainingError(f"{checkpoint.path.name}: an SD2-style checkpoint (OpenCLIP-H text encoder); "
                            "supported families: sd15, sdxl")
    raise TrainingError(f"{checkpoint.path.name}: not an SD1.5 or SDXL single-file checkpoint (no "
                        f"{SD15_TEXT_PREFIX}* or {SDXL_TEXT2_PREFIX}* text-encoder keys)")


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


@dataclass(frozen=True)
class UNetShape:
    """What the UNet's block layout is, read from LDM key names and shapes."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    middle_depth: int
    context_dim: int
    linear_projection: bool
    adm_in_channels: int | None


def read_unet_shape(shapes: dict[str, tuple[int, ...]], prefix: str = UNET_PREFIX) -> UNetShape:
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    shape = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    if "input_blocks.0.0.weight" not in shape:
        raise TrainingError("checkpoint has no UNet (model.diffusion_model.input_blocks.0.0.weight missing)")
    model_channels, in_channels = shape["input_blocks.0.0.weight"][:2]
    blocks = _count(keys, r"input_blocks\.(\d+)\.")
    if blocks % 3:
        raise TrainingError(f"UNet has {blocks} input blocks; expected 3 per level (2 res blocks + downsample)")
    levels = blocks // 3
    channel_mult, depth = [], []
    for level in range(levels):
        first = 3 * level + 1
        channel_mult.append(shape[f"input_blocks.{first}.0.out_layers.3.weight"][0] // model_channels)
        depth.append(_count(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
    context = [v[1] for k, v in shape.items() if k.endswith("attn2.to_k.weight")]
    if not context:
        raise TrainingError("UNet has no cross-attention layers")
    proj_in = next(v for k, v in shape.items() if k.endswith(".proj_in.weight"))
    adm = shape.get("label_emb.0.0.weight")
    return UNetShape(in_channels, shape["out.2.weight"][0], model_channels, tuple(channel_mult), tuple(depth),
                     _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."), context[0], len(proj_in) == 2,
                     adm[1] if adm else None)


def diffusers_unet_config(family: str, unet: UNetShape, pooled_dim: int | None = None) -> dict:
    """The UNet2DConditionModel config for this layout (SD1.5: 8 heads; SDXL: 64-channel heads)."""
    widths = [unet.model_channels * m for m in unet.channel_mult]
    heads = [SD15_HEADS] * len(widths) if family == "sd15" else [sdxl_heads(w) for w in widths]
    config = {
        "in_channels": unet.in_channels, "out_channels": unet.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in unet.transformer_depth],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(unet.transformer_depth)],
        "block_out_channels": widths, "layers_per_block": 2, "cross_attention_dim": unet.context_dim,
        "attention_head_dim": heads if family == "sdxl" else SD15_HEADS,
        "use_linear_projection": unet.linear_projection,
        "transformer_layers_per_block": [max(1, d) for d in unet.transformer_depth] if family == "sdxl" else 1,
    }
    if unet.middle_depth != (unet.transformer_depth[-1] if family == "sdxl" else 1):
        raise TrainingError(f"mid block has {unet.middle_depth} transformer blocks, not what {family} uses")
    if family == "sdxl":
        if unet.adm_in_channels is None or pooled_dim is None:
            raise TrainingError("SDXL UNet without label_emb (pooled text + size conditioning)")
        time_dim, remainder = divmod(unet.adm_in_channels - pooled_dim, 6)
        if remainder or time_dim <= 0:
            raise TrainingError(f"SDXL label_emb takes {unet.adm_in_channels} inputs, which is not the pooled "
                                f"text width {pooled_dim} plus 6 size embeddings")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=unet.adm_in_channels)
    return config


def diffusers_vae_config(shapes: dict[str, tuple[int, ...]], family: str, prefix: str = VAE_PREFIX) -> dict:
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    if not keys:
        raise TrainingError("checkpoint has no VAE (first_stage_model.*); one is needed to encode images")
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    widths = [shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    return {
        "in_channels": shapes[prefix + "encoder.conv_in.weight"][1],
        "out_channels": shapes[prefix + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": widths, "layers_per_block": _count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
        "latent_channels": shapes[prefix + "decoder.conv_in.weight"][1], "scaling_factor": VAE_SCALING[family],
    }


def clip_text_config(shapes: dict[str, tuple[int, ...]], prefix: str, open_clip: bool, eos_token_id: int,
                     bos_token_id: int) -> dict:
    """CLIPTextConfig kwargs from a text encoder's shapes (HF layout, or OpenCLIP layout for SDXL's second)."""
    if open_clip:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
        intermediate = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes[prefix + "text_projection"][1]
        activation = "gelu"
    else:
        vocab, hidden = shapes[prefix + "text_model.embeddings.token_embedding.weight"]
        positions = shapes[prefix + "text_model.embeddings.position_embedding.weight"][0]
        layers = _count(shapes, rf"{re.escape(prefix)}text_model\.encoder\.layers\.(\d+)\.")
        intermediate = shapes[prefix + "text_model.encoder.layers.0.mlp.fc1.weight"][0]
        projection = hidden
        activation = "quick_gelu"
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": clip_heads(hidden),
            "max_position_embeddings": positions, "hidden_act": activation, "projection_dim": projection,
            "eos_token_id": eos_token_id, "bos_token_id": bos_token_id, "pad_token_id": 1, "layer_norm_eps": 1e-5}
