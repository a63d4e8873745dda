"""Demo assets with random weights: an SD1.5 single-file checkpoint ComfyUI loads, and a PSA adapter and
user embedding that fit it. Nothing is downloaded; only torch, numpy and safetensors are needed.

The checkpoint uses the LDM single-file layout of the published SD1.5 files:
- `model.diffusion_model.*`: an SD1.5 UNet with 320 channels at every level (`channel_mult` [1, 1, 1, 1]),
  attention on the three upper levels and the middle block, context 768. ComfyUI detects it as SD15
  (it checks only the 320 channels, the 768 context and the conv `proj_in`, not the depth).
- `cond_stage_model.transformer.text_model.*`: a CLIP ViT-L/14 text encoder (hidden 768, 12 layers, the
  49408-token vocabulary), which ComfyUI's shipped SD1 tokenizer feeds offline.
- `first_stage_model.*`: the SD VAE (KL-f8, 128 base channels, multipliers 1/2/4/4, 4 latent channels).

The weights are random (seeded, so a seed gives the same file): images come out as noise, but every
ComfyUI node runs for real. The file holds about 320 M parameters (about 640 MB in fp16).

The PSA adapter has the 16 cross-attention layers of that UNet (all 320 wide) in the PSA file layout
(`user_proj.*`, `psa_adapter.<i>.to_{k,v}_user.0.weight`), for 3584-wide embeddings like the published ones.

Usage: python scripts/demo_assets.py MODELS_DIR [--seed N]
writes checkpoints/v1-5-pruned-emaonly.safetensors, psa/psa_sd15.safetensors and
psa_embeddings/demo_user.npy under MODELS_DIR (the names the example workflows use, except the embedding).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

Shape = tuple[int, ...]
ShapeSpec = dict[str, Shape]

CHECKPOINT_NAME = "v1-5-pruned-emaonly.safetensors"
ADAPTER_NAME = "psa_sd15.safetensors"
EMBEDDING_NAME = "demo_user.npy"
EMBEDDING_DIM = 3584  # Qwen2.5-7B-Instruct hidden size, as the published embeddings


@dataclass(frozen=True)
class UNetLayout:
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 1, 1, 1)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # SD1.5: no attention at the lowest level
    num_res_blocks: int = 2
    context_dim: int = 768
    in_channels: int = 4
    time_embed_dim: int = 1280  # 4 x 320 in SD1.5

    def width(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]


DEMO_UNET = UNetLayout()

CLIP_HIDDEN, CLIP_LAYERS, CLIP_MLP, CLIP_VOCAB, CLIP_POSITIONS = 768, 12, 3072, 49408, 77
VAE_CHANNELS, VAE_MULT, VAE_RES_BLOCKS, VAE_LATENT = 128, (1, 2, 4, 4), 2, 4


# ---- key layouts ----------------------------------------------------------------------------------------

def _group_norm(prefix: str, channels: int) -> ShapeSpec:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> ShapeSpec:
    spec: ShapeSpec = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        spec[f"{prefix}.bias"] = (out_features,)
    return spec


def _conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> ShapeSpec:
    return {f"{prefix}.weight": (out_channels, in_channels, kernel, kernel), f"{prefix}.bias": (out_channels,)}


def _unet_resblock(prefix: str, in_ch: int, out_ch: int, emb: int) -> ShapeSpec:
    spec = {**_group_norm(f"{prefix}.in_layers.0", in_ch), **_conv(f"{prefix}.in_layers.2", out_ch, in_ch, 3),
            **_linear(f"{prefix}.emb_layers.1", out_ch, emb), **_group_norm(f"{prefix}.out_layers.0", out_ch),
            **_conv(f"{prefix}.out_layers.3", out_ch, out_ch, 3)}
    if in_ch != out_ch:
        spec.update(_conv(f"{prefix}.skip_connection", out_ch, in_ch, 1))
    return spec


def _spatial_transformer(prefix: str, ch: int, context_dim: int) -> ShapeSpec:
    block = f"{prefix}.transformer_blocks.0"
    spec = {**_group_norm(f"{prefix}.norm", ch), **_conv(f"{prefix}.proj_in", ch, ch, 1)}
    for attention, kv_dim in (("attn1", ch), ("attn2", context_dim)):
        spec.update(_linear(f"{block}.{attention}.to_q", ch, ch, bias=False))
        spec.update(_linear(f"{block}.{attention}.to_k", ch, kv_dim, bias=False))
        spec.update(_linear(f"{block}.{attention}.to_v", ch, kv_dim, bias=False))
        spec.update(_linear(f"{block}.{attention}.to_out.0", ch, ch))
    spec.update(_linear(f"{block}.ff.net.0.proj", ch * 8, ch))  # GEGLU: 2 x (4 x ch)
    spec.update(_linear(f"{block}.ff.net.2", ch, ch * 4))
    for norm in ("norm1", "norm2", "norm3"):
        spec.update(_group_norm(f"{block}.{norm}", ch))
    spec.update(_conv(f"{prefix}.proj_out", ch, ch, 1))
    return spec


def unet_shapes(layout: UNetLayout = DEMO_UNET, prefix: str = "model.diffusion_model.") -> ShapeSpec:
    """Every tensor of an LDM `openaimodel.UNetModel` in SD1.5's configuration, with the given widths."""
    emb, levels = layout.time_embed_dim, len(layout.channel_mult)
    spec = {**_linear("time_embed.0", emb, layout.model_channels), **_linear("time_embed.2", emb, emb),
            **_conv("input_blocks.0.0", layout.model_channels, layout.in_channels, 3)}
    skip_channels, ch, block = [layout.model_channels], layout.model_channels, 1
    for level in range(levels):
        for _ in range(layout.num_res_blocks):
            spec.update(_unet_resblock(f"input_blocks.{block}.0", ch, layout.width(level), emb))
            ch = layout.width(level)
            if layout.attention_levels[level]:
                spec.update(_spatial_transformer(f"input_blocks.{block}.1", ch, layout.context_dim))
            skip_channels.append(ch)
            block += 1
        if level != levels - 1:
            spec.update(_conv(f"input_blocks.{block}.0.op", ch, ch, 3))
            skip_channels.append(ch)
            block += 1
    spec.update(_unet_resblock("middle_block.0", ch, ch, emb))
    spec.update(_spatial_transformer("middle_block.1", ch, layout.context_dim))
    spec.update(_unet_resblock("middle_block.2", ch, ch, emb))
    block = 0
    for level in reversed(range(levels)):
        for index in range(layout.num_res_blocks + 1):
            spec.update(_unet_resblock(f"output_blocks.{block}.0", ch + skip_channels.pop(), layout.width(level), emb))
            ch, part = layout.width(level), 1
            if layout.attention_levels[level]:
                spec.update(_spatial_transformer(f"output_blocks.{block}.1", ch, layout.context_dim))
                part = 2
            if level and index == layout.num_res_blocks:
                spec.update(_conv(f"output_blocks.{block}.{part}.conv", ch, ch, 3))
            block += 1
    spec.update({**_group_norm("out.0", ch), **_conv("out.2", layout.in_channels, ch, 3)})
    return {prefix + key: shape for key, shape in spec.items()}


def clip_l_shapes(prefix: str = "cond_stage_model.transformer.text_model.") -> ShapeSpec:
    """The CLIP ViT-L/14 text model as in SD1.5 checkpoints (no projection, as SD1.5 ships it)."""
    spec: ShapeSpec = {"embeddings.token_embedding.weight": (CLIP_VOCAB, CLIP_HIDDEN),
                       "embeddings.position_embedding.weight": (CLIP_POSITIONS, CLIP_HIDDEN)}
    for layer in range(CLIP_LAYERS):
        base = f"encoder.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            spec.update(_linear(f"{base}.self_attn.{projection}", CLIP_HIDDEN, CLIP_HIDDEN))
        spec.update(_group_norm(f"{base}.layer_norm1", CLIP_HIDDEN))
        spec.update(_linear(f"{base}.mlp.fc1", CLIP_MLP, CLIP_HIDDEN))
        spec.update(_linear(f"{base}.mlp.fc2", CLIP_HIDDEN, CLIP_MLP))
        spec.update(_group_norm(f"{base}.layer_norm2", CLIP_HIDDEN))
    spec.update(_group_norm("final_layer_norm", CLIP_HIDDEN))
    return {prefix + key: shape for key, shape in spec.items()}


def _vae_resblock(prefix: str, in_ch: int, out_ch: int) -> ShapeSpec:
    spec = {**_group_norm(f"{prefix}.norm1", in_ch), **_conv(f"{prefix}.conv1", out_ch, in_ch, 3),
            **_group_norm(f"{prefix}.norm2", out_ch), **_conv(f"{prefix}.conv2", out_ch, out_ch, 3)}
    if in_ch != out_ch:
        spec.update(_conv(f"{prefix}.nin_shortcut", out_ch, in_ch, 1))
    return spec


def _vae_middle(prefix: str, ch: int) -> ShapeSpec:
    spec = {**_vae_resblock(f"{prefix}.block_1", ch, ch), **_group_norm(f"{prefix}.attn_1.norm", ch)}
    for name in ("q", "k", "v", "proj_out"):
        spec.update(_conv(f"{prefix}.attn_1.{name}", ch, ch, 1))
    spec.update(_vae_resblock(f"{prefix}.block_2", ch, ch))
    return spec


def vae_shapes(prefix: str = "first_stage_model.") -> ShapeSpec:
    """The SD KL-f8 autoencoder (LDM `AutoencoderKL` names)."""
    levels, widths = len(VAE_MULT), [VAE_CHANNELS * m for m in VAE_MULT]
    spec = _conv("encoder.conv_in", VAE_CHANNELS, 3, 3)
    ch = VAE_CHANNELS
    for level in range(levels):
        for block in range(VAE_RES_BLOCKS):
            spec.update(_vae_resblock(f"encoder.down.{level}.block.{block}", ch, widths[level]))
            ch = widths[level]
        if level != levels - 1:
            spec.update(_conv(f"encoder.down.{level}.downsample.conv", ch, ch, 3))
    spec.update(_vae_middle("encoder.mid", ch))
    spec.update({**_group_norm("encoder.norm_out", ch), **_conv("encoder.conv_out", 2 * VAE_LATENT, ch, 3)})
    spec.update(_conv("quant_conv", 2 * VAE_LATENT, 2 * VAE_LATENT, 1))
    spec.update(_conv("post_quant_conv", VAE_LATENT, VAE_LATENT, 1))
    spec.update(_conv("decoder.conv_in", ch, VAE_LATENT, 3))
    spec.update(_vae_middle("decoder.mid", ch))
    for level in reversed(range(levels)):
        for block in range(VAE_RES_BLOCKS + 1):
            spec.update(_vae_resblock(f"decoder.up.{level}.block.{block}", ch, widths[level]))
            ch = widths[level]
        if level != 0:
            spec.update(_conv(f"decoder.up.{level}.upsample.conv", ch, ch, 3))
    spec.update({**_group_norm("decoder.norm_out", ch), **_conv("decoder.conv_out", 3, ch, 3)})
    return {prefix + key: shape for key, shape in spec.items()}


def checkpoint_shapes() -> ShapeSpec:
    return {**unet_shapes(), **clip_l_shapes(), **vae_shapes()}


def adapter_layer_widths(layout: UNetLayout = DEMO_UNET) -> list[int]:
    """Width of each attn2 layer in PSA adapter order: down blocks, then up blocks, then the middle block."""
    levels = len(layout.channel_mult)
    down = [layout.width(level) for level in range(levels) if layout.attention_levels[level]
            for _ in range(layout.num_res_blocks)]
    up = [layout.width(level) for level in reversed(range(levels)) if layout.attention_levels[level]
          for _ in range(layout.num_res_blocks + 1)]
    return down + up + [layout.width(levels - 1)]


def adapter_shapes(layout: UNetLayout = DEMO_UNET, embedding_dim: int = EMBEDDING_DIM) -> ShapeSpec:
    d = layout.context_dim
    spec: ShapeSpec = {"user_proj.proj.weight": (d, embedding_dim), "user_proj.proj.bias": (d,),
                       "user_proj.norm.weight": (d,), "user_proj.norm.bias": (d,)}
    for index, width in enumerate(adapter_layer_widths(layout)):
        spec[f"psa_adapter.{index}.to_k_user.0.weight"] = (width, d)
        spec[f"psa_adapter.{index}.to_v_user.0.weight"] = (width, d)
    return spec


# ---- random weights --------------------------------------------------------------------------------------

def _initial_value(key: str, shape: Shape, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Norm scales 1, biases 0, embeddings N(0, 0.02), other weights N(0, 1/fan_in) so activations stay O(1)."""
    if len(shape) == 1:  # only norms have 1-d weights here; every other 1-d tensor is a bias
        return torch.ones(shape, dtype=dtype) if key.endswith(".weight") else torch.zeros(shape, dtype=dtype)
    std = 0.02 if "embedding" in key else 1 / math.sqrt(math.prod(shape[1:]))
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=generator)  # in place: no fp32 copies


def random_tensors(spec: ShapeSpec, seed: int,
                   dtype: torch.dtype = torch.float16) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random values for every tensor of `spec`, in sorted key order (the same seed, the same values)."""
    generator = torch.Generator().manual_seed(seed)
    for key in sorted(spec):
        yield key, _initial_value(key, spec[key], generator, dtype)


# ---- writers ---------------------------------------------------------------------------------------------

def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.chmod(0o644)  # safetensors creates the file private to its owner
    partial.replace(path)
    return path


def write_demo_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight SD1.5 single-file checkpoint (fp16, ~640 MB) that CheckpointLoaderSimple loads."""
    tensors = dict(random_tensors(checkpoint_shapes(), seed))
    return _save(tensors, Path(path), {"psa_demo": "random-weight SD1.5 checkpoint for tests and demos",
                                       "seed": str(seed)})


def write_demo_adapter(path: str | Path, seed: int = 1, embedding_dim: int = EMBEDDING_DIM,
                       scale: float = 0.02) -> Path:
    """Write a random PSA adapter (flat safetensors) for the demo checkpoint's UNet."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in sorted(adapter_shapes(embedding_dim=embedding_dim).items()):
        if key == "user_proj.norm.weight":
            tensors[key] = torch.ones(shape)
        elif key.endswith("bias"):
            tensors[key] = torch.zeros(shape)
        else:
            tensors[key] = torch.randn(shape, generator=generator) * scale
    return _save(tensors, Path(path), {"psa_demo": "random PSA adapter for the demo SD1.5 checkpoint"})


def write_demo_embedding(path: str | Path, seed: int = 2, dim: int = EMBEDDING_DIM) -> Path:
    """Write a random user embedding (.npy, float32, shape [dim]) like the published ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    np.save(path, values)
    return path


def write_demo_models(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """All three assets under a ComfyUI models/ folder, at the names the example workflows use."""
    models = Path(models_dir)
    return {"checkpoint": write_demo_checkpoint(models / "checkpoints" / CHECKPOINT_NAME, seed),
            "adapter": write_demo_adapter(models / "psa" / ADAPTER_NAME, seed + 1),
            "embedding": write_demo_embedding(models / "psa_embeddings" / EMBEDDING_NAME, seed + 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="a ComfyUI models/ folder")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    for name, path in write_demo_models(arguments.models_dir, arguments.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
