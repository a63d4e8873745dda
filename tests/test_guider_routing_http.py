"""Which user each conditioning gets, over HTTP, in the guiders artists wire (docs/comfyui.md, "Which user each
conditioning gets"): the user's prompt gets the user, every negative-side conditioning the null user.

Each run's routing is read from the line the pack logs once per sampling run and conds layout
("PSA routing (<guider>): <cond> -> <role>, ..."), and pinned on the latents by equivalences that hold
bit for bit without PSA (checked here too, as the control) and so must hold with PSA if the routing is by role:
PerpNeg with neg_scale 0 is CFGGuider(positive, empty); DualCFG with cond2 = negative is CFGGuider.
Routing by position (the old cond_or_uncond == 1 rule) breaks both: PerpNeg's empty cond (position 2) and
DualCFG's negative (position 0) would get the user.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import psa_core
import tiny_models as tm

pytestmark = pytest.mark.slow

UNET = "psa_routing_sd15.safetensors"
ADAPTER = "psa_routing.safetensors"
CFG = 6.0


@pytest.fixture(scope="module")
def server(folder_paths, pack, comfy_server, reference):
    """The server with a detectable SD1.5 layout (320 channels, context 768: ComfyUI detects it), an adapter for
    it and two reference profiles."""
    model = tm.build_model("sd15", model_channels=320, context_dim=768, channel_mult=[1, 1, 1, 1])
    state = {k: v.to(torch.float16).contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
    save_file(state, str(comfy_server.models / "diffusion_models" / UNET))
    family = psa_core.get_family("sd15", 320, 768, channel_mult=(1, 1, 1, 1))
    tm.write_adapter(tm.random_adapter_tensors(family, 3584, scale=0.02), comfy_server.models / "psa" / ADAPTER)
    for name in ("0000001.npy", "0000002.npy"):
        shutil.copy(reference / "embeddings" / name, comfy_server.models / "psa_embeddings" / name)
    return comfy_server


def base(strength: float = 1.0, profile: str = "0000001.npy", psa: bool = True, size: int = 64) -> dict:
    """Model (node "m": PSA Apply, or without PSA the UNet "unet"), three conditionings (pos, neg, empty) and a latent."""
    prompt = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "adapter": {"class_type": "PSALoadAdapter", "inputs": {"adapter_name": ADAPTER}},
        "profile": {"class_type": "PSALoadEmbedding", "inputs": {"embedding_name": profile}},
        "pos": {"class_type": "TestRandomConditioning", "inputs": {"seed": 1, "context_dim": 768, "tokens": 77}},
        "neg": {"class_type": "TestRandomConditioning", "inputs": {"seed": 2, "context_dim": 768, "tokens": 77}},
        "empty": {"class_type": "TestRandomConditioning", "inputs": {"seed": 3, "context_dim": 768, "tokens": 77}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }
    if psa:
        prompt["m"] = {"class_type": "PSAApply", "inputs": {
            "model": ["unet", 0], "adapter": ["adapter", 0], "embedding": ["profile", 0], "strength": strength,
            "start_percent": 0.0, "end_percent": 1.0}}
    return prompt


def model_of(prompt: dict, model: str | None) -> str:
    return model or ("m" if "m" in prompt else "unet")


def custom(prompt: dict, guider: dict, model: str | None = None) -> dict:
    """SamplerCustomAdvanced with `guider` (its model input is filled in), 2 euler steps."""
    model = model_of(prompt, model)
    guider["inputs"]["model"] = [model, 0]
    prompt.update({
        "guider": guider,
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 2025}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": [model, 0], "scheduler": "normal",
                                                               "steps": 2, "denoise": 1.0}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0]}},
    })
    return prompt


def cfg_guider(positive: str = "pos", negative: str = "neg") -> dict:
    return {"class_type": "CFGGuider", "inputs": {"positive": [positive, 0], "negative": [negative, 0], "cfg": CFG}}


def ksampler(prompt: dict, model: str | None = None) -> dict:
    model = model_of(prompt, model)
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": [model, 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": 2025, "steps": 2, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return prompt


_runs = iter(range(10 ** 6))


def run(server, prompt: dict) -> tuple[torch.Tensor, list[str]]:
    """The sampled latent and the routing lines this run logged."""
    prefix = f"latents/routing_{next(_runs)}"
    prompt = {**prompt, "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0],
                                                                         "filename_prefix": prefix}}}
    before = len(server.log())
    entry = server.run_prompt(prompt)
    saved = entry["outputs"]["save"]["latents"][0]
    latent = load_file(str(server.output / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    lines = [line.split("PSA routing ", 1)[1].strip() for line in server.log()[before:].splitlines()
             if "PSA routing " in line]
    return latent, lines


def roles(route: str) -> dict[str, str]:
    return dict(part.split(" -> ") for part in route.split("): ", 1)[1].split(", "))


def test_ksampler_cfg_routes_positive_to_the_user(server):
    with_psa, routes = run(server, ksampler(base()))
    assert routes == ["(CFGGuider): positive -> user, negative -> null user"]
    without, _ = run(server, ksampler(base(psa=False)))
    zero, _ = run(server, ksampler(base(strength=0.0)))
    other, _ = run(server, ksampler(base(profile="0000002.npy")))
    assert torch.equal(zero, without), "strength 0 must be bit-identical to no PSA"
    assert (with_psa.float() - without.float()).abs().max() > 1e-3
    assert (with_psa.float() - other.float()).abs().max() > 1e-4, "two profiles gave the same latent"


@pytest.mark.parametrize("psa", [False, True], ids=["control_without_psa", "with_psa"])
def test_perpneg_with_neg_scale_zero_is_cfg_with_the_empty_negative(server, psa):
    perpneg = {"class_type": "PerpNegGuider", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "empty_conditioning": ["empty", 0], "cfg": CFG,
        "neg_scale": 0.0}}
    perp, routes = run(server, custom(base(psa=psa), perpneg))
    cfg, _ = run(server, custom(base(psa=psa), cfg_guider(negative="empty")))
    # ComfyUI runs the three conds in one forward where CFG runs two; without PSA the two are bit-identical on
    # this CPU (the control), and the PSA term is added per sample, so nothing may differ with PSA either.
    assert torch.equal(perp, cfg)
    if psa:
        # with neg_scale 0 ComfyUI 0.28.2 leaves the negative out of the batch; where it runs, it is null user
        assert len(routes) == 1 and routes[0].startswith("(Guider_PerpNeg): ")
        assert roles(routes[0]) in ({"positive": "user", "empty_negative_prompt": "null user"},
                                    {"positive": "user", "negative": "null user", "empty_negative_prompt": "null user"})


@pytest.mark.parametrize("psa", [False, True], ids=["control_without_psa", "with_psa"])
def test_dualcfg_negative_and_cond2_get_the_null_user(server, psa):
    dual = {"class_type": "DualCFGGuider", "inputs": {
        "cond1": ["pos", 0], "cond2": ["neg", 0], "negative": ["neg", 0], "cfg_conds": CFG,
        "cfg_cond2_negative": 3.0, "style": "regular"}}
    dual_latent, routes = run(server, custom(base(psa=psa), dual))
    cfg, _ = run(server, custom(base(psa=psa), cfg_guider()))
    assert torch.equal(dual_latent, cfg)  # cond2 = negative: cfg2·(cond2 - negative) cancels only if both are null
    if psa:
        assert routes == ["(Guider_DualCFG): negative -> null user, middle -> null user, positive -> user"]


def test_sag_reruns_the_unconditional_with_the_null_user(server):
    prompt = base(size=256)  # SAG blurs by the middle block's attention map: it needs more than 1×1 there
    prompt["sag"] = {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["m", 0], "scale": 0.5,
                                                                     "blur_sigma": 2.0}}
    latent, routes = run(server, ksampler(prompt, model="sag"))
    assert torch.isfinite(latent).all()
    assert routes == ["(CFGGuider): positive -> user, negative -> null user",
                      "(CFGGuider): negative -> null user"]  # SAG's extra pass: the uncond alone


def test_a_second_psa_apply_replaces_the_first(server):
    prompt = base(profile="0000002.npy")
    prompt["first"] = {"class_type": "PSALoadEmbedding", "inputs": {"embedding_name": "0000001.npy"}}
    prompt["m1"] = {"class_type": "PSAApply", "inputs": {
        "model": ["unet", 0], "adapter": ["adapter", 0], "embedding": ["first", 0], "strength": 1.0,
        "start_percent": 0.0, "end_percent": 1.0}}
    prompt["m"]["inputs"]["model"] = ["m1", 0]
    before = len(server.log())
    chained, _ = run(server, ksampler(prompt))
    assert "this PSA Apply replaces it" in server.log()[before:]
    second_only, _ = run(server, ksampler(base(profile="0000002.npy")))
    assert torch.equal(chained, second_only)


def test_a_merge_after_psa_apply_is_reported_when_sampling(server):
    prompt = base()
    prompt["merged"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["m", 0], "model2": ["unet", 0],
                                                                    "ratio": 0.5}}
    before = len(server.log())
    latent, routes = run(server, ksampler(prompt, model="merged"))
    assert "was merged with another" in server.log()[before:]
    assert routes == ["(CFGGuider): positive -> user, negative -> null user"]
    before = len(server.log())
    run(server, ksampler(base()))  # no merge: no warning
    assert "was merged with another" not in server.log()[before:]
