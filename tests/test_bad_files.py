"""Hostile or damaged files on disk, read the way the nodes and the trainer read them: each one ends in the pack's
own error naming the file (and the tensor, line or id), never in a raw Python exception or a silent wrong value."""
from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models as tm
from psa_core import AdapterFileError, EmbeddingFileError, get_family, load_adapter, load_embedding
from psa_core.encoders import EncoderError
from psa_core.encoders.llm import estimate_weight_bytes
from psa_core.images import ImageReadError
from psa_core.training.cache import CacheSettings, open_or_build_cache
from psa_core.training.embeddings import FolderEmbeddings, build_user_table
from psa_core.training.errors import DatasetError
from psa_core.training.inputs import embedding_source, read_training_data
from testkit.preference_data import write_pairs, write_profiles

FAMILY = get_family("sd15", 8, 16, channel_mult=(1, 1, 1, 1))


def adapter_file(path, poison: str | None = None, value: float = float("nan")):
    nested = tm.random_adapter_tensors(FAMILY, 12)
    if poison:
        group, key = poison.split(".", 1)
        nested[group][key].view(-1)[3] = value
    return tm.write_adapter(nested, path)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@pytest.mark.parametrize("tensor, value", [("psa_adapter.5.to_v_user.0.weight", float("nan")),
                                           ("user_proj.proj.weight", float("inf")),
                                           ("user_proj.norm.bias", float("-inf"))])
def test_adapter_with_non_finite_weights_is_refused_at_load(tmp_path, suffix, tensor, value):
    assert load_adapter(adapter_file(tmp_path / f"good{suffix}")).family.num_layers == 16
    path = adapter_file(tmp_path / f"poisoned{suffix}", tensor, value)
    with pytest.raises(AdapterFileError, match=rf"poisoned{suffix}: tensor {tensor} contains NaN or infinite"):
        load_adapter(path)


def test_float64_embedding_that_overflows_float32_is_refused(tmp_path):
    np.save(tmp_path / "huge.npy", np.full(3584, 1e300, dtype=np.float64))
    with pytest.raises(EmbeddingFileError, match="huge.npy: embedding contains NaN or infinite values"):
        load_embedding(tmp_path / "huge.npy")
    # 1e30 is finite in float32 but beyond the magnitude bound (test_embedding.py: the bound and its derivation).
    np.save(tmp_path / "absurd.npy", np.full(3584, 1e30, dtype=np.float64))
    with pytest.raises(EmbeddingFileError, match=r"absurd.npy: embedding value 1e\+30 .*allowed: \|value\| <= 10000"):
        load_embedding(tmp_path / "absurd.npy")


def sage_folder(folder, user_id: object):
    folder.mkdir(parents=True)
    for name, colour in (("user_a_hate_x_00001_s.png", 10), ("user_a_hate_x_00001_u.png", 200)):
        Image.new("RGB", (16, 16), (colour,) * 3).save(folder / name)
    line = {"chosen": "user_a_hate_x_00001_s.png", "rejected": "user_a_hate_x_00001_u.png", "caption": "a poster",
            "user_data": {"User_ID": user_id, "Age": 30, "Gender": "male"}}
    (folder / "metadata.jsonl").write_text(json.dumps(line) + "\n")
    return folder


def test_sage_user_id_cannot_choose_a_file_outside_the_embeddings_folder(tmp_path):
    embeddings = tmp_path / "models" / "psa_embeddings" / "reference"
    embeddings.mkdir(parents=True)
    np.save(embeddings / "0000007.npy", np.ones(8, np.float32))
    (tmp_path / "models" / "elsewhere").mkdir()
    np.save(tmp_path / "models" / "elsewhere" / "x.npy", np.full(8, 5.0, np.float32))  # what the id points at

    good = read_training_data(sage_folder(tmp_path / "good", 7))
    assert build_user_table(good.records, embedding_source(embeddings, None, None, tmp_path)).user_ids == ("0000007",)
    with pytest.raises(DatasetError, match=r"(?s)metadata.jsonl: 1 malformed line.*line 1: User_ID "
                                           r"'../../elsewhere/x' is not allowed; allowed: up to 7 digits"):
        read_training_data(sage_folder(tmp_path / "bad", "../../elsewhere/x"))
    with pytest.raises(DatasetError, match=r"User_ID '../../elsewhere/x' is not allowed.*names the embedding file"):
        FolderEmbeddings(embeddings).vectors([("../../elsewhere/x", "{}")])


def test_image_names_in_data_stay_inside_its_folder_when_contained(tmp_path):
    pairs = write_pairs(tmp_path / "data", 2, size=16)
    profiles = write_profiles(tmp_path / "data")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(outside)
    lines = pairs.read_text().splitlines()
    lines[1] = lines[1].replace(json.loads(lines[1])["safe"], str(outside))
    pairs.write_text("\n".join(lines) + "\n")
    assert len(read_training_data(pairs, "pairs", profiles).records) == 4  # the trainer reads absolute names
    with pytest.raises(DatasetError, match="line 2: 'safe' leaves the data folder"):
        read_training_data(pairs, "pairs", profiles, contained=True)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 4))
            + chunk(b"IEND", b""))


class PoolEncoders:
    def images(self, pixels):
        mean = torch.nn.functional.avg_pool2d(pixels, 4)
        return mean, mean.abs() + 0.1

    def texts(self, captions):
        return {"encoder_hidden_states": torch.zeros(len(captions), 1, 2)}


@pytest.mark.parametrize("damage", ["decompression bomb", "truncated"])
def test_damaged_images_name_the_file_in_the_cache_build(tmp_path, damage):
    pairs = write_pairs(tmp_path / "data", 2, size=16)
    data = read_training_data(pairs, "pairs", write_profiles(tmp_path / "data"))
    victim = data.image_path(data.records[-1].rejected)
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-40])
    else:
        victim.write_bytes(png_claiming(60000, 60000))  # 3.6e9 pixels: over twice PIL's bomb limit
    encoders = PoolEncoders()
    with pytest.raises(ImageReadError, match=rf"image {victim}: "):
        open_or_build_cache(tmp_path / "cache", CacheSettings("model", 16), data, encoders.images, encoders.texts,
                            log=lambda text: None)


@pytest.mark.parametrize("content, problem", [
    (b"\x01\x02", "shorter than its header length"),
    (struct.pack("<Q", 1 << 60) + b"{}", "its header claims 1152921504606846976 bytes of 10"),
    (struct.pack("<Q", 5) + b"{nope", "not a safetensors file (header: Expecting property name"),
    (struct.pack("<Q", 40) + json.dumps({"w": {"dtype": "F32", "shape": "big"}}).encode().ljust(40),
     "tensor 'w' has no valid shape and dtype"),
    (struct.pack("<Q", 4000) + (b"[" * 4000), "nested more than 64 levels deep"),
])
def test_llm_weight_size_estimate_reports_a_damaged_safetensors_file(tmp_path, content, problem):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(EncoderError, match=rf"model.safetensors: .*{re.escape(problem)}"):
        estimate_weight_bytes(tmp_path, torch.bfloat16)
