"""The PSA adapter maths.

The reference adds, in every cross-attention layer l, `s * SDPA(q, W_k^l u, W_v^l u)` to the attention
output before `to_out`, where `u = LayerNorm(P e + b)` is the projected user token. Attention over a
single key is that key's value, so the branch is exactly `s * W_v^l u`, a constant per layer and sample,
and after the affine `to_out` it adds `s * W_out^l W_v^l u` (docs/adapter.md §2). `W_k^l` never
changes the output and is not kept. The unconditional branch uses the null user `u0 = LN(b)`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .families import Family

LAYER_NORM_EPS = 1e-5
PROJECTION_KEYS = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")
# The largest |P e + b| (the user token before its LayerNorm) an embedding may give (docs/formats.md, user
# embeddings). The LayerNorm squares it in fp32, which overflows near 1.8e19; 1e12 keeps 7 orders of magnitude from
# that, and is over a million times what an embedding at the value bound (1e4 in all 3584 dimensions, norm 6e5)
# gives through a projection whose rows have unit norm.
MAX_PROJECTED_VALUE = 1e12


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """The user values are computed in fp32, or in float64 when given float64 (the tests' exact comparisons)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def project_users(embeddings: torch.Tensor, projection: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`LN(P e + b)` for a batch of embeddings `[N, E]`, in fp32 (or float64) → `[N, D]`."""
    weight = at_least_fp32(projection["proj.weight"])
    projected = F.linear(embeddings.to(weight.dtype), weight, projection["proj.bias"].to(weight.dtype))
    return F.layer_norm(projected, (weight.shape[0],), projection["norm.weight"].to(weight.dtype),
                        projection["norm.bias"].to(weight.dtype), LAYER_NORM_EPS)


def projected_magnitude(embeddings: torch.Tensor, projection: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the largest |P e + b| (the user token before its LayerNorm), in fp32 (or float64): `[N]`."""
    weight = at_least_fp32(projection["proj.weight"])
    projected = F.linear(embeddings.to(weight.dtype), weight, projection["proj.bias"].to(weight.dtype))
    return torch.nan_to_num(projected.abs(), nan=float("inf")).amax(dim=1)


def null_user(projection: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The token the reference feeds the unconditional branch: the projection of a zero embedding, `[1, D]`."""
    bias = at_least_fp32(projection["proj.bias"])
    return F.layer_norm(bias[None], bias.shape, projection["norm.weight"].to(bias.dtype),
                        projection["norm.bias"].to(bias.dtype), LAYER_NORM_EPS)


def attn2_shift(values: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
    """The PSA term of one attn2 layer, `W_out·v` per sample: `[N, H]` → `[N, 1, H]` (added to every token).

    Exact single-token collapse (docs/adapter.md §2, §4); `out_weight` is that layer's live `to_out[0].weight`,
    as the layer multiplies by it in this call, and no bias is added (the layer's own to_out bias is already in
    its output). Inference (nodes/attention_patch.py) and both trainers add exactly this."""
    return F.linear(values.to(out_weight.dtype), out_weight)[:, None, :]


class ValueWeights(Protocol):
    """Yields each layer's `to_v_user` weight `[H_l, D]`, in checkpoint order."""

    def __iter__(self) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True)
class UserValues:
    """Per-layer user values `W_v^l u`: rows 0..N-1 are the users, the last row is the null user."""

    per_layer: tuple[torch.Tensor, ...]
    num_users: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.per_layer)


@dataclass
class LoadedAdapter:
    """A PSA adapter ready for inference: the projection, and the value weights read on demand.

    Only the projection stays in memory; the per-layer value weights are streamed from their source
    (the file, or a trained module) each time user values are computed.
    """

    family: Family
    embedding_dim: int
    projection: dict[str, torch.Tensor]
    value_weights: ValueWeights
    encoder: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    name: str = ""

    @property
    def context_dim(self) -> int:
        return self.family.context_dim

    def resident_parameters(self) -> int:
        return sum(t.numel() for t in self.projection.values())

    def user_values(self, embeddings: torch.Tensor) -> UserValues:
        """`W_v^l [u_1..u_N, u0]` for every layer, fp32 (float64 for a float64 projection), from embeddings `[N, E]`."""
        tokens = torch.cat([project_users(embeddings, self.projection), null_user(self.projection)])
        per_layer = []
        for layer, weight in zip(self.family.layers, self.value_weights, strict=True):
            if tuple(weight.shape) != (layer.hidden, self.context_dim):
                raise ValueError(f"layer {layer.index}: value weight {tuple(weight.shape)} changed since loading")
            per_layer.append(F.linear(tokens, weight.to(tokens.dtype)))
        return UserValues(tuple(per_layer), embeddings.shape[0])


class PSAAdapter(nn.Module):
    """The trainable adapter: user projection plus one zero-initialised value projection per layer.

    `forward(e)` returns the per-layer values `W_v^l LN(P e + b)`; the UNet hook adds
    `W_out^l` times them, so every trainable operation lives inside this module (DDP-friendly).
    """

    def __init__(self, family: Family, embedding_dim: int):
        super().__init__()
        self.family = family
        self.embedding_dim = embedding_dim
        self.proj = nn.Linear(embedding_dim, family.context_dim)
        self.norm = nn.LayerNorm(family.context_dim, eps=LAYER_NORM_EPS)
        self.to_v_user = nn.ModuleList(
            nn.Linear(family.context_dim, layer.hidden, bias=False) for layer in family.layers)
        for linear in self.to_v_user:
            nn.init.zeros_(linear.weight)

    def projection_state(self) -> dict[str, torch.Tensor]:
        return {"proj.weight": self.proj.weight, "proj.bias": self.proj.bias,
                "norm.weight": self.norm.weight, "norm.bias": self.norm.bias}

    def user_tokens(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeddings))

    def forward(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.user_tokens(embeddings)
        return [linear(tokens) for linear in self.to_v_user]

    def value_weights(self) -> Iterable[torch.Tensor]:
        return [linear.weight.detach() for linear in self.to_v_user]

    def as_loaded(self, encoder: str | None = None, metadata: dict[str, str] | None = None,
                  name: str = "") -> LoadedAdapter:
        """A detached inference view of the current weights (copies, so training can go on)."""
        projection = {k: v.detach().float().clone() for k, v in self.projection_state().items()}
        weights = [w.float().clone() for w in self.value_weights()]
        return LoadedAdapter(self.family, self.embedding_dim, projection, weights, encoder,
                             dict(metadata or {}), name)

    @classmethod
    def from_loaded(cls, adapter: LoadedAdapter) -> "PSAAdapter":
        module = cls(adapter.family, adapter.embedding_dim)
        with torch.no_grad():
            for key, value in module.projection_state().items():
                value.copy_(adapter.projection[key])
            for linear, weight in zip(module.to_v_user, adapter.value_weights, strict=True):
                linear.weight.copy_(weight)
        return module
