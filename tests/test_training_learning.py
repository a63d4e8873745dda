"""The adapter learns opposite preferences for two profiles from the same image pairs (CPU, tiny model).

The setting is learning_setup.py's. After DPO training through the trainer's command line, the held-out implicit
accuracy is ≥ 0.9 for each profile; with the adapter switched off the policy is the reference (every DPO logit
exactly 0: chance, 0.5 with ties split); and giving each profile the other's embedding turns the preference
around, so what was learned depends on the profile.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from learning_setup import (
    DPO_BATCH,
    DPO_LR,
    DPO_STEPS,
    HELD_OUT_PAIRS,
    RESOLUTION,
    pretrained_components,
    write_learning_data,
)
from psa_core.encoders.structured import STRUCTURED_ENCODER, StructuredEncoder
from psa_core.profile import profile_from_dict
from testkit.models import save_single_file, write_tokenizer
from testkit.preference_data import ALLOWS_CATEGORY, BANS_CATEGORY
from trainer.__main__ import main
from trainer.config import parse_train_args
from trainer.evaluation import evaluate_adapter

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_adapter_learns_opposite_preferences_per_profile(tmp_path):
    started = time.perf_counter()
    base = save_single_file(pretrained_components(tmp_path / "pretrain"), tmp_path / "base.safetensors")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    train_pairs, held_out, profiles = write_learning_data(tmp_path / "data")
    common = ["--base-model", str(base), "--tokenizer", str(tokenizer), "--profiles", str(profiles),
              "--encoder", STRUCTURED_ENCODER, "--resolution", str(RESOLUTION), "--no-hflip", "--device", "cpu",
              "--precision", "fp32", "--batch", str(DPO_BATCH)]
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
