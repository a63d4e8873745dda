"""Where the user embeddings of training records come from.

An embedding source turns the distinct users of the records (User_ID and user_data) into vectors `[U, E]`:
- `FolderEmbeddings`: `{User_ID}.npy` (or `.safetensors`) in a folder, the reference layout. A missing
  file is an error naming every missing user (the reference silently used a zero vector);
- `ProfileEncoderEmbeddings`: computed with a psa_core profile encoder from the user_data (SAGE user_data has
  no Banned list; a users table supplies it);
- `CallableEmbeddings`: any function user_data → vector.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..embedding import check_embedding_values, load_user_vector, user_embedding_file
from ..encoders.base import ProfileEncoder, encode_profiles
from ..encoders.cache import EmbeddingCache
from ..errors import EmbeddingFileError
from ..profile import ProfileError, UserProfile, check_user_id, profile_from_json
from .errors import DatasetError
from .records import PairRecord, unique_users

User = tuple[str, str]  # (User_ID, canonical user_data JSON)


class EmbeddingSource(Protocol):
    @property
    def encoder(self) -> str | None:
        """The encoder name the adapter records (None when unknown)."""

    def vectors(self, users: Sequence[User]) -> torch.Tensor:
        """`[U, E]` float32, row i for users[i]."""


@dataclass(frozen=True)
class UserTable:
    """The distinct users of a data set, their vectors, and which user each record belongs to."""

    user_ids: tuple[str, ...]
    vectors: torch.Tensor  # [U, E]
    record_users: tuple[int, ...]  # per record, row in `vectors`
    encoder: str | None

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def build_user_table(records: Sequence[PairRecord], source: EmbeddingSource) -> UserTable:
    users = unique_users(records)
    vectors = source.vectors(users)
    if vectors.ndim != 2 or vectors.shape[0] != len(users):
        raise DatasetError(f"embedding source returned shape {tuple(vectors.shape)} for {len(users)} users; "
                           "expected [users, dim]")
    if not torch.isfinite(vectors).all():
        raise DatasetError("user embeddings contain NaN or infinite values")
    try:
        check_embedding_values(vectors, "user embeddings")
    except EmbeddingFileError as error:
        raise DatasetError(str(error)) from None
    row = {user_id: i for i, (user_id, _) in enumerate(users)}
    return UserTable(tuple(u for u, _ in users), vectors.float().contiguous(),
                     tuple(row[r.user_id] for r in records), source.encoder)


class FolderEmbeddings:

    def __init__(self, folder: str | Path, encoder: str | None = None):
        self.folder = Path(folder)
        self._encoder = encoder
        if not self.folder.is_dir():
            raise DatasetError(f"embeddings folder not found: {self.folder}; expected {{User_ID}}.npy files")

    @property
    def encoder(self) -> str | None:
        return self._encoder

    def _file(self, user_id: str) -> Path | None:
        try:
            user_id = check_user_id(user_id)  # the id becomes a file name: never a path
        except ProfileError as error:
            raise DatasetError(f"{error}; it names the embedding file {{User_ID}}.npy in {self.folder}") from None
        return user_embedding_file(self.folder, user_id)

    def vectors(self, users: Sequence[User]) -> torch.Tensor:
        files = {user_id: self._file(user_id) for user_id, _ in users}
        missing = [user_id for user_id, path in files.items() if path is None]
        if missing:
            shown = ", ".join(f"{u}.npy" for u in missing[:20]) + (f" and {len(missing) - 20} more"
                                                                   if len(missing) > 20 else "")
            raise DatasetError(f"{len(missing)} user embedding{'s' if len(missing) != 1 else ''} missing in "
                               f"{self.folder}: {shown}; compute them with the profile encoder (the reference "
                               "would have trained these users on a zero vector)")
        rows = []
        for user_id, path in files.items():
            try:
                rows.append(load_user_vector(path))
            except EmbeddingFileError as error:
                raise DatasetError(f"user {user_id}: {error}") from None
        dims = {r.shape[0] for r in rows}
        if len(dims) > 1:
            raise DatasetError(f"embeddings in {self.folder} have different dimensions {sorted(dims)}")
        return torch.stack(rows)


class ProfileEncoderEmbeddings:
    """Encode each user's profile. SAGE `user_data` lacks Banned/Allowed: pass the users table for those."""

    def __init__(self, encoder: ProfileEncoder, users_table: Mapping[str, UserProfile] | None = None,
                 cache: EmbeddingCache | None = None):
        self.profile_encoder, self.users_table, self.cache = encoder, users_table, cache

    @property
    def encoder(self) -> str | None:
        return self.profile_encoder.name

    def vectors(self, users: Sequence[User]) -> torch.Tensor:
        profiles = []
        for user_id, user_data in users:
            try:
                profiles.append(profile_from_json(user_data, users=self.users_table))
            except ProfileError as error:
                raise DatasetError(f"user {user_id}: {error}; SAGE user_data has no Banned_Categories, so pass the "
                                   "users table (users.csv) or use an embeddings folder") from None
        return encode_profiles(self.profile_encoder, profiles, self.cache).vectors


class CallableEmbeddings:
    """Any function from the user_data mapping to a vector `[E]`."""

    def __init__(self, function: Callable[[Mapping], torch.Tensor], encoder: str | None = None):
        self.function, self._encoder = function, encoder

    @property
    def encoder(self) -> str | None:
        return self._encoder

    def vectors(self, users: Sequence[User]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.function(json.loads(data))).float().reshape(-1)
                            for _, data in users])
