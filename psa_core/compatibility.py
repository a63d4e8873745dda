"""Checks that an embedding fits an adapter."""
from __future__ import annotations

from .adapter import LoadedAdapter
from .adapter_file import REFERENCE_EMBEDDING_DIM, REFERENCE_ENCODER
from .embedding import UserEmbedding
from .errors import CompatibilityError


def _effective_encoder(encoder: str | None, dim: int) -> str | None:
    # Bare reference files (.bin adapters, .npy embeddings) carry no encoder name; 3584-d means Qwen2.5-7B.
    return encoder or (REFERENCE_ENCODER if dim == REFERENCE_EMBEDDING_DIM else None)


def check_embedding_fits(adapter: LoadedAdapter, embedding: UserEmbedding) -> None:
    if embedding.dim != adapter.embedding_dim:
        raise CompatibilityError(
            f"embedding has {embedding.dim} dimensions but adapter '{adapter.name}' expects {adapter.embedding_dim} "
            f"(encoder {adapter.encoder or 'unknown'}); encode the profile with the adapter's encoder")
    adapter_encoder = _effective_encoder(adapter.encoder, adapter.embedding_dim)
    embedding_encoder = _effective_encoder(embedding.encoder, embedding.dim)
    if adapter_encoder and embedding_encoder and adapter_encoder != embedding_encoder:
        raise CompatibilityError(
            f"embedding was made by encoder '{embedding_encoder}' but adapter '{adapter.name}' was trained with "
            f"'{adapter_encoder}'; encode the profile with '{adapter_encoder}'")
