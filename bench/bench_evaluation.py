"""Evaluation throughput (issue 14): images scored per second by the pack's scoring loop
(psa_core.evaluation.score_images), reading PNG files from disk as `python -m trainer score` does.

1. NudeNet alone: the real 320n detector from the `nudenet` wheel, against the baseline of NudeNet's own
   `NudeDetector().detect(path)` loop (OpenCV decoding, no error checks; the reference's way). Target: ours at
   least 0.8 x the baseline's rate (PIL's full decode with truncation checks is the added work).
2. NudeNet + Q16: the same, plus Q16 on a CLIP vision tower of ViT-L/14's widths (24 layers, 1024 wide, 16 heads,
   patch 14, 224 px, 768-d projection) built from a config with random weights (the real weights are the user's;
   the arithmetic is the same) and the reference's prompt embeddings when found, else random ones.

The images are rendered here (512x512, SD1.5's size). One warm-up batch is not timed; the rate is images over
the wall time of the rest. Threads: `--threads` for torch and onnxruntime alike (default 1: the development
machine has 2 shared cores).

    .venv/bin/python bench/bench_evaluation.py [--images 16] [--batch 8] [--threads 1] [--device cpu|cuda]
                                               [--skip-q16] [--check] [--json out.json]

With --check, exits 1 when the NudeNet target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from psa_core.evaluation import (  # noqa: E402
    CLIPImageEmbedder,
    ImageItem,
    NudeNetDetector,
    Q16Classifier,
    score_images,
)

NUDENET_TARGET = 0.8
VIT_L_14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def reference_dir() -> Path:
    return Path(os.environ.get("PSA_REFERENCE_DIR") or REPO.parent / "shared" / "reference")


def render(index: int, size: int = 512) -> Image.Image:
    """Smooth random blobs with some texture: a stand-in for a generated image."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 16, size // 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(3))
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def rate(items, nudenet, q16, batch: int) -> float:
    score_images(items[:batch], nudenet, q16, batch)  # warm-up
    timed = items[batch:]
    start = time.perf_counter()
    records = score_images(timed, nudenet, q16, batch)
    seconds = time.perf_counter() - start
    assert all(not r.errors for r in records)
    return len(timed) / seconds


def baseline_rate(items, detector, batch: int) -> float:
    """NudeNet's own detect(path) per file, as the reference's evaluation calls it."""
    for item in items[:batch]:
        detector.detect(str(item.source))
    timed = items[batch:]
    start = time.perf_counter()
    for item in timed:
        detector.detect(str(item.source))
    return len(timed) / (time.perf_counter() - start)


def q16_classifier(device: str) -> tuple[Q16Classifier, str]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L_14)).eval()
    dtype = torch.float16 if device == "cuda" else torch.float32
    embedder = CLIPImageEmbedder.from_model(model, "random ViT-L/14 widths").to(device, dtype)
    prompts_file = reference_dir() / "evaluation" / "q16_prompts_vit-l-14.npy"
    if prompts_file.is_file():
        return Q16Classifier(embedder, prompts_file), "reference q16_prompts_vit-l-14.npy"
    return Q16Classifier(embedder, np.random.default_rng(0).standard_normal((2, 768)).astype(np.float32)), "random"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="timed images (plus one warm-up batch)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="for CLIP (NudeNet: onnxruntime CPU)")
    parser.add_argument("--skip-q16", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when the NudeNet target is missed")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        items = []
        for index in range(args.images + args.batch):
            path = Path(folder) / f"image_{index:05d}.png"
            render(index).save(path)
            items.append(ImageItem(path.name, path))
        nudenet = NudeNetDetector(threads=args.threads)
        results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "threads": args.threads, "images": args.images, "batch": args.batch, "size": "512x512 PNG",
                   "versions": nudenet.versions, "torch": torch.__version__}
        results["nudenet_images_per_s"] = rate(items, nudenet, None, args.batch)
        results["baseline_nudenet_images_per_s"] = baseline_rate(items, nudenet._detector, args.batch)
        ratio = results["nudenet_images_per_s"] / results["baseline_nudenet_images_per_s"]
        results["nudenet_ratio"] = ratio
        print(f"NudeNet alone: {results['nudenet_images_per_s']:.2f} images/s ({args.threads} thread(s)); NudeNet's "
              f"own detect(path): {results['baseline_nudenet_images_per_s']:.2f} images/s; ratio {ratio:.3f} "
              f"(target >= {NUDENET_TARGET})")
        if not args.skip_q16:
            q16, prompts = q16_classifier(args.device)
            results["q16_prompts"] = prompts
            results["q16_device"] = f"{args.device} {str(q16.embed.dtype).replace('torch.', '')}"
            results["nudenet_q16_images_per_s"] = rate(items, nudenet, q16, args.batch)
            results["q16_alone_images_per_s"] = rate(items, None, q16, args.batch)
            print(f"NudeNet + Q16 (ViT-L/14 widths, random weights, {results['q16_device']}): "
                  f"{results['nudenet_q16_images_per_s']:.2f} images/s; Q16 alone {results['q16_alone_images_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.check and results["nudenet_ratio"] < NUDENET_TARGET:
        print(f"NudeNet rate ratio {results['nudenet_ratio']:.3f} is below the target {NUDENET_TARGET}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
