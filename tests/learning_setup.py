"""The learning test's setting, shared by the standalone trainer's test and the training nodes' test.

Synthetic pairs: the unsafe image is tinted with the "Violence" colour, the safe one is not. One profile bans
Violence (prefers the safe image), the other allows it (prefers the unsafe image). The base is a tiny
SD1.5-layout model whose UNet was first taught to denoise images of this kind, as a real base model has learned
its data (a random UNet is no denoiser, and its DPO signal is pure noise).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from testkit.models import (
    Components,
    ModelSpec,
    build_text_encoders,
    build_unet,
    build_vae,
    encode_for_pretraining,
    pretrain_denoiser,
)
from testkit.preference_data import write_pairs, write_profiles

TRAIN_PAIRS, HELD_OUT_PAIRS, PRETRAIN_PAIRS = 48, 16, 48
DPO_STEPS, DPO_BATCH, DPO_LR = 200, 16, 2e-3
RESOLUTION = 32


def pretrained_components(folder: Path) -> Components:
    """Tiny SD1.5 components whose UNet has learned to denoise safe and unsafe images of this kind."""
    pairs_file = write_pairs(folder, PRETRAIN_PAIRS, seed=7, name="pretrain.jsonl", style="tint")
    lines = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    images = [Image.open(folder / line[key]).convert("RGB") for line in lines for key in ("safe", "unsafe")]
    captions = [line["caption"] for line in lines for _ in range(2)]
    spec = ModelSpec.tiny("sd15")
    torch.manual_seed(0)
    components = Components(spec, build_unet(spec, randomise=False), build_vae(spec), build_text_encoders(spec))
    latents, text = encode_for_pretraining(components, images, captions)
    losses = pretrain_denoiser(components.unet, latents, text, steps=150)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5]), "the tiny UNet did not learn to denoise"
    return components


def write_learning_data(folder: Path) -> tuple[Path, Path, Path]:
    """(train pairs, held-out pairs, profiles) files."""
    train = write_pairs(folder, TRAIN_PAIRS, seed=0, name="train.jsonl", style="tint")
    held_out = write_pairs(folder, HELD_OUT_PAIRS, seed=1, name="heldout.jsonl", style="tint")
    return train, held_out, write_profiles(folder)
