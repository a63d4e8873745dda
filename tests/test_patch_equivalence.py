"""PSAApply inside a real ComfyUI equals the reference processor, layer by layer, on SD1.5 and SDXL layouts.

Both sides run in float64 and are evaluated on the same latent at every sampler step: a model function wrapper
(ModelPatcher.set_model_unet_function_wrapper) calls the UNet once with the pack's patch and once with the naive
reference processors instead, and sampling goes on with the pack's prediction. The bound is derived in
tests/numerics.py (float64 rounding, then ComfyUI's own float32 rounding of each prediction)."""
from __future__ import annotations

import pytest
import torch

import tiny_models as tm
from comfy_access import attn2_output_patches
from naive_reference import install_naive_reference
from numerics import assert_same_after_float32_rounding
import psa_core

FAMILIES = ["sd15", "sdxl"]


@pytest.fixture(scope="module")
def models(folder_paths):
    return {name: tm.build_model(name, dtype=torch.float64) for name in FAMILIES}


def tiny_family(pack, name):
    return psa_core.get_family(name, tm.TINY_CHANNELS, tm.TINY_CONTEXT[name])


def apply_node(pack, model, adapter, embedding, strength=1.0, start=0.0, end=1.0):
    return pack.nodes.nodes_inference.PSAApply.execute(model, adapter, embedding, strength, start, end).result[0]


def compare_on_the_same_latents(model, psa_patch, naive_processors, family_name, steps):
    """Sample with the pack's patch; at every UNet call also evaluate the naive reference (and the plain model)
    on the same input. Returns [(input, sigmas, cond_or_uncond, {arm: denoised})] per call."""
    calls = []

    def evaluate(apply_model, args, psa_on: bool, naive_scale: float):
        (live,) = [p for p in attn2_output_patches(args["c"]["transformer_options"]) if isinstance(p, type(psa_patch))]
        live.enabled = psa_on  # the patch object of this call: ComfyUI 0.3.x copies it on every clone
        for processor in naive_processors:
            processor.scale = naive_scale
        try:
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            live.enabled = True

    def wrapper(apply_model, args):
        outputs = {"ours": evaluate(apply_model, args, True, 0.0), "naive": evaluate(apply_model, args, False, 1.0),
                   "plain": evaluate(apply_model, args, False, 0.0)}
        calls.append((args["input"], args["timestep"], args["cond_or_uncond"], outputs))
        return outputs["ours"]

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(wrapper)
    tm.sample(wrapped, family_name, steps=steps)
    return calls


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_patched_prediction_equals_reference_processor(pack, models, tmp_path, family_name, suffix):
    family = tiny_family(pack, family_name)
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    adapter = tm.in_float64(psa_core.load_adapter(tm.write_adapter(nested, tmp_path / f"adapter{suffix}")))
    vectors = torch.randn(1, tm.TINY_EMBEDDING_DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    processors: list = []
    both = install_naive_reference(models[family_name], family, nested, vectors, processors=processors)
    patched = apply_node(pack, both, adapter, psa_core.UserEmbedding(vectors))
    psa_patch = attn2_output_patches(patched)[-1]
    psa_patch.hits = set()

    steps = 3
    calls = compare_on_the_same_latents(patched, psa_patch, processors, family_name, steps)
    assert len(calls) == steps, f"{len(calls)} UNet calls for {steps} steps (cond and uncond batched together)"
    assert psa_patch.hits == {layer.comfy_key for layer in family.layers}
    for x, sigmas, cond_or_uncond, outputs in calls:
        assert sorted(cond_or_uncond) == [0, 1]
        assert_same_after_float32_rounding(outputs["ours"], outputs["naive"], x, "pack vs naive reference")
        chunk = x.shape[0] // len(cond_or_uncond)
        for position, flag in enumerate(cond_or_uncond):
            rows = slice(position * chunk, (position + 1) * chunk)
            change = ((outputs["ours"][rows] - outputs["plain"][rows]) / sigmas[rows, None, None, None]).abs().max()
            assert change > 1e-4, f"PSA changed the noise prediction of the {'uncond' if flag else 'cond'} branch " \
                                  f"by only {change:.3g}"


@pytest.mark.parametrize("family_name", FAMILIES)
def test_every_adapter_layer_is_hit_and_changes_the_output(pack, models, family_name):
    """Attn2 output patches run in the order they were added: a recorder before PSA and one after it see each
    layer's output without and with the user term (set_model_attn2_output_patch, ComfyUI's public API)."""
    family = tiny_family(pack, family_name)
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    projection = {k: v for k, v in nested["user_proj"].items()}
    weights = [nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"] for layer in family.layers]
    adapter = psa_core.LoadedAdapter(family, tm.TINY_EMBEDDING_DIM, projection, weights, name="probe")
    embedding = psa_core.UserEmbedding(torch.randn(1, tm.TINY_EMBEDDING_DIM))

    before: dict = {}
    changes: dict = {}

    def key_of(extra_options):
        return extra_options["block"][0], extra_options["block"][1], extra_options["block_index"]

    def record_before(out, extra_options):
        before[key_of(extra_options)] = out.clone()
        return out

    def record_after(out, extra_options):
        key = key_of(extra_options)
        changes[key] = max(changes.get(key, 0.0), (out - before[key]).abs().max().item())
        return out

    recorded = models[family_name].clone()
    recorded.set_model_attn2_output_patch(record_before)
    patched = apply_node(pack, recorded, adapter, embedding)
    patched.set_model_attn2_output_patch(record_after)
    tm.sample(patched, family_name, steps=1)
    expected = {layer.comfy_key for layer in family.layers}
    assert len(expected) == {"sd15": 16, "sdxl": 70}[family_name]
    assert set(changes) == expected, f"never hit: {sorted(expected - set(changes))}"
    unchanged = [key for key, change in changes.items() if change == 0.0]
    assert not unchanged, f"hit but unchanged: {unchanged}"
    assert ("middle", 0, 0) in changes
