"""What every profile encoder provides, and the one entry point that adds the disk cache."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ..embedding import UserEmbedding
from ..errors import PSAError
from ..profile import UserProfile
from .cache import EmbeddingCache


class EncoderError(PSAError):
    """An encoder cannot be built or run with the given model, template or options."""


class ProfileEncoder(ABC):
    """Turns profiles into vectors. `name` is what adapters record as `psa.encoder`; `identity`
    additionally pins everything that changes the numbers (weights, template, precision) for the cache."""

    name: str

    @property
    @abstractmethod
    def identity(self) -> str: ...

    @abstractmethod
    def encode_uncached(self, profiles: Sequence[UserProfile]) -> torch.Tensor:
        """`[N, E]` float32 on the CPU, row i for profile i."""


def encode_profiles(encoder: ProfileEncoder, profiles: Sequence[UserProfile],
                    cache: EmbeddingCache | None = None) -> UserEmbedding:
    """Encode profiles, serving every profile already in `cache` without running (or loading) the encoder."""
    if not profiles:
        raise EncoderError("no profiles to encode")
    rows: list[torch.Tensor | None] = [None] * len(profiles)
    if cache is not None:
        for i, profile in enumerate(profiles):
            rows[i] = cache.get(encoder.identity, profile)
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        fresh = encoder.encode_uncached([profiles[i] for i in missing])
        for i, vector in zip(missing, fresh):
            rows[i] = vector
            if cache is not None:
                cache.put(encoder.identity, profiles[i], vector, encoder.name)
    vectors = torch.stack(rows).float().contiguous()
    metadata = {"psa.encoder_identity": encoder.identity,
                "psa.profiles": json.dumps([p.to_dict() for p in profiles], sort_keys=True)}
    return UserEmbedding(vectors, encoder.name, tuple(p.label for p in profiles), metadata)
