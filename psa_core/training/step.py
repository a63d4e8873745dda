"""One Diffusion-DPO forward pass, independent of which UNet implementation runs it.

The caller supplies `predict(noisy, timesteps, conditioning, user_values)`: the frozen UNet's output for
a batch, with `user_values` the per-layer PSA values `[N, H_l]` (its hook adds `W_out^l·v_l` to each
attn2 output, see `psa_core.adapter.attn2_shift`) or None for the adapter switched off. The standalone
trainer passes a diffusers UNet; the ComfyUI training nodes pass ComfyUI's model. Both run exactly this
function.

Layout (docs/training.md §2): the B pairs become 2B samples, winners first; the noise and the timesteps are
drawn for B samples and repeated, so winner and loser share both; conditioning and user values are
repeated in the same order. The reference pass (same UNet, adapter off, no_grad) runs *before* the policy
pass, so that gradient checkpointing, which re-runs the policy forward during backward, sees the policy's
user values still installed in the caller's hook.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .loss import DEFAULT_BETA, DPOOutput, dpo_loss, per_sample_mse
from .noise import NoiseSchedule

Conditioning = Mapping[str, torch.Tensor]


class Predict(Protocol):
    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                 user_values: Sequence[torch.Tensor] | None) -> torch.Tensor: ...


@dataclass
class PairBatch:
    """B preference pairs ready for the UNet: latents already sampled and scaled, dropout already applied."""

    winners: torch.Tensor  # [B, C, h, w]
    losers: torch.Tensor  # [B, C, h, w]
    conditioning: dict[str, torch.Tensor]  # batch-first text conditioning, one row per pair
    embeddings: torch.Tensor  # [B, E] user embeddings (zeros where embedding dropout hit)
    item_indices: tuple[int, ...] = field(default=())

    def __len__(self) -> int:
        return self.winners.shape[0]

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.winners.to(device), self.losers.to(device),
                         {k: v.to(device) for k, v in self.conditioning.items()}, self.embeddings.to(device),
                         self.item_indices)


@dataclass(frozen=True)
class StepResult:
    dpo: DPOOutput
    policy_errors: torch.Tensor  # [2B] fp32, winners first
    reference_errors: torch.Tensor  # [2B]
    timesteps: torch.Tensor  # [B], shared by winner and loser

    @property
    def loss(self) -> torch.Tensor:
        return self.dpo.loss


def repeat_pairs(tensor: torch.Tensor) -> torch.Tensor:
    """`[B, ...]` → `[2B, ...]`: the same rows for the winners, then for the losers."""
    return torch.cat([tensor, tensor], dim=0)


def dpo_step(predict: Predict, adapter: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None, batch: PairBatch,
             schedule: NoiseSchedule, generator: torch.Generator, beta: float = DEFAULT_BETA,
             autocast: Callable[[], AbstractContextManager] = nullcontext) -> StepResult:
    """Noise a batch of pairs, run reference and policy, and return the DPO loss (not yet backpropagated).

    `adapter=None` evaluates the adapter switched off as the policy (then inside ≡ 0 exactly)."""
    pairs = len(batch)
    device = batch.winners.device
    noise = torch.randn(batch.winners.shape, generator=generator, dtype=torch.float32).to(device)
    timesteps = schedule.sample_timesteps(pairs, generator).to(device)

    clean = torch.cat([batch.winners, batch.losers]).float()
    shared_noise, shared_timesteps = repeat_pairs(noise), repeat_pairs(timesteps)
    noisy = schedule.add_noise(clean, shared_noise, shared_timesteps)
    target = schedule.target(clean, shared_noise, shared_timesteps)
    conditioning = {name: repeat_pairs(value) for name, value in batch.conditioning.items()}

    with autocast():
        with torch.no_grad():
            reference = predict(noisy, shared_timesteps, conditioning, None)
        values = None if adapter is None else [repeat_pairs(v) for v in adapter(batch.embeddings)]
        policy = predict(noisy, shared_timesteps, conditioning, values)

    policy_errors = per_sample_mse(policy, target)
    reference_errors = per_sample_mse(reference, target).detach()
    dpo = dpo_loss(policy_errors[:pairs], policy_errors[pairs:], reference_errors[:pairs],
                   reference_errors[pairs:], beta)
    return StepResult(dpo, policy_errors.detach(), reference_errors, timesteps)
