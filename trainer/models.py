"""Loading the frozen base model: a diffusers folder or a single-file .safetensors checkpoint.

The UNet is loaded for training; the VAE and text encoders only when the latent/text cache must be built,
and released afterwards. Single files carry no tokenizer: pass `--tokenizer` (a folder with vocab.json and
merges.txt, e.g. ComfyUI's `comfy/sd1_tokenizer`), or let the trainer find ComfyUI's next to the pack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from psa_core.families import Family, get_family
from psa_core.training.errors import TrainingError
from psa_core.training.noise import DDPMSchedule

from .single_file import (
    SD15_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointFile,
    clip_text_config,
    detect_family,
    diffusers_unet_config,
    diffusers_vae_config,
    read_unet_shape,
)

COMFY_TOKENIZER = Path("comfy") / "sd1_tokenizer"


@dataclass
class Encoders:
    """What the cache needs: the VAE and the text encoders with their tokenizers."""

    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]


@dataclass
class BaseModel:
    source: Path
    family_name: str
    unet: UNet2DConditionModel
    schedule: DDPMSchedule
    _encoders: object = field(repr=False, default=None)  # callable that loads Encoders on demand

    @property
    def family(self) -> Family:
        config = self.unet.config
        return get_family(self.family_name, config.block_out_channels[0], config.cross_attention_dim)

    def load_encoders(self) -> Encoders:
        return self._encoders()


def find_comfy_tokenizer(*starts: Path) -> Path | None:
    """ComfyUI's CLIP tokenizer folder, looking upwards from the given paths (e.g. this pack in custom_nodes)."""
    for start in starts:
        for folder in [start, *start.resolve().parents]:
            candidate = folder / COMFY_TOKENIZER
            if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
                return candidate
    return None


def _tokenizers(family: str, folder: Path) -> list[CLIPTokenizer]:
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) \
            and not (folder / "tokenizer.json").is_file():
        raise TrainingError(f"tokenizer folder {folder} has no vocab.json + merges.txt (or tokenizer.json)")
    first = CLIPTokenizer.from_pretrained(folder)
    if family == "sd15":
        return [first]
    return [first, CLIPTokenizer.from_pretrained(folder, pad_token="!")]  # OpenCLIP pads with "!" (id 0)


def _load_single_file(path: Path, family: str, tokenizer: Path | None, dtype: torch.dtype) -> BaseModel:
    checkpoint = CheckpointFile(path)
    detected = detect_family(checkpoint)
    if family not in ("auto", detected):
        raise TrainingError(f"{path.name} is an {detected} checkpoint but --family {family} was given")
    family = detected
    shapes = checkpoint.shapes
    pooled = shapes.get(SDXL_TEXT2_PREFIX + "text_projection", (None, None))[1]
    unet_config = diffusers_unet_config(family, read_unet_shape(shapes), pooled)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    unet_state = convert_ldm_unet_checkpoint(checkpoint.load(checkpoint.keys_with(UNET_PREFIX), dtype), unet_config)
    _load_strict(unet, unet_state, "UNet", path)

    def encoders() -> Encoders:
        tokenizer_folder = tokenizer or find_comfy_tokenizer(path.parent, Path(__file__).parent)
        if tokenizer_folder is None:
            raise TrainingError(f"{path.name} has no tokenizer; pass --tokenizer DIR (a folder with vocab.json and "
                                "merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer) or train from a diffusers folder")
        tokenizers = _tokenizers(family, Path(tokenizer_folder))
        vae_config = diffusers_vae_config(shapes, family)
        vae = AutoencoderKL(**vae_config)
        vae_state = checkpoint.load(checkpoint.keys_with(VAE_PREFIX), torch.float32)
        _load_strict(vae, convert_ldm_vae_checkpoint(vae_state, vae_config), "VAE", path)
        specs = [(SD15_TEXT_PREFIX, False)] if family == "sd15" else [(SDXL_TEXT1_PREFIX, False),
                                                                       (SDXL_TEXT2_PREFIX, True)]
        text_encoders = []
        for (prefix, open_clip), tok in zip(specs, tokenizers):
            config = CLIPTextConfig(**clip_text_config(shapes, prefix, open_clip, tok.eos_token_id, tok.bos_token_id))
            tensors = checkpoint.load(checkpoint.keys_with(prefix), torch.float32)
            if open_clip:
                model = CLIPTextModelWithProjection(config)
                state = convert_open_clip_checkpoint(model, tensors, prefix=prefix)
            else:
                model = CLIPTextModel(config)
                state = convert_ldm_clip_checkpoint(tensors)
            state = fit_text_keys(state, model)
            _load_strict(model, state, f"text encoder ({prefix})", path)
            text_encoders.append(model.eval())
        return Encoders(vae.eval(), text_encoders, tokenizers)

    return BaseModel(path, family, unet, DDPMSchedule.scaled_linear(), encoders)


def fit_text_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoints name CLIP text weights `text_model.*`; transformers 5's CLIPTextModel has no such level."""
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    if any(k.startswith("text_model.") for k in model.state_dict()):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _load_strict(module: torch.nn.Module, state: dict, what: str, path: Path) -> None:
    expected = dict(module.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TrainingError(f"{path.name}: the {what} does not match its derived config: missing "
                            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise TrainingError(f"{path.name}: {what} tensor {key} has shape {tuple(value.shape)}, expected "
                                f"{tuple(expected[key].shape)}")
    # Fresh, allocator-aligned copies: CPU kernels may sum in another order for tensors at odd addresses
    # (as safetensors' buffers can be), which would make a single file train differently from its folder.
    module.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)


def _load_folder(path: Path, family: str, dtype: torch.dtype) -> BaseModel:
    if not (path / "unet").is_dir():
        raise TrainingError(f"{path} is not a diffusers model folder (no unet/); give a diffusers folder or a "
                            ".safetensors single-file checkpoint")
    detected = "sdxl" if (path / "text_encoder_2").is_dir() else "sd15"
    if family not in ("auto", detected):
        raise TrainingError(f"{path.name} is an {detected} model but --family {family} was given")
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    schedule = DDPMSchedule.from_config(json.loads(scheduler_file.read_text())) if scheduler_file.is_file() \
        else DDPMSchedule.scaled_linear()

    def encoders() -> Encoders:
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")]
        text_encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder")]
        if detected == "sdxl":
            tokenizers.append(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2"))
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"))
        return Encoders(vae.eval(), [e.eval() for e in text_encoders], tokenizers)

    return BaseModel(path, detected, unet, schedule, encoders)


def load_base_model(path: str | Path, family: str = "auto", tokenizer: str | Path | None = None,
                    dtype: torch.dtype = torch.float32) -> BaseModel:
    """The frozen base model; the UNet is loaded now in `dtype`, the VAE and text encoders on demand in fp32
    (they run once, for the cache, so precision beats speed there)."""
    path = Path(path)
    if family not in ("auto", "sd15", "sdxl"):
        raise TrainingError(f"unknown family {family!r}; allowed: auto, sd15, sdxl")
    if path.is_dir():
        model = _load_folder(path, family, dtype)
    elif path.is_file():
        model = _load_single_file(path, family, Path(tokenizer) if tokenizer else None, dtype)
    else:
        raise TrainingError(f"base model not found: {path}; give a diffusers folder or a .safetensors checkpoint")
    model.unet.requires_grad_(False).eval()
    return model
