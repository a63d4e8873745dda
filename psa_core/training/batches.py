"""Which pairs each micro-batch holds, the randomness it uses, and how it is assembled from the cache.

Randomness is tied to the data, not to the process: micro-batch number g (counted over the whole run,
across processes and accumulation steps) takes its items from a seeded per-epoch permutation and draws all
its random numbers (flip, caption and embedding dropout, latent sampling, noise, timesteps) from a
generator seeded with (seed, g). Each process and accumulation step works on a different g, so ranks get
different noise (device-specific seeds), a resumed run continues exactly, and one process with accumulation
k·n computes the same micro-batches as n processes with accumulation k.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cache import LatentCache, image_entries
from .embeddings import UserTable
from .errors import DatasetError
from .records import LabelledData
from .step import PairBatch

CONDITIONING_TIME_IDS = "time_ids"


def derived_seed(seed: int, *parts: object) -> int:
    text = ":".join(str(p) for p in (seed,) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def micro_batch_generator(seed: int, micro_batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, "micro-batch", micro_batch))


class PairOrder:
    """Micro-batch g → item indices: epochs of seeded permutations, `batch_size` items each, tail dropped."""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        if batch_size < 1:
            raise DatasetError(f"batch size must be at least 1, got {batch_size}")
        if num_items < batch_size:
            raise DatasetError(f"the data has {num_items} pairs, fewer than one batch of {batch_size}; "
                               "lower the batch size or add data")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.per_epoch = num_items // batch_size
        self._epoch, self._permutation = -1, None

    def epoch_of(self, micro_batch: int) -> int:
        return micro_batch // self.per_epoch

    def indices(self, micro_batch: int) -> list[int]:
        epoch, slot = divmod(micro_batch, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
            self._permutation = torch.randperm(self.num_items, generator=generator).tolist()
            self._epoch = epoch
        return self._permutation[slot * self.batch_size:(slot + 1) * self.batch_size]


@dataclass(frozen=True)
class AssemblyOptions:
    caption_dropout: float = 0.2
    embedding_dropout: float = 0.0
    hflip: bool = False
    time_ids: bool = False  # SDXL micro-conditioning
    resolution: int = 512

    def __post_init__(self) -> None:
        for name in ("caption_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")


class CachedPairs:
    """The training set: labelled records over cached latents/text and a user-embedding table."""

    def __init__(self, data: LabelledData, cache: LatentCache, users: UserTable, options: AssemblyOptions):
        if options.hflip and not cache.has_flipped:
            raise DatasetError("flips are on but the cache holds no flipped latents; rebuild it with flips")
        self.data, self.cache, self.users, self.options = data, cache, users, options
        entry_index = cache.entry_indices()
        caption_index = cache.caption_indices()
        entries, pairs = image_entries(data)
        self.winner_entry = np.array([entry_index[entries[w]] for w, _ in pairs], dtype=np.int64)
        self.loser_entry = np.array([entry_index[entries[l]] for _, l in pairs], dtype=np.int64)
        self.caption = np.array([caption_index[r.caption] for r in data.records], dtype=np.int64)
        self.user = np.array(users.record_users, dtype=np.int64)
        self.empty_caption = caption_index[""]

    def __len__(self) -> int:
        return len(self.data.records)

    def _latents(self, entries: np.ndarray, flips: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        variant = flips.astype(np.int64)
        mean = torch.from_numpy(np.asarray(self.cache.means[entries, variant], dtype=np.float32))
        std = torch.from_numpy(np.asarray(self.cache.stds[entries, variant], dtype=np.float32))
        return mean + std * torch.randn(mean.shape, generator=generator, dtype=torch.float32)

    def batch(self, indices: Sequence[int], generator: torch.Generator) -> PairBatch:
        """Assemble pairs `indices`: one flip, one caption-dropout and one embedding-dropout draw per pair."""
        index = np.asarray(indices, dtype=np.int64)
        draws = torch.rand((len(index), 3), generator=generator)
        flips = (draws[:, 0] < 0.5).numpy() & self.options.hflip
        drop_caption = (draws[:, 1] < self.options.caption_dropout).numpy()
        drop_embedding = draws[:, 2] < self.options.embedding_dropout
        winners = self._latents(self.winner_entry[index], flips, generator)
        losers = self._latents(self.loser_entry[index], flips, generator)
        captions = np.where(drop_caption, self.empty_caption, self.caption[index])
        conditioning = {name: torch.from_numpy(np.asarray(array[captions], dtype=np.float32))
                        for name, array in self.cache.text.items()}
        if self.options.time_ids:
            geometry = [self.cache.geometry[i] for i in self.winner_entry[index]]
            conditioning[CONDITIONING_TIME_IDS] = torch.tensor(
                [g.time_ids(self.options.resolution) for g in geometry], dtype=torch.float32)
        embeddings = self.users.vectors[torch.from_numpy(self.user[index])].clone()
        embeddings[drop_embedding] = 0.0
        return PairBatch(winners, losers, conditioning, embeddings, tuple(int(i) for i in index))
