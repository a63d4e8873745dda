"""The cache's encoders for diffusers components: pixels → latent distribution, captions → conditioning.

SD1.5: the text encoder's last hidden state. SDXL: the penultimate hidden states of both encoders,
concatenated, plus the second encoder's projected pooled output (`text_embeds`), as diffusers and the
reference compute them (docs/training.md §8). Latents are the VAE posterior's mean and std times the
VAE scaling factor.
"""
from __future__ import annotations

import torch

from psa_core.training.cache import ImageEncoder, TextEncoder

from .models import Encoders

TEXT_DESCRIPTION = {"sd15": "clip-l last hidden state", "sdxl": "clip-l+bigG penultimate hidden, bigG pooled"}


def image_encoder(encoders: Encoders, device: torch.device) -> ImageEncoder:
    vae = encoders.vae.to(device)
    scale = vae.config.scaling_factor

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        return posterior.mean.float() * scale, posterior.std.float() * scale

    return encode


def text_encoder(encoders: Encoders, family: str, device: torch.device) -> TextEncoder:
    models = [m.to(device) for m in encoders.text_encoders]

    def tokens(tokenizer, model, captions: list[str]) -> torch.Tensor:
        length = model.config.max_position_embeddings
        return tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                         return_tensors="pt").input_ids.to(device)

    @torch.no_grad()
    def encode(captions: list[str]) -> dict[str, torch.Tensor]:
        if family == "sd15":
            model, tokenizer = models[0], encoders.tokenizers[0]
            return {"encoder_hidden_states": model(tokens(tokenizer, model, captions))[0].float()}
        hidden, pooled = [], None
        for model, tokenizer in zip(models, encoders.tokenizers):
            output = model(tokens(tokenizer, model, captions), output_hidden_states=True)
            hidden.append(output.hidden_states[-2].float())
            pooled = output[0].float()
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    return encode
