"""Embeddings on disk, keyed by encoder identity and canonical profile, so a profile is encoded once.

One small safetensors file per (encoder identity, profile); the key is a sha256 of both, and the file's
metadata repeats them so a lookup checks what it found. Writes are atomic; a damaged entry is a miss.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..profile import UserProfile

_KEY = "embedding"


class EmbeddingCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(encoder_identity: str, profile: UserProfile) -> str:
        payload = json.dumps({"encoder": encoder_identity, "profile": profile.canonical_json()}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, encoder_identity: str, profile: UserProfile) -> Path:
        key = self.key(encoder_identity, profile)
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, encoder_identity: str, profile: UserProfile) -> torch.Tensor | None:
        path = self.path(encoder_identity, profile)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if (metadata.get("psa.encoder_identity") != encoder_identity
                        or metadata.get("psa.profile") != profile.canonical_json()):
                    return None
                vector = handle.get_tensor(_KEY)
        except (SafetensorError, OSError, KeyError):
            return None
        if vector.ndim != 1 or not torch.isfinite(vector).all():
            return None
        return vector.float()

    def put(self, encoder_identity: str, profile: UserProfile, vector: torch.Tensor, encoder_name: str) -> Path:
        metadata = {"psa.encoder": encoder_name, "psa.encoder_identity": encoder_identity,
                    "psa.profile": profile.canonical_json()}
        tensors = {_KEY: vector.detach().float().cpu().contiguous()}
        return atomic_write(self.path(encoder_identity, profile),
                            lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
