"""An independent, literal implementation of the reference PSA processor (PSAAttnProcessor2_0), written
from docs/adapter.md §1 (the reference processor), installed into ComfyUI as attn2 *replace* patches.

Per attn2 layer: base attention over the text tokens, plus `s * softmax(q k_u^T / sqrt(d)) v_u` with
`k_u = to_k_user(u)`, `v_u = to_v_user(u)` computed per head over the single user key; ComfyUI then
applies `to_out`. Cond chunks use `u = LN(P e + b)`, uncond chunks `user_proj(zeros)`. Everything is
computed the long way (explicit softmax, explicit LayerNorm), sharing no code with the pack, in float64
(returned in the model's dtype), so that a float64 model compares with it to float64 rounding.
`scale` may be changed after installing (0 leaves the plain attention, still computed here).
"""
from __future__ import annotations

import math

import torch


def naive_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def naive_user_token(embedding, user_proj):
    """`user_proj(e)` from the nested reference dict: Linear then LayerNorm, in float64."""
    p = {k: v.double() for k, v in user_proj.items()}
    return naive_layer_norm(embedding.double() @ p["proj.weight"].T + p["proj.bias"], p["norm.weight"], p["norm.bias"])


def naive_attention(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    kh = k.reshape(b, k.shape[1], heads, d).permute(0, 2, 1, 3)
    vh = v.reshape(b, v.shape[1], heads, d).permute(0, 2, 1, 3)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ vh).permute(0, 2, 1, 3).reshape(b, n, inner)


class NaiveReferenceProcessor:
    def __init__(self, to_k_user, to_v_user, cond_tokens, null_token, scale):
        self.to_k_user, self.to_v_user = to_k_user.double(), to_v_user.double()
        self.cond_tokens, self.null_token, self.scale = cond_tokens, null_token, scale

    def __deepcopy__(self, memo: dict) -> "NaiveReferenceProcessor":
        # ComfyUI 0.3.x deep-copies model_options on every clone: one processor serves every clone, so that a
        # test changing `scale` changes it in the model being sampled too.
        return self

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        base = naive_attention(q.double(), k.double(), v.double(), heads)
        flags = extra_options["cond_or_uncond"]
        chunk = q.shape[0] // len(flags)
        rows = []
        for flag in flags:
            if flag == 1:
                rows.append(self.null_token.expand(chunk, -1))
            else:
                tokens = self.cond_tokens
                rows.append(tokens.expand(chunk, -1) if tokens.shape[0] == 1 else tokens)
        user = torch.cat(rows)[:, None, :]                                  # [B, 1, D], the appended user token
        k_user = user @ self.to_k_user.T
        v_user = user @ self.to_v_user.T
        return (base + self.scale * naive_attention(q.double(), k_user, v_user, heads)).to(q.dtype)


def install_naive_reference(model, family, nested, embeddings, scale=1.0, processors: list | None = None):
    """A clone of `model` with one naive reference processor per adapter layer (attn2 replace patches); each
    processor is also appended to `processors` when given."""
    cond_tokens = naive_user_token(embeddings, nested["user_proj"])
    null_token = naive_user_token(torch.zeros(1, embeddings.shape[1]), nested["user_proj"])
    patched = model.clone()
    for layer in family.layers:
        block, block_id, block_index = layer.comfy_key
        processor = NaiveReferenceProcessor(nested["psa_adapter"][f"{layer.index}.to_k_user.0.weight"],
                                            nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"],
                                            cond_tokens, null_token, scale)
        patched.set_model_attn2_replace(processor, block, block_id, block_index)
        if processors is not None:
            processors.append(processor)
    return patched
