"""One optimizer step of adapter training, shared by the standalone trainer and the ComfyUI training nodes.

Both callers assemble the same pieces with run.py (cached pairs, pair order, the adapter, its optimizer and LR
schedule), add a `predict` callable for their UNet, and then call `optimizer_step` once per step; only how they
get the UNet and how they report progress differs (docs/training.md §3). Device handling comes from a
`Backend`: 🤗 Accelerate's `Accelerator` is one (the trainer, one or many processes); `LocalBackend` is the
single-device equivalent with the same gradient-accumulation semantics (the nodes, inside ComfyUI's process).
With the same seed and data the two produce the same micro-batches, the same random numbers and the same updates.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from ..adapter import PSAAdapter
from ..families import Family
from .batches import CachedPairs, PairOrder, derived_seed, micro_batch_generator
from .errors import TrainingError
from .noise import NoiseSchedule
from .step import Predict, dpo_step


class NonFiniteLoss(TrainingError):
    """The loss or the gradient norm became NaN or infinite."""

    def __init__(self, what: str, value: float, step: int, advice: str = ""):
        super().__init__(f"the {what} became {value} at step {step}; training stopped and nothing newer was saved"
                         + (f". {advice}" if advice else ""))
        self.what, self.value, self.step = what, value, step


class Backend(Protocol):
    """What a training step needs from its device layer; `accelerate.Accelerator` provides exactly this."""

    device: torch.device
    num_processes: int
    process_index: int
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling: overflowing steps are skipped, not errors

    @property
    def sync_gradients(self) -> bool: ...

    def accumulate(self, model: torch.nn.Module) -> AbstractContextManager: ...

    def autocast(self) -> AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def gather(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor: ...


class LocalBackend:
    """One device, one process; gradient accumulation as Accelerate does it (loss / k, sync every k-th call).

    With `loss_scaling` (for fp16 compute, whose small gradients would otherwise flush to zero) the loss is scaled
    by a `torch.amp.GradScaler` as Accelerate does for fp16: gradients are unscaled before clipping, and a step
    whose gradients overflowed is skipped and the scale lowered. Pass the optimizer through `prepare_optimizer`."""

    num_processes = 1
    process_index = 0

    def __init__(self, device: torch.device | str, accumulation: int = 1, autocast_dtype: torch.dtype | None = None,
                 loss_scaling: bool = False):
        self.device = torch.device(device)
        self.accumulation = accumulation
        self.autocast_dtype = autocast_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if loss_scaling else None
        self._optimizer: torch.optim.Optimizer | None = None
        self._calls = 0

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer to step: with loss scaling, one whose step() goes through the scaler."""
        self._optimizer = optimizer
        return optimizer if self.scaler is None else _ScaledOptimizer(optimizer, self.scaler)

    @property
    def sync_gradients(self) -> bool:
        return self._calls % self.accumulation == 0

    @contextmanager
    def accumulate(self, model: torch.nn.Module):
        self._calls += 1
        yield

    def autocast(self) -> AbstractContextManager:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.accumulation
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        if self.scaler is not None:
            if self._optimizer is None:
                raise TrainingError("loss scaling needs the optimizer: pass it through prepare_optimizer first")
            self.scaler.unscale_(self._optimizer)
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)


class _ScaledOptimizer:
    """An optimizer stepped through a GradScaler: skipped when the unscaled gradients hold inf/NaN."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler
        self.step_was_skipped = False

    def step(self) -> None:
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_was_skipped = self.scaler.get_scale() < scale  # update() lowers the scale exactly on a skip

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    @property
    def state(self):
        return self.optimizer.state

    @property
    def param_groups(self):
        return self.optimizer.param_groups


def new_adapter(family: Family, embedding_dim: int, seed: int) -> PSAAdapter:
    """The initial adapter: its projection depends on the seed alone, never on the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "adapter-init"))
        return PSAAdapter(family, embedding_dim)


@dataclass(frozen=True)
class StepMetrics:
    loss: float
    implicit_accuracy: float
    reward_margin: float
    grad_norm: float
    lr: float


@dataclass
class StepInputs:
    """Everything an optimizer step reads besides the adapter and its optimizer."""

    predict: Predict
    pairs: CachedPairs
    order: PairOrder
    schedule: NoiseSchedule
    seed: int
    beta: float
    accumulation: int
    max_grad_norm: float


def optimizer_step(backend: Backend, inputs: StepInputs, adapter: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   lr_scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, first_micro_batch: int,
                   between_micro_batches: Callable[[], None] | None = None) -> StepMetrics:
    """`accumulation` micro-batches on every process, then one optimizer and LR-schedule step.

    Micro-batch numbers start at `first_micro_batch` and interleave the processes (batches.py), so the caller
    advances its counter by `accumulation × processes`. `between_micro_batches` runs before each micro-batch
    (the nodes check for an interrupt there). Raises `NonFiniteLoss` before a non-finite value is applied.
    """
    world, rank = backend.num_processes, backend.process_index
    totals = torch.zeros(3, device=backend.device)
    grad_norm = torch.tensor(float("nan"))
    for micro in range(inputs.accumulation):
        if between_micro_batches is not None:
            between_micro_batches()
        number = first_micro_batch + micro * world + rank
        generator = micro_batch_generator(inputs.seed, number)
        batch = inputs.pairs.batch(inputs.order.indices(number), generator).to(backend.device)
        with backend.accumulate(adapter):
            result = dpo_step(inputs.predict, adapter, batch, inputs.schedule, generator, inputs.beta,
                              backend.autocast)
            metrics = torch.stack([result.loss.detach(), result.dpo.implicit_accuracy,
                                   result.dpo.reward_margin.detach()])
            metrics = backend.gather(metrics[None]).mean(dim=0)
            if not torch.isfinite(metrics[0]):
                raise NonFiniteLoss("loss", metrics[0].item(), step + 1)
            totals += metrics / inputs.accumulation
            backend.backward(result.loss)
            if backend.sync_gradients:
                limit = inputs.max_grad_norm if inputs.max_grad_norm > 0 else math.inf
                grad_norm = backend.clip_grad_norm_(adapter.parameters(), limit)
                # With loss scaling (fp16) an overflow is expected now and then: the step is skipped, the scale lowered.
                if not torch.isfinite(grad_norm) and getattr(backend, "scaler", None) is None:
                    raise NonFiniteLoss("gradient norm", grad_norm.item(), step + 1)
                optimizer.step()
                optimizer.zero_grad()
    lr = lr_scheduler.get_last_lr()[0]
    if not getattr(optimizer, "step_was_skipped", False):  # as Accelerate's scheduler: no step for a skipped one
        lr_scheduler.step()
    loss, accuracy, margin = totals.tolist()
    return StepMetrics(loss, accuracy, margin, float(grad_norm), lr)
