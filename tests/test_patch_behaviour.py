"""How the PSA patch behaves inside ComfyUI: strength, window, cloning, LoRA, other patches, batches.

The model and the adapter are float64, so that comparisons with the naive reference (or between two ways of
computing the same thing) hold to a derived bound on any CPU: each is a one-step sampling, where both sides
see the same latent, checked with tests/numerics.py."""
from __future__ import annotations

import copy

import pytest
import torch

import tiny_models as tm
from comfy_access import attn2_output_patches
from naive_reference import install_naive_reference
from numerics import assert_same_after_float32_rounding
import psa_core

FAMILY = "sd15"


@pytest.fixture(scope="module")
def setup(pack, tmp_path_factory):
    family = psa_core.get_family(FAMILY, tm.TINY_CHANNELS, tm.TINY_CONTEXT[FAMILY])
    nested = tm.random_adapter_tensors(family, tm.TINY_EMBEDDING_DIM)
    path = tm.write_adapter(nested, tmp_path_factory.mktemp("adapter") / "adapter.safetensors")
    adapter = tm.in_float64(psa_core.load_adapter(path))
    vectors = torch.randn(1, tm.TINY_EMBEDDING_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return {"model": tm.build_model(FAMILY, dtype=torch.float64), "family": family, "nested": nested, "adapter": adapter,
            "embedding": psa_core.UserEmbedding(vectors), "vectors": vectors}


def apply(pack, setup, model=None, strength=1.0, start=0.0, end=1.0, embedding=None):
    return pack.nodes.nodes_inference.PSAApply.execute(
        model or setup["model"], setup["adapter"], embedding or setup["embedding"], strength, start, end).result[0]


def max_diff(a, b):
    return (a - b).abs().max().item()


def one_step(model, **options):
    """One sampler step: [(cond_denoised, uncond_denoised, x)] as ComfyUI computed them."""
    return tm.sample(model, FAMILY, steps=1, denoised=True, **options)[1]


def assert_same_step(actual, expected, what):
    for (cond, uncond, x), (ref_cond, ref_uncond, ref_x) in zip(actual, expected, strict=True):
        assert torch.equal(x, ref_x), "the two runs did not start from the same latent"
        assert_same_after_float32_rounding(cond, ref_cond, x, f"{what}, cond")
        assert_same_after_float32_rounding(uncond, ref_uncond, x, f"{what}, uncond")


def test_strength_zero_is_bit_identical(pack, setup):
    plain, plain_steps = tm.sample(setup["model"], FAMILY)
    zero, zero_steps = tm.sample(apply(pack, setup, strength=0.0), FAMILY)
    assert torch.equal(plain, zero)
    for (c0, u0), (c1, u1) in zip(plain_steps, zero_steps):
        assert torch.equal(c0, c1) and torch.equal(u0, u1)


def test_strength_scales_the_user_term_linearly(pack, setup):
    _, plain = tm.sample(setup["model"], FAMILY, steps=1)
    _, one = tm.sample(apply(pack, setup, strength=1.0), FAMILY, steps=1)
    _, minus = tm.sample(apply(pack, setup, strength=-1.0), FAMILY, steps=1)
    effect = one[0][0] - plain[0][0]
    assert effect.abs().max() > 1e-3
    # Not exactly linear (the UNet after the layer is not), but a negative strength pushes the other way.
    assert torch.sign((minus[0][0] - plain[0][0]).flatten() @ effect.flatten()) < 0


def test_outside_the_window_nothing_changes(pack, setup):
    steps = 4
    _, plain = tm.sample(setup["model"], FAMILY, steps=steps)
    _, late = tm.sample(apply(pack, setup, start=0.5, end=1.0), FAMILY, steps=steps)
    _, early = tm.sample(apply(pack, setup, start=0.0, end=0.5), FAMILY, steps=steps)
    for step in range(2):  # sigmas above the 50% point: PSA inactive, predictions bit-identical
        assert torch.equal(late[step][0], plain[step][0]) and torch.equal(late[step][1], plain[step][1])
        assert max_diff(early[step][0], plain[step][0]) > 1e-3
    for step in range(2, steps):  # and the other way round below it
        assert max_diff(late[step][0], plain[step][0]) > 1e-4


def test_input_model_is_unchanged(pack, setup):
    model = setup["model"]
    before_options = copy.deepcopy(model.model_options)
    before_state = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    _, before = tm.sample(model, FAMILY, steps=1)
    patched = apply(pack, setup)
    tm.sample(patched, FAMILY, steps=1)
    _, after = tm.sample(model, FAMILY, steps=1)
    assert model.model_options == before_options
    assert "attn2_output_patch" not in model.model_options.get("transformer_options", {}).get("patches", {})
    assert patched is not model
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    assert torch.equal(before[0][0], after[0][0])


def test_a_clone_samples_alike_and_shares_the_adapter_values(pack, setup):
    """ComfyUI clones models freely (0.3.x deep-copies patch objects, 0.28 shares them): a clone must sample as the
    patched model does and must not copy the adapter's values."""
    patched = apply(pack, setup)
    clone = patched.clone()
    assert torch.equal(tm.sample(clone, FAMILY)[0], tm.sample(patched, FAMILY)[0])
    original, copied = attn2_output_patches(patched)[0], attn2_output_patches(clone)[0]
    assert all(copied.values[key].data_ptr() == original.values[key].data_ptr() for key in original.values)
    assert all(copied.outputs[key] is original.outputs[key] for key in original.outputs)
    assert copied.models() == [] and copied.to(torch.device("cpu")) is copied and copied.to(torch.float16) is copied
    deep = copy.deepcopy(patched.model_options)["transformer_options"]["patches"]["attn2_output_patch"][0]
    assert deep.values is original.values, "a deep copy of model_options copied the adapter's values"


def test_uncond_first_chunk_order(pack, setup):
    patch = attn2_output_patches(apply(pack, setup))[0]
    key = ("input", 1, 0)
    out = torch.zeros(4, 5, setup["family"].layers[0].hidden, dtype=torch.float64)
    options = {"block": ("input", 1), "block_index": 0, "sigmas": torch.ones(2), "psa_roles": ["user", "null user"]}
    cond_first = patch(out, {**options, "cond_or_uncond": [0, 1]})
    uncond_first = patch(out, {**options, "cond_or_uncond": [1, 0]})
    assert torch.equal(cond_first[:2], uncond_first[2:]) and torch.equal(cond_first[2:], uncond_first[:2])
    assert not torch.equal(cond_first[0], cond_first[2])
    untouched = patch(out, {**options, "block": ("input", 3), "cond_or_uncond": [0, 1]})  # a layer PSA does not know
    assert untouched is out
    assert key in patch.outputs


def lora_state_dict(model, rank=4, seed=7):
    """A real LoRA (lora_up/lora_down, ComfyUI's lora_unet_* naming) on every attn2 to_out and to_v."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in model.model.diffusion_model.named_modules():
        if name.endswith("attn2.to_out.0") or name.endswith("attn2.to_v"):
            key = "lora_unet_" + name.replace(".", "_")
            lora[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.2
            lora[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.2
    return lora


def with_lora(model):
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model, None, lora_state_dict(model), 1.0, 0.0)
    return patched


def test_composes_with_a_lora_on_the_same_model(pack, setup):
    lora_model = with_lora(setup["model"])
    reference = one_step(install_naive_reference(lora_model, setup["family"], setup["nested"], setup["vectors"]))
    assert_same_step(one_step(with_lora(apply(pack, setup))), reference, "PSA then LoRA vs the naive reference")
    assert_same_step(one_step(apply(pack, setup, model=lora_model)), reference, "LoRA then PSA vs the naive reference")
    psa_then_lora, _ = tm.sample(with_lora(apply(pack, setup)), FAMILY)
    psa_only, _ = tm.sample(apply(pack, setup), FAMILY)
    lora_only, _ = tm.sample(lora_model, FAMILY)
    assert max_diff(psa_then_lora, psa_only) > 1e-2, "the LoRA had no effect"
    assert max_diff(psa_then_lora, lora_only) > 1e-2, "PSA had no effect"


def test_lowvram_loading_uses_the_lora_patched_weights(pack, setup):
    """Partially loaded models cast weights and apply LoRA patches on the fly; PSA must see them."""
    lora_model = with_lora(setup["model"])
    expected = one_step(apply(pack, setup, model=lora_model))
    patched = apply(pack, setup, model=lora_model)
    patched.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    try:
        to_out = patched.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_out[0]
        assert to_out.comfy_cast_weights and to_out.weight_function, "the model was not loaded in low-VRAM mode"
        original_load = patched.load
        patched.load = lambda *args, **kwargs: None  # keep the low-VRAM state through sampling
        lowvram = one_step(patched)
        patched.load = original_load
    finally:
        patched.unpatch_model(torch.device("cpu"))
    assert_same_step(lowvram, expected, "low-VRAM vs fully loaded")


def test_composes_with_another_attn2_patch(pack, setup):
    """A foreign attn2 input patch (context scaling) and PSA's output patch both take effect, in either order."""

    def scale_context(n, context, value, extra_options):
        return n, context * 1.5, value * 1.5

    def other(model):
        clone = model.clone()
        clone.set_model_attn2_patch(scale_context)
        return clone

    plain, _ = tm.sample(setup["model"], FAMILY)
    only_other, _ = tm.sample(other(setup["model"]), FAMILY)
    only_psa, _ = tm.sample(apply(pack, setup), FAMILY)
    both_a, _ = tm.sample(apply(pack, setup, model=other(setup["model"])), FAMILY)
    assert max_diff(only_other, plain) > 1e-2 and max_diff(only_psa, plain) > 1e-2
    assert max_diff(both_a, only_other) > 1e-2 and max_diff(both_a, only_psa) > 1e-2
    reference = one_step(other(install_naive_reference(setup["model"], setup["family"], setup["nested"],
                                                       setup["vectors"])))
    assert_same_step(one_step(apply(pack, setup, model=other(setup["model"]))), reference, "other patch, then PSA")
    assert_same_step(one_step(other(apply(pack, setup))), reference, "PSA, then the other patch")


def test_batch_of_profiles_matches_separate_runs(pack, setup):
    generator = torch.Generator().manual_seed(11)
    vectors = torch.randn(3, tm.TINY_EMBEDDING_DIM, generator=generator, dtype=torch.float64) * 2
    together = one_step(apply(pack, setup, embedding=psa_core.UserEmbedding(vectors)), batch=3)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        alone = one_step(apply(pack, setup, embedding=psa_core.UserEmbedding(vectors[i:i + 1])),
                         noise=noise[i:i + 1])
        assert_same_step([tuple(t[i:i + 1] for t in step) for step in together], alone, f"profile {i} in the batch")
    assert max_diff(together[0][0][0], together[0][0][1]) > 1e-3


def test_batch_size_mismatch_is_explained(pack, setup):
    batch = psa_core.UserEmbedding(torch.randn(3, tm.TINY_EMBEDDING_DIM))
    with pytest.raises(psa_core.CompatibilityError, match="3 profiles but the sampler batch has 2") as raised:
        tm.sample(apply(pack, setup, embedding=batch), FAMILY, batch=2, steps=1)
    # refused when sampling starts, under a short type name (ComfyUI prints module + name unless builtins)
    assert type(raised.value).__module__ == "builtins" and type(raised.value).__name__ == "ProfileBatchMismatch"


def test_window_follows_a_sampling_mode_set_after_psa_apply(pack, setup):
    """The window's σ bounds come from the model being sampled (docs/comfyui.md §2), so a sampling-mode change
    after PSA Apply (what ModelSamplingDiscrete and friends do: an object patch on model_sampling) gives what the
    same change before PSA Apply gives."""
    import comfy.model_sampling

    class Shifted(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    settings = type("Settings", (), {"sampling_settings": {"linear_start": 0.004, "linear_end": 0.03}})()
    shifted = Shifted(settings)

    def with_shift(model):
        clone = model.clone()
        clone.add_object_patch("model_sampling", shifted)
        return clone

    steps = 4
    original = setup["model"].get_model_object("model_sampling")
    before, after = original.percent_to_sigma(0.5), shifted.percent_to_sigma(0.5)
    import comfy.samplers
    schedule = comfy.samplers.calculate_sigmas(shifted, "normal", steps)
    # the test can fail: some step's σ lies between the two 50 % points, so a window fixed at PSA Apply differs
    assert any(min(before, after) < s < max(before, after) for s in schedule[:-1].tolist())
    _, shift_then_psa = tm.sample(apply(pack, setup, model=with_shift(setup["model"]), start=0.5), FAMILY, steps=steps)
    _, psa_then_shift = tm.sample(with_shift(apply(pack, setup, start=0.5)), FAMILY, steps=steps)
    for a, b in zip(shift_then_psa, psa_then_shift):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
