"""A training run assembled from its configuration, the same way for the standalone trainer and the node.

Both front ends read the data, embed the users and open the latent/text cache with their own encoders (diffusers
models in the trainer, the graph's VAE and CLIP in ComfyUI); from there `assemble_run` builds everything else:
the cached pairs and their order, the adapter (new or continued), its optimizer and LR schedule. What stays in
the front ends is what differs: Accelerate or the local backend, diffusers or ComfyUI models, tqdm or ComfyUI's
progress bar (docs/training.md §3). `training_metadata` is what both write into the adapter file.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..adapter import PSAAdapter
from ..families import Family
from .batches import AssemblyOptions, CachedPairs, PairOrder
from .cache import CacheSettings, LatentCache
from .config import TrainingConfig
from .embeddings import UserTable
from .loop import StepInputs, new_adapter
from .noise import NoiseSchedule
from .optim import build_lr_scheduler, build_optimizer
from .records import LabelledData
from .step import Predict


def cache_settings(config: TrainingConfig, model_fingerprint: str, resolution: int,
                   encoder_description: str) -> CacheSettings:
    """What the latent/text cache is keyed on, for this run."""
    return CacheSettings(model_fingerprint, resolution, config.hflip, config.cache_dtype, encoder_description)


@dataclass
class TrainingRun:
    config: TrainingConfig
    family: Family
    pairs: CachedPairs
    order: PairOrder
    adapter: PSAAdapter
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler

    @property
    def resolution(self) -> int:
        return self.config.resolution_for(self.family.name)

    def step_inputs(self, predict: Predict, schedule: NoiseSchedule) -> StepInputs:
        config = self.config
        return StepInputs(predict, self.pairs, self.order, schedule, config.seed, config.beta, config.accumulation,
                          config.max_grad_norm)


def cached_pairs(config: TrainingConfig, family: Family, data: LabelledData, cache: LatentCache,
                 users: UserTable) -> CachedPairs:
    """The pairs as training assembles them: the run's flips, caption and embedding dropout, resolution."""
    options = AssemblyOptions(config.caption_dropout, config.embedding_dropout, config.hflip,
                              time_ids=family.name == "sdxl", resolution=config.resolution_for(family.name))
    return CachedPairs(data, cache, users, options)


def evaluation_pairs(config: TrainingConfig, family: Family, data: LabelledData, cache: LatentCache,
                     users: UserTable) -> CachedPairs:
    """The pairs as evaluation sees them: no flips, no dropout."""
    plain = replace(config, hflip=False, caption_dropout=0.0, embedding_dropout=0.0)
    return cached_pairs(plain, family, data, cache, users)


def assemble_run(config: TrainingConfig, family: Family, data: LabelledData, cache: LatentCache, users: UserTable,
                 start: PSAAdapter | None = None) -> TrainingRun:
    """Pairs, order, adapter (`start`, or a new one from the seed), optimizer and LR schedule for `config`."""
    pairs = cached_pairs(config, family, data, cache, users)
    order = PairOrder(len(pairs), config.batch, config.seed)
    adapter = start if start is not None else new_adapter(family, users.dim, config.seed)
    optimizer = build_optimizer(adapter.parameters(), config.optimizer, config.lr, config.weight_decay,
                                eps=config.adam_epsilon)
    lr_scheduler = build_lr_scheduler(optimizer, config.lr_schedule, config.warmup_steps, config.steps)
    return TrainingRun(config, family, pairs, order, adapter, optimizer, lr_scheduler)


def training_metadata(trainer: str, run: TrainingRun, data: LabelledData, users: UserTable,
                      **data_details: object) -> dict[str, object]:
    """The adapter file's record of how it was trained (the settings a run left empty are not written)."""
    config = run.config
    settings = {k: v for k, v in config.to_dict().items() if v not in (None, "")}
    return {
        "psa.trainer": trainer,
        "psa.training_steps": str(config.steps),
        "psa.training_config": {**settings, "resolution": run.resolution},
        "psa.training_data": {**data.summary(), "users": len(users.user_ids), **data_details},
        "psa.dpo_beta": f"{config.beta:g} (inside = -0.5*beta*delta; diffusers' SD1.5 beta is half of it)",
    }
