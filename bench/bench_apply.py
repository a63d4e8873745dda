"""Inference benchmark for PSAApply (issue 2).

1. Sampling time with PSAApply ÷ without, in one ComfyUI process, SD1.5 block layout at real widths
   (320/640/1280, context 768, random weights), runs alternating, median of N. Beside it, the same ratio
   for a reference-style processor (attention over the appended user key, as PSAAttnProcessor2_0 does,
   installed as attn2 replace patches).
2. Runtime adapter memory for a real-size SDXL adapter: what stays in memory after loading and applying,
   against the reference file's parameter count.

    .venv/bin/python bench/bench_apply.py [--device cuda] [--latent 64] [--steps 10] [--runs 7] [--check]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(REPO))  # testkit (tests/tiny_models.py builds from it), after ComfyUI
from comfy_env import import_comfy_in_process, import_pack  # noqa: E402


class ReferenceStyleProcessor:
    """attn2 replace: text attention plus s·SDPA(q, W_k u, W_v u) over the single user key, before to_out."""

    def __init__(self, to_k_user, to_v_user, cond_token, null_token, attention):
        self.to_k_user, self.to_v_user = to_k_user, to_v_user
        self.cond_token, self.null_token, self.attention = cond_token, null_token, attention

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        base = self.attention(q, k, v, heads)
        flags = extra_options["cond_or_uncond"]
        chunk = q.shape[0] // len(flags)
        user = torch.cat([(self.null_token if f == 1 else self.cond_token).expand(chunk, -1) for f in flags])[:, None]
        user = user.to(q.dtype)
        k_user, v_user = F.linear(user, self.to_k_user), F.linear(user, self.to_v_user)
        return base + self.attention(q, k_user, v_user, heads)


def sample_once(model, noise, positive, negative, steps, device) -> float:
    """Seconds for sampling steps 2..N, timed from the sampler's own per-step callback: model loading and
    the first step's one-off work (weight placement, caches) are left out, the same for every arm."""
    import comfy.sample

    marks = []

    def on_step(step, denoised, x, total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    comfy.sample.sample(model, noise, steps, 7.5, "euler", "normal", positive, negative, torch.zeros_like(noise),
                        seed=0, disable_pbar=True, callback=on_step)
    return marks[-1] - marks[0]


def speed(args, pack, device, dtype) -> dict:
    import comfy.ldm.modules.attention as attention
    import comfy.model_management
    import tiny_models as tm

    model = tm.build_model("sd15", model_channels=320, context_dim=768, dtype=dtype)
    model.load_device = device
    family = pack.psa_core.get_family("sd15")
    nested = tm.random_adapter_tensors(family, 3584, scale=0.02)
    projection = dict(nested["user_proj"])
    weights = [nested["psa_adapter"][f"{l.index}.to_v_user.0.weight"] for l in family.layers]
    adapter = pack.psa_core.LoadedAdapter(family, 3584, projection, weights, name="bench")
    embedding = pack.psa_core.UserEmbedding(torch.randn(1, 3584) * 2.3)
    psa = pack.nodes.attention_patch.apply_psa(model, adapter, embedding, 1.0)

    tokens = pack.psa_core.project_users(embedding.vectors, projection).to(device, dtype)
    null = pack.psa_core.null_user(projection).to(device, dtype)
    reference = model.clone()
    for layer in family.layers:
        processor = ReferenceStyleProcessor(
            nested["psa_adapter"][f"{layer.index}.to_k_user.0.weight"].to(device, dtype),
            nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"].to(device, dtype),
            tokens, null, attention.optimized_attention)
        reference.set_model_attn2_replace(processor, *layer.comfy_key)

    size = args.latent
    noise = torch.randn(args.batch, 4, size, size, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    arms = {"plain": model, "psa": psa, "reference_style": reference}
    comfy.model_management.load_models_gpu([model])
    for arm in arms.values():  # warm-up: kernels, caches, weight placement
        sample_once(arm, noise, positive, negative, 2, device)
    times = {name: [] for name in arms}
    for _ in range(args.runs):
        for name, arm in arms.items():
            times[name].append(sample_once(arm, noise, positive, negative, args.steps, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"latent": f"{args.batch}x4x{size}x{size}", "steps": args.steps, "runs": args.runs, "dtype": str(dtype),
            "median_s": medians, "psa_ratio": medians["psa"] / medians["plain"],
            "reference_style_ratio": medians["reference_style"] / medians["plain"]}


def memory(pack) -> dict:
    """A real-size SDXL adapter file (random fp16 weights): parameters in the file vs held at runtime."""
    import tiny_models as tm

    family = pack.psa_core.get_family("sdxl")
    nested = tm.random_adapter_tensors(family, 3584, dtype=torch.float16, scale=0.02)
    file_parameters = sum(t.numel() for group in nested.values() for t in group.values())
    with tempfile.TemporaryDirectory() as folder:
        path = tm.write_adapter(nested, Path(folder) / "psa_sdxl.safetensors")
        del nested
        gc.collect()
        adapter = pack.psa_core.load_adapter(path)
        values = adapter.user_values(torch.randn(1, 3584))
        held = adapter.resident_parameters() + sum(v.numel() for v in values.per_layer)
    return {"file_parameters": file_parameters, "runtime_parameters": held,
            "runtime_share": held / file_parameters,
            "effective_parameters_reference_would_hold": family.context_dim * 3587 + sum(
                family.context_dim * l.hidden for l in family.layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--latent", type=int, default=32, help="latent side (64 = 512 px)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per run (steps 2..N are timed)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import_comfy_in_process(cpu=args.device == "cpu")
    pack = import_pack()
    device = torch.device(args.device)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "speed": speed(args, pack, device, dtype), "memory": memory(pack)}
    s, m = results["speed"], results["memory"]
    print(json.dumps(results, indent=2))
    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| sampling time with PSAApply / without ({results['device']}, {s['latent']} latent, {s['dtype']}) "
          f"| {s['psa_ratio']:.4f} | ≤ 1.01 |")
    print(f"| reference-style processor / without, same run | {s['reference_style_ratio']:.4f} | (reported) |")
    print(f"| SDXL adapter parameters held at runtime / in the file | {m['runtime_parameters']:,} / "
          f"{m['file_parameters']:,} = {m['runtime_share']:.2%} | ≤ 50% |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.check and (s["psa_ratio"] > 1.01 or m["runtime_share"] > 0.5):
        sys.exit(1)


if __name__ == "__main__":
    main()
