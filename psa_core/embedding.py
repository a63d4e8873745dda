"""User embeddings: the vector(s) a PSA adapter is conditioned on.

Reference files are `.npy`, float32, shape `(3584,)` (or `(1, 1, 3584)` from its LLM pipeline). We also
read and write `.safetensors` with one tensor `embedding` of shape `[N, E]` and metadata naming the
encoder. Several rows make a per-image batch: row i conditions item i of the sampler batch.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .errors import CompatibilityError, EmbeddingFileError, shown
from .json_text import JSONTextError, parse_json

EMBEDDING_KEY = "embedding"
EMBEDDING_SUFFIXES = (".npy", ".safetensors", ".sft")
# The largest |value| an embedding may hold (docs/formats.md, user embeddings). The published Qwen2.5-7B embeddings
# reach |value| 75 (norm about 139); 1e4 leaves more than two orders of magnitude for other encoders, while a
# finite but absurd value (1e30 is finite in float32) would overflow the adapter's projection and sample NaN.
MAX_EMBEDDING_VALUE = 1e4
LABELS_KEY = "psa.labels"
MAX_LABEL_CHARS = 200  # a label names a profile (a User_ID, a preset, a file name)


def check_embedding_values(rows: torch.Tensor, name: str) -> None:
    """Finite as float32 and |value| <= MAX_EMBEDDING_VALUE; EmbeddingFileError naming `name`, row and value."""
    values = rows.detach().float()
    if not torch.isfinite(values).all():  # after the cast: a float64 1e300 is finite only before it
        raise EmbeddingFileError(f"{name}: embedding contains NaN or infinite values (as float32, the dtype PSA uses)")
    if values.numel() and values.abs().max().item() > MAX_EMBEDDING_VALUE:
        flat = int(values.abs().argmax())
        row, column = divmod(flat, values.shape[-1]) if values.ndim == 2 else (0, flat)
        raise EmbeddingFileError(f"{name}: embedding value {values.reshape(-1)[flat].item():.6g} (row {row}, "
                                 f"dimension {column}) is beyond the allowed magnitude; allowed: |value| <= "
                                 f"{MAX_EMBEDDING_VALUE:g} (the published embeddings stay below 100)")


def check_labels(labels: object, count: int, name: str) -> tuple[str, ...]:
    """Row labels: a list of strings, one per row (each at most MAX_LABEL_CHARS characters)."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise EmbeddingFileError(f"{name}: {LABELS_KEY} must be a list of strings, one per row, found "
                                 f"{shown(labels)}")
    if len(labels) != count:
        raise EmbeddingFileError(f"{name}: {len(labels)} label{'s' if len(labels) != 1 else ''} for {count} "
                                 f"row{'s' if count != 1 else ''}; {LABELS_KEY} must hold one label per row")
    long = next((label for label in labels if len(label) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise EmbeddingFileError(f"{name}: label {shown(long)} has {len(long)} characters; allowed: at most "
                                 f"{MAX_LABEL_CHARS}")
    return tuple(labels)


@dataclass(frozen=True)
class UserEmbedding:
    """`vectors` is `[N, E]` float32; `encoder` names what produced it (None: unknown, e.g. a bare .npy)."""

    vectors: torch.Tensor
    encoder: str | None = None
    labels: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise EmbeddingFileError(f"embedding vectors have shape {tuple(self.vectors.shape)}; expected [N, E]")
        if self.labels:
            check_labels(self.labels, self.count, "embedding")
        check_embedding_values(self.vectors, "embedding")

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def count(self) -> int:
        return self.vectors.shape[0]

    @staticmethod
    def concatenate(embeddings: Sequence["UserEmbedding"]) -> "UserEmbedding":
        """Stack several embeddings into one batch; all must share dimension and encoder."""
        if not embeddings:
            raise EmbeddingFileError("no embeddings to batch")
        dims = {e.dim for e in embeddings}
        if len(dims) > 1:
            raise CompatibilityError(f"cannot batch embeddings of different dimensions {sorted(dims)}")
        encoders = {e.encoder for e in embeddings} - {None}
        if len(encoders) > 1:
            raise CompatibilityError(f"cannot batch embeddings from different encoders {sorted(encoders)}")
        labels = tuple(label for e in embeddings for label in (e.labels or ("",) * e.count))
        return UserEmbedding(torch.cat([e.vectors for e in embeddings]), next(iter(encoders), None), labels)


def _as_rows(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(array)
    if not tensor.is_floating_point():
        raise EmbeddingFileError(f"{name}: embedding has dtype {tensor.dtype}; expected a floating-point vector")
    if tensor.ndim == 1:
        tensor = tensor[None]
    elif tensor.ndim == 3 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 2 or tensor.shape[1] == 0 or tensor.shape[0] == 0:
        raise EmbeddingFileError(f"{name}: embedding has shape {tuple(array.shape)}; expected (E,), (N, E) or "
                                 "(N, 1, E), e.g. (3584,) for the published Qwen2.5-7B embeddings")
    rows = tensor.float().contiguous()
    check_embedding_values(rows, name)
    return rows


def _file_labels(metadata: dict[str, str], count: int, name: str) -> tuple[str, ...]:
    if LABELS_KEY not in metadata:
        return ()
    try:
        labels = parse_json(metadata[LABELS_KEY])
    except JSONTextError as error:
        raise EmbeddingFileError(f"{name}: {LABELS_KEY} is not valid JSON ({error}); expected a list of strings, "
                                 f"one per row") from None
    return () if labels == [] else check_labels(labels, count, name)  # [] is what an unlabelled embedding saves


def load_embedding(path: str | Path) -> UserEmbedding:
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"embedding file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise EmbeddingFileError(f"{path.name}: not a readable .npy array ({error}); object arrays are refused "
                                     "and the file may be truncated") from error
        return UserEmbedding(_as_rows(array, path.name), labels=(path.stem,))
    if suffix in (".safetensors", ".sft"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                keys = list(handle.keys())
                key = EMBEDDING_KEY if EMBEDDING_KEY in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise EmbeddingFileError(f"{path.name}: expected one tensor named '{EMBEDDING_KEY}', found {keys}")
                tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise EmbeddingFileError(f"{path.name}: not a readable safetensors file ({error})") from error
        rows = _as_rows(tensor, path.name)
        labels = _file_labels(metadata, rows.shape[0], path.name) or (path.stem,) * rows.shape[0]
        return UserEmbedding(rows, metadata.get("psa.encoder") or None, labels, metadata)
    raise EmbeddingFileError(f"{path.name}: unsupported embedding file type {suffix!r}; "
                             f"allowed: {', '.join(EMBEDDING_SUFFIXES)}")


USER_FILE_SUFFIXES = (".npy", ".safetensors")  # a user's file in an embeddings folder: {User_ID}.npy or .safetensors


def user_embedding_file(folder: str | Path, user_id: str) -> Path | None:
    """The file of `user_id` (already checked to be a User_ID, so a plain file name) in `folder`, or None."""
    for suffix in USER_FILE_SUFFIXES:
        path = Path(folder) / f"{user_id}{suffix}"
        if path.is_file():
            return path
    return None


def load_user_vector(path: str | Path) -> torch.Tensor:
    """The one vector of a single user's embedding file ({User_ID}.npy); EmbeddingFileError for any other count."""
    embedding = load_embedding(path)
    if embedding.count != 1:
        raise EmbeddingFileError(f"{Path(path).name}: holds {embedding.count} vectors; allowed: one embedding per "
                                 f"user file")
    return embedding.vectors[0]


def save_embedding(embedding: UserEmbedding, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    metadata = {k: v for k, v in embedding.metadata.items()}
    metadata.update({"psa.format_version": "1", "psa.embedding_dim": str(embedding.dim),
                     LABELS_KEY: json.dumps(list(embedding.labels))})
    if embedding.encoder:
        metadata["psa.encoder"] = embedding.encoder
    metadata.update(extra_metadata or {})
    tensors = {EMBEDDING_KEY: embedding.vectors.detach().float().contiguous()}
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
