"""Data-parallel training: two CPU processes (gloo, started with `accelerate launch`) make the same update as one
process with twice the gradient accumulation, while one process without the extra accumulation does not.

The bound (UPDATE_BOUND, on the relative Frobenius difference of the updates). In exact arithmetic the two runs
are equal. In float32 they run the same operations on the same micro-batch shapes (one thread each), and where
they differ, averaging two micro-batch gradients (g_A/2 + g_B/2 against the all-reduced (g_A + g_B)/2), halving
is exact in binary floating point, so on this machine the updates come out bitwise equal (measured: 0.0). What
another machine may add is a BLAS that chooses kernels (summation orders) by buffer alignment, so that the two
processes' forward and backward passes round differently: float32 noise of one pass of the same network. That
noise is at most what the node-vs-standalone training test measures between two different implementations of
the whole pass (ComfyUI's against diffusers', 6 Adam steps: 3.5e-5 of the update), so 1e-3 leaves 30x; the
missing micro-batch moves the update by ~1.2 (checked below against 100x the bound).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from psa_core.adapter import PSAAdapter
from psa_core.adapter_file import load_adapter
from psa_core.encoders.structured import STRUCTURED_ENCODER
from psa_core.training.loop import new_adapter
from testkit.models import (
    ModelSpec,
    build_components,
    save_single_file,
    write_tokenizer,
)
from testkit.preference_data import write_pairs, write_profiles
from trainer.__main__ import main

REPO = Path(__file__).resolve().parents[1]


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


UPDATE_BOUND = 1e-3  # see the module's docstring
SEED = 3


def vector(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].detach().flatten() for k in sorted(state)])


def final_values(output: Path) -> torch.Tensor:
    return vector(PSAAdapter.from_loaded(load_adapter(output / "psa_adapter.safetensors")).state_dict())


def checkpoint_values(checkpoint: Path) -> torch.Tensor:
    return vector(load_file(str(checkpoint / "adapter.safetensors")))


def relative_difference(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    """‖(a − start) − (b − start)‖ / ‖b − start‖ in float64."""
    a, b, start = a.double(), b.double(), start.double()
    return ((a - b).norm() / (b - start).norm()).item()


def test_two_processes_equal_one_process_with_twice_the_accumulation(tmp_path):
    base = save_single_file(build_components(ModelSpec.tiny("sd15"), seed=31), tmp_path / "base.safetensors")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    pairs, profiles = write_pairs(tmp_path / "data", 8, size=32), write_profiles(tmp_path / "data")

    def args(output: Path, accumulation: int) -> list[str]:
        return ["train", "--base-model", str(base), "--tokenizer", str(tokenizer), "--data", str(pairs),
                "--profiles", str(profiles), "--encoder", STRUCTURED_ENCODER, "--output", str(output),
                "--cache-dir", str(tmp_path / "cache"), "--resolution", "32", "--batch", "2",
                "--accumulation", str(accumulation), "--steps", "2", "--checkpoint-every", "1",
                "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "0", "--max-grad-norm", "0",
                "--warmup-steps", "0", "--device", "cpu", "--precision", "fp32", "--seed", str(SEED)]

    assert main(args(tmp_path / "one", 2)) == 0
    assert main(args(tmp_path / "half", 1)) == 0
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    launched = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                               "-m", "trainer", *args(tmp_path / "two", 1)],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=600, check=False)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "(2 x 1 accumulation x 2 processes)" in launched.stderr

    one, two, half = (final_values(tmp_path / name) for name in ("one", "two", "half"))
    checkpoint = tmp_path / "two" / "checkpoints" / "checkpoint-0000001"
    assert (checkpoint / "rng-0.pt").is_file() and (checkpoint / "rng-1.pt").is_file()
    trained = load_adapter(tmp_path / "one" / "psa_adapter.safetensors")
    start = vector(new_adapter(trained.family, trained.embedding_dim, SEED).state_dict())  # the trainer's start
    first = relative_difference(checkpoint_values(checkpoint),
                                checkpoint_values(tmp_path / "one" / "checkpoints" / "checkpoint-0000001"), start)
    together, missing = relative_difference(two, one, start), relative_difference(half, one, start)
    print(f"two processes vs one: {first:.2e} after step 1, {together:.2e} after step 2; "
          f"without the extra micro-batch: {missing:.2e}")
    assert first <= UPDATE_BOUND and together <= UPDATE_BOUND
    assert missing > 100 * UPDATE_BOUND, "the extra micro-batch must change the update for this test to mean anything"
