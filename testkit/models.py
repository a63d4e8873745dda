"""Random-weight base models built from configs, for tests and benchmarks (nothing is downloaded).

`build_components` makes a UNet, VAE, text encoder(s) and tokenizer(s) of the SD1.5 or SDXL layout at any
width, the UNet's block structure taken from psa_core.families (testkit.layouts); `save_single_file` writes
them in the LDM single-file layout ComfyUI users have (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*` or `conditioner.embedders.{0,1}.*`), using its own diffusers→LDM key
mapping, independent of the loader's LDM→diffusers conversion (diffusers' helpers, trainer.models), so that a
round trip through the loader tests that conversion; `save_diffusers_folder` writes a diffusers folder.
The tokenizer is a byte-level CLIP BPE vocabulary with no merges (every byte a token), written as
vocab.json + merges.txt, the same files as a real CLIP tokenizer folder.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from psa_core.atomic import atomic_write
from psa_core.training.augment import to_tensor
from psa_core.training.noise import DDPMSchedule
from trainer.single_file import (
    SD15_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    VAE_SCALING,
    UNetShape,
    clip_heads,
    diffusers_unet_config,
)

from .layouts import UNetLayout, unet_layout

SIZE_EMBED = 256  # SDXL addition_time_embed_dim at real size


@dataclass(frozen=True)
class ModelSpec:
    """Widths of a base model. `real("sd15")` / `real("sdxl")` are the published sizes."""

    family: str
    model_channels: int = 32
    text_hidden: tuple[int, ...] = (32,)  # one width per text encoder (SDXL: two)
    text_layers: int = 2
    pooled_dim: int = 32  # SDXL: projection width of the second text encoder
    size_embed: int = 8  # SDXL: per-number width of the size conditioning
    vae_channels: tuple[int, ...] = (32, 32, 64)  # 2 downsamples: 32 px images → 8×8 latents
    vocab_size: int | None = None  # None: the byte-level test vocabulary

    @staticmethod
    def tiny(family: str) -> ModelSpec:
        return ModelSpec(family, text_hidden=(32,) if family == "sd15" else (32, 32))

    @staticmethod
    def real(family: str) -> ModelSpec:
        if family == "sd15":
            return ModelSpec("sd15", 320, (768,), 12, 768, SIZE_EMBED, (128, 256, 512, 512), 49408)
        return ModelSpec("sdxl", 320, (768, 1280), 12, 1280, SIZE_EMBED, (128, 256, 512, 512), 49408)

    @property
    def context_dim(self) -> int:
        return sum(self.text_hidden)

    @property
    def vae_layers_per_block(self) -> int:
        return 1 if self.vae_channels[0] < 128 else 2

    def unet_layout(self) -> UNetLayout:
        """The family's UNet at these widths (SDXL: label_emb takes the pooled text and 6 size embeddings)."""
        adm = self.pooled_dim + 6 * self.size_embed if self.family == "sdxl" else None
        return unet_layout(self.family, self.model_channels, self.context_dim, adm_in_channels=adm)

    def unet_config(self) -> dict:
        layout = self.unet_layout()
        shape = UNetShape(layout.in_channels, layout.in_channels, layout.model_channels, layout.channel_mult,
                          layout.transformer_depth, layout.middle_depth, layout.context_dim,
                          layout.linear_projection, layout.adm_in_channels)
        return diffusers_unet_config(self.family, shape, self.pooled_dim if self.family == "sdxl" else None)


# ---- the byte-level tokenizer ----

def _byte_characters() -> list[str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tokenizer(folder: str | Path) -> Path:
    """vocab.json + merges.txt of a byte-level CLIP tokenizer: 512 byte tokens, then start/end of text."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = _byte_characters()
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tokenizer_vocab_size() -> int:
    """Tokens of write_tokenizer's vocabulary: 256 bytes, the same as word ends, start and end of text."""
    return 2 * 256 + 2


# ---- building random models ----

def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Replace every weight with seeded N(0, scale²) values (norm weights N(1, scale²)), so nothing is zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            is_norm_weight = parameter.ndim == 1 and name.endswith("weight")
            parameter.copy_(noise + 1.0 if is_norm_weight else noise)


def build_unet(spec: ModelSpec, seed: int = 0, randomise: bool = True) -> UNet2DConditionModel:
    """The diffusers UNet of `spec`, its weights seeded N(0, 0.05²) unless `randomise` is off."""
    unet = UNet2DConditionModel(**spec.unet_config())
    if randomise:
        _randomise(unet, seed)
    return unet


def build_vae(spec: ModelSpec, seed: int = 1, calibrate: bool = True) -> AutoencoderKL:
    """A VAE with PyTorch's default init (seeded), calibrated like a real one when `calibrate`: posterior std
    ≈ 0.0025 (deterministic latents) and scaled latents of about unit spread, so images stay visible in them."""
    levels = len(spec.vae_channels)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=spec.vae_channels,
                        layers_per_block=spec.vae_layers_per_block, latent_channels=4,
                        norm_num_groups=32, scaling_factor=VAE_SCALING[spec.family])
    if calibrate:
        _calibrate_vae(vae, seed)
    return vae


def _calibrate_vae(vae: AutoencoderKL, seed: int, resolution: int = 32) -> None:
    channels = vae.config.latent_channels
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((8, 3, resolution, resolution), generator=generator) * 2 - 1
    with torch.no_grad():
        weight, bias = vae.quant_conv.weight, vae.quant_conv.bias
        weight[channels:].zero_()
        bias[channels:].fill_(-12.0)  # logvar: std = exp(-6)
        spread = vae.encode(images).latent_dist.mean.std().item()
        factor = 1.0 / (spread * vae.config.scaling_factor)
        weight[:channels] *= factor
        bias[:channels] *= factor


def text_config(spec: ModelSpec, index: int) -> CLIPTextConfig:
    """The config of text encoder `index` (SDXL's second: OpenCLIP-style gelu with a projection)."""
    hidden = spec.text_hidden[index]
    vocab = spec.vocab_size or tokenizer_vocab_size()
    second = spec.family == "sdxl" and index == 1
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                          num_hidden_layers=spec.text_layers, num_attention_heads=clip_heads(hidden),
                          max_position_embeddings=77, hidden_act="gelu" if second else "quick_gelu",
                          projection_dim=spec.pooled_dim if second else hidden, eos_token_id=vocab - 1,
                          bos_token_id=vocab - 2, pad_token_id=1, layer_norm_eps=1e-5)


def build_text_encoders(spec: ModelSpec, seed: int = 2, randomise: bool = True) -> list[torch.nn.Module]:
    """The text encoder(s) of `spec`, in eval mode (SDXL's second with its projection)."""
    encoders = []
    for index in range(len(spec.text_hidden)):
        cls = CLIPTextModelWithProjection if spec.family == "sdxl" and index == 1 else CLIPTextModel
        encoder = cls(text_config(spec, index))
        if randomise:
            _randomise(encoder, seed + index, 0.05)
        encoders.append(encoder.eval())
    return encoders


# ---- diffusers → LDM key names (independent of the loader's conversion) ----

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _unet_prefix_map(config: dict) -> dict[str, str]:
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    for i in range(levels):
        for j in range(per):
            block = 1 + i * (per + 1) + j
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{block}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{block}.1"
        if i < levels - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
    for i in range(levels):
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(per + 1):
            block = i * (per + 1) + j
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{block}.0"
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{block}.1"
        if i < levels - 1:
            names[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * (per + 1) + per}.{2 if has_attention else 1}"
    return names


def _rename(key: str, prefixes: dict[str, str], resnet_parts: dict[str, str]) -> str:
    """Replace the longest matching diffusers prefix; inside res blocks also rename the layer."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix + "."):
            rest = key[len(prefix) + 1:]
            if "resnets" in prefix:
                head, _, tail = rest.partition(".")
                rest = f"{resnet_parts.get(head, head)}.{tail}"
            return f"{prefixes[prefix]}.{rest}"
    raise KeyError(f"no LDM name for {key}")


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict under its LDM names (`model.diffusion_model.*`)."""
    prefixes = _unet_prefix_map(config)
    return {UNET_PREFIX + _rename(k, prefixes, _RESNET): v for k, v in state.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict under its LDM names (`first_stage_model.*`; attention as 1x1 convolutions)."""
    prefixes = {"encoder.mid_block.resnets.0": "encoder.mid.block_1", "encoder.mid_block.resnets.1":
                "encoder.mid.block_2", "decoder.mid_block.resnets.0": "decoder.mid.block_1",
                "decoder.mid_block.resnets.1": "decoder.mid.block_2"}
    for i in range(levels):
        for j in range(3):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - i}.upsample.conv"
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        renamed = key.replace("conv_norm_out", "norm_out")
        if ".mid_block.attentions.0." in key:
            coder, rest = key.split(".mid_block.attentions.0.")
            part, _, leaf = rest.rpartition(".")
            renamed = f"{coder}.mid.attn_1.{attention[part]}.{leaf}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif any(key.startswith(p + ".") for p in prefixes):
            renamed = _rename(key, prefixes, {"conv_shortcut": "nin_shortcut"})
        out[VAE_PREFIX + renamed] = value
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = SDXL_TEXT2_PREFIX) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder (Hugging Face names) in the OpenCLIP layout its checkpoints hold."""
    out: dict[str, torch.Tensor] = {}
    layer_parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("text_model.encoder.layers."):
            number, rest = key[len("text_model.encoder.layers."):].split(".", 1)
            part, leaf = rest.rsplit(".", 1)
            base = f"{prefix}transformer.resblocks.{number}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue
            out[base + f"{layer_parts[part]}.{leaf}"] = value
        elif key == "text_model.embeddings.position_ids":
            continue
        else:
            raise KeyError(f"no OpenCLIP name for {key}")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")}
    for number in layers:
        base = f"text_model.encoder.layers.{number}.self_attn."
        for leaf in ("weight", "bias"):
            out[f"{prefix}transformer.resblocks.{number}.attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{base}{p}_proj.{leaf}"] for p in ("q", "k", "v")])
    return out


@dataclass
class Components:
    """The diffusers models of one ModelSpec."""

    spec: ModelSpec
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]


def build_components(spec: ModelSpec, seed: int = 0) -> Components:
    """UNet (seed), VAE (seed + 1) and text encoders (seed + 2, + 3) of `spec`."""
    return Components(spec, build_unet(spec, seed), build_vae(spec, seed + 1), build_text_encoders(spec, seed + 2))


def ldm_state_dict(components: Components) -> dict[str, torch.Tensor]:
    """Every tensor of the components under its single-file (LDM) name."""
    spec = components.spec
    state = unet_to_ldm(components.unet.state_dict(), dict(components.unet.config))
    state.update(vae_to_ldm(components.vae.state_dict(), len(spec.vae_channels)))
    text = [{k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
             for k, v in e.state_dict().items() if not k.endswith("embeddings.position_ids")}
            for e in components.text_encoders]
    if spec.family == "sd15":
        state.update({SD15_TEXT_PREFIX + k: v for k, v in text[0].items()})
    else:
        state.update({SDXL_TEXT1_PREFIX + k: v for k, v in text[0].items()})
        state.update(open_clip_to_ldm(text[1]))
    return {k: v.contiguous() for k, v in state.items()}


def save_single_file(components: Components, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the components as one single-file .safetensors checkpoint (floating tensors in `dtype`)."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ldm_state_dict(components).items()}
    return atomic_write(path, lambda temporary: save_file(state, str(temporary)))


def save_diffusers_folder(components: Components, folder: str | Path) -> Path:
    """A diffusers-layout folder (unet/, vae/, text_encoder[_2]/, tokenizer[_2]/, scheduler/)."""
    folder = Path(folder)
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    names = ("text_encoder", "text_encoder_2")
    for name, encoder in zip(names, components.text_encoders):
        encoder.save_pretrained(folder / name)
        tokenizer_folder = write_tokenizer(folder / name.replace("text_encoder", "tokenizer"))
        if name == "text_encoder_2":
            CLIPTokenizer.from_pretrained(tokenizer_folder, pad_token="!").save_pretrained(tokenizer_folder)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "num_train_timesteps": 1000, "prediction_type": "epsilon"}))
    return folder


def encode_for_pretraining(components: Components, images: list, captions: list[str]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled VAE latent means of RGB images (32-px squares) and SD1.5 text conditioning of captions."""
    if components.spec.family != "sd15":
        raise ValueError("denoiser pretraining is implemented for the SD1.5 layout")
    tokenizer_folder = write_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    with torch.no_grad():
        pixels = torch.stack([to_tensor(image) for image in images])
        latents = components.vae.encode(pixels).latent_dist.mean * components.vae.config.scaling_factor
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        text = components.text_encoders[0](ids)[0]
    return latents, text


def pretrain_denoiser(unet: UNet2DConditionModel, latents: torch.Tensor, text: torch.Tensor, steps: int = 200,
                      batch: int = 16, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Teach a random UNet to denoise `latents` (ε-prediction, DDPM schedule), like a real base model has
    learned its images. A random UNet is no denoiser: its errors on two images differ chaotically with the
    noise, and DPO finds nothing consistent to learn. Returns the loss per step."""
    schedule = DDPMSchedule.scaled_linear()
    generator = torch.Generator().manual_seed(seed)
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        clean = latents[rows]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
        context = text[torch.randint(0, text.shape[0], (batch,), generator=generator)]
        prediction = unet(schedule.add_noise(clean, noise, timesteps), timesteps, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unet.requires_grad_(False).eval()
    return losses
