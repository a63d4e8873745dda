"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a folder `checkpoint-<step>` holding
- `adapter.safetensors`: the trainable weights (fp32);
- `optimizer.pt`, `scheduler.pt`: their state dicts (tensors and plain values only; read with weights_only);
- `rng-<rank>.pt`: each process's torch/CUDA/NumPy/Python random states;
- `state.json`: step, data position (micro-batches consumed), seed, and the run's settings. Written last.

It is assembled in a hidden staging folder and renamed into place in one step, so a run killed at any moment
leaves either the complete checkpoint or none; an older complete checkpoint is never touched.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import TrainingError

PREFIX = "checkpoint-"
STATE_FILE = "state.json"
_NAME = re.compile(rf"{PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def staging_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f".{checkpoint_name(step)}.partial"


def capture_rng_state() -> dict[str, torch.Tensor]:
    numpy_state = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([numpy_state[2], numpy_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([numpy_state[4]], dtype=torch.float64),
        "python": torch.tensor(python_state, dtype=torch.int64),
        "python_meta": torch.tensor([python_version, python_gauss is not None], dtype=torch.int64),
        "python_gauss": torch.tensor([python_gauss or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{index}"] = cuda_state
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]),
                         float(state["numpy_gauss"][0])))
    version, has_gauss = state["python_meta"].tolist()
    random.setstate((int(version), tuple(int(v) for v in state["python"].tolist()),
                     float(state["python_gauss"][0]) if has_gauss else None))
    cuda = [state[k] for k in sorted((k for k in state if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])


def write_rank_files(staging: Path, rank: int) -> None:
    """Every process writes its own random state into the staging folder."""
    torch.save(capture_rng_state(), staging / f"rng-{rank}.pt")


def write_main_files(staging: Path, adapter: dict[str, torch.Tensor], optimizer: dict, scheduler: dict,
                     state: dict) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in adapter.items()},
              str(staging / "adapter.safetensors"))
    torch.save(optimizer, staging / "optimizer.pt")
    torch.save(scheduler, staging / "scheduler.pt")
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))


def finalize(staging: Path, keep: int | None = None) -> Path:
    """Rename the complete staging folder into place, then prune all but the newest `keep` checkpoints."""
    if not (staging / STATE_FILE).is_file():
        raise TrainingError(f"checkpoint staging folder {staging} is incomplete (no {STATE_FILE})")
    final = staging.parent / staging.name[1:-len(".partial")]
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if keep is not None and keep > 0:
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict
    adapter: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict

    def rng(self, rank: int) -> dict[str, torch.Tensor] | None:
        path = self.path / f"rng-{rank}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise TrainingError(f"{path} is not a complete checkpoint (no {STATE_FILE}); resume from one of "
                            f"{[p.name for p in list_checkpoints(path.parent)] or 'none found'}")
    state = json.loads((path / STATE_FILE).read_text())
    try:
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainingError(f"{path.name}: cannot read the optimizer/scheduler state ({error})") from error
    return LoadedCheckpoint(path, state, load_file(str(path / "adapter.safetensors")), optimizer, scheduler)
