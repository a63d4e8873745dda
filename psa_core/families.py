"""UNet families PSA knows, and their cross-attention layer tables.

An adapter stores one value projection per cross-attention (attn2) layer, numbered in diffusers'
`attn_processors` order: all down blocks, then all up blocks, then the mid block. ComfyUI names the
same layer `(block, id, block_index)`: `down_blocks.b.attentions.a` is `("input", 3b+a+1)`,
`up_blocks.b.attentions.a` is `("output", 3b+a)`, `mid_block` is `("middle", 0)`, and
`transformer_blocks.t` is `block_index = t`. The tables are generated from that rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import AdapterFileError

ComfyKey = tuple[str, int, int]


@dataclass(frozen=True)
class LayerSpec:
    index: int
    diffusers_name: str
    comfy_key: ComfyKey
    hidden: int


@dataclass(frozen=True)
class BlockLayout:
    """A family's UNet block structure at its real widths: the one statement of it that the layer tables,
    and the development-only test models (testkit/), are made from."""

    name: str
    display_name: str
    channel_mult: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # per level, 0 = no attention at that level
    middle_depth: int
    num_res_blocks: int
    model_channels: int
    context_dim: int


_LAYOUTS = {
    "sd15": BlockLayout("sd15", "SD1.5", (1, 2, 4, 4), (1, 1, 1, 0), 1, 2, 320, 768),
    "sdxl": BlockLayout("sdxl", "SDXL", (1, 2, 4), (0, 2, 10), 10, 2, 320, 2048),
}
FAMILY_NAMES = tuple(_LAYOUTS)


@dataclass(frozen=True)
class Family:
    """One UNet layout with given widths. The published adapters use the real widths; tests and
    unusual fine-tunes may use others, as long as the block structure is the family's."""

    name: str
    display_name: str
    context_dim: int
    layers: tuple[LayerSpec, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_reference_size(self) -> bool:
        return self == get_family(self.name)

    def describe(self) -> str:
        text = f"{self.display_name} ({self.num_layers} cross-attention layers, context {self.context_dim}"
        if not self.is_reference_size:
            text += f", widths {'/'.join(str(w) for w in sorted({l.hidden for l in self.layers}))}"
        return text + ")"

    def layer_by_key(self) -> dict[ComfyKey, LayerSpec]:
        return {layer.comfy_key: layer for layer in self.layers}


def _layer_rows(layout: BlockLayout) -> list[tuple[str, ComfyKey, int]]:
    """(diffusers name, ComfyUI key, level) per attn2 layer, in checkpoint order."""
    rows: list[tuple[str, ComfyKey, int]] = []
    levels = len(layout.channel_mult)
    for b in range(levels):
        for a in range(layout.num_res_blocks):
            for t in range(layout.transformer_depth[b]):
                rows.append((f"down_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2", ("input", 3 * b + a + 1, t), b))
    for b in range(levels):
        level = levels - 1 - b
        for a in range(layout.num_res_blocks + 1):
            for t in range(layout.transformer_depth[level]):
                rows.append((f"up_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn2", ("output", 3 * b + a, t), level))
    for t in range(layout.middle_depth):
        rows.append((f"mid_block.attentions.0.transformer_blocks.{t}.attn2", ("middle", 0, t), levels - 1))
    return rows


def _build(layout: BlockLayout, level_widths: dict[int, int], context_dim: int) -> Family:
    layers = tuple(LayerSpec(i, name, key, level_widths[level])
                   for i, (name, key, level) in enumerate(_layer_rows(layout)))
    return Family(layout.name, layout.display_name, context_dim, layers)


def get_layout(name: str) -> BlockLayout:
    """The block structure of family `name` ("sd15" or "sdxl")."""
    if name not in _LAYOUTS:
        raise AdapterFileError(f"unknown model family {name!r}; allowed: {', '.join(FAMILY_NAMES)}")
    return _LAYOUTS[name]


@lru_cache(maxsize=None)
def get_family(name: str, model_channels: int | None = None, context_dim: int | None = None,
               channel_mult: tuple[int, ...] | None = None) -> Family:
    """The family `name` ("sd15" or "sdxl"), at real widths unless others are given (tiny test models)."""
    layout = get_layout(name)
    channels = model_channels or layout.model_channels
    mult = channel_mult or layout.channel_mult
    if len(mult) != len(layout.channel_mult):
        raise AdapterFileError(f"{layout.display_name} has {len(layout.channel_mult)} resolution levels, not "
                               f"{len(mult)} (channel_mult {tuple(mult)})")
    return _build(layout, {level: channels * m for level, m in enumerate(mult)}, context_dim or layout.context_dim)


def recognise_family(hidden_sizes: list[int], context_dim: int) -> Family:
    """The family whose block structure has these per-layer widths, in checkpoint order (one width per level)."""
    for layout in _LAYOUTS.values():
        rows = _layer_rows(layout)
        if len(rows) != len(hidden_sizes):
            continue
        level_widths: dict[int, int] = {}
        if all(level_widths.setdefault(level, width) == width for (_, _, level), width in zip(rows, hidden_sizes)):
            return _build(layout, level_widths, context_dim)
    counts = ", ".join(f"{layout.display_name} has {len(_layer_rows(layout))}" for layout in _LAYOUTS.values())
    raise AdapterFileError(
        f"{len(hidden_sizes)} value layers of widths {sorted(set(hidden_sizes))} match no known UNet ({counts} "
        "cross-attention layers, with one width per resolution level)")
