"""The one vocabulary for compute precision, shared by the trainer, the training node, dataset building and
evaluation: `auto` (each front end says what it picks) or one of the dtypes below."""
from __future__ import annotations

import torch

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *PRECISION_DTYPES)
