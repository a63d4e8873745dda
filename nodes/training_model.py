"""The graph's own ComfyUI models, made fit for adapter training without copying them.

- `ComfyPSAPredictor`: the core's `predict` for a ComfyUI UNet. One attn2 output patch adds `W_out^l·v_l`
  (`psa_core.adapter.attn2_shift`) from the live `to_out[0].weight`; with no values it changes nothing,
  so the reference pass is the same model with PSA switched off.
- `autograd_safe_weights`: weights built by a loader node inside ComfyUI's `torch.inference_mode()` are
  inference tensors, which autograd refuses to save for backward (docs/comfyui.md §8). Each weight is swapped,
  for the duration of training, for an ordinary tensor that views the *same storage*: no second copy of the
  weights (ComfyUI's own trainer copies every weight on every forward through weight wrappers instead).
- `gradient_checkpointing`: per ResBlock / SpatialTransformer, like diffusers' UNet.
- `noise_schedule` and `graph_encoders`: DDPM noising from the model's sigmas, and the cache's image/text
  encoders from the graph's VAE and CLIP.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..psa_core import CompatibilityError, attn2_shift
from ..psa_core.families import Family
from ..psa_core.training.cache import ImageEncoder, TextEncoder
from ..psa_core.training.noise import DDPMSchedule
from ..psa_core.training.step import Conditioning
from .attention_patch import check_model_family

TEXT_TOKENS = 77  # the cache holds one 77-token CLIP window per caption, as the standalone trainer does


class ComfyPSAPredictor:
    """`predict(noisy, timesteps, conditioning, user_values)` for the UNet of a ComfyUI MODEL."""

    def __init__(self, model, family: Family):
        self.outputs = check_model_family(model, family)
        self.layer_of = {layer.comfy_key: layer.index for layer in family.layers}
        self.diffusion_model = model.get_model_object("diffusion_model")
        base = model.model
        self.dtype = base.manual_cast_dtype or base.get_dtype()
        self.adm_width = self.diffusion_model.label_emb[0][0].in_features if family.name == "sdxl" else None
        self._values: Sequence[torch.Tensor] | None = None
        self.hits: set | None = None  # a set() records which layers fire (tests)

    def attn2_output_patch(self, out: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self._values is None:
            return out
        block = extra_options.get("block")
        key = None if block is None else (block[0], block[1], extra_options.get("block_index", 0))
        index = self.layer_of.get(key)
        if index is None:
            return out
        if self.hits is not None:
            self.hits.add(key)
        return out + attn2_shift(self._values[index], self.outputs[key].weight).to(out.dtype)

    def _added_conditioning(self, conditioning: Conditioning) -> torch.Tensor | None:
        """SDXL's `y`: the pooled text, then each of the 6 size numbers as a sinusoidal embedding (as
        `SDXL.encode_adm` builds it, at whatever width the model's `label_emb` takes)."""
        if self.adm_width is None:
            return None
        from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

        pooled, time_ids = conditioning["text_embeds"], conditioning["time_ids"]
        width = (self.adm_width - pooled.shape[1]) // time_ids.shape[1]
        sizes = timestep_embedding(time_ids.flatten(), width).reshape(time_ids.shape[0], -1)
        return torch.cat([pooled, sizes.to(pooled.device)], dim=1).to(self.dtype)

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                 user_values: Sequence[torch.Tensor] | None) -> torch.Tensor:
        self._values = user_values
        options = {"patches": {"attn2_output_patch": [self.attn2_output_patch]}}
        context = conditioning["encoder_hidden_states"].to(self.dtype)
        return self.diffusion_model(noisy.to(self.dtype), timesteps.float(), context=context,
                                    y=self._added_conditioning(conditioning),
                                    transformer_options=options)


def _aliasing_parameter(tensor: torch.Tensor) -> nn.Parameter:
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    with torch.no_grad():
        alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())
    return nn.Parameter(alias, requires_grad=False)


@contextmanager
def autograd_safe_weights(module: nn.Module) -> Iterator[int]:
    """Swap every parameter and buffer of `module` for an ordinary tensor viewing the same storage; restore the
    originals on exit. Yields how many were swapped. Must run outside inference mode.

    All of them, not only those `is_inference()` reports: a weight made in inference mode and then moved to the
    GPU outside it (`Module.to` assigns `.data`) no longer reports itself as one, yet still has no version counter,
    and autograd then fails with "Inference tensors do not track version counter"."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    try:
        for owner in module.modules():
            for table, as_parameter in ((owner._parameters, True), (owner._buffers, False)):
                for name, tensor in list(table.items()):
                    if tensor is None:
                        continue
                    swapped.append((table, name, tensor))
                    alias = _aliasing_parameter(tensor)
                    table[name] = alias if as_parameter else alias.data
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original


def _snapshot_options(function, *args, **kwargs):
    # The UNet mutates one transformer_options dict as it walks its blocks; a recomputed forward must see the
    # options of its own call (its "block" key tells the PSA patch which layer it is), so freeze a copy.
    args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    return checkpoint(function, *args, use_reentrant=False, **kwargs)


@contextmanager
def gradient_checkpointing(diffusion_model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Recompute each ResBlock and SpatialTransformer of the UNet during backward instead of storing it."""
    patched = []
    try:
        if enabled:
            for blocks in (diffusion_model.input_blocks, [diffusion_model.middle_block],
                           diffusion_model.output_blocks):
                for block in blocks:
                    for layer in block if block is not None else ():
                        if type(layer).__name__ in ("ResBlock", "SpatialTransformer"):
                            layer.forward = partial(_snapshot_options, type(layer).forward.__get__(layer))
                            patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward


def noise_schedule(model) -> DDPMSchedule:
    """The model's discrete DDPM schedule, `ᾱ_t = 1/(1+σ_t²)`, and what its UNet predicts."""
    import comfy.model_sampling

    sampling = model.get_model_object("model_sampling")
    sigmas = getattr(sampling, "sigmas", None)
    if sigmas is None or not isinstance(sampling, comfy.model_sampling.EPS):
        raise CompatibilityError(f"PSA training needs an SD1.5/SDXL-style discrete noise schedule; this model "
                                 f"samples with {type(sampling).__name__}")
    prediction = "v_prediction" if isinstance(sampling, comfy.model_sampling.V_PREDICTION) else "epsilon"
    return DDPMSchedule(1.0 / (1.0 + sigmas.detach().float().cpu() ** 2), prediction)


def graph_encoders(model, vae, clip, family: Family) -> tuple[ImageEncoder, TextEncoder]:
    """The cache's encoders, computed with the graph's VAE and CLIP exactly as the standalone trainer computes
    them with diffusers: the VAE posterior mean and std times the latent scale; the text encoder's hidden states
    (SD1.5 last layer; SDXL both penultimate layers) and, for SDXL, the pooled output."""
    import comfy.model_management  # not at import: it picks the device, and tests choose the CPU first

    scale = float(model.model.latent_format.scale_factor)
    autoencoder = vae.first_stage_model

    regularizer = getattr(autoencoder, "regularization", None)
    if regularizer is None:
        raise CompatibilityError(f"the VAE ({type(autoencoder).__name__}) is not a KL autoencoder; PSA training "
                                 "needs the SD1.5/SDXL VAE")

    @torch.no_grad()
    def encode_images(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        comfy.model_management.load_models_gpu([vae.patcher])
        # The posterior's moments are what the VAE hands its Gaussian regulariser (which keeps only the mode).
        seen = []
        hook = regularizer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            autoencoder.encode(pixels.to(vae.device, vae.vae_dtype))
        finally:
            hook.remove()
        mean, log_variance = seen[0].float().chunk(2, dim=1)
        std = torch.exp(0.5 * log_variance.clamp(-30.0, 20.0))
        return mean * scale, std * scale

    @torch.no_grad()
    def encode_texts(captions: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for caption in captions:
            cond, pool = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
            hidden.append(cond[:, :TEXT_TOKENS].float().cpu())
            pooled.append(pool.float().cpu() if pool is not None else None)
        encoded = {"encoder_hidden_states": torch.cat(hidden)}
        if family.name == "sdxl":
            encoded["text_embeds"] = torch.cat(pooled)
        return encoded

    return encode_images, encode_texts
