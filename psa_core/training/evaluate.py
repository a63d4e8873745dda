"""Held-out implicit accuracy: how often the adapter prefers the labelled winner more than the base model does.

Each held-out pair is scored over several draws of (noise, timestep); a draw counts as correct when its DPO
logit `inside` is > 0 (ties count half in `tie_split_accuracy`, as in diffusers). With the adapter switched off
(`adapter=None`) the policy is the reference, so every inside is exactly 0: the chance level, 0.5 tie-split.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .batches import CachedPairs, micro_batch_generator
from .loss import DEFAULT_BETA
from .noise import NoiseSchedule
from .step import Predict, dpo_step


@dataclass(frozen=True)
class Evaluation:
    inside: torch.Tensor  # [draws, pairs]
    users: torch.Tensor  # [pairs] user row of each pair

    @property
    def accuracy(self) -> float:
        return (self.inside > 0).float().mean().item()

    @property
    def tie_split_accuracy(self) -> float:
        return ((self.inside > 0).float().mean() + 0.5 * (self.inside == 0).float().mean()).item()

    def accuracy_by_user(self) -> dict[int, float]:
        return {int(u): (self.inside[:, self.users == u] > 0).float().mean().item() for u in self.users.unique()}


@torch.no_grad()
def evaluate(predict: Predict, adapter: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None,
             pairs: CachedPairs, schedule: NoiseSchedule, draws: int = 8, batch_size: int = 16, seed: int = 1234,
             beta: float = DEFAULT_BETA, device: torch.device | str = "cpu") -> Evaluation:
    """Score every pair `draws` times; pairs should be built without dropout or flips for a clean measure."""
    count = len(pairs)
    inside = torch.empty(draws, count)
    for draw in range(draws):
        for start in range(0, count, batch_size):
            indices = list(range(start, min(start + batch_size, count)))
            generator = micro_batch_generator(seed, draw * count + start)
            batch = pairs.batch(indices, generator).to(device)
            inside[draw, start:start + len(indices)] = dpo_step(predict, adapter, batch, schedule, generator,
                                                                beta).dpo.inside.cpu()
    return Evaluation(inside, torch.as_tensor(pairs.user))
