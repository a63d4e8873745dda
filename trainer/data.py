"""From the run's settings to training pairs: read and label the data, embed the users, open the cache."""
from __future__ import annotations

from pathlib import Path

from psa_core.encoders.cache import EmbeddingCache
from psa_core.encoders.structured import STRUCTURED_ENCODER, StructuredEncoder
from psa_core.profile import read_users_table
from psa_core.training.cache import CacheSettings, LatentCache, open_or_build_cache
from psa_core.training.embeddings import (
    EmbeddingSource,
    FolderEmbeddings,
    ProfileEncoderEmbeddings,
    UserTable,
    build_user_table,
)
from psa_core.training.errors import DatasetError
from psa_core.training.fingerprint import HashMemo, model_fingerprint
from psa_core.training.labelling import read_labelled_pairs, read_profiles
from psa_core.training.records import LabelledData
from psa_core.training.sage import METADATA_NAME, read_sage

from .config import TrainConfig
from .encode import TEXT_DESCRIPTION, image_encoder, text_encoder
from .models import BaseModel

PROFILE_ENCODERS = {STRUCTURED_ENCODER: StructuredEncoder}


def _user_ids(config: TrainConfig) -> list[str]:
    return [u.strip() for u in (config.users or "").split(",") if u.strip()]


def read_data(config: TrainConfig) -> LabelledData:
    path = Path(config.data)
    kind = config.data_format
    if kind == "auto":
        kind = "sage" if path.is_dir() or path.name == METADATA_NAME else "pairs"
    if kind == "sage":
        return read_sage(path, config.skip_invalid)
    if not config.profiles:
        raise DatasetError("unlabelled pairs need --profiles (users.csv, .json or .jsonl) to label them per user")
    return read_labelled_pairs(path, read_profiles(config.profiles, _user_ids(config)), config.skip_invalid)


def embedding_source(config: TrainConfig, cache_root: Path) -> EmbeddingSource:
    if config.embeddings:
        return FolderEmbeddings(config.embeddings, config.encoder)
    if not config.encoder:
        raise DatasetError("give --embeddings (a folder of {User_ID}.npy) or --encoder (e.g. "
                           f"{STRUCTURED_ENCODER}) to compute the user embeddings")
    if config.encoder not in PROFILE_ENCODERS:
        raise DatasetError(f"encoder {config.encoder!r} cannot run inside the trainer; allowed: "
                           f"{', '.join(PROFILE_ENCODERS)}; for other encoders (e.g. the reference Qwen2.5-7B) "
                           "compute {User_ID}.npy files first and pass --embeddings")
    users = None
    if config.profiles:
        if Path(config.profiles).suffix.lower() == ".csv":
            users = read_users_table(config.profiles)
        else:
            users = {p.user_id: p for p in read_profiles(config.profiles) if p.user_id}
    return ProfileEncoderEmbeddings(PROFILE_ENCODERS[config.encoder](), users,
                                    EmbeddingCache(cache_root / "embeddings"))


def cache_root(config: TrainConfig, data: LabelledData) -> Path:
    return Path(config.cache_dir) if config.cache_dir else data.root / ".psa_cache"


def user_table(config: TrainConfig, data: LabelledData) -> UserTable:
    return build_user_table(data.records, embedding_source(config, cache_root(config, data)))


def base_fingerprint(config: TrainConfig, data: LabelledData) -> str:
    memo = HashMemo(cache_root(config, data) / "file_hashes.json")
    fingerprint = model_fingerprint(config.base_model, memo)
    memo.save()
    return fingerprint


def open_cache(config: TrainConfig, base: BaseModel, data: LabelledData, fingerprint: str, resolution: int,
               device, build: bool, log=print, progress=None) -> LatentCache:
    """The latent/text cache; the main process builds it when missing (`build`), the others only open it."""
    description = f"{base.family_name}: vae posterior mean/std x scaling; {TEXT_DESCRIPTION[base.family_name]}"
    settings = CacheSettings(fingerprint, resolution, config.hflip, config.cache_dtype, description)
    state = {}

    def encoders():
        if "encoders" not in state:
            state["encoders"] = base.load_encoders()
        return state["encoders"]

    def encode_images(pixels):
        if "images" not in state:
            state["images"] = image_encoder(encoders(), device)
        return state["images"](pixels)

    def encode_texts(captions):
        if "texts" not in state:
            state["texts"] = text_encoder(encoders(), base.family_name, device)
        return state["texts"](captions)

    cache = open_or_build_cache(cache_root(config, data), settings, data, encode_images, encode_texts,
                                config.cache_batch, progress, log, build)
    state.clear()  # the VAE and text encoders are not needed for training
    return cache
