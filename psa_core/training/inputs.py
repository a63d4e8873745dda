"""From paths and names to training inputs: the labelled records and where their users' embeddings come from.

Shared by the trainer's command line and the ComfyUI dataset/training nodes, so the same folder means the same
data in both.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..encoders.cache import EmbeddingCache
from ..encoders.structured import STRUCTURED_ENCODER, StructuredEncoder
from ..profile import read_users_table
from .embeddings import EmbeddingSource, FolderEmbeddings, ProfileEncoderEmbeddings
from .errors import DatasetError
from .labelling import read_labelled_pairs, read_profiles
from .records import LabelledData
from .sage import METADATA_NAME, read_sage

DATA_FORMATS = ("auto", "sage", "pairs")
PROFILE_ENCODERS = {STRUCTURED_ENCODER: StructuredEncoder}


def read_training_data(path: str | Path, data_format: str = "auto", profiles: str | Path | None = None,
                       user_ids: Sequence[str] = (), skip_invalid: bool = False,
                       contained: bool = False) -> LabelledData:
    """A SAGE folder (or its metadata.jsonl), or an unlabelled pairs file labelled once per profile. With
    `contained`, image names must stay inside the data's folder (the nodes read nothing outside ComfyUI's)."""
    path = Path(path)
    if data_format not in DATA_FORMATS:
        raise DatasetError(f"data format {data_format!r} is not allowed; allowed: {', '.join(DATA_FORMATS)}")
    kind = data_format
    if kind == "auto":
        kind = "sage" if path.is_dir() or path.name == METADATA_NAME else "pairs"
    if kind == "sage":
        return read_sage(path, skip_invalid, contained)
    if not profiles:
        raise DatasetError("unlabelled pairs need profiles (users.csv, .json or .jsonl) to label them per user")
    return read_labelled_pairs(path, read_profiles(profiles, user_ids), skip_invalid, contained)


def embedding_source(embeddings: str | Path | None, encoder: str | None, profiles: str | Path | None,
                     cache_root: Path) -> EmbeddingSource:
    """`{User_ID}.npy` files from a folder, or a profile encoder that runs in-process (the structured one)."""
    if embeddings:
        return FolderEmbeddings(embeddings, encoder)
    if not encoder:
        raise DatasetError("give an embeddings folder ({User_ID}.npy files) or a profile encoder (e.g. "
                           f"{STRUCTURED_ENCODER}) to compute the user embeddings")
    if encoder not in PROFILE_ENCODERS:
        raise DatasetError(f"encoder {encoder!r} cannot run inside training; allowed: {', '.join(PROFILE_ENCODERS)}; "
                           "for other encoders (e.g. the reference Qwen2.5-7B) compute {User_ID}.npy files first "
                           "and use them as the embeddings folder")
    users = None
    if profiles:
        if Path(profiles).suffix.lower() == ".csv":
            users = read_users_table(profiles)
        else:
            users = {p.user_id: p for p in read_profiles(profiles) if p.user_id}
    return ProfileEncoderEmbeddings(PROFILE_ENCODERS[encoder](), users, EmbeddingCache(cache_root / "embeddings"))
