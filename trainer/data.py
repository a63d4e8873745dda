"""From the run's settings to training pairs: read and label the data, embed the users, open the cache."""
from __future__ import annotations

from pathlib import Path

from psa_core.training.cache import LatentCache, open_or_build_cache
from psa_core.training.config import TrainingConfig
from psa_core.training.embeddings import UserTable, build_user_table
from psa_core.fingerprint import HashMemo, model_fingerprint
from psa_core.training.inputs import embedding_source, read_training_data
from psa_core.training.records import LabelledData
from psa_core.training.run import cache_settings

from .encode import TEXT_DESCRIPTION, image_encoder, text_encoder
from .models import BaseModel


def read_data(config: TrainingConfig) -> LabelledData:
    return read_training_data(config.data, config.data_format, config.profiles, config.user_ids(),
                              config.skip_invalid)


def cache_root(config: TrainingConfig, data: LabelledData) -> Path:
    return Path(config.cache_dir) if config.cache_dir else data.root / ".psa_cache"


def user_table(config: TrainingConfig, data: LabelledData) -> UserTable:
    source = embedding_source(config.embeddings, config.encoder, config.profiles, cache_root(config, data))
    return build_user_table(data.records, source)


def base_fingerprint(config: TrainingConfig, data: LabelledData) -> str:
    memo = HashMemo(cache_root(config, data) / "file_hashes.json")
    fingerprint = model_fingerprint(config.base_model, memo)
    memo.save()
    return fingerprint


def open_cache(config: TrainingConfig, base: BaseModel, data: LabelledData, fingerprint: str, resolution: int,
               device, build: bool, log=print, progress=None) -> LatentCache:
    """The latent/text cache; the main process builds it when missing (`build`), the others only open it."""
    description = f"{base.family_name}: vae posterior mean/std x scaling; {TEXT_DESCRIPTION[base.family_name]}"
    settings = cache_settings(config, fingerprint, resolution, description)
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
