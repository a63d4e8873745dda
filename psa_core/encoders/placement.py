"""Where a local LLM runs while it encodes profiles or rewrites prompts, and how long it stays loaded
(docs/profiles.md §7).

A placement is handed a `ModelRequest` (how to build the model from its folder, what identifies the loaded weights,
how much memory the weights and the forward passes need) and yields a `Placed` model for one use: the module, the
device its inputs go to, and how and why it was placed there. The numbers never depend on the placement beyond the
rounding of the device that computes them: every placement runs the same module code on the same weights, only
where the weights sit between layers differs.

psa_core has no ComfyUI. Inside ComfyUI the nodes pass the placement of `nodes/model_memory.py`, which hands the
model to ComfyUI's memory manager (full load, partial low-VRAM load or CPU, as ComfyUI decides) and keeps it for the
next node. Outside ComfyUI:

- `SingleDevice(device)` (the default): the whole model on one device, only while it is used; its memory is
  released afterwards;
- `AccelerateOffload(device)`: Accelerate's device map: the whole model on the GPU when it fits beside the working
  memory, otherwise as many layers as fit on the GPU and the rest in CPU RAM (on the CPU: in RAM up to a budget,
  the rest on disk), each offloaded layer brought to the device for its forward; released afterwards.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

Progress = Callable[[str, int, int], None]  # (stage, done, total)
LOAD, RUN = "load", "run"  # stages: weights read from disk; the forward passes (profiles encoded, prompts rewritten)
CPU, FULL, PARTIAL = "cpu", "full", "partial"  # how a model was placed
BeforeLoad = Callable[[int, torch.device], None]
AfterRelease = Callable[[], None]
GiB, MiB = float(1 << 30), float(1 << 20)


def size_text(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if abs(nbytes) >= GiB else f"{nbytes / MiB:.2f} MiB"


@dataclass(frozen=True)
class ModelRequest:
    """What a placement needs to know about the model it is asked to place.

    `build(extra)` loads the model from its folder with `from_pretrained(..., **extra)` (local files only), where
    `extra` is what the placement adds (`device_map`, `max_memory`, `offload_folder`; empty for the CPU). `key`
    identifies the weights as built (folder fingerprint, model class, precision): a placement that keeps models
    reuses one only for the same key. `weight_bytes` is the weights' size in their precision (from the files);
    `working_bytes` an upper estimate of what the forward passes need beside them (`forward_working_bytes`)."""

    key: tuple
    label: str
    build: Callable[[dict], torch.nn.Module]
    dtype: torch.dtype
    weight_bytes: int
    working_bytes: int


@dataclass
class Placed:
    """A placed model for one use. `device` is where the inputs go; `mode` is CPU, FULL (all weights on the
    accelerator) or PARTIAL (some weights offloaded, brought to `device` layer by layer); `loaded` says whether the
    weights were read from disk for this use (False: a kept model was reused). `model` is cleared once the use ends."""

    model: torch.nn.Module | None
    device: torch.device
    mode: str
    reason: str
    loaded: bool
    load_seconds: float = 0.0

    def describe(self) -> str:
        where = {CPU: f"on the CPU ({self.device})", FULL: f"fully on {self.device}",
                 PARTIAL: f"partially on {self.device}"}[self.mode]
        return f"{where}: {self.reason}"


class Placement(ABC):
    """Places a model for one use: `with placement.use(request, progress) as placed: ...`."""

    @abstractmethod
    def use(self, request: ModelRequest, progress: Progress | None = None
            ) -> contextlib.AbstractContextManager[Placed]: ...


def forward_working_bytes(config: dict, batch: int, tokens: int, element_size: int, *, vocab_logits: int = 0,
                          cached_tokens: int = 0) -> int:
    """An upper estimate of the memory one forward pass of a decoder LM needs beside its weights: per token the
    residual stream, the normed copy, q/k/v/o and the MLP's gate, up and product (`4·hidden + 3·intermediate`
    values, twice for the allocator's overlap of consecutive layers), eager attention scores
    (`batch·heads·tokens²`), `vocab_logits` float32 logits per sequence (generation) and a key/value cache for
    `cached_tokens` tokens."""
    hidden = int(config.get("hidden_size") or 0)
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    layers = int(config.get("num_hidden_layers") or 1)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else hidden))
    activations = 2 * batch * tokens * (4 * hidden + 3 * intermediate) * element_size
    scores = batch * heads * tokens * tokens * max(element_size, 4)
    logits = batch * vocab_logits * 4
    cache = 2 * layers * batch * cached_tokens * kv_heads * head_dim * element_size
    return activations + scores + logits + cache


@contextlib.contextmanager
def reporting_weight_loading(progress: Progress | None) -> Iterator[None]:
    """Report `(LOAD, tensors loaded, tensors)` while transformers reads the weights (its "Loading weights" loop;
    nothing is reported by transformers versions that do not have it, and only the final step below is)."""
    loading = None
    if progress is not None:
        try:
            from transformers import core_model_loading as loading
        except ImportError:
            loading = None
    original = getattr(loading, "tqdm", None)
    if original is None:
        yield
        return

    def tracked(iterable=None, *args, **kwargs):
        bar = original(iterable, *args, **kwargs)
        if kwargs.get("desc") != "Loading weights" or iterable is None or not hasattr(iterable, "__len__"):
            return bar
        total = max(len(iterable), 1)

        def items():
            for done, item in enumerate(bar, start=1):
                yield item
                progress(LOAD, done, total)

        return items()

    loading.tqdm = tracked
    try:
        yield
    finally:
        loading.tqdm = original


def build_reporting(request: ModelRequest, extra: dict, progress: Progress | None) -> tuple[torch.nn.Module, float]:
    """`request.build(extra)` with the weights' loading progress reported; returns the model in eval mode and the
    seconds it took."""
    start = time.perf_counter()
    with reporting_weight_loading(progress):
        model = request.build(extra)
    if progress is not None:
        progress(LOAD, 1, 1)
    return model.eval(), time.perf_counter() - start


def release_model_memory(device: torch.device, after_release: AfterRelease | None = None) -> None:
    """After the caller dropped its model: collect it, empty the CUDA cache, and tell the host."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if after_release is not None:
        after_release()


class SingleDevice(Placement):
    """The whole model on `device`, only while it is used. `before_load(weight bytes, device)` runs before it is
    built (a host frees memory there); `after_release()` after it was deleted (a host empties its caches there)."""

    def __init__(self, device: str | torch.device = "cpu", before_load: BeforeLoad | None = None,
                 after_release: AfterRelease | None = None):
        self.device = torch.device(device)
        self.before_load, self.after_release = before_load, after_release

    @contextlib.contextmanager
    def use(self, request: ModelRequest, progress: Progress | None = None) -> Iterator[Placed]:
        if self.before_load is not None:
            self.before_load(request.weight_bytes, self.device)
        placed = None
        try:
            extra = {} if self.device.type == "cpu" else {"device_map": {"": self.device}}
            model, seconds = build_reporting(request, extra, progress)
            mode, reason = (CPU, "the device chosen") if self.device.type == "cpu" else (FULL, "the device chosen")
            placed = Placed(model.to(self.device), self.device, mode, reason, True, seconds)
            del model
            yield placed
        finally:
            if placed is not None:
                placed.model = None
            release_model_memory(self.device, self.after_release)


class AccelerateOffload(Placement):
    """Accelerate's device map, outside ComfyUI. `device` "auto" is the first CUDA device, or the CPU when there is
    none. On a GPU the model is loaded whole when its weights fit in `budget_bytes` (default: the GPU's free memory
    less the working memory and `reserve_bytes`), else with `device_map="auto"` and that budget for the GPU: the
    layers that do not fit stay in CPU RAM and Accelerate moves each to the GPU for its forward. On the CPU the
    model is loaded whole unless a `budget_bytes` smaller than its weights is given; then the layers beyond the
    budget are offloaded to a temporary folder on disk (`offload_folder`, default: a new temporary folder) and read
    back for each forward. Needs the `accelerate` package for the offloaded case. Released after use."""

    def __init__(self, device: str | torch.device = "auto", budget_bytes: int | None = None,
                 reserve_bytes: int = 512 << 20, offload_folder: str | Path | None = None):
        self.choice = device
        self.budget_bytes, self.reserve_bytes = budget_bytes, reserve_bytes
        self.offload_folder = offload_folder

    def _device(self) -> tuple[torch.device, str]:
        if self.choice == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", torch.cuda.current_device()), ""
            return torch.device("cpu"), "no CUDA device"
        device = torch.device(self.choice)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device, "the device chosen"

    def plan(self, request: ModelRequest) -> tuple[torch.device, dict, str, str]:
        """(device, extra from_pretrained keywords, mode, reason) for `request`, before anything is loaded."""
        device, why = self._device()
        weights, working = request.weight_bytes, request.working_bytes
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            budget = self.budget_bytes if self.budget_bytes is not None else free - working - self.reserve_bytes
            if weights <= budget:
                return device, {"device_map": {"": device}}, FULL, (
                    f"its {size_text(weights)} of weights fit in {size_text(budget)} "
                    f"({size_text(free)} free, {size_text(working)} kept for the forward passes)")
            return device, {"device_map": "auto", "max_memory": {device.index: max(int(budget), 0),
                                                                 "cpu": _cpu_budget(weights)}}, PARTIAL, (
                f"its {size_text(weights)} of weights do not fit in {size_text(max(budget, 0))} "
                f"({size_text(free)} free, {size_text(working)} kept for the forward passes); the rest stays in "
                "CPU RAM")
        if self.budget_bytes is None or weights <= self.budget_bytes:
            return device, {}, CPU, why or "the device chosen"
        return device, {"device_map": "auto", "max_memory": {"cpu": int(self.budget_bytes)}}, PARTIAL, (
            f"its {size_text(weights)} of weights exceed the {size_text(self.budget_bytes)} RAM budget; the rest is "
            "offloaded to disk")

    @contextlib.contextmanager
    def use(self, request: ModelRequest, progress: Progress | None = None) -> Iterator[Placed]:
        device, extra, mode, reason = self.plan(request)
        scratch = None
        if mode == PARTIAL:
            if self.offload_folder is None:
                scratch = tempfile.mkdtemp(prefix="psa-offload-")
            extra["offload_folder"] = str(self.offload_folder or scratch)
        placed = None
        try:
            model, seconds = build_reporting(request, extra, progress)
            if mode != PARTIAL:
                model = model.to(device)
            else:
                where = getattr(model, "hf_device_map", {}) or {}
                kept = sum(_is_on(target, device) for target in where.values())
                reason += f" ({kept} of {len(where)} module groups on {device})"
            placed = Placed(model, device, mode, reason, True, seconds)
            del model
            yield placed
        finally:
            if placed is not None:
                placed.model = None
            release_model_memory(device)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


def _is_on(target, device: torch.device) -> bool:
    """Whether an `hf_device_map` entry (a GPU index, "cpu", "cuda:1", "disk") is `device`."""
    if target == "disk":
        return False
    if isinstance(target, int):
        return device.type == "cuda" and device.index == target
    return torch.device(target) == device


def _cpu_budget(weights: int) -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.9)
    except ImportError:
        return 2 * weights
