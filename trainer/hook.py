"""The PSA term inside a diffusers UNet: forward hooks on every attn2, and the `predict` callable of the core.

Each hook adds `W_out^l·v_l` (`psa_core.adapter.attn2_shift`, the live `to_out[0].weight`, no bias) to
its attn2 output. `predict(..., user_values=None)` runs the untouched base UNet: the hooks return None and
change nothing, so the adapter-off reference is the base model bit for bit.

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
        return output + attn2_shift(self._values[index], module.to_out[0].weight).to(output.dtype)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                 user_values: Sequence[torch.Tensor] | None) -> torch.Tensor:
        if user_values is not None and len(user_values) != self.family.num_layers:
            raise TrainingError(f"got {len(user_values)} user values for {self.family.num_layers} layers")
        self._values = user_values
        dtype = self.unet.dtype
        added = {name: conditioning[name].to(dtype) for name in ADDED_CONDITIONING if name in conditioning}
        context = conditioning["encoder_hidden_states"].to(dtype)
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=context, added_cond_kwargs=added or None).sample
