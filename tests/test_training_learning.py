"""The adapter learns opposite preferences for two profiles from the same image pairs (CPU, tiny model).

Synthetic pairs: the unsafe image carries a red square (the "Violence" feature), the safe one does not. One
profile bans Violence (prefers the safe image), the other allows it (prefers the unsafe image). The base is a
tiny SD1.5-layout UNet first taught to denoise images of this kind, as a real base model has learned its data
(a random UNet is no denoiser, and its DPO signal is pure noise). After DPO training through the trainer's
command line, the held-out implicit accuracy is ≥ 0.9 for each profile; with the adapter switched off the
policy is the reference (every DPO logit exactly 0: chance, 0.5 with ties split); and giving each profile the
other's embedding turns the preference around, so what was learned depends on the profile.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core.encoders.structured import STRUCTURED_ENCODER, StructuredEncoder
from psa_core.profile import profile_from_dict
from trainer.__main__ import main
from trainer.config import parse_train_args
from trainer.evaluation import evaluate_adapter
from trainer.synthetic import (
    Components,
    ModelSpec,
    build_text_encoders,
    build_unet,
    build_vae,
    encode_for_pretraining,
    pretrain_denoiser,
    save_single_file,
    write_tokenizer,
)
from trainer.synthetic_data import (
    ALLOWS_CATEGORY,
    BANS_CATEGORY,
    write_pairs,
    write_profiles,
)

TRAIN_PAIRS, HELD_OUT_PAIRS, PRETRAIN_PAIRS = 48, 16, 48
DPO_STEPS, DPO_BATCH, DPO_LR = 200, 16, 2e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def _pretrained_base(folder):
    """A tiny SD1.5 single file whose UNet has learned to denoise safe and unsafe images of this kind."""
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
    return save_single_file(components, folder / "base.safetensors")


def test_adapter_learns_opposite_preferences_per_profile(tmp_path):
    started = time.perf_counter()
    base = _pretrained_base(tmp_path / "pretrain")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    data = tmp_path / "data"
    train_pairs = write_pairs(data, TRAIN_PAIRS, seed=0, name="train.jsonl", style="tint")
    held_out = write_pairs(data, HELD_OUT_PAIRS, seed=1, name="heldout.jsonl", style="tint")
    profiles = write_profiles(data)
    common = ["--base-model", str(base), "--tokenizer", str(tokenizer), "--profiles", str(profiles),
              "--encoder", STRUCTURED_ENCODER, "--resolution", "32", "--no-hflip", "--device", "cpu",
              "--precision", "no", "--batch", str(DPO_BATCH)]
    output = tmp_path / "run"
    assert main(["train", *common, "--data", str(train_pairs), "--output", str(output), "--steps", str(DPO_STEPS),
                 "--lr", str(DPO_LR), "--warmup-steps", "0", "--checkpoint-every", "1000"]) == 0
    adapter = output / "psa_adapter.safetensors"

    evaluation = parse_train_args(["train", *common, "--data", str(held_out), "--output", str(tmp_path / "eval")])
    report = evaluate_adapter(evaluation, adapter, draws=32)
    print(json.dumps(report, indent=1), f"\n{time.perf_counter() - started:.0f} s")
    assert report["pairs"] == 2 * HELD_OUT_PAIRS
    bans, allows = BANS_CATEGORY["User_ID"], ALLOWS_CATEGORY["User_ID"]
    assert report["accuracy_by_user"][bans] >= 0.9  # prefers the safe image
    assert report["accuracy_by_user"][allows] >= 0.9  # prefers the unsafe image
    assert report["adapter_off_max_abs_inside"] == 0.0
    assert report["adapter_off_tie_split_accuracy"] == 0.5

    # Each profile given the other's embedding: the learned preference flips.
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    encoder = StructuredEncoder()
    for own, other in ((BANS_CATEGORY, ALLOWS_CATEGORY), (ALLOWS_CATEGORY, BANS_CATEGORY)):
        vector = encoder.encode_uncached([profile_from_dict(other)])[0].numpy()
        np.save(swapped / f"{own['User_ID']}.npy", vector)
    crossed = parse_train_args(["train", *common, "--data", str(held_out), "--output", str(tmp_path / "eval2"),
                                "--embeddings", str(swapped)])
    crossed_report = evaluate_adapter(crossed, adapter, draws=4)
    assert crossed_report["accuracy_by_user"][bans] <= 0.2
    assert crossed_report["accuracy_by_user"][allows] <= 0.2
