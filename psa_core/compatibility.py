"""Checks that an embedding fits an adapter."""
from __future__ import annotations

import torch

from .adapter import MAX_PROJECTED_VALUE, LoadedAdapter, project_users, projected_magnitude
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
    check_projected_tokens(adapter, embedding)


def check_projected_tokens(adapter: LoadedAdapter, embedding: UserEmbedding) -> None:
    """Each row's user token, `P e + b` before its LayerNorm, must stay within MAX_PROJECTED_VALUE and the token
    must be finite: checked before sampling (PSA Apply, generate), so a token that would give NaN latents is
    refused with the row and the value named."""
    magnitudes = projected_magnitude(embedding.vectors, adapter.projection)
    worst = int(magnitudes.argmax())
    tokens_finite = bool(torch.isfinite(project_users(embedding.vectors, adapter.projection)).all())
    if magnitudes[worst].item() > MAX_PROJECTED_VALUE or not tokens_finite:
        label = f" ({embedding.labels[worst]!r})" if embedding.labels and embedding.labels[worst] else ""
        raise CompatibilityError(
            f"embedding row {worst}{label}: adapter '{adapter.name}' projects it to a user token of magnitude "
            f"{magnitudes[worst].item():.6g} before its LayerNorm{'' if tokens_finite else ' (not finite after it)'};"
            f" allowed: at most {MAX_PROJECTED_VALUE:g}. The embedding does not suit this adapter: encode the "
            f"profile with the adapter's encoder")
