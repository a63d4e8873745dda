"""Data-parallel training: two CPU processes (gloo, started with `accelerate launch`) make the same update as one
process with twice the gradient accumulation. Tolerance: float32 summation order only (rtol 1e-5, atol 1e-6 of the
largest update), while one process without the extra accumulation differs by far more."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from psa_core.adapter_file import load_adapter
from psa_core.encoders.structured import STRUCTURED_ENCODER
from trainer.__main__ import main
from trainer.synthetic import (
    ModelSpec,
    build_components,
    save_single_file,
    write_tokenizer,
)
from trainer.synthetic_data import write_pairs, write_profiles

REPO = Path(__file__).resolve().parents[1]


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def flat(path: Path) -> torch.Tensor:
    adapter = load_adapter(path)
    return torch.cat([*(t.flatten() for t in adapter.projection.values()),
                      *(t.flatten() for t in adapter.value_weights)])


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
                "--warmup-steps", "0", "--device", "cpu", "--precision", "no", "--seed", "3"]

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

    one, two, half = flat(tmp_path / "one" / "psa_adapter.safetensors"), \
        flat(tmp_path / "two" / "psa_adapter.safetensors"), flat(tmp_path / "half" / "psa_adapter.safetensors")
    checkpoint = tmp_path / "two" / "checkpoints" / "checkpoint-0000001"
    assert (checkpoint / "rng-0.pt").is_file() and (checkpoint / "rng-1.pt").is_file()
    first_step_one = load_adapter_state(tmp_path / "one" / "checkpoints" / "checkpoint-0000001")
    first_step_two = load_adapter_state(checkpoint)
    scale = (one - half).abs().max().item()
    assert scale > 1e-4, "the extra micro-batch must change the update for this test to mean anything"
    assert torch.allclose(first_step_one, first_step_two, rtol=1e-5, atol=1e-6 * scale)
    assert torch.allclose(one, two, rtol=1e-5, atol=1e-6 * scale)
    assert not torch.allclose(two, half, rtol=1e-5, atol=1e-6 * scale)


def load_adapter_state(checkpoint: Path) -> torch.Tensor:
    state = load_file(str(checkpoint / "adapter.safetensors"))
    return torch.cat([state[k].flatten() for k in sorted(state)])
