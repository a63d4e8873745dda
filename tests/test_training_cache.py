"""The latent/text cache: computed once, reused across runs, rebuilt when the model, resolution or data change,
never half-written, and holding what the encoders compute on the transformed images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core.training.augment import load_rgb, prepare_cached_image
from psa_core.training.cache import (
    MANIFEST,
    CacheSettings,
    image_entries,
    open_or_build_cache,
)
from psa_core.training.labelling import read_labelled_pairs, read_profiles
from testkit.preference_data import write_pairs, write_profiles


class CountingEncoders:
    def __init__(self, fail_after: int | None = None):
        self.image_calls, self.text_calls, self.fail_after = 0, 0, fail_after

    def images(self, pixels):
        self.image_calls += 1
        if self.fail_after is not None and self.image_calls > self.fail_after:
            raise RuntimeError("killed mid-build")
        mean = torch.nn.functional.avg_pool2d(pixels, 4)[:, :2] * 3.0
        return mean, mean.abs() * 0.1 + 0.001

    def texts(self, captions):
        self.text_calls += 1
        return {"encoder_hidden_states": torch.tensor([[len(c), c.count(" ")] for c in captions],
                                                      dtype=torch.float32)[:, None, :],
                "text_embeds": torch.tensor([[len(c) * 0.5] for c in captions])}


def open_cache(root, data, encoders, settings: CacheSettings | None = None):
    return open_or_build_cache(root, settings or CacheSettings("model-a", 16), data, encoders.images, encoders.texts,
                               batch_size=4, log=lambda text: None)


@pytest.fixture
def data(tmp_path):
    pairs = write_pairs(tmp_path / "data", 5, size=16)
    return read_labelled_pairs(pairs, read_profiles(write_profiles(tmp_path / "data")))


def test_cache_is_built_once_and_holds_the_encoded_transformed_images(tmp_path, data):
    first = CountingEncoders()
    cache = open_cache(tmp_path / "cache", data, first)
    assert cache.built and first.image_calls == 3 and first.text_calls == 2  # 10 images in 4s; 6 captions
    entries, pairs = image_entries(data)
    assert len(entries) == 10 and len(pairs) == 10  # 5 image pairs × 2 users share the same 10 entries
    for index in (0, 7):
        entry = entries[index]
        pixels, _ = prepare_cached_image(load_rgb(data.image_path(entry.path)), entry.pair_size, 16, False)
        mean, std = CountingEncoders().images(pixels[None])
        stored = cache.entry_indices()[entry]
        for cached, computed in ((cache.means[stored, 0], mean[0].numpy()), (cache.stds[stored, 0], std[0].numpy())):
            # float16 storage rounds to nearest (relative 2⁻¹¹ in float16's normal range, which these values are
            # in); 2⁻²⁰ more allows for the float32 average of 16 pixels summed in another order in a batch
            assert cached.dtype == np.float16 and np.all(np.abs(computed) >= np.finfo(np.float16).tiny)
            assert np.all(np.abs(cached.astype(np.float64) - computed) <= (2 ** -11 + 2 ** -20) * np.abs(computed))
        assert cache.geometry[stored].original_size == (16, 16)
    assert cache.captions[0] == "" and set(cache.captions[1:]) == {r.caption for r in data.records}
    row = cache.caption_indices()[data.records[0].caption]
    assert cache.text["text_embeds"][row, 0] == len(data.records[0].caption) * 0.5

    again = CountingEncoders()
    reopened = open_cache(tmp_path / "cache", data, again)
    assert not reopened.built and again.image_calls == 0 and again.text_calls == 0
    assert reopened.directory == cache.directory


def test_cache_is_rebuilt_when_model_resolution_flip_or_data_change(tmp_path, data):
    root = tmp_path / "cache"
    base = open_cache(root, data, CountingEncoders())
    variants = [CacheSettings("model-b", 16), CacheSettings("model-a", 32), CacheSettings("model-a", 16, hflip=True)]
    directories = {base.directory}
    for settings in variants:
        counting = CountingEncoders()
        cache = open_cache(root, data, counting, settings)
        assert cache.built and counting.image_calls > 0
        directories.add(cache.directory)
    assert open_cache(root, data, CountingEncoders(), CacheSettings("model-a", 16, hflip=True)).means.shape[1] == 2
    # Same file names, new content: a different cache.
    first_image = data.image_path(data.records[0].chosen)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(first_image)
    changed = open_cache(root, data, CountingEncoders())
    assert changed.built
    directories.add(changed.directory)
    # A changed caption too.
    records = list(data.records)
    records[0] = type(records[0])(**{**records[0].__dict__, "caption": "something else"})
    recaptioned = open_cache(root, type(data)(tuple(records), data.root, data.kind), CountingEncoders())
    assert recaptioned.built
    directories.add(recaptioned.directory)
    assert len(directories) == 6
    assert all((d / MANIFEST).is_file() for d in directories)


def test_a_build_killed_half_way_leaves_no_cache(tmp_path, data):
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed mid-build"):
        open_cache(root, data, CountingEncoders(fail_after=1))
    assert not list(root.glob("psa-*")) and not list(root.glob(".psa-*"))
    counting = CountingEncoders()
    assert open_cache(root, data, counting).built and counting.image_calls == 3
    manifest = json.loads((next(root.glob(f"psa-*/{MANIFEST}"))).read_text())
    assert manifest["settings"]["model_fingerprint"] == "model-a" and len(manifest["entries"]) == 10
