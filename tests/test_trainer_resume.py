"""A run killed with SIGKILL after a checkpoint and resumed with --resume latest ends with exactly the adapter
of an uninterrupted run (same seed, CPU; tolerance: none, the tensors are bit-identical)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from psa_core.adapter_file import load_adapter
from psa_core.encoders.structured import STRUCTURED_ENCODER
from testkit.models import (
    ModelSpec,
    build_components,
    save_single_file,
    write_tokenizer,
)
from testkit.preference_data import write_pairs, write_profiles
from trainer.__main__ import EXIT_BAD_INPUT, main

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 3


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def trainer_command(base, tokenizer, pairs, profiles, output, cache, *extra):
    return [sys.executable, "-m", "trainer", "train", "--base-model", str(base), "--tokenizer", str(tokenizer),
            "--data", str(pairs), "--profiles", str(profiles), "--encoder", STRUCTURED_ENCODER,
            "--output", str(output), "--cache-dir", str(cache), "--resolution", "32", "--batch", "2",
            "--accumulation", "2", "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--keep-checkpoints", "0",
            "--lr", "1e-3", "--warmup-steps", "6", "--device", "cpu", "--precision", "fp32", "--seed", "5", *extra]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_killed_run_resumes_to_the_same_adapter(tmp_path):
    base = save_single_file(build_components(ModelSpec.tiny("sd15"), seed=21), tmp_path / "base.safetensors")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    pairs, profiles = write_pairs(tmp_path / "data", 8, size=32), write_profiles(tmp_path / "data")
    args = (base, tokenizer, pairs, profiles)

    straight = tmp_path / "straight"  # in this process (one thread, as the subprocesses): saves a start-up
    assert main(trainer_command(*args, straight, tmp_path / "cache")[3:]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(trainer_command(*args, killed, tmp_path / "cache"), cwd=REPO, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = killed / "checkpoints" / f"checkpoint-{EVERY:07d}" / "state.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run must be killed, not finish on its own"
    assert not (killed / "psa_adapter.safetensors").exists()
    completed = sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*"))
    logged = len((killed / "train_log.jsonl").read_text().splitlines())
    assert completed and EVERY <= logged < STEPS, f"killed after {logged} of {STEPS} steps"

    resumed = subprocess.run(trainer_command(*args, killed, tmp_path / "cache", "--resume", "latest"), cwd=REPO,
                             env=environment(), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {killed / 'checkpoints' / completed[-1]}" in resumed.stderr

    a, b = load_adapter(straight / "psa_adapter.safetensors"), load_adapter(killed / "psa_adapter.safetensors")
    for key in a.projection:
        assert torch.equal(a.projection[key], b.projection[key]), key
    for first_weight, second_weight in zip(a.value_weights, b.value_weights):
        assert torch.equal(first_weight, second_weight)
    assert any(w.abs().max() > 0 for w in a.value_weights)
    rows = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]


def test_resume_refuses_a_run_with_other_settings(tmp_path, capsys):
    base = save_single_file(build_components(ModelSpec.tiny("sd15"), seed=21), tmp_path / "base.safetensors")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    pairs, profiles = write_pairs(tmp_path / "data", 4, size=32), write_profiles(tmp_path / "data")
    command = trainer_command(base, tokenizer, pairs, profiles, tmp_path / "run", tmp_path / "cache")[3:]
    command[command.index("--steps") + 1] = "6"
    assert main(command) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / f"checkpoint-{EVERY:07d}"
    assert (checkpoint / "state.json").is_file()
    command[command.index("--seed") + 1] = "6"
    capsys.readouterr()
    assert main([*command, "--resume", str(checkpoint), "--overwrite"]) == EXIT_BAD_INPUT
    assert f"cannot resume from {checkpoint.name}: seed changed since the checkpoint" in capsys.readouterr().err
