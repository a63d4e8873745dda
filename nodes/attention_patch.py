"""The PSA cross-attention patch: one `attn2_output_patch` that adds each layer's user term.

For layer l, user-side chunks get `s·W_out W_v u` added after `to_out`, and negative-side chunks the same with
the null user u0 (docs/adapter.md §2, §4), by the role of each chunk's conditioning (PSARouting, docs/comfyui.md §2): the core's `attn2_shift`, the formula training uses, applied to the live
`W_out`, the weight the layer's own forward multiplies by in this call (`live_out_weight`), so LoRA patches,
low-VRAM casting and weight functions apply exactly as they do to the base attention (docs/comfyui.md §2).
"""
from __future__ import annotations

import copy
import logging
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..psa_core import CompatibilityError, LoadedAdapter, UserEmbedding, attn2_shift, get_family
from ..psa_core.families import ComfyKey, Family
from ..psa_core.numbers import check_number

# Weight paths: input_blocks.<id>.<slot>..., output_blocks.<id>.<slot>..., but middle_block.<slot>... whose
# block key is ("middle", 0) — the slot number is not the block id (IPAdapter_plus's never-firing middle patch).
_ATTN2_PATH = re.compile(r"(?:(input_blocks|output_blocks)\.(\d+)|(middle_block))\.\d+\.transformer_blocks\.(\d+)\.attn2")
_BLOCK_NAMES = {"input_blocks": "input", "output_blocks": "output"}

# Routing by role (docs/comfyui.md §"Which user each conditioning gets"): a guider's named conditionings are the
# user's side or the negative side. "middle" is DualCFGGuider's cond2: negative side, so that DualCFG with
# cond2 = negative is exactly CFGGuider with PSA (the cond2 - negative term cancels as it does without PSA).
USER = "user"
NULL_USER = "null user"
ROLE_OF_COND = {"positive": USER, "negative": NULL_USER, "empty_negative_prompt": NULL_USER, "middle": NULL_USER}
ROLES_KEY = "psa_roles"  # transformer_options key: the role of each position of calc_cond_batch's conds list
WINDOW_KEY = "psa_window"  # transformer_options key: (σ(start_percent), σ(end_percent)) of the sampled model
WRAPPER_KEY = "psa_routing"
log = logging.getLogger("psa")


def find_cross_attention_outputs(diffusion_model: nn.Module) -> dict[ComfyKey, nn.Module]:
    """Every attn2 `to_out[0]` of a ComfyUI UNet, keyed like `extra_options` names it: (block, id, block_index)."""
    found = {}
    for name, module in diffusion_model.named_modules():
        match = _ATTN2_PATH.fullmatch(name)
        if match:
            if match.group(3):
                key = ("middle", 0, int(match.group(4)))
            else:
                key = (_BLOCK_NAMES[match.group(1)], int(match.group(2)), int(match.group(4)))
            found[key] = module.to_out[0]
    return found


def describe_model(layers: dict[ComfyKey, nn.Module], context_dim: int | None) -> str:
    for name in ("sd15", "sdxl"):
        family = get_family(name)
        if set(layers) == {layer.comfy_key for layer in family.layers}:
            return f"{family.display_name} ({len(layers)} cross-attention layers, context {context_dim})"
    return f"a model with {len(layers)} SD-style cross-attention layers and context {context_dim}"


@contextmanager
def live_out_weight(to_out: nn.Module, like: torch.Tensor) -> Iterator[torch.Tensor]:
    """The weight `to_out` (an attn2 `to_out[0]`) multiplies by when called on `like`, as its own forward gets it:
    ComfyUI's cast to `like`'s device and dtype with the LoRA weight functions of low-VRAM loading applied (and the
    offload stream released afterwards, as the forward does), the layer's own cast for layers that dequantize their
    weights themselves (ComfyUI-GGUF's), or the plain weight of a layer that casts nothing."""
    own_cast = getattr(to_out, "cast_bias_weight", None)
    if callable(own_cast):
        weight, _ = own_cast(like)
        yield weight
    elif getattr(to_out, "comfy_cast_weights", False) or getattr(to_out, "weight_function", None) \
            or getattr(to_out, "bias_function", None):
        import comfy.ops

        weight, bias, offload = comfy.ops.cast_bias_weight(to_out, like, offloadable=True)
        try:
            yield weight
        finally:
            comfy.ops.uncast_bias_weight(to_out, weight, bias, offload)
    else:
        yield to_out.weight


class _LayerCache:
    """Offsets of one layer for one sampling run, device and dtype (see PSAAttentionPatch._offsets)."""

    def __init__(self, weight: torch.Tensor, run: torch.Tensor, offsets: torch.Tensor):
        self.weight = weakref.ref(weight)
        self.run = weakref.ref(run)
        self.offsets = offsets
        self.per_sample: dict[tuple, torch.Tensor] = {}

    def valid_for(self, weight: torch.Tensor, run: torch.Tensor) -> bool:
        return self.weight() is weight and self.run() is run


class PSAAttentionPatch:
    """Callable registered with `ModelPatcher.set_model_attn2_output_patch`.

    Holds the per-layer user values `W_v [u_1..u_N, u0]` (small, fp32) and references to the layers'
    `to_out[0]` modules, which are the patched model's own (shared by every clone).
    """

    def __init__(self, outputs: dict[ComfyKey, nn.Module], values: dict[ComfyKey, torch.Tensor], num_users: int,
                 strength: float, sigma_start: float, sigma_end: float, window_is_full: bool):
        self.outputs = outputs
        self.values = values
        self.num_users = num_users
        self.strength = strength
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.window_is_full = window_is_full
        self.enabled = True
        self._cache: dict[tuple, _LayerCache] = {}
        self.hits: set[ComfyKey] | None = None  # set to a set() to record which layers fire (tests, diagnostics)

    def __deepcopy__(self, memo: dict) -> "PSAAttentionPatch":
        # ComfyUI deep-copies model_options on every clone; the values and modules are shared, not copied.
        duplicate = copy.copy(self)
        memo[id(self)] = duplicate
        return duplicate

    def models(self) -> list:
        return []

    def to(self, device_or_dtype) -> "PSAAttentionPatch":
        """ComfyUI moves patches with the model (a device, then the model's dtype). Values follow the device."""
        if not isinstance(device_or_dtype, torch.device):
            return self
        if all(v.device == device_or_dtype for v in self.values.values()):
            return self
        moved = copy.copy(self)
        moved.values = {k: v.to(device_or_dtype) for k, v in self.values.items()}
        moved._cache = {}
        return moved

    def _offsets(self, key: ComfyKey, to_out: nn.Module, like: torch.Tensor, run) -> _LayerCache | torch.Tensor:
        """`attn2_shift(s·W_v·[u_1..u_N, u0], W_out)`, `[N+1, 1, H]`, in `like`'s dtype and on its device.

        Within one sampling run (one `sample_sigmas` tensor) and for the same weight object the result
        cannot change, so it is cached; weight functions (low-VRAM LoRA) are evaluated on every call."""
        cacheable = run is not None and not getattr(to_out, "weight_function", None)
        cache_key = (key, like.device, like.dtype)
        if cacheable:
            cached = self._cache.get(cache_key)
            if cached is not None and cached.valid_for(to_out.weight, run):
                return cached
        values = (self.values[key].to(like.device) * self.strength).to(like.dtype)
        with live_out_weight(to_out, values) as weight:
            offsets = attn2_shift(values, weight).to(like.dtype)
        if not cacheable:
            return offsets
        entry = _LayerCache(to_out.weight, run, offsets)
        self._cache[cache_key] = entry
        return entry

    def _user_rows(self, offsets: torch.Tensor, chunk: int) -> torch.Tensor:
        if self.num_users == 1:
            return offsets[:1].expand(chunk, -1, -1)
        check_profile_batch(self.num_users, chunk)
        return offsets[:self.num_users]

    def _per_sample(self, offsets: torch.Tensor, roles: tuple[str, ...], chunk: int) -> torch.Tensor:
        null_row = offsets[self.num_users:self.num_users + 1]
        return torch.cat([null_row.expand(chunk, -1, -1) if role == NULL_USER else self._user_rows(offsets, chunk)
                          for role in roles])

    def __call__(self, out: torch.Tensor, extra_options: dict) -> torch.Tensor:
        block = extra_options.get("block")
        if block is None or not self.enabled or self.strength == 0:
            return out
        key = (block[0], block[1], extra_options.get("block_index", 0))
        to_out = self.outputs.get(key)
        if to_out is None:
            return out
        if self.hits is not None:
            self.hits.add(key)
        flags = extra_options.get("cond_or_uncond") or [0]
        position_roles = extra_options.get(ROLES_KEY)
        if position_roles is None:
            raise CompatibilityError("PSA's attention patch ran outside a ComfyUI guider's conditioning batch, so "
                                     "it cannot tell the user's prompt from the negative one; sample the PSA "
                                     "model with a KSampler or a SamplerCustomAdvanced guider")
        roles = tuple(position_roles[flag] for flag in flags)
        chunk = out.shape[0] // len(flags)
        found = self._offsets(key, to_out, out, extra_options.get("sample_sigmas"))
        if isinstance(found, _LayerCache):
            layout = (roles, chunk)
            per_sample = found.per_sample.get(layout)
            if per_sample is None:
                per_sample = found.per_sample[layout] = self._per_sample(found.offsets, roles, chunk)
        else:
            per_sample = self._per_sample(found, roles, chunk)
        if not self.window_is_full:
            sigmas = extra_options["sigmas"].to(out.device).repeat(len(flags))
            sigma_start, sigma_end = extra_options.get(WINDOW_KEY, (self.sigma_start, self.sigma_end))
            active = (sigmas <= sigma_start) & (sigmas >= sigma_end)
            per_sample = per_sample * active[:, None, None].to(per_sample.dtype)
        return out + per_sample


class ProfileBatchMismatch(CompatibilityError):
    """A profile batch whose size cannot match the latent batch, found when sampling starts (PSA Apply has no
    latent to check against)."""


# ComfyUI prints an exception's type as module + name unless the module is builtins; this keeps it short.
ProfileBatchMismatch.__module__ = "builtins"


def check_profile_batch(num_users: int, latents: int) -> None:
    if num_users != 1 and num_users != latents:
        raise ProfileBatchMismatch(f"the PSA embedding holds {num_users} profiles but the sampler batch has "
                                   f"{latents} latents; make the batch size equal to the number of profiles "
                                   "(or use a single profile)")


class PSARouting:
    """The two ComfyUI wrappers that route by role (docs/comfyui.md): OUTER_SAMPLE learns which guider samples
    (and the sigma window of the model being sampled, so a sampling-mode node after PSA Apply is respected); CALC_COND_BATCH names each position of the conds list it is given by the guider conditioning it
    is (the same list object), and passes their roles to the attention patch in transformer_options. A list
    that is none of the guider's, or a guider conditioning of unknown role, is refused, never guessed."""

    def __init__(self, start_percent: float, end_percent: float):
        self.start_percent = start_percent
        self.end_percent = end_percent
        self.guiders: list = []
        self.logged: set = set()

    def __deepcopy__(self, memo: dict) -> "PSARouting":
        return self  # shared by every clone: it holds no per-model state but the guider being sampled

    def outer_sample(self, executor, *args, **kwargs):
        guider = executor.class_obj
        sampling = guider.model_patcher.get_model_object("model_sampling")
        noise = args[0] if args else kwargs.get("noise")
        for patch in psa_patches(guider.model_options):
            if noise is not None:
                check_profile_batch(patch.num_users, noise.shape[0])
        # the model being sampled, so that a sampling-mode node placed after PSA Apply sets the window's sigmas
        window = (float(sampling.percent_to_sigma(self.start_percent)),
                  float(sampling.percent_to_sigma(self.end_percent)))
        if was_merged(guider.model_patcher):
            log.warning("PSA: this model was merged with another (ModelMergeSimple or a like node) after PSA Apply; "
                        "PSA stays at full strength, as applied to the first model, whatever the ratio, and a PSA "
                        "Apply on the other model is dropped by the merge. Apply PSA after merging instead")
        self.guiders.append((guider, window))
        self.logged = set()
        try:
            return executor(*args, **kwargs)
        finally:
            self.guiders.pop()

    def roles(self, conds: list) -> list[str | None]:
        if not self.guiders:
            raise CompatibilityError("PSA: a conditioning batch was computed outside a guider's sampling run, so "
                                     "PSA cannot tell the user's prompt from the negative one")
        guider = self.guiders[-1][0]
        named = {id(value): name for name, value in (getattr(guider, "conds", None) or {}).items()}
        guider_name = type(guider).__name__
        roles, names = [], []
        for cond in conds:
            if cond is None:
                roles.append(None)
                names.append("-")
                continue
            name = named.get(id(cond))
            if name is None:
                raise CompatibilityError(
                    f"PSA: {guider_name} (or a model patch) evaluates a conditioning that is none of the guider's "
                    f"({', '.join(named) or 'none'}), so PSA cannot tell whether it is the user's prompt or a "
                    "negative one; this sampling path is not supported with PSA Apply")
            if name not in ROLE_OF_COND:
                raise CompatibilityError(
                    f"PSA: {guider_name} has a conditioning '{name}' whose role PSA does not know (it knows "
                    f"{', '.join(sorted(ROLE_OF_COND))}); this guider is not supported with PSA Apply")
            roles.append(ROLE_OF_COND[name])
            names.append(name)
        layout = tuple(names)
        if layout not in self.logged:
            self.logged.add(layout)
            log.info("PSA routing (%s): %s", guider_name,
                     ", ".join(f"{n} -> {r}" for n, r in zip(names, roles) if r is not None))
        return roles

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        options = dict(model_options)
        options["transformer_options"] = {**model_options.get("transformer_options", {}),
                                          ROLES_KEY: self.roles(conds), WINDOW_KEY: self.guiders[-1][1]}
        return executor(model, conds, x_in, timestep, options, *args, **kwargs)


def was_merged(model_patcher) -> bool:
    """ComfyUI's merge nodes add the other model's weights as patches with strength_model = ratio (≠ 1); LoRAs
    and other weight patches keep strength_model 1. A merge touches every weight, attn2's `to_out` included."""
    return any(patch[2] != 1.0 for key, found in getattr(model_patcher, "patches", {}).items()
               if key.endswith(".attn2.to_out.0.weight") for patch in found)


def psa_patches(model_options: dict) -> list[PSAAttentionPatch]:
    patches = model_options.get("transformer_options", {}).get("patches", {}).get("attn2_output_patch", [])
    return [patch for patch in patches if isinstance(patch, PSAAttentionPatch)]


def check_model_family(model, family: Family, what: str = "the adapter") -> dict[ComfyKey, nn.Module]:
    """The `to_out[0]` of each of the family's layers in `model` (a ModelPatcher); a clear error if the model
    is not of that family."""
    outputs = find_cross_attention_outputs(model.get_model_object("diffusion_model"))
    context_dim = model.model.model_config.unet_config.get("context_dim")
    mismatch = context_dim != family.context_dim or any(
        layer.comfy_key not in outputs or outputs[layer.comfy_key].in_features != layer.hidden
        for layer in family.layers)
    if mismatch:
        raise CompatibilityError(
            f"{what} is for {family.describe()} but the model is {describe_model(outputs, context_dim)}; "
            "use a PSA adapter made for this model's family")
    return {layer.comfy_key: outputs[layer.comfy_key] for layer in family.layers}


def apply_psa(model, adapter: LoadedAdapter, embedding: UserEmbedding, strength: float,
              start_percent: float = 0.0, end_percent: float = 1.0):
    """A clone of `model` (a ModelPatcher) with the PSA patch attached. The input model is not changed."""
    check_number(strength, "strength")  # a linked value skips validation; NaN or inf would blacken every image
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise CompatibilityError(f"start_percent {start_percent} and end_percent {end_percent} must satisfy "
                                 "0 ≤ start_percent ≤ end_percent ≤ 1")
    family = adapter.family
    outputs = check_model_family(model, family, f"adapter '{adapter.name}'")
    user_values = adapter.user_values(embedding.vectors)
    values = {layer.comfy_key: v for layer, v in zip(family.layers, user_values.per_layer)}
    sampling = model.get_model_object("model_sampling")
    patch = PSAAttentionPatch(
        outputs=outputs, values=values, num_users=user_values.num_users,
        strength=float(strength), sigma_start=float(sampling.percent_to_sigma(start_percent)),
        sigma_end=float(sampling.percent_to_sigma(end_percent)),
        window_is_full=start_percent <= 0.0 and end_percent >= 1.0)
    patched = model.clone()
    options = patched.model_options["transformer_options"]
    earlier = psa_patches(patched.model_options)
    if earlier:
        # Two PSA Apply on one model: the later one replaces the earlier (docs/comfyui.md), never a silent sum.
        log.warning("PSA Apply: the model already has PSA applied; this PSA Apply replaces it (adapter '%s')",
                    adapter.name)
        options["patches"]["attn2_output_patch"] = [
            p for p in options["patches"]["attn2_output_patch"] if not isinstance(p, PSAAttentionPatch)]
    wrappers = options.setdefault("wrappers", {})
    routing = PSARouting(start_percent, end_percent)
    import comfy.patcher_extension as extension

    for kind, function in ((extension.WrappersMP.OUTER_SAMPLE, routing.outer_sample),
                           (extension.WrappersMP.CALC_COND_BATCH, routing.calc_cond_batch)):
        wrappers.setdefault(kind, {})[WRAPPER_KEY] = [function]  # replaces an earlier PSA Apply's
    patched.set_model_attn2_output_patch(patch)
    return patched
