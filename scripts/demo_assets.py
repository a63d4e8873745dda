"""Demo assets with random weights: an SD1.5 single-file checkpoint ComfyUI loads, and a PSA adapter and
user embedding that fit it. Nothing is downloaded; only torch, numpy and safetensors are needed. The tensor
tables and seeded values are testkit's (testkit.ldm_shapes), the UNet's block structure and the
adapter's layer table psa_core.families' (through testkit.layouts).

The checkpoint uses the LDM single-file layout of the published SD1.5 files:
- `model.diffusion_model.*`: an SD1.5 UNet with 320 channels at every level (`channel_mult` [1, 1, 1, 1]),
  attention on the three upper levels and the middle block, context 768. ComfyUI detects it as SD15
  (it checks only the 320 channels, the 768 context and the conv `proj_in`, not the depth).
- `cond_stage_model.transformer.text_model.*`: a CLIP ViT-L/14 text encoder (hidden 768, 12 layers, the
  49408-token vocabulary), which ComfyUI's shipped SD1 tokenizer feeds offline.
- `first_stage_model.*`: the SD VAE (KL-f8, 128 base channels, multipliers 1/2/4/4, 4 latent channels).

The weights are random (seeded, so a seed gives the same file): images come out as noise, but every
ComfyUI node runs for real. The file holds about 320 M parameters (about 640 MB in fp16).

The PSA adapter has the 16 cross-attention layers of that UNet (all 320 wide) in the PSA file layout
(`user_proj.*`, `psa_adapter.<i>.to_{k,v}_user.0.weight`), for 3584-wide embeddings like the published ones.

Usage: python scripts/demo_assets.py MODELS_DIR [--seed N]
writes checkpoints/v1-5-pruned-emaonly.safetensors, psa/psa_sd15.safetensors and
psa_embeddings/demo_user.npy under MODELS_DIR (the names the example workflows use, except the embedding).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # testkit, psa_core and trainer as top-level packages, after everything else

from testkit import ldm_shapes  # noqa: E402
from testkit.ldm_shapes import ShapeSpec, random_tensors  # noqa: E402
from testkit.layouts import unet_layout  # noqa: E402

CHECKPOINT_NAME = "v1-5-pruned-emaonly.safetensors"
ADAPTER_NAME = "psa_sd15.safetensors"
EMBEDDING_NAME = "demo_user.npy"
EMBEDDING_DIM = 3584  # Qwen2.5-7B-Instruct hidden size, as the published embeddings

DEMO_UNET = unet_layout("sd15", channel_mult=(1, 1, 1, 1))  # SD1.5 at 320 channels on every level
CLIP_L_HIDDEN, CLIP_L_LAYERS, CLIP_VOCAB = 768, 12, 49408
SD_VAE_WIDTHS, SD_VAE_RES_BLOCKS = (128, 256, 512, 512), 2


def unet_shapes() -> ShapeSpec:
    return ldm_shapes.unet_shapes(DEMO_UNET)


def clip_l_shapes() -> ShapeSpec:
    """The CLIP ViT-L/14 text model as in SD1.5 checkpoints (no projection, as SD1.5 ships it)."""
    return ldm_shapes.clip_text_shapes(CLIP_L_HIDDEN, CLIP_L_LAYERS, CLIP_VOCAB)


def vae_shapes() -> ShapeSpec:
    """The SD KL-f8 autoencoder."""
    return ldm_shapes.vae_shapes(SD_VAE_WIDTHS, SD_VAE_RES_BLOCKS)


def checkpoint_shapes() -> ShapeSpec:
    return {**unet_shapes(), **clip_l_shapes(), **vae_shapes()}


def adapter_shapes(embedding_dim: int = EMBEDDING_DIM) -> ShapeSpec:
    """The PSA file layout for the demo UNet's cross-attention layers (psa_core.families' table)."""
    family = DEMO_UNET.psa_family()
    d = family.context_dim
    spec: ShapeSpec = {"user_proj.proj.weight": (d, embedding_dim), "user_proj.proj.bias": (d,),
                       "user_proj.norm.weight": (d,), "user_proj.norm.bias": (d,)}
    for layer in family.layers:
        spec[f"psa_adapter.{layer.index}.to_k_user.0.weight"] = (layer.hidden, d)
        spec[f"psa_adapter.{layer.index}.to_v_user.0.weight"] = (layer.hidden, d)
    return spec


# ---- writers ---------------------------------------------------------------------------------------------

def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.chmod(0o644)  # safetensors creates the file private to its owner
    partial.replace(path)
    return path


def write_demo_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight SD1.5 single-file checkpoint (fp16, ~640 MB) that CheckpointLoaderSimple loads."""
    tensors = dict(random_tensors(checkpoint_shapes(), seed))
    return _save(tensors, Path(path), {"psa_demo": "random-weight SD1.5 checkpoint for tests and demos",
                                       "seed": str(seed)})


def write_demo_adapter(path: str | Path, seed: int = 1, embedding_dim: int = EMBEDDING_DIM,
                       scale: float = 0.02) -> Path:
    """Write a random PSA adapter (flat safetensors) for the demo checkpoint's UNet."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in sorted(adapter_shapes(embedding_dim=embedding_dim).items()):
        if key == "user_proj.norm.weight":
            tensors[key] = torch.ones(shape)
        elif key.endswith("bias"):
            tensors[key] = torch.zeros(shape)
        else:
            tensors[key] = torch.randn(shape, generator=generator) * scale
    return _save(tensors, Path(path), {"psa_demo": "random PSA adapter for the demo SD1.5 checkpoint"})


def write_demo_embedding(path: str | Path, seed: int = 2, dim: int = EMBEDDING_DIM) -> Path:
    """Write a random user embedding (.npy, float32, shape [dim]) like the published ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    np.save(path, values)
    return path


def write_demo_models(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """All three assets under a ComfyUI models/ folder, at the names the example workflows use."""
    models = Path(models_dir)
    return {"checkpoint": write_demo_checkpoint(models / "checkpoints" / CHECKPOINT_NAME, seed),
            "adapter": write_demo_adapter(models / "psa" / ADAPTER_NAME, seed + 1),
            "embedding": write_demo_embedding(models / "psa_embeddings" / EMBEDDING_NAME, seed + 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="a ComfyUI models/ folder")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    for name, path in write_demo_models(arguments.models_dir, arguments.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
