"""User-embedding files: the published reference .npy files and our safetensors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from psa_core import (
    CompatibilityError,
    EmbeddingFileError,
    LoadedAdapter,
    UserEmbedding,
    check_embedding_fits,
    get_family,
    load_embedding,
    save_embedding,
)
from psa_core.adapter import MAX_PROJECTED_VALUE
from psa_core.embedding import MAX_EMBEDDING_VALUE


def test_published_embeddings_load_with_their_documented_properties(reference):
    first = load_embedding(reference / "embeddings" / "0000001.npy")
    second = load_embedding(reference / "embeddings" / "0000002.npy")
    for embedding in (first, second):
        assert embedding.vectors.shape == (1, 3584) and embedding.vectors.dtype == torch.float32
        assert embedding.encoder is None
        assert 137 < embedding.vectors.norm() < 140                                   # docs/profiles.md §5
        assert torch.equal(embedding.vectors, embedding.vectors.bfloat16().float())  # bf16-exact values
        assert -80 < embedding.vectors[0, 46] < -70 and 45 < embedding.vectors[0, 1069] < 55
    cosine = torch.nn.functional.cosine_similarity(first.vectors, second.vectors).item()
    assert 0.99 < cosine < 0.999
    assert first.labels == ("0000001",)


def test_reference_shapes_are_accepted(tmp_path, reference):
    vector = np.load(reference / "embeddings" / "0000001.npy")
    np.save(tmp_path / "nested.npy", vector.reshape(1, 1, 3584))
    assert torch.equal(load_embedding(tmp_path / "nested.npy").vectors, torch.from_numpy(vector)[None])


def test_safetensors_round_trip_keeps_rows_encoder_and_labels(tmp_path):
    embedding = UserEmbedding(torch.randn(3, 16), "structured-v1", ("a", "b", "c"))
    loaded = load_embedding(save_embedding(embedding, tmp_path / "batch.safetensors"))
    assert torch.equal(loaded.vectors, embedding.vectors)
    assert loaded.encoder == "structured-v1" and loaded.labels == ("a", "b", "c")


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3, 4), np.float32), r"shape \(2, 3, 4\); expected \(E,\), \(N, E\) or \(N, 1, E\)"),
    (np.zeros(5, np.int64), "dtype torch.int64; expected a floating-point vector"),
    (np.array([1.0, np.nan], np.float32), "NaN or infinite"),
    (np.zeros((0, 8), np.float32), r"shape \(0, 8\)"),
])
def test_bad_arrays_are_named(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(EmbeddingFileError, match=f"bad.npy: .*{message}"):
        load_embedding(tmp_path / "bad.npy")


def test_pickled_and_missing_files_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(EmbeddingFileError, match="objects.npy: not a readable .npy array.*object arrays are refused"):
        load_embedding(tmp_path / "objects.npy")
    with pytest.raises(EmbeddingFileError, match="embedding file not found"):
        load_embedding(tmp_path / "0000003.npy")
    (tmp_path / "e.pt").write_bytes(b"x")
    with pytest.raises(EmbeddingFileError, match=r"unsupported embedding file type '.pt'; allowed: .npy"):
        load_embedding(tmp_path / "e.pt")


# ---- magnitude bounds (docs/formats.md, user embeddings) ----

def test_the_value_bound_is_orders_of_magnitude_above_the_published_embeddings(reference):
    # The bound's derivation, checked against the data it is derived from: the published embeddings reach 75.
    largest = max(load_embedding(reference / "embeddings" / f"000000{i}.npy").vectors.abs().max().item()
                  for i in (1, 2))
    assert 70 < largest < 80 and MAX_EMBEDDING_VALUE >= 100 * largest
    assert MAX_EMBEDDING_VALUE == 1e4


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_an_absurd_but_finite_embedding_is_refused_at_load_naming_file_and_value(tmp_path, suffix):
    vector = np.linspace(-1, 1, 64, dtype=np.float32)
    vector[17] = 1e30  # finite in float32; it made PSA Apply sample NaN latents
    path = tmp_path / f"absurd{suffix}"
    if suffix == ".npy":
        np.save(path, vector)
    else:
        save_file({"embedding": torch.from_numpy(vector)[None]}, str(path))
    with pytest.raises(EmbeddingFileError, match=rf"^absurd{suffix}: embedding value 1e\+30 \(row 0, dimension 17\) "
                                                 r"is beyond the allowed magnitude; allowed: \|value\| <= 10000"):
        load_embedding(path)
    vector[17] = -MAX_EMBEDDING_VALUE  # the bound itself loads; just past it does not
    np.save(tmp_path / "edge.npy", vector)
    assert load_embedding(tmp_path / "edge.npy").vectors[0, 17].item() == -MAX_EMBEDDING_VALUE
    vector[17] = -MAX_EMBEDDING_VALUE * 1.001
    np.save(tmp_path / "past.npy", vector)
    with pytest.raises(EmbeddingFileError, match=r"past.npy: embedding value -10010"):
        load_embedding(tmp_path / "past.npy")
    with pytest.raises(EmbeddingFileError, match=r"embedding value 1e\+30"):  # made in memory (a node, an encoder)
        UserEmbedding(torch.full((1, 8), 1e30))


def small_adapter(scale: float) -> LoadedAdapter:
    family = get_family("sd15", 32, 64)
    generator = torch.Generator().manual_seed(0)
    projection = {"proj.weight": torch.randn(64, 16, generator=generator) * scale, "proj.bias": torch.zeros(64),
                  "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)}
    return LoadedAdapter(family, 16, projection, [], name="probe.safetensors")


def test_a_user_token_beyond_the_bound_is_refused_before_sampling():
    embedding = UserEmbedding(torch.tensor([[1.0] * 16, [MAX_EMBEDDING_VALUE] * 16]), labels=("ok", "big"))
    check_embedding_fits(small_adapter(1.0), embedding)  # |P e| about 4e4 at most: far inside the bound
    with pytest.raises(CompatibilityError, match=r"embedding row 1 \('big'\): adapter 'probe.safetensors' projects it "
                                                 r"to a user token of magnitude .*e\+(1[2-9]|[2-9]\d).* allowed: at "
                                                 r"most 1e\+12"):
        check_embedding_fits(small_adapter(1e9), embedding)  # |P e| about 1e13..1e14 (16 terms of 1e4 x 1e9)
    # Without the bound: the same token overflows the LayerNorm's fp32 variance and gives NaN (what it prevents).
    from psa_core import project_users
    assert not torch.isfinite(project_users(UserEmbedding(torch.full((1, 16), 1e4)).vectors,
                                            small_adapter(1e16).projection)).all()
    assert MAX_PROJECTED_VALUE == 1e12


# ---- row labels (psa.labels) ----

def labelled_file(path, rows: int, labels_text: str | None):
    metadata = {"psa.format_version": "1"} | ({"psa.labels": labels_text} if labels_text is not None else {})
    save_file({"embedding": torch.zeros(rows, 8)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("labels_text, message", [
    (json.dumps(["a", "b", "c", "d"]), "4 labels for 2 rows; psa.labels must hold one label per row"),
    (json.dumps(["a"]), "1 label for 2 rows"),
    (json.dumps(["a", 2]), "psa.labels must be a list of strings, one per row, found \\['a', 2\\]"),
    (json.dumps({"0": "a", "1": "b"}), "psa.labels must be a list of strings"),
    (json.dumps("ab"), "psa.labels must be a list of strings"),
    ("[\"a\", ", "psa.labels is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "psa.labels is not valid JSON .*nested more than 64"),
    (json.dumps(["x" * 201, "b"]), "label 'x+\\.\\.\\.x+' has 201 characters; allowed: at most 200"),
], ids=["4-for-2", "1-for-2", "not-strings", "object", "string", "malformed", "deeply-nested", "too-long"])
def test_bad_row_labels_are_refused_naming_the_file(tmp_path, labels_text, message):
    path = labelled_file(tmp_path / "labelled.safetensors", 2, labels_text)
    with pytest.raises(EmbeddingFileError, match=f"^labelled.safetensors: {message}"):
        load_embedding(path)


def test_row_labels_stay_one_per_row_through_batching(tmp_path):
    two = load_embedding(labelled_file(tmp_path / "two.safetensors", 2, json.dumps(["a", "b"])))
    unlabelled = load_embedding(labelled_file(tmp_path / "none.safetensors", 1, None))
    empty = load_embedding(labelled_file(tmp_path / "empty.safetensors", 3, "[]"))  # what an unlabelled one saves
    assert two.labels == ("a", "b") and unlabelled.labels == ("none",) and empty.labels == ("empty",) * 3
    batch = UserEmbedding.concatenate([two, unlabelled, UserEmbedding(torch.zeros(2, 8))])
    assert batch.count == 5 and batch.labels == ("a", "b", "none", "", "")
    with pytest.raises(EmbeddingFileError, match="4 labels for 2 rows"):
        UserEmbedding(torch.zeros(2, 8), labels=("a", "b", "c", "d"))
    reloaded = load_embedding(save_embedding(batch, tmp_path / "batch.safetensors"))
    assert reloaded.labels == batch.labels and reloaded.count == 5
