"""The tensors of LDM single-file checkpoints, by name and shape, and seeded values for them (torch only).

`unet_shapes` lists the LDM `openaimodel.UNetModel` of a testkit.layouts layout (`model.diffusion_model.*`),
`clip_text_shapes` a Hugging Face CLIP text model as SD1.5 / SDXL checkpoints hold it
(`cond_stage_model.transformer.text_model.*`), `vae_shapes` the KL autoencoder (`first_stage_model.*`).
Neither diffusers nor ComfyUI is needed, so the demo writes its checkpoint from these in ComfyUI's own
environment. tests/test_testkit.py checks them against the single-file keys of testkit.models' diffusers
models, tests/test_browser.py against what ComfyUI's SD1.5 loader builds.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from trainer.single_file import SD15_TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

from .layouts import UNetLayout

Shape = tuple[int, ...]
ShapeSpec = dict[str, Shape]


def _group_norm(prefix: str, channels: int) -> ShapeSpec:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> ShapeSpec:
    spec: ShapeSpec = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        spec[f"{prefix}.bias"] = (out_features,)
    return spec


def _conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> ShapeSpec:
    return {f"{prefix}.weight": (out_channels, in_channels, kernel, kernel), f"{prefix}.bias": (out_channels,)}


# ---- UNet ------------------------------------------------------------------------------------------------

def _unet_resblock(prefix: str, in_ch: int, out_ch: int, emb: int) -> ShapeSpec:
    spec = {**_group_norm(f"{prefix}.in_layers.0", in_ch), **_conv(f"{prefix}.in_layers.2", out_ch, in_ch, 3),
            **_linear(f"{prefix}.emb_layers.1", out_ch, emb), **_group_norm(f"{prefix}.out_layers.0", out_ch),
            **_conv(f"{prefix}.out_layers.3", out_ch, out_ch, 3)}
    if in_ch != out_ch:
        spec.update(_conv(f"{prefix}.skip_connection", out_ch, in_ch, 1))
    return spec


def _spatial_transformer(prefix: str, ch: int, layout: UNetLayout, depth: int) -> ShapeSpec:
    def project(name: str) -> ShapeSpec:  # SDXL: linear; SD1.5: 1x1 convolution
        return _linear(name, ch, ch) if layout.linear_projection else _conv(name, ch, ch, 1)

    spec = {**_group_norm(f"{prefix}.norm", ch), **project(f"{prefix}.proj_in")}
    for index in range(depth):
        block = f"{prefix}.transformer_blocks.{index}"
        for attention, kv_dim in (("attn1", ch), ("attn2", layout.context_dim)):
            spec.update(_linear(f"{block}.{attention}.to_q", ch, ch, bias=False))
            spec.update(_linear(f"{block}.{attention}.to_k", ch, kv_dim, bias=False))
            spec.update(_linear(f"{block}.{attention}.to_v", ch, kv_dim, bias=False))
            spec.update(_linear(f"{block}.{attention}.to_out.0", ch, ch))
        spec.update(_linear(f"{block}.ff.net.0.proj", ch * 8, ch))  # GEGLU: 2 x (4 x ch)
        spec.update(_linear(f"{block}.ff.net.2", ch, ch * 4))
        for norm in ("norm1", "norm2", "norm3"):
            spec.update(_group_norm(f"{block}.{norm}", ch))
    spec.update(project(f"{prefix}.proj_out"))
    return spec


def unet_shapes(layout: UNetLayout, prefix: str = UNET_PREFIX) -> ShapeSpec:
    """Every tensor of the LDM `openaimodel.UNetModel` of `layout`."""
    emb, levels, widths = layout.time_embed_dim, len(layout.channel_mult), layout.widths
    spec = {**_linear("time_embed.0", emb, layout.model_channels), **_linear("time_embed.2", emb, emb),
            **_conv("input_blocks.0.0", layout.model_channels, layout.in_channels, 3)}
    if layout.adm_in_channels is not None:
        spec.update({**_linear("label_emb.0.0", emb, layout.adm_in_channels), **_linear("label_emb.0.2", emb, emb)})
    skip_channels, ch, block = [layout.model_channels], layout.model_channels, 1
    for level in range(levels):
        depth = layout.transformer_depth[level]
        for _ in range(layout.num_res_blocks):
            spec.update(_unet_resblock(f"input_blocks.{block}.0", ch, widths[level], emb))
            ch = widths[level]
            if depth:
                spec.update(_spatial_transformer(f"input_blocks.{block}.1", ch, layout, depth))
            skip_channels.append(ch)
            block += 1
        if level != levels - 1:
            spec.update(_conv(f"input_blocks.{block}.0.op", ch, ch, 3))
            skip_channels.append(ch)
            block += 1
    spec.update(_unet_resblock("middle_block.0", ch, ch, emb))
    spec.update(_spatial_transformer("middle_block.1", ch, layout, layout.middle_depth))
    spec.update(_unet_resblock("middle_block.2", ch, ch, emb))
    block = 0
    for level in reversed(range(levels)):
        depth = layout.transformer_depth[level]
        for index in range(layout.num_res_blocks + 1):
            spec.update(_unet_resblock(f"output_blocks.{block}.0", ch + skip_channels.pop(), widths[level], emb))
            ch, part = widths[level], 1
            if depth:
                spec.update(_spatial_transformer(f"output_blocks.{block}.1", ch, layout, depth))
                part = 2
            if level and index == layout.num_res_blocks:
                spec.update(_conv(f"output_blocks.{block}.{part}.conv", ch, ch, 3))
            block += 1
    spec.update({**_group_norm("out.0", ch), **_conv("out.2", layout.in_channels, ch, 3)})
    return {prefix + key: shape for key, shape in spec.items()}


# ---- text encoder ----------------------------------------------------------------------------------------

def clip_text_shapes(hidden: int, layers: int, vocab: int, positions: int = 77,
                     prefix: str = SD15_TEXT_PREFIX + "text_model.") -> ShapeSpec:
    """A CLIP text model as SD1.5 checkpoints hold it (Hugging Face names, no projection), MLP 4 x hidden."""
    mlp = 4 * hidden
    spec: ShapeSpec = {"embeddings.token_embedding.weight": (vocab, hidden),
                       "embeddings.position_embedding.weight": (positions, hidden)}
    for layer in range(layers):
        base = f"encoder.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            spec.update(_linear(f"{base}.self_attn.{projection}", hidden, hidden))
        spec.update(_group_norm(f"{base}.layer_norm1", hidden))
        spec.update(_linear(f"{base}.mlp.fc1", mlp, hidden))
        spec.update(_linear(f"{base}.mlp.fc2", hidden, mlp))
        spec.update(_group_norm(f"{base}.layer_norm2", hidden))
    spec.update(_group_norm("final_layer_norm", hidden))
    return {prefix + key: shape for key, shape in spec.items()}


# ---- VAE -------------------------------------------------------------------------------------------------

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


def vae_shapes(widths: tuple[int, ...], res_blocks: int, latent_channels: int = 4,
               prefix: str = VAE_PREFIX) -> ShapeSpec:
    """A KL autoencoder (LDM `AutoencoderKL` names) with these widths per level; the SD VAE is
    widths (128, 256, 512, 512), 2 res blocks."""
    levels = len(widths)
    spec = _conv("encoder.conv_in", widths[0], 3, 3)
    ch = widths[0]
    for level in range(levels):
        for block in range(res_blocks):
            spec.update(_vae_resblock(f"encoder.down.{level}.block.{block}", ch, widths[level]))
            ch = widths[level]
        if level != levels - 1:
            spec.update(_conv(f"encoder.down.{level}.downsample.conv", ch, ch, 3))
    spec.update(_vae_middle("encoder.mid", ch))
    spec.update({**_group_norm("encoder.norm_out", ch), **_conv("encoder.conv_out", 2 * latent_channels, ch, 3)})
    spec.update(_conv("quant_conv", 2 * latent_channels, 2 * latent_channels, 1))
    spec.update(_conv("post_quant_conv", latent_channels, latent_channels, 1))
    spec.update(_conv("decoder.conv_in", ch, latent_channels, 3))
    spec.update(_vae_middle("decoder.mid", ch))
    for level in reversed(range(levels)):
        for block in range(res_blocks + 1):
            spec.update(_vae_resblock(f"decoder.up.{level}.block.{block}", ch, widths[level]))
            ch = widths[level]
        if level != 0:
            spec.update(_conv(f"decoder.up.{level}.upsample.conv", ch, ch, 3))
    spec.update({**_group_norm("decoder.norm_out", ch), **_conv("decoder.conv_out", 3, ch, 3)})
    return {prefix + key: shape for key, shape in spec.items()}


# ---- random values ---------------------------------------------------------------------------------------

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
