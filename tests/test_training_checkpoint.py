"""Training checkpoints: random states round-trip, folders appear complete or not at all, pruning keeps the
newest, and reading refuses incomplete ones."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from psa_core.training import checkpoint as ckpt
from psa_core.training.errors import TrainingError


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], \
        float(np.random.randn()), random.gauss(0, 1)


def test_random_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    state = ckpt.capture_rng_state()
    expected = draws()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    assert draws() != expected
    ckpt.restore_rng_state(state)
    assert draws() == expected


def write(root, step, adapter_value=1.0):
    staging = ckpt.staging_dir(root, step)
    staging.mkdir(parents=True)
    ckpt.write_rank_files(staging, 0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    ckpt.write_main_files(staging, {"w": torch.full((2,), adapter_value)}, optimizer.state_dict(),
                          scheduler.state_dict(), {"step": step, "micro_batches": 2 * step})
    return staging


def test_checkpoints_are_renamed_into_place_complete_and_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) is None
    final = ckpt.finalize(write(root, 10))
    assert final.name == "checkpoint-0000010" and not ckpt.staging_dir(root, 10).exists()
    loaded = ckpt.read_checkpoint(final)
    assert loaded.state == {"step": 10, "micro_batches": 20} and torch.equal(loaded.adapter["w"], torch.ones(2))
    assert loaded.optimizer["state"][0]["exp_avg"].shape == (2,) and loaded.scheduler["base_lrs"] == [0.1]
    assert set(loaded.rng(0)) >= {"torch", "numpy_keys", "python"} and loaded.rng(1) is None

    # A run killed while writing step 20 leaves only a staging folder: step 10 stays the latest.
    staging = ckpt.staging_dir(root, 20)
    staging.mkdir()
    ckpt.write_rank_files(staging, 0)
    assert ckpt.latest_checkpoint(root) == final
    with pytest.raises(TrainingError, match="incomplete"):
        ckpt.finalize(staging)
    (root / "checkpoint-0000030").mkdir()  # no state.json: not a checkpoint
    assert ckpt.list_checkpoints(root) == [final]
    with pytest.raises(TrainingError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(root / "checkpoint-0000030")

    for step in (20, 40, 50):
        staging = ckpt.staging_dir(root, step)
        if staging.exists():
            shutil.rmtree(staging)
        ckpt.finalize(write(root, step, float(step)), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint-0000040", "checkpoint-0000050"]
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(root)).adapter["w"][0].item() == 50.0
