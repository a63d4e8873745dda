"""tests/comfy_tiny.py builds ComfyUI's own MODEL / VAE / CLIP from the tiny diffusers components: they
compute what the diffusers modules compute, and their weights are inference tensors. The UNet and the VAE are
compared in float64 on both sides (ComfyUI's own float32 roundings of their results bounded as derived in each
test); ComfyUI's text encoders compute in float32 whatever their weights, so the CLIP tests bound them by
float32 noise measured on this CPU (tests/numerics.py)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import CLIPTokenizer

import comfy_tiny
from numerics import FLOAT32_UNIT_ROUNDOFF, FLOAT64_SLACK, assert_same_after_float32_rounding, \
    assert_within_float32_noise
from testkit.models import ModelSpec, build_components, build_vae, write_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a photo of a cat", "", "Hello,   World.  two spaces", "ÄÖÜ café 123 #$%"]  # "!": test_exclamation_mark
LONG = "x" * 100  # the byte-level vocabulary: one token per character, so two ComfyUI chunks


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny(request, folder_paths, tokenizer_folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread (function-scoped) does for the tests: 2 threads are ~20x slower here
    try:
        components = build_components(ModelSpec.tiny(request.param))
        return dataclasses.make_dataclass("Tiny", ["components", "model", "vae", "clip"])(
            components, comfy_tiny.comfy_unet(components), comfy_tiny.comfy_vae(components),
            comfy_tiny.comfy_clip(components, tokenizer_folder))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_unet64(tiny):
    """The same UNet in float64 on both sides (diffusers' module converted, ComfyUI's built with dtype=float64)."""
    components = dataclasses.replace(tiny.components, unet=copy.deepcopy(tiny.components.unet).double())
    return components, comfy_tiny.comfy_unet(components, torch.float64)


def largest_error(actual, expected) -> str:
    return f"max abs {(actual - expected).abs().max().item():.3g} of max {expected.abs().max().item():.3g}"


def assert_float64_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype == torch.float64 and actual.shape == expected.shape
    bound = FLOAT64_SLACK * expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= bound, largest_error(actual, expected)


def test_objects_are_comfyui_types_with_inference_weights(tiny):
    import comfy.ldm.models.autoencoder
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd

    family = tiny.components.spec.family
    assert isinstance(tiny.model, comfy.model_patcher.ModelPatcher)
    assert type(tiny.model.model) is (comfy.model_base.BaseModel if family == "sd15" else comfy.model_base.SDXL)
    assert isinstance(tiny.vae, comfy.sd.VAE) and isinstance(tiny.clip, comfy.sd.CLIP)
    assert type(tiny.vae.first_stage_model) is comfy.ldm.models.autoencoder.AutoencoderKL
    diffusers_storage = {t.untyped_storage().data_ptr() for module in
                         (tiny.components.unet, tiny.components.vae, *tiny.components.text_encoders)
                         for t in module.state_dict().values()}
    for module in (tiny.model.model, tiny.vae.first_stage_model, tiny.clip.cond_stage_model):
        tensors = list(module.parameters()) + list(module.buffers())
        assert tensors and all(t.is_inference() for t in tensors)
        assert {t.dtype for t in tensors} == {torch.float32}
        assert not {t.untyped_storage().data_ptr() for t in tensors} & diffusers_storage


def unet_inputs(tiny, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    context = torch.randn(batch, 77, tiny.components.spec.context_dim, generator=generator)
    diffusers_extra, comfy_extra = {}, {}
    if tiny.components.spec.family == "sdxl":
        pooled = torch.randn(batch, tiny.components.spec.pooled_dim, generator=generator)
        time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32], [64, 48, 4, 2, 32, 32]])[:batch]
        diffusers_extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        comfy_extra = {"y": comfy_tiny.sdxl_y(tiny.components, pooled, time_ids)}
    return x, context, diffusers_extra, comfy_extra


def test_diffusion_model_matches_diffusers_unet(tiny, tiny_unet64):
    """In float64 on both sides: equal to float64 rounding (tests/numerics.py), on any CPU."""
    components, model = tiny_unet64
    x, context, diffusers_extra, comfy_extra = (t.double() if isinstance(t, torch.Tensor) else t
                                                for t in unet_inputs(tiny))
    diffusers_extra = {"added_cond_kwargs": {k: v.double() for k, v in diffusers_extra["added_cond_kwargs"].items()}} \
        if diffusers_extra else {}
    comfy_extra = {k: v.double() for k, v in comfy_extra.items()}
    timesteps = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        expected = components.unet(x, timesteps, encoder_hidden_states=context, **diffusers_extra).sample
    with torch.inference_mode():
        actual = model.model.diffusion_model(x, timesteps, context, **comfy_extra)
    print(tiny.components.spec.family, "UNet:", largest_error(actual, expected))
    assert_float64_equal(actual, expected)


def test_apply_model_is_the_epsilon_prediction_at_comfyui_timesteps(tiny, tiny_unet64):
    """BaseModel.apply_model (what samplers call): x - σ·ε(x/√(σ²+1), t(σ)) with the diffusers UNet's ε; float64 on
    both sides, ComfyUI's own float32 rounding of its result bounded as tests/numerics.py derives it."""
    components, model = tiny_unet64
    x, context, diffusers_extra, comfy_extra = unet_inputs(tiny)
    base = model.model
    sigma = base.model_sampling.sigmas[torch.tensor([10, 700])]
    with torch.inference_mode():
        denoised = base.apply_model(x, sigma, c_crossattn=context, **comfy_extra)
        timesteps = base.model_sampling.timestep(sigma).float()
    scale = sigma.reshape(-1, 1, 1, 1)
    scaled_input = x / (scale ** 2 + 1.0) ** 0.5  # in float32, as ComfyUI's model_sampling scales it
    added = {"added_cond_kwargs": {k: v.double() for k, v in diffusers_extra["added_cond_kwargs"].items()}} \
        if diffusers_extra else {}
    with torch.no_grad():
        epsilon = components.unet(scaled_input.double(), timesteps, encoder_hidden_states=context.double(),
                                  **added).sample
    scale = scale.double()
    assert torch.equal(timesteps, torch.tensor([10.0, 700.0]))
    assert_same_after_float32_rounding(denoised, x.double() - scale * epsilon, x, "apply_model vs diffusers")


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "uncalibrated"])
def test_vae_posterior_and_decoder_match_diffusers(tiny, calibrated):
    """In float64 on both sides. The posterior (encoder + quant_conv) stays in float64: equal to float64 rounding.
    VAE.encode then casts the latent to float32 (one rounding, u = 2⁻²⁴): |a − b| ≤ u·|b|. VAE.decode casts the
    decoder's output r to float32 and computes (r + 1) / 2 in float32 (the cast: u·|r|; the sum: u·|r + 1|; halving
    is exact) before clamping to [0, 1], which can only bring the two closer: |a − b| ≤ u·(|r| + |r + 1|) / 2.
    Each bound also allows FLOAT64_SLACK of the largest value for the float64 rounding before the casts."""
    components = tiny.components
    if not calibrated:  # the calibrated VAE's logvar is a constant (zeroed weights): vary it too
        components = dataclasses.replace(components, vae=build_vae(components.spec, seed=5, calibrate=False))
    components = dataclasses.replace(components, vae=copy.deepcopy(components.vae).double())
    vae = comfy_tiny.comfy_vae(components, torch.float64)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)).double() * 2 - 1
    with torch.no_grad():
        expected = components.vae.encode(pixels).latent_dist
        raw = components.vae.decode(expected.mean).sample.permute(0, 2, 3, 1)  # NHWC, as ComfyUI's IMAGE
    with torch.inference_mode():
        mean, std = comfy_tiny.posterior(vae, pixels)
        encoded = vae.encode(pixels.permute(0, 2, 3, 1) * 0.5 + 0.5)  # the VAEEncode node's path: NHWC in [0, 1]
        images = vae.decode(expected.mean)
    decoded = ((raw + 1) / 2).clamp(0, 1)
    print(components.spec.family, "calibrated" if calibrated else "uncalibrated", "VAE mean:",
          largest_error(mean, expected.mean), "std:", largest_error(std, expected.std), "encode:",
          largest_error(encoded.double(), expected.mean), "decode:", largest_error(images.double(), decoded))
    if not calibrated:
        assert std.std() > 0.1
    assert_float64_equal(mean, expected.mean)
    assert_float64_equal(std, expected.std)
    assert encoded.shape == (2, 4, 8, 8) and images.shape == (2, 32, 32, 3)
    assert encoded.dtype == images.dtype == torch.float32
    u = FLOAT32_UNIT_ROUNDOFF
    for actual, exact, bound in (
            (encoded, expected.mean, u * expected.mean.abs()),
            (images, decoded, u * (raw.abs() + (raw + 1).abs()) / 2)):
        excess = (actual.double() - exact).abs() - bound - FLOAT64_SLACK * exact.abs().max()
        assert excess.max() <= 0, largest_error(actual.double(), exact)


@pytest.fixture(scope="module")
def text_encoders64(tiny):
    return [copy.deepcopy(encoder).double() for encoder in tiny.components.text_encoders]


def diffusers_text(encoders, tokenizer_folder, caption: str):
    """Token ids (one row per encoder) and (hidden states, pooled) as diffusers' SD1.5 / SDXL pipelines get them."""
    pads = [None] if len(encoders) == 1 else [None, "!"]  # SDXL's tokenizer_2 pads with "!" (id 0)
    ids = [CLIPTokenizer.from_pretrained(tokenizer_folder, **({"pad_token": pad} if pad else {}))(
        [caption], padding="max_length", max_length=encoder.config.max_position_embeddings, truncation=True,
        return_tensors="pt").input_ids for encoder, pad in zip(encoders, pads)]
    with torch.no_grad():
        if len(encoders) == 1:
            out = encoders[0](ids[0])
            return ids, out.last_hidden_state, out.pooler_output
        outs = [encoder(i, output_hidden_states=True) for encoder, i in zip(encoders, ids)]
        return ids, torch.cat([o.hidden_states[-2] for o in outs], dim=-1), outs[1].text_embeds


@pytest.mark.parametrize("caption", CAPTIONS + [LONG], ids=lambda c: repr(c[:12]))
def test_clip_matches_diffusers_text_encoders(tiny, text_encoders64, tokenizer_folder, caption):
    ids, hidden32, pooled32 = diffusers_text(tiny.components.text_encoders, tokenizer_folder, caption)
    _, hidden, pooled = diffusers_text(text_encoders64, tokenizer_folder, caption)
    tokens = tiny.clip.tokenize(caption)
    names = ["l"] if len(ids) == 1 else ["l", "g"]
    chunks = 2 if caption == LONG else 1
    for name, expected in zip(names, ids):
        assert len(tokens[name]) == chunks
        assert [token for token, weight in tokens[name][0]] == expected[0].tolist()
    with torch.inference_mode():
        cond, comfy_pooled = tiny.clip.encode_from_tokens(tokens, return_pooled=True)
    print(tiny.components.spec.family, repr(caption[:12]), "text:", largest_error(cond[:, :77], hidden),
          "pooled:", largest_error(comfy_pooled, pooled))
    assert cond.shape == (1, 77 * chunks, tiny.components.spec.context_dim)
    assert_within_float32_noise(cond[:, :77], hidden, hidden32, "hidden states")  # a long caption: its first chunk
    assert_within_float32_noise(comfy_pooled, pooled, pooled32, "pooled")


def test_exclamation_mark(tiny, text_encoders64, tokenizer_folder):
    """The one plain-caption difference: diffusers' SDXL tokenizer_2 has pad_token "!", so it cuts every "!"
    out as that special token (id 0); ComfyUI's clip_g tokenizer has no such token and gives "!</w>" (256),
    like SD1.5's and clip_l's tokenizers on both sides."""
    caption = "wow! yes!"
    ids, hidden32, _ = diffusers_text(tiny.components.text_encoders, tokenizer_folder, caption)
    tokens = tiny.clip.tokenize(caption)
    plain = CLIPTokenizer.from_pretrained(tokenizer_folder)(caption).input_ids
    assert [token for token, weight in tokens["l"][0]] == ids[0][0].tolist()
    if tiny.components.spec.family == "sd15":
        with torch.inference_mode():
            cond = tiny.clip.encode_from_tokens(tokens)
        _, hidden, _ = diffusers_text(text_encoders64, tokenizer_folder, caption)
        assert_within_float32_noise(cond, hidden, hidden32, "hidden states")
        return
    comfy_g = [token for token, weight in tokens["g"][0]]
    assert comfy_g[:len(plain)] == plain and set(comfy_g[len(plain):]) == {0}
    assert ids[1][0, :len(plain)].tolist() == [0 if t == 256 else t for t in plain] != plain
