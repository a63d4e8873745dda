"""Tiny models with the real SD1.5 / SDXL block layouts (testkit.layouts, from psa_core.families), built
through ComfyUI's own model classes, and tiny PSA adapters that fit them. Import only after ComfyUI is on
sys.path (see comfy_env). SDXL's label_emb keeps its real input width (2816: pooled 1280 + 6 x 256), as the
`conditioning` here gives ComfyUI's SDXL.encode_adm what it expects."""
from __future__ import annotations

from pathlib import Path

import torch

from testkit.layouts import unet_layout

TINY_CHANNELS = 32
TINY_CONTEXT = {"sd15": 64, "sdxl": 96}
TINY_EMBEDDING_DIM = 48


def build_model(family: str, model_channels: int = TINY_CHANNELS, context_dim: int | None = None,
                seed: int = 0, dtype: torch.dtype = torch.float32, channel_mult: list[int] | None = None):
    """A ComfyUI ModelPatcher around an SD15 or SDXL BaseModel of tiny width with explicit random weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    unet = unet_layout(family, model_channels, context_dim or TINY_CONTEXT[family], channel_mult).comfy_unet_config()
    config_class = comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL
    config = config_class(unet)
    config.unet_config.update(num_heads=2, num_head_channels=-1)  # the real 8 heads / 64-d heads do not divide tiny widths
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.diffusion_model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.diffusion_model.to(dtype)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def conditioning(family: str, context_dim: int | None = None, seed: int = 1, tokens: int = 77):
    """Positive and negative CONDITIONING lists for a tiny model (random text embeddings)."""
    context_dim = context_dim or TINY_CONTEXT[family]
    generator = torch.Generator().manual_seed(seed)

    def one():
        extras = {}
        if family == "sdxl":
            extras = {"pooled_output": torch.randn(1, 1280, generator=generator), "width": 64, "height": 64,
                      "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}
        return [[torch.randn(1, tokens, context_dim, generator=generator), extras]]

    return one(), one()


def random_adapter_tensors(family, embedding_dim: int, seed: int = 2, dtype=torch.float32,
                           scale: float = 0.05) -> dict[str, dict[str, torch.Tensor]]:
    """A reference-layout adapter (nested dict) with random, non-zero weights, incl. to_k_user."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    d = family.context_dim
    user_proj = {"proj.weight": rand(d, embedding_dim), "proj.bias": rand(d) * 10,
                 "norm.weight": (1 + rand(d)), "norm.bias": rand(d)}
    psa_adapter = {}
    for layer in family.layers:
        psa_adapter[f"{layer.index}.to_k_user.0.weight"] = rand(layer.hidden, d)
        psa_adapter[f"{layer.index}.to_v_user.0.weight"] = rand(layer.hidden, d) * 10
    return {"user_proj": user_proj, "psa_adapter": psa_adapter}


def write_adapter(nested: dict, path: Path) -> Path:
    """Write the nested dict as the reference does (.bin, torch.save) or as flat reference safetensors."""
    from safetensors.torch import save_file

    if path.suffix == ".bin":
        torch.save(nested, path)
    else:
        flat = {f"{group}.{key}": t.contiguous() for group, tensors in nested.items() for key, t in tensors.items()}
        save_file(flat, str(path))
    return path


def sample(model, family: str, steps: int = 2, cfg: float = 7.5, batch: int = 1, seed: int = 0,
           size: int = 8, positive=None, negative=None, sampler: str = "euler", denoised: bool = False,
           noise: torch.Tensor | None = None):
    """Run ComfyUI's KSampler path; returns (latent, [(cond_eps, uncond_eps) per step]).

    The UNet's noise predictions are recovered from ComfyUI's denoised outputs as (x - denoised) / sigma. With
    `denoised`, each step records (cond_denoised, uncond_denoised, x) as ComfyUI computed them instead (what
    tests/numerics.py bounds)."""
    import comfy.sample

    if positive is None:
        positive, negative = conditioning(family)
    records = []

    def record(args):
        x, sigma = args["input"], args["sigma"].reshape(-1, 1, 1, 1)
        if denoised:
            records.append((args["cond_denoised"], args["uncond_denoised"], x))
        else:
            records.append(((x - args["cond_denoised"]) / sigma, (x - args["uncond_denoised"]) / sigma))
        return args["denoised"]

    recorded = model.clone()
    recorded.set_model_sampler_post_cfg_function(record)
    if noise is None:
        noise = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))
    latent = torch.zeros_like(noise)
    out = comfy.sample.sample(recorded, noise, steps, cfg, sampler, "normal", positive, negative, latent,
                              seed=seed, disable_pbar=True)
    return out, records


def in_float64(adapter):
    """A loaded adapter (psa_core.LoadedAdapter) with its tensors in float64 (files hold float32 at most), so that
    its user values are computed in float64, as the naive reference's are."""
    return type(adapter)(adapter.family, adapter.embedding_dim, {k: v.double() for k, v in adapter.projection.items()},
                         [w.double() for w in adapter.value_weights], name=adapter.name)
