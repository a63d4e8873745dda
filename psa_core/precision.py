"""The one vocabulary for compute precision and device, shared by the trainer, the training node, dataset building,
generation and evaluation: precision `auto` (each front end says what it picks) or one of the dtypes below; device
`auto` (CUDA when there is one), `cpu` or `cuda`."""
from __future__ import annotations

import torch

from .errors import PSAError

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *PRECISION_DTYPES)
DEVICES = ("auto", "cpu", "cuda")


class ComputeError(PSAError):
    """A --device / --precision choice this machine cannot run."""


def resolve_compute(device: str, precision: str, gpu_precision: str = "fp16") -> tuple[str, str]:
    """(device type, precision name) for a `--device` and `--precision` choice of the command lines that run one
    model on one device: device `auto` is CUDA when there is one; precision `auto` is `gpu_precision` on CUDA and
    fp32 on the CPU. CUDA without a CUDA device, and fp16 on the CPU, are refused."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ComputeError("--device cuda but no CUDA device is available; allowed here: auto, cpu")
    precision = precision if precision != "auto" else (gpu_precision if cuda else "fp32")
    if precision == "fp16" and not cuda:
        raise ComputeError("--precision fp16 needs a GPU; allowed on the CPU: auto, fp32, bf16")
    return ("cuda" if cuda else "cpu"), precision
