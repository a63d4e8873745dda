"""The three inference nodes through ComfyUI's model folders, with real files and clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import tiny_models as tm
import psa_core


@pytest.fixture(scope="module")
def sd15_model(folder_paths):
    return tm.build_model("sd15")


def nodes(pack):
    return pack.nodes.nodes_inference


def test_loaders_list_and_load_files_from_the_model_folders(pack, model_folders, sd15_model, reference):
    family = psa_core.get_family("sd15", tm.TINY_CHANNELS, tm.TINY_CONTEXT["sd15"])
    tm.write_adapter(tm.random_adapter_tensors(family, 3584), model_folders["psa"] / "tiny_psa.safetensors")
    shutil.copy(reference / "embeddings" / "0000001.npy", model_folders["psa_embeddings"] / "0000001.npy")
    schema = nodes(pack).PSALoadAdapter.define_schema()
    assert "tiny_psa.safetensors" in schema.inputs[0].options
    assert "0000001.npy" in nodes(pack).PSALoadEmbedding.define_schema().inputs[0].options
    adapter = nodes(pack).PSALoadAdapter.execute("tiny_psa.safetensors").result[0]
    embedding = nodes(pack).PSALoadEmbedding.execute("0000001.npy").result[0]
    patched = nodes(pack).PSAApply.execute(sd15_model, adapter, embedding, 1.0, 0.0, 1.0).result[0]
    plain, _ = tm.sample(sd15_model, "sd15", steps=1)
    with_psa, _ = tm.sample(patched, "sd15", steps=1)
    assert torch.isfinite(with_psa).all() and (with_psa - plain).abs().max() > 1e-3
    fingerprint = nodes(pack).PSALoadAdapter.fingerprint_inputs("tiny_psa.safetensors")
    (model_folders["psa"] / "tiny_psa.safetensors").touch()
    import os
    os.utime(model_folders["psa"] / "tiny_psa.safetensors", ns=(1, 1))
    assert nodes(pack).PSALoadAdapter.fingerprint_inputs("tiny_psa.safetensors") != fingerprint


def test_family_mismatch_names_both(pack, tmp_path, sd15_model):
    sdxl = psa_core.get_family("sdxl")
    projection = {"proj.weight": torch.zeros(2048, 3584), "proj.bias": torch.zeros(2048),
                  "norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048)}
    adapter = psa_core.LoadedAdapter(sdxl, 3584, projection, [], name="psa_sdxl.safetensors")
    embedding = psa_core.UserEmbedding(torch.zeros(1, 3584))
    with pytest.raises(psa_core.CompatibilityError,
                       match=r"adapter 'psa_sdxl.safetensors' is for SDXL \(70 cross-attention layers, context 2048\) "
                             r"but the model is SD1.5 \(16 cross-attention layers, context 64\)"):
        nodes(pack).PSAApply.execute(sd15_model, adapter, embedding, 1.0, 0.0, 1.0)


def test_embedding_dimension_mismatch_names_both(pack, tmp_path, sd15_model):
    family = psa_core.get_family("sd15", tm.TINY_CHANNELS, tm.TINY_CONTEXT["sd15"])
    adapter = psa_core.load_adapter(tm.write_adapter(tm.random_adapter_tensors(family, 3584),
                                                          tmp_path / "a.safetensors"))
    np.save(tmp_path / "short.npy", np.zeros(1024, np.float32))
    embedding = psa_core.load_embedding(tmp_path / "short.npy")
    with pytest.raises(psa_core.CompatibilityError,
                       match="embedding has 1024 dimensions but adapter 'a.safetensors' expects 3584"):
        nodes(pack).PSAApply.execute(sd15_model, adapter, embedding, 1.0, 0.0, 1.0)


def test_missing_file_and_bad_window(pack, model_folders):
    with pytest.raises(Exception, match="nothing.safetensors"):
        nodes(pack).PSALoadAdapter.execute("nothing.safetensors")
    assert "must not be larger" in nodes(pack).PSAApply.validate_inputs(start_percent=0.8, end_percent=0.2)
    assert nodes(pack).PSAApply.validate_inputs(start_percent=0.2, end_percent=0.8) is True


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), 11.0])
def test_apply_checks_the_strength_it_is_given_when_it_runs(pack, sd15_model, strength):
    """What a link delivers is only known at run time: a NaN or out-of-range strength never reaches the model."""
    nodes = pack.nodes.nodes_inference
    family = psa_core.get_family("sd15", tm.TINY_CHANNELS, tm.TINY_CONTEXT["sd15"])
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    adapter = psa_core.LoadedAdapter(family, tm.TINY_EMBEDDING_DIM, dict(nested["user_proj"]),
                                          [nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"]
                                           for layer in family.layers])
    embedding = psa_core.UserEmbedding(torch.zeros(1, tm.TINY_EMBEDDING_DIM))
    with pytest.raises(psa_core.PSAError, match="strength .* allowed: a finite number from -10 to 10"):
        nodes.PSAApply.execute(sd15_model, adapter, embedding, strength, 0.0, 1.0)


def test_apply_refuses_a_user_token_past_the_bound_before_sampling(pack, sd15_model):
    nodes = pack.nodes.nodes_inference
    family = psa_core.get_family("sd15", tm.TINY_CHANNELS, tm.TINY_CONTEXT["sd15"])
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    weights = [nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"] for layer in family.layers]
    embedding = psa_core.UserEmbedding(torch.ones(2, tm.TINY_EMBEDDING_DIM), labels=("a", "b"))
    ordinary = psa_core.LoadedAdapter(family, tm.TINY_EMBEDDING_DIM, dict(nested["user_proj"]), weights)
    nodes.PSAApply.execute(sd15_model, ordinary, embedding, 1.0, 0.0, 1.0)  # the same embedding fits this one
    wild = dict(nested["user_proj"], **{"proj.weight": nested["user_proj"]["proj.weight"] * 1e14})
    adapter = psa_core.LoadedAdapter(family, tm.TINY_EMBEDDING_DIM, wild, weights, name="wild.safetensors")
    with pytest.raises(psa_core.CompatibilityError, match=r"embedding row 0 \('a'\): adapter 'wild.safetensors' "
                                                          r"projects it to a user token of magnitude .* allowed: at "
                                                          r"most 1e\+12"):
        nodes.PSAApply.execute(sd15_model, adapter, embedding, 1.0, 0.0, 1.0)
