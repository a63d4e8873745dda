"""The Diffusion-DPO objective in the reference's −0.5·β convention (docs/training.md §1).

For a pair with shared noise and timestep, let `mʷ, mˡ` be the policy's per-sample denoising errors (mean
over C×H×W) on winner and loser, and `rʷ, rˡ` the reference's. Then

    Δ      = (mʷ − mˡ) − (rʷ − rˡ)
    inside = −0.5 · β · Δ                    (β = 5000 by default)
    loss   = mean over pairs of −log σ(inside)

The diffusers SD1.5 script writes `−log σ(β'·((rʷ − rˡ) − (mʷ − mˡ)))` with β' = 2500: the same objective,
since β' = 0.5·β. At initialisation the policy equals the reference, so inside ≡ 0 and loss = ln 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BETA = 5000.0
BETA_HELP = ("DPO β in the reference's −0.5·β convention: inside = −0.5·β·Δ (PSAlign, Salesforce DiffusionDPO). "
             "The diffusers SD1.5 script's β (default 2500, no 0.5) equals half of this β.")


@dataclass(frozen=True)
class DPOOutput:
    """Loss and per-pair diagnostics. `inside` is the per-pair logit −0.5·β·Δ (fp32)."""

    loss: torch.Tensor
    inside: torch.Tensor
    reward_winner: torch.Tensor
    reward_loser: torch.Tensor

    @property
    def implicit_accuracy(self) -> torch.Tensor:
        """Share of pairs the policy prefers more strongly than the reference does (strict: ties count 0)."""
        return (self.inside > 0).float().mean()

    @property
    def reward_margin(self) -> torch.Tensor:
        """Mean implicit reward of the winner minus that of the loser (mathematically the mean inside)."""
        return (self.reward_winner - self.reward_loser).mean()


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample over all but the batch dimension, computed in fp32 → `[N]`."""
    difference = prediction.float() - target.float()
    return difference.pow(2).flatten(1).mean(dim=1)


def dpo_loss(policy_winner: torch.Tensor, policy_loser: torch.Tensor, reference_winner: torch.Tensor,
             reference_loser: torch.Tensor, beta: float = DEFAULT_BETA) -> DPOOutput:
    """Diffusion-DPO from per-pair errors `[B]` (policy and reference; winner and loser)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}; the reference uses 5000")
    policy_winner, policy_loser = policy_winner.float(), policy_loser.float()
    reference_winner, reference_loser = reference_winner.float(), reference_loser.float()
    delta = (policy_winner - policy_loser) - (reference_winner - reference_loser)
    inside = -0.5 * beta * delta
    reward_winner = -0.5 * beta * (policy_winner - reference_winner)
    reward_loser = -0.5 * beta * (policy_loser - reference_loser)
    loss = -F.logsigmoid(inside).mean()
    return DPOOutput(loss, inside, reward_winner, reward_loser)
