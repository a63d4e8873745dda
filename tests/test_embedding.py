"""User-embedding files: the published reference .npy files and our safetensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from psa_core import EmbeddingFileError, UserEmbedding, load_embedding, save_embedding


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
