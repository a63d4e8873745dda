"""Forward noising for training: which timesteps to draw, how to noise, what the model should predict.

The step is written against the small `NoiseSchedule` protocol, so a caller whose model speaks sigmas
(ComfyUI) can supply its own. `DDPMSchedule` is the discrete schedule of SD1.5 and SDXL: T = 1000 steps,
"scaled_linear" betas from 0.00085 to 0.012, `x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε` (as diffusers' DDPMScheduler).
"""
from __future__ import annotations

from typing import Protocol

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


class NoiseSchedule(Protocol):
    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` timesteps (or sigmas) drawn on the CPU with `generator`."""

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model's output is compared with."""


class DDPMSchedule:
    """Discrete-time DDPM noising with integer timesteps `t ~ U{0..T−1}`."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type {prediction_type!r} is not supported; allowed: "
                             f"{', '.join(PREDICTION_TYPES)}")
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type = prediction_type

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000,
                      prediction_type: str = "epsilon") -> DDPMSchedule:
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0), prediction_type)

    @classmethod
    def from_config(cls, config: dict) -> DDPMSchedule:
        """From a diffusers scheduler_config.json (scaled_linear and linear beta schedules)."""
        schedule = config.get("beta_schedule", "scaled_linear")
        start, end = config.get("beta_start", 0.00085), config.get("beta_end", 0.012)
        steps = config.get("num_train_timesteps", 1000)
        prediction = config.get("prediction_type", "epsilon")
        if schedule == "scaled_linear":
            return cls.scaled_linear(start, end, steps, prediction)
        if schedule == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float32)
            return cls(torch.cumprod(1.0 - betas, dim=0), prediction)
        raise ValueError(f"beta schedule {schedule!r} is not supported; allowed: scaled_linear, linear")

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (count,), generator=generator, dtype=torch.long)

    def _coefficients(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alphas = self.alphas_cumprod.to(like.device)[timesteps.to(like.device)]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return (alphas ** 0.5).view(shape).to(like.dtype), ((1 - alphas) ** 0.5).view(shape).to(like.dtype)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._coefficients(timesteps, clean)
        return signal * clean + sigma * noise

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        signal, sigma = self._coefficients(timesteps, clean)
        return signal * noise - sigma * clean
