"""The PSA term inside a diffusers UNet: forward hooks on every attn2, and the `predict` callable of the core.

Each hook adds `W_out^l·v_l` (`psa_core.adapter.attn2_shift`, the live `to_out[0].weight`, no bias) to
its attn2 output. `predict(..., user_values=None)` runs the untouched base UNet: the hooks return None and
change nothing, so the adapter-off reference is the base model bit for bit.

For a diffusers pipeline, `set_user_values(values, null_values)` installs values for every later UNet call: the
pipeline's classifier-free guidance batch is [uncond, cond] (the unconditional half first), and the unconditional
half gets the null user's values (`u0 = LN(b)`), as the reference and the ComfyUI patch do (docs/adapter.md §1
item 4, §3, §4 item 3).

The values of the latest call stay installed until the next call. The DPO step runs the reference pass
first and the policy pass last, so gradient checkpointing, which re-runs blocks during backward, recomputes
them with the policy's values.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from diffusers import UNet2DConditionModel

from psa_core.adapter import attn2_shift
from psa_core.families import Family
from psa_core.training.errors import TrainingError
from psa_core.training.step import Conditioning

ADDED_CONDITIONING = ("text_embeds", "time_ids")


class DiffusersPSAPredictor:
    """`predict(noisy, timesteps, conditioning, user_values)` for a frozen diffusers UNet."""

    def __init__(self, unet: UNet2DConditionModel, family: Family):
        if unet.config.cross_attention_dim != family.context_dim:
            raise TrainingError(f"UNet cross-attention width {unet.config.cross_attention_dim} does not match "
                                f"{family.describe()}")
        self.unet = unet
        self.family = family
        self._values: Sequence[torch.Tensor] | None = None
        self._null_values: Sequence[torch.Tensor] | None = None
        self._handles = []
        for layer in family.layers:
            try:
                module = unet.get_submodule(layer.diffusers_name)
            except AttributeError:
                raise TrainingError(f"UNet has no {layer.diffusers_name}; it is not a {family.display_name} "
                                    "UNet") from None
            if module.to_out[0].weight.shape[0] != layer.hidden:
                raise TrainingError(f"{layer.diffusers_name} is {module.to_out[0].weight.shape[0]} wide; "
                                    f"{family.describe()} expects {layer.hidden}")
            self._handles.append(module.register_forward_hook(partial(self._add_user_term, layer.index)))

    def _add_user_term(self, index: int, module: torch.nn.Module, args: tuple, output: torch.Tensor):
        if self._values is None:
            return None
        values = self._values[index]
        if self._null_values is not None and output.shape[0] == 2 * values.shape[0]:
            values = torch.cat([self._null_values[index], values])  # CFG: [uncond, cond], as diffusers batches them
        if values.shape[0] != output.shape[0]:
            raise TrainingError(f"user values for {values.shape[0]} images, but the UNet runs a batch of "
                                f"{output.shape[0]}")
        return output + attn2_shift(values, module.to_out[0].weight).to(output.dtype)

    def set_user_values(self, values: Sequence[torch.Tensor] | None,
                        null_values: Sequence[torch.Tensor] | None = None) -> None:
        """Values for every following UNet call (a pipeline's sampling loop): per layer `[B, H_l]` for the B images;
        `null_values` (per layer `[B, H_l]`, the null user) for the unconditional half of a 2B guidance batch.
        `None` turns the adapter off."""
        for given in (values, null_values):
            if given is not None and len(given) != self.family.num_layers:
                raise TrainingError(f"got {len(given)} user values for {self.family.num_layers} layers")
        self._values, self._null_values = values, (null_values if values is not None else None)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                 user_values: Sequence[torch.Tensor] | None) -> torch.Tensor:
        if user_values is not None and len(user_values) != self.family.num_layers:
            raise TrainingError(f"got {len(user_values)} user values for {self.family.num_layers} layers")
        self._values, self._null_values = user_values, None
        dtype = self.unet.dtype
        added = {name: conditioning[name].to(dtype) for name in ADDED_CONDITIONING if name in conditioning}
        context = conditioning["encoder_hidden_states"].to(dtype)
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=context, added_cond_kwargs=added or None).sample
