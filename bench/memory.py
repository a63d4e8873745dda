"""Peak memory of a benchmark arm, shared by the training benchmarks."""
from __future__ import annotations

import threading
import time

import psutil
import torch


class Memory:
    """Peak memory of the training steps, counted from before the models were built (weights included).

    `steps_begin()` is called once the arm is set up, so one-off load-time copies (an fp32 UNet cast to bf16)
    do not count. CUDA: torch.cuda.max_memory_allocated; CPU: the process's RSS, sampled every 2 ms."""

    def __init__(self, device: str):
        self.device = device
        self.samples: list[int] = []
        self._stop = threading.Event()
        if device == "cuda":
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = psutil.Process().memory_info().rss

    def steps_begin(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return
        process = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.samples.append(process.memory_info().rss)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def peak(self) -> int:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() - self.start
        self._stop.set()
        self._thread.join()
        return max(self.samples) - self.start
