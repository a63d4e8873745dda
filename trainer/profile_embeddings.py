"""`python -m trainer encode-profiles`: compute `{User_ID}.npy` user embeddings with a local LLM, outside ComfyUI.

Where the model runs is Accelerate's device map (psa_core.encoders.AccelerateOffload): the whole model on the GPU
when it fits, the layers that do not fit in CPU RAM otherwise, or, on the CPU with `--memory-budget`, the rest
offloaded to disk. The embeddings are the reference layout (one float32 vector per file) that `train
--embeddings` and PSA Load Embedding read; they do not depend on where the model ran beyond rounding
(docs/profiles.md §7). Files already there are kept (a killed run resumes) unless `--overwrite`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from psa_core.atomic import atomic_write
from psa_core.encoders import AccelerateOffload, LLMEncoder, load_template
from psa_core.encoders.llm import DTYPE_CHOICES
from psa_core.precision import DEVICES
from psa_core.training.errors import TrainingError
from psa_core.training.labelling import read_profiles


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psa-trainer encode-profiles",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", required=True, help="local Hugging Face causal-LM folder (e.g. Qwen2.5-7B-Instruct)")
    parser.add_argument("--template", required=True, help="the prompt template (the reference get_embeds.txt)")
    parser.add_argument("--profiles", required=True, help="users.csv, .json or .jsonl of profiles with User_IDs")
    parser.add_argument("--users", help="comma-separated User_IDs to encode (default: all)")
    parser.add_argument("--out", required=True, help="folder for the {User_ID}.npy files")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="the LLM's precision")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--memory-budget", type=float, help="GiB of the device the weights may take (default: the "
                        "GPU's free memory; on the CPU: all of them); the rest is offloaded")
    parser.add_argument("--batch-size", type=int, default=4, help="profiles per forward")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="recompute embeddings whose file exists")
    return parser


def encode_profiles(argv: list[str]) -> list[Path]:
    """Run the command; returns the files written."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise TrainingError(f"--batch-size {args.batch_size} is not allowed; allowed: an integer >= 1")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise TrainingError(f"--memory-budget {args.memory_budget} is not allowed; allowed: a number of GiB > 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out}: a file is there; allowed: a folder (created if missing)")
    wanted = [u.strip() for u in (args.users or "").split(",") if u.strip()]
    profiles = [p for p in read_profiles(args.profiles, wanted) if p.user_id]
    if not profiles:
        raise TrainingError(f"--profiles {args.profiles}: no profile with a User_ID to encode")
    todo = [p for p in profiles if args.overwrite or not (out / f"{p.user_id}.npy").is_file()]
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    encoder = LLMEncoder(args.llm, load_template(args.template), dtype=args.dtype, batch_size=args.batch_size,
                         placement=AccelerateOffload(args.device, budget_bytes=budget), progress=_report)
    written = []
    if todo:
        vectors = encoder.encode_uncached(todo).float().numpy()
        placed = encoder.last_placed
        print(f"psa-trainer: encoded {len(todo)} profiles with {encoder.name} ({encoder.dtype_name}): "
              f"{placed.describe() if placed else 'not loaded'}", file=sys.stderr)
        for profile, vector in zip(todo, vectors, strict=True):
            path = out / f"{profile.user_id}.npy"
            atomic_write(path, lambda temporary, v=vector: _save(temporary, v))
            written.append(path)
    print(f"psa-trainer: {len(written)} embeddings written to {out}, {len(profiles) - len(todo)} kept",
          file=sys.stderr)
    return written


def _save(path: Path, vector: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)


def _report(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
