"""The tiny diffusers components of testkit.models as real ComfyUI objects: MODEL, VAE and CLIP.

`comfy_unet`, `comfy_vae` and `comfy_clip` take `Components` (testkit.models.build_components) of
either family and build what ComfyUI's checkpoint loader builds (comfy.sd.load_state_dict_guess_config:
model config → BaseModel → load_model_weights → ModelPatcher; comfy.sd.VAE; comfy.sd.CLIP + load_sd) from
the single-file, LDM-keyed state dict (testkit.models.ldm_state_dict), inside `torch.inference_mode()`
as ComfyUI's PromptExecutor runs loader nodes, so every weight is an inference tensor (a fresh copy: no
storage is shared with the diffusers modules). Use the objects inside `torch.inference_mode()` (or
`no_grad`), as ComfyUI does. ComfyUI must be imported first (tests/comfy_env.py; the `folder_paths` fixture):
this module imports `comfy` only inside its functions.

What is supplied rather than detected, and why:

* UNet: `comfy.model_detection.detect_unet_config` reads the tiny layout from the tensor shapes, but
  `model_config_from_unet` matches no supported model (SD15 requires model_channels 320 and context_dim
  768, SDXL 320 / 2048 / adm 2816), so the detected config is handed to `comfy.supported_models.SD15` /
  `SDXL` directly. Their head rules are the diffusers layout's (trainer.single_file): SD15 8 heads per
  attention layer, SDXL 64-channel heads (tiny widths 64 and 128: 1 and 2 heads; the 32-wide SDXL level
  has no attention). SDXL's `y` (pooled text + 6 size embeddings) has the tiny widths (32 + 6×8), so
  ComfyUI's `SDXL.encode_adm`, which embeds each size 256 wide (real SDXL), cannot make it: pass `y` to
  the diffusion model directly (`sdxl_y` builds it as diffusers does).
* VAE: comfy.sd.VAE would guess the SD VAE's ddconfig (ch 128, ch_mult [1, 2, 4, 4], 2 res blocks), so the
  tiny one (ch 32, ch_mult [1, 1, 2], 1 res block) is given as `config=` (`vae_config`). With `config=`,
  ComfyUI leaves `downscale_ratio` / `upscale_ratio` at 8, though the tiny VAE scales by 4; they are set to
  the real factor afterwards, so VAE.encode / decode crop and tile right (32 px → 8×8 latents).
  ComfyUI's SD VAE is the legacy `AutoencoderKL` (with quant_conv), whose `encode(x)` returns only the
  posterior mode (the mean) and takes no `unregularized=` (that is `AutoencodingEngine`, which has no
  quant_conv): `posterior(vae, pixels)` returns (mean, std) from encoder + quant_conv through ComfyUI's
  own DiagonalGaussianDistribution (std = exp(0.5·clamp(logvar, -30, 20))).
* CLIP: ComfyUI's CLIP classes with the tiny encoder configs (`textmodel_json_config`), the tiny
  vocabulary's special tokens (start 512, end 513; ComfyUI's defaults are the real ids 49406 / 49407) and
  the tokenizer read from the tiny tokenizer folder. SD1.5: SD1Tokenizer + SD1ClipModel around an
  SDClipModel like SD1CheckpointClipModel (`return_projected_pooled=False`). SDXL: SDXLTokenizer /
  SDXLClipModel subclasses whose clip_l / clip_g are built like ComfyUI's (penultimate layer, no final
  layer norm on it, clip_g padded with id 0 and projected pooled output), except that the penultimate
  layer is named by its positive index (num_layers - 2): SDClipModel asserts abs(layer_idx) < num_layers,
  which rejects -2 for the tiny 2-layer encoders although -2 is the same layer.
  ComfyUI's CLIPTextModel_ does not pass the config's vocab_size on: its token table always has 49408
  rows. The tiny table (514 rows) is zero-padded to 49408; ids past 513 never occur.
  `transformer.text_projection` of an SD1.5 / SDXL clip_l encoder is in neither checkpoint: it stays
  uninitialised and unused, as with real checkpoints.

Dtypes: float32 by default. On the CPU ComfyUI would pick float16 for the text encoder
(model_management.text_encoder_dtype), which breaks exact parity; `dtype=` chooses.

Parity with diffusers (fp32, CPU; tests/test_comfy_tiny.py): the diffusion model, apply_model (as
x - σ·ε), the VAE posterior (mean, std), VAE.encode / decode and the text hidden states + pooled output
(SD1.5: last_hidden_state / pooler_output; SDXL: hidden_states[-2] of both encoders concatenated /
text_embeds of the second, as diffusers' SDXL pipeline) agree to float32 rounding (max abs error
≤ 2.2e-5 on values up to 28, ≤ 2e-6 on values ~1). ComfyUI tokenizes a plain caption exactly as the tiny
CLIPTokenizer with padding="max_length", max_length=77: [start] + tokens + [end] + pad, where ComfyUI pads
SD1.5 / clip_l with the end token (the tiny tokenizer's pad token is <|endoftext|> too) and clip_g with
id 0 (tokenizer_2's pad token "!" is id 0, testkit.models.save_diffusers_folder), and the empty caption
gives [start, end, pad...] on both sides. SD1.5 applies no attention mask but the causal one
(enable_attention_masks=False), as diffusers called without one.
What differs:
* "!" with SDXL's second tokenizer: diffusers' tokenizer_2 has "!" as its pad (special) token, so it
  splits every "!" off as id 0; ComfyUI's clip_g tokenizer has no such token and encodes "!</w>" (256).
  The real SDXL tokenizer_2 does the same, so this is no artefact of the tiny model.
* ComfyUI reads "(text)" / "(text:1.2)" as weights (the parentheses are dropped and the weighted tokens'
  states interpolated towards the empty prompt's) and "embedding:name" as a textual inversion.
* A caption of more than 75 tokens becomes several 77-token chunks, concatenated (diffusers truncates; the
  first chunk equals the truncated encoding). The byte-level tiny vocabulary makes every character a
  token (spaces only separate words), so 75 characters already fill a chunk.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from testkit.models import Components, ldm_state_dict
from trainer.single_file import UNET_PREFIX, VAE_PREFIX

COMFY_CLIP_VOCAB = 49408  # rows of comfy.clip_model.CLIPEmbeddings.token_embedding, whatever the config says
CLIP_PREFIXES = ("cond_stage_model.", "conditioner.")


def _copies(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh contiguous tensors (inference tensors when made in inference mode)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _checkpoint(components: Components, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Copies of the single-file checkpoint's tensors under `prefixes` (call in inference mode)."""
    return _copies({k: v for k, v in ldm_state_dict(components).items() if k.startswith(prefixes)})


def _model_config(components: Components, unet_config: dict):
    """comfy.supported_models.SD15 / SDXL (what the loader's detection would pick at the real widths)."""
    import comfy.supported_models

    family = components.spec.family
    return (comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL)(unet_config)


# ---- MODEL ----

def comfy_unet(components: Components, dtype: torch.dtype = torch.float32):
    """The UNet as a ComfyUI MODEL: a ModelPatcher around comfy.model_base.BaseModel (SD1.5) / SDXL."""
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher

    with torch.inference_mode():
        sd = _checkpoint(components, (UNET_PREFIX,))
        model_config = _model_config(components, comfy.model_detection.detect_unet_config(sd, UNET_PREFIX))
        load_device = comfy.model_management.get_torch_device()
        manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device,
                                                             model_config.supported_inference_dtypes)
        model_config.set_inference_dtype(dtype, manual_cast)
        model = model_config.get_model(sd, UNET_PREFIX)
        model.load_model_weights(sd, UNET_PREFIX)  # pops what it loads
        if sd:
            raise RuntimeError(f"UNet tensors ComfyUI did not take: {sorted(sd)[:5]}")
        return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                                offload_device=comfy.model_management.unet_offload_device())


def sdxl_y(components: Components, pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL's `y` for the diffusion model: pooled text, then the 6 size numbers (original h, w, crop top,
    left, target h, w) each as a sinusoidal embedding; diffusers' text_time add-embedding input."""
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

    width = components.spec.size_embed
    sizes = timestep_embedding(time_ids.flatten().float(), width).reshape(time_ids.shape[0], -1)
    return torch.cat([pooled, sizes.to(pooled)], dim=1)


# ---- VAE ----

def vae_config(components: Components) -> dict:
    """comfy.sd.VAE's `config=`: the tiny VAE as AutoencoderKL params."""
    vae = components.vae.config
    widths = list(vae.block_out_channels)
    ddconfig = {"double_z": True, "z_channels": vae.latent_channels, "resolution": 256,
                "in_channels": vae.in_channels, "out_ch": vae.out_channels, "ch": widths[0],
                "ch_mult": [w // widths[0] for w in widths], "num_res_blocks": vae.layers_per_block,
                "attn_resolutions": [], "dropout": 0.0}
    return {"params": {"embed_dim": vae.latent_channels, "ddconfig": ddconfig}}


def comfy_vae(components: Components, dtype: torch.dtype = torch.float32):
    """The VAE as a ComfyUI VAE (first_stage_model: comfy.ldm.models.autoencoder.AutoencoderKL)."""
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        sd = comfy.utils.state_dict_prefix_replace(_checkpoint(components, (VAE_PREFIX,)), {VAE_PREFIX: ""},
                                                   filter_keys=True)
        vae = comfy.sd.VAE(sd=sd, config=vae_config(components), dtype=dtype)
    missing = set(vae.first_stage_model.state_dict()) ^ set(sd)
    if missing:
        raise RuntimeError(f"VAE tensors missing or left over: {sorted(missing)[:5]}")
    vae.downscale_ratio = vae.upscale_ratio = 2 ** (len(components.vae.config.block_out_channels) - 1)
    return vae


def posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ComfyUI's VAE posterior for NCHW pixels in [-1, 1] (what VAE.encode feeds the model)."""
    import comfy.model_management
    from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    comfy.model_management.load_models_gpu([vae.patcher])  # as VAE.encode does
    model = vae.first_stage_model
    moments = model.quant_conv(model.encoder(pixels.to(vae.device, vae.vae_dtype)))
    distribution = DiagonalGaussianDistribution(moments)  # in the VAE's dtype
    return distribution.mean, distribution.std


# ---- CLIP ----

def _text_configs(components: Components) -> list[dict]:
    return [encoder.config.to_dict() for encoder in components.text_encoders]


def _tokenizer(folder: str | Path, config: dict, key: str, **options):
    import comfy.sd1_clip

    return comfy.sd1_clip.SDTokenizer(str(folder), max_length=config["max_position_embeddings"],
                                      embedding_size=config["hidden_size"], embedding_key=key, **options)


def _clip_model(config: dict, name: str, pad: int, penultimate: bool, device, dtype, model_options, **options):
    import comfy.sd1_clip

    layer = {"layer": "hidden", "layer_idx": config["num_hidden_layers"] - 2,
             "layer_norm_hidden_state": False} if penultimate else {}
    return comfy.sd1_clip.SDClipModel(
        device=device, dtype=dtype, model_options={**model_options, "model_name": name},
        textmodel_json_config=dict(config), max_length=config["max_position_embeddings"],
        special_tokens={"start": config["bos_token_id"], "end": config["eos_token_id"], "pad": pad},
        **layer, **options)


def _sd15_target(components: Components, tokenizer_folder: str | Path):
    import comfy.sd1_clip
    import comfy.supported_models_base

    config = _text_configs(components)[0]

    class TinySD1Tokenizer(comfy.sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            super().__init__(embedding_directory, tokenizer_data or {}, tokenizer=functools.partial(
                _tokenizer, tokenizer_folder, config, "clip_l"))

    class TinySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            clip_model = functools.partial(_clip_model, config, "clip_l", config["eos_token_id"], False,
                                           return_projected_pooled=False)  # as SD1CheckpointClipModel
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, clip_model=clip_model)

    return comfy.supported_models_base.ClipTarget(TinySD1Tokenizer, TinySD1ClipModel)


def _sdxl_target(components: Components, tokenizer_folder: str | Path):
    import comfy.sdxl_clip
    import comfy.supported_models_base

    config_l, config_g = _text_configs(components)

    class TinySDXLTokenizer(comfy.sdxl_clip.SDXLTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            options = {"embedding_directory": embedding_directory, "tokenizer_data": tokenizer_data or {}}
            self.clip_l = _tokenizer(tokenizer_folder, config_l, "clip_l", **options)
            self.clip_g = _tokenizer(tokenizer_folder, config_g, "clip_g", pad_with_end=False, **options)

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            model_options = model_options or {}
            torch.nn.Module.__init__(self)
            self.clip_l = _clip_model(config_l, "clip_l", config_l["eos_token_id"], True, device, dtype,
                                      model_options)
            self.clip_g = _clip_model(config_g, "clip_g", 0, True, device, dtype, model_options,
                                      return_projected_pooled=True)
            self.dtypes = {dtype}

    return comfy.supported_models_base.ClipTarget(TinySDXLTokenizer, TinySDXLClipModel)


def _pad_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    if table.shape[0] > rows:
        raise ValueError(f"a vocabulary of {table.shape[0]} tokens exceeds ComfyUI's fixed {rows}")
    return torch.cat([table, table.new_zeros(rows - table.shape[0], table.shape[1])])


def comfy_clip(components: Components, tokenizer_folder: str | Path, dtype: torch.dtype = torch.float32):
    """The text encoder(s) + tokenizer(s) as a ComfyUI CLIP; the tokenizer folder is write_tokenizer's."""
    import comfy.sd
    import comfy.utils

    target = (_sd15_target if components.spec.family == "sd15" else _sdxl_target)(components, tokenizer_folder)
    with torch.inference_mode():
        sd = _checkpoint(components, CLIP_PREFIXES)
        clip_sd = _model_config(components, {}).process_clip_state_dict(sd)
        for key in [k for k in clip_sd if k.endswith("embeddings.token_embedding.weight")]:
            clip_sd[key] = _pad_rows(clip_sd[key], COMFY_CLIP_VOCAB)
        clip = comfy.sd.CLIP(target, tokenizer_data=clip_sd, parameters=comfy.utils.calculate_parameters(clip_sd),
                             model_options={"dtype": dtype})
        missing, unexpected = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if not k.endswith(("logit_scale", "clip_l.transformer.text_projection.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"CLIP tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
    return clip
