"""Training-step benchmark (issue 4): our DPO step against the reference design, measured in the same run.

Arms, each in a fresh process of its own so that memory peaks do not mix, on the same random-weight models
(SD1.5 block layout at real widths by default), the same pairs, batch, resolution and precision:

- ours: one frozen UNet in the compute dtype with the adapter hooks; the reference prediction is the same UNet
  with the adapter off; VAE latents and text conditioning come from the cache (built once beforehand, by a
  third process, and reported as a one-time cost);
- reference: the PSAlign train.py design: a trained-side UNet kept in fp32 under autocast, a second frozen UNet
  (compute dtype) for the reference prediction, and the VAE and text encoder (compute dtype) run on every step.
  Its PSA term uses our collapsed hook (cheaper than the reference's extra attention), and its images are
  decoded once up front (the reference decodes them in data-loader workers): both favour the baseline.

Reported per arm: pairs per second over the timed steps (after warm-up) and the peak memory of the arm, weights
included (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS above the process's RSS before the models are
built). The run fails (exit 1) unless ours reaches >= --min-speedup x the throughput and <= --max-memory-ratio x
the peak memory.

    .venv/bin/python bench/bench_train.py                                  # CPU, short
    python bench/bench_train.py --device cuda --resolution 512 --batch 4   # GPU, SD1.5 real widths
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from psa_core.adapter import PSAAdapter
from psa_core.families import get_family
from psa_core.training.augment import load_rgb, prepare_pair
from psa_core.training.batches import (
    AssemblyOptions,
    CachedPairs,
    PairOrder,
    micro_batch_generator,
)
from psa_core.training.cache import CacheSettings, open_or_build_cache
from psa_core.training.embeddings import CallableEmbeddings, build_user_table
from psa_core.training.labelling import read_labelled_pairs, read_profiles
from psa_core.training.loss import dpo_loss, per_sample_mse
from psa_core.training.noise import DDPMSchedule
from psa_core.training.step import dpo_step, repeat_pairs
from testkit.models import (
    ModelSpec,
    build_text_encoders,
    build_unet,
    build_vae,
    write_tokenizer,
)
from testkit.preference_data import write_pairs, write_profiles
from trainer.encode import image_encoder, text_encoder
from trainer.hook import DiffusersPSAPredictor
from trainer.models import Encoders

from memory import Memory  # bench/memory.py, beside this script

EMBEDDING_DIM = 3584
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the trainer's --precision names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--widths", choices=("real", "tiny"), default="real",
                        help="SD1.5 at real widths (320/640/1280, context 768) or the tiny test widths")
    parser.add_argument("--resolution", type=int, help="image size (default: 512 on cuda, 128 on cpu)")
    parser.add_argument("--batch", type=int, help="pairs per step (default: 4 on cuda, 1 on cpu)")
    parser.add_argument("--steps", type=int, help="timed steps (default: 10 on cuda, 3 on cpu)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--precision", choices=tuple(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for both arms")
    parser.add_argument("--min-speedup", type=float, default=1.5)
    parser.add_argument("--max-memory-ratio", type=float, default=0.7)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--arm", choices=("cache", "ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.resolution = args.resolution or (512 if gpu else 128)
    args.batch = args.batch or (4 if gpu else 1)
    args.steps = args.steps or (10 if gpu else 3)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    return args


# ---- shared setup ----

def spec_for(args) -> ModelSpec:
    return ModelSpec.real("sd15") if args.widths == "real" else ModelSpec.tiny("sd15")


def build_models(args, components: tuple[str, ...]):
    """Random-weight models built straight on the device from fixed seeds (the same in every arm)."""
    spec = spec_for(args)
    device = torch.device(args.device)
    built = {}
    with device:
        if "unet" in components:
            torch.manual_seed(0)
            built["unet"] = build_unet(spec, randomise=False)
        if "vae" in components:
            torch.manual_seed(1)
            built["vae"] = build_vae(spec, calibrate=False)
        if "text" in components:
            torch.manual_seed(2)
            built["text"] = build_text_encoders(spec, randomise=False)
    return spec, built


def family_of(unet):
    return get_family("sd15", unet.config.block_out_channels[0], unet.config.cross_attention_dim)


def data(workdir: Path):
    return read_labelled_pairs(workdir / "data" / "pairs.jsonl", read_profiles(workdir / "data" / "profiles.json"))


def user_vectors(records):
    return build_user_table(records, CallableEmbeddings(
        lambda d: torch.linspace(-1, 1, EMBEDDING_DIM) * (d["Age"] / 30.0)))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(args, step, memory: Memory) -> float:
    """Pairs per second over the timed steps (memory is watched over warm-up and timed steps alike)."""
    memory.steps_begin()
    for number in range(args.warmup):
        step(number)
    synchronize(args.device)
    started = time.perf_counter()
    for number in range(args.warmup, args.warmup + args.steps):
        step(number)
    synchronize(args.device)
    return args.batch * args.steps / (time.perf_counter() - started)


def autocast(args):
    enabled = args.precision != "fp32"
    return lambda: torch.autocast(args.device, dtype=DTYPES[args.precision], enabled=enabled)


# ---- the arms ----

def arm_cache(args, workdir: Path) -> dict:
    _, models = build_models(args, ("vae", "text"))
    tokenizer = write_tokenizer(workdir / "tokenizer")
    from transformers import CLIPTokenizer

    encoders = Encoders(models["vae"], models["text"], [CLIPTokenizer.from_pretrained(tokenizer)])
    device = torch.device(args.device)
    started = time.perf_counter()
    open_or_build_cache(workdir / "cache", CacheSettings("bench", args.resolution), data(workdir),
                        image_encoder(encoders, device), text_encoder(encoders, "sd15", device), batch_size=8,
                        log=lambda text: None)
    synchronize(args.device)
    return {"cache_seconds": time.perf_counter() - started}


def arm_ours(args, workdir: Path) -> dict:
    memory = Memory(args.device)
    _, models = build_models(args, ("unet",))
    unet = models["unet"].to(DTYPES[args.precision]).requires_grad_(False).eval()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    family = family_of(unet)
    labelled = data(workdir)
    users = user_vectors(labelled.records)
    cache = open_or_build_cache(workdir / "cache", CacheSettings("bench", args.resolution), labelled, None, None,
                                build=False)
    pairs = CachedPairs(labelled, cache, users, AssemblyOptions(caption_dropout=0.2))
    order = PairOrder(len(pairs), args.batch, seed=0)
    predict = DiffusersPSAPredictor(unet, family)
    adapter = PSAAdapter(family, users.dim).to(args.device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-6)
    schedule = DDPMSchedule.scaled_linear()

    def step(number: int) -> None:
        generator = micro_batch_generator(0, number)
        batch = pairs.batch(order.indices(number), generator).to(args.device)
        result = dpo_step(predict, adapter, batch, schedule, generator, autocast=autocast(args))
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    pairs_per_second = timed(args, step, memory)
    return {"pairs_per_second": pairs_per_second, "peak_bytes": memory.peak()}


def arm_reference(args, workdir: Path) -> dict:
    memory = Memory(args.device)
    dtype = DTYPES[args.precision]
    _, models = build_models(args, ("unet", "vae", "text"))
    policy = models["unet"].requires_grad_(False)  # the trained-side UNet stays fp32 (autocast), as in train.py
    _, reference_models = build_models(args, ("unet",))
    reference = reference_models["unet"].to(dtype).requires_grad_(False).eval()
    vae = models["vae"].to(dtype).requires_grad_(False).eval()
    text_model = models["text"][0].to(dtype).requires_grad_(False).eval()
    if args.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    family = family_of(policy)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(workdir / "tokenizer"))
    labelled = data(workdir)
    users = user_vectors(labelled.records)
    pixels = []  # decoded once (the reference's data-loader workers decode per step, off the GPU)
    for record in labelled.records:
        winner, loser, _ = prepare_pair(load_rgb(labelled.image_path(record.chosen)),
                                        load_rgb(labelled.image_path(record.rejected)), args.resolution)
        pixels.append(torch.stack([winner, loser]))
    pixels = torch.stack(pixels)  # stays in host memory; each step moves its batch, as a data loader would
    captions = [r.caption for r in labelled.records]
    predict = DiffusersPSAPredictor(policy, family)
    adapter = PSAAdapter(family, users.dim).to(args.device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-6)
    schedule = DDPMSchedule.scaled_linear()
    order = PairOrder(len(labelled.records), args.batch, seed=0)
    scale = vae.config.scaling_factor

    def step(number: int) -> None:
        generator = micro_batch_generator(0, number)
        rows = order.indices(number)
        with torch.no_grad():
            images = pixels[rows].to(args.device)
            feed = torch.cat([images[:, 0], images[:, 1]]).to(dtype)
            latents = vae.encode(feed).latent_dist.sample() * scale
            drop = torch.rand(len(rows), generator=generator) < 0.2
            texts = ["" if d else captions[r] for r, d in zip(rows, drop.tolist())]
            ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            hidden = text_model(ids.input_ids.to(args.device))[0]
        noise = torch.randn(latents[:len(rows)].shape, generator=generator).to(args.device)
        timesteps = schedule.sample_timesteps(len(rows), generator).to(args.device)
        noise, timesteps = repeat_pairs(noise), repeat_pairs(timesteps)
        noisy = schedule.add_noise(latents.float(), noise, timesteps)
        context = repeat_pairs(hidden)
        embeddings = users.vectors[[users.record_users[r] for r in rows]].to(args.device)
        with autocast(args)():
            values = [repeat_pairs(v) for v in adapter(embeddings)]
            policy_prediction = predict(noisy, timesteps, {"encoder_hidden_states": context}, values)
            with torch.no_grad():
                reference_prediction = reference(noisy.to(dtype), timesteps,
                                                 encoder_hidden_states=context.to(dtype)).sample
        policy_errors, reference_errors = per_sample_mse(policy_prediction, noise), \
            per_sample_mse(reference_prediction, noise)
        count = len(rows)
        loss = dpo_loss(policy_errors[:count], policy_errors[count:], reference_errors[:count],
                        reference_errors[count:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    pairs_per_second = timed(args, step, memory)
    return {"pairs_per_second": pairs_per_second, "peak_bytes": memory.peak()}


ARMS = {"cache": arm_cache, "ours": arm_ours, "reference": arm_reference}


# ---- the driver ----

def run_arm(name: str, argv: list[str], workdir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--arm", name, "--workdir", str(workdir)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"arm {name} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.arm:
        result = ARMS[args.arm](args, Path(args.workdir))
        print(json.dumps(result))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    pairs = args.batch * (args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        write_pairs(workdir / "data", max(pairs // 2, args.batch), size=args.resolution, seed=0, style="square")
        write_profiles(workdir / "data")
        cache = run_arm("cache", argv, workdir)
        ours = run_arm("ours", argv, workdir)
        reference = run_arm("reference", argv, workdir)
    speedup = ours["pairs_per_second"] / reference["pairs_per_second"]
    memory_ratio = ours["peak_bytes"] / reference["peak_bytes"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    gib = 1024 ** 3
    print(f"\nPSA training step, {args.widths} SD1.5 widths, {args.resolution} px, {args.batch} pairs/step, "
          f"{args.precision}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, {device}")
    print(f"{'arm':<12}{'pairs/s':>10}{'peak memory':>14}")
    print(f"{'ours':<12}{ours['pairs_per_second']:>10.3f}{ours['peak_bytes'] / gib:>11.2f} GiB")
    print(f"{'reference':<12}{reference['pairs_per_second']:>10.3f}{reference['peak_bytes'] / gib:>11.2f} GiB")
    print(f"speed-up {speedup:.2f}x (need >= {args.min_speedup}), memory {memory_ratio:.2f}x "
          f"(need <= {args.max_memory_ratio}); one-time cache build {cache['cache_seconds']:.1f} s")
    results = {"device": device, "settings": {k: v for k, v in vars(args).items() if k not in ("arm", "workdir")},
               "ours": ours, "reference": reference, "cache": cache, "speedup": speedup, "memory_ratio": memory_ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    passed = speedup >= args.min_speedup and memory_ratio <= args.max_memory_ratio
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
