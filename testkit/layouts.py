"""UNet layouts of the SD1.5 / SDXL families at any width, made from psa_core.families' block tables.

psa_core.families states each family's block structure once (channel multipliers, transformer depth per level,
middle-block depth, res blocks per level, real width and context); every test model takes it from there, so
the tiny models and the adapter layer tables cannot drift apart. Kept here, per family, is only what those
tables do not say: whether the transformers project linearly (SDXL) or by 1x1 convolution (SD1.5), and the
width of SDXL's `label_emb` input at real size.
"""
from __future__ import annotations

from dataclasses import dataclass

from psa_core.families import Family, get_family, get_layout

LINEAR_PROJECTION = {"sd15": False, "sdxl": True}
REAL_ADM_IN_CHANNELS = {"sd15": None, "sdxl": 1280 + 6 * 256}  # pooled OpenCLIP-G text + 6 size embeddings


@dataclass(frozen=True)
class UNetLayout:
    """One UNet: a family's block structure with chosen widths."""

    family: str
    model_channels: int
    channel_mult: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # transformer blocks per attention, per level; 0: no attention there
    middle_depth: int
    num_res_blocks: int
    context_dim: int
    linear_projection: bool
    adm_in_channels: int | None  # SDXL's label_emb input (pooled text + size embeddings); None: no label_emb
    in_channels: int = 4

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels  # SD1.5 and SDXL alike

    def psa_family(self) -> Family:
        """The adapter layer table of this UNet (psa_core.families, at these widths)."""
        return get_family(self.family, self.model_channels, self.context_dim, self.channel_mult)

    def comfy_unet_config(self) -> dict:
        """The config of ComfyUI's UNetModel (comfy.ldm.modules.diffusionmodules.openaimodel) for this layout:
        transformer depths per input block (down levels) and per output block (up levels, in input order)."""
        config = {
            "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "in_channels": self.in_channels, "out_channels": self.in_channels,
            "model_channels": self.model_channels, "channel_mult": list(self.channel_mult),
            "num_res_blocks": [self.num_res_blocks] * len(self.channel_mult),
            "transformer_depth": [d for d in self.transformer_depth for _ in range(self.num_res_blocks)],
            "transformer_depth_middle": self.middle_depth,
            "transformer_depth_output": [d for d in self.transformer_depth for _ in range(self.num_res_blocks + 1)],
            "context_dim": self.context_dim, "use_linear_in_transformer": self.linear_projection,
            "adm_in_channels": self.adm_in_channels, "use_temporal_resblock": False,
            "use_temporal_attention": False,
        }
        if self.adm_in_channels is not None:
            config["num_classes"] = "sequential"
        return config


def unet_layout(family: str, model_channels: int | None = None, context_dim: int | None = None,
                channel_mult: tuple[int, ...] | list[int] | None = None,
                adm_in_channels: int | None = None) -> UNetLayout:
    """Family `family`'s UNet, at its real widths unless others are given (SDXL's label_emb input likewise)."""
    blocks = get_layout(family)
    mult = tuple(channel_mult) if channel_mult else blocks.channel_mult
    get_family(family, model_channels, context_dim, mult)  # refuses a channel_mult of the wrong length
    return UNetLayout(family, model_channels or blocks.model_channels, mult, blocks.transformer_depth,
                      blocks.middle_depth, blocks.num_res_blocks, context_dim or blocks.context_dim,
                      LINEAR_PROJECTION[family],
                      adm_in_channels if adm_in_channels is not None else REAL_ADM_IN_CHANNELS[family])
