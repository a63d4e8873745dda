"""PSAApply inside a real ComfyUI equals the reference processor, layer by layer, on SD1.5 and SDXL layouts."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
from naive_reference import install_naive_reference

FAMILIES = ["sd15", "sdxl"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models(comfy):
    return {name: tm.build_model(name) for name in FAMILIES}


def tiny_family(pack, name):
    return pack.psa_core.get_family(name, tm.TINY_CHANNELS, tm.TINY_CONTEXT[name])


def apply_node(pack, model, adapter, embedding, strength=1.0, start=0.0, end=1.0):
    return pack.nodes.nodes_inference.PSAApply.execute(model, adapter, embedding, strength, start, end).result[0]


def psa_patch(model):
    return model.model_options["transformer_options"]["patches"]["attn2_output_patch"][-1]


def assert_close(actual, expected, tolerance=TOLERANCE):
    """|diff| ≤ tolerance, relative to the values' scale where that exceeds 1."""
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= tolerance * scale, f"max |diff| {error:.3g} > {tolerance} x scale {scale:.3g}"


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_patched_prediction_equals_reference_processor(pack, models, tmp_path, family_name, suffix):
    family = tiny_family(pack, family_name)
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    adapter = pack.psa_core.load_adapter(tm.write_adapter(nested, tmp_path / f"adapter{suffix}"))
    vectors = torch.randn(1, tm.TINY_EMBEDDING_DIM, generator=torch.Generator().manual_seed(5)) * 3
    embedding = pack.psa_core.UserEmbedding(vectors)
    base = models[family_name]

    ours, ours_steps = tm.sample(apply_node(pack, base, adapter, embedding), family_name)
    naive, naive_steps = tm.sample(install_naive_reference(base, family, nested, vectors), family_name)
    plain, plain_steps = tm.sample(base, family_name)

    for (cond, uncond), (ref_cond, ref_uncond), (plain_cond, plain_uncond) in zip(ours_steps, naive_steps, plain_steps):
        assert_close(cond, ref_cond)
        assert_close(uncond, ref_uncond)
        assert (cond - plain_cond).abs().max() > 1e-3, "PSA changed nothing in the cond branch"
        assert (uncond - plain_uncond).abs().max() > 1e-3, "the null user changed nothing in the uncond branch"
    assert_close(ours, naive)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_every_adapter_layer_is_hit_and_changes_the_output(pack, models, family_name):
    family = tiny_family(pack, family_name)
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    projection = {k: v for k, v in nested["user_proj"].items()}
    weights = [nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"] for layer in family.layers]
    adapter = pack.psa_core.LoadedAdapter(family, tm.TINY_EMBEDDING_DIM, projection, weights, name="probe")
    embedding = pack.psa_core.UserEmbedding(torch.randn(1, tm.TINY_EMBEDDING_DIM))
    patched = apply_node(pack, models[family_name], adapter, embedding)
    patch = psa_patch(patched)

    changes: dict = {}
    original_call = type(patch).__call__

    def probe(out, extra_options):
        result = original_call(patch, out, extra_options)
        key = (extra_options["block"][0], extra_options["block"][1], extra_options["block_index"])
        changes[key] = max(changes.get(key, 0.0), (result - out).abs().max().item())
        return result

    patched.model_options["transformer_options"]["patches"]["attn2_output_patch"][-1] = probe
    tm.sample(patched, family_name, steps=1)
    expected = {layer.comfy_key for layer in family.layers}
    assert len(expected) == {"sd15": 16, "sdxl": 70}[family_name]
    assert set(changes) == expected, f"never hit: {sorted(expected - set(changes))}"
    unchanged = [key for key, change in changes.items() if change == 0.0]
    assert not unchanged, f"hit but unchanged: {unchanged}"
    assert ("middle", 0, 0) in changes
