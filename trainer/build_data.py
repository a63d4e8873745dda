"""`python -m trainer build-data`: render a prompt-pair file into a preference dataset with diffusers, offline.

The base model is a single-file checkpoint or a diffusers folder, loaded as the trainer loads it
(trainer/models.py: configs derived from the file, no Hub access), and assembled into a StableDiffusion(XL)
pipeline. Each item's unsafe and safe prompt are rendered in one batch with one generator each, seeded with the
item's seed, so both images start from the same noise and share every setting. Pairs go into the dataset folder
through psa_core.dataset_build (atomic per pair). The run is resumable: an item whose pair is already complete
with the same settings is skipped, so a run started again after an interruption finishes the dataset without
duplicates; changed settings re-render (and replace) the pairs.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from psa_core.dataset_build import PAIRS_NAME, PairDataset, PairItem, read_prompt_pairs
from psa_core.dataset_build.prompt_pairs import FORMAT_HELP, MAX_SEED
from psa_core.training.errors import TrainingError
from psa_core.fingerprint import HashMemo, model_fingerprint
from psa_core.outputs import check_writable
from psa_core.precision import DEVICES, PRECISION_DTYPES, PRECISIONS, resolve_compute
from psa_core.text_limits import MAX_PROMPT_CHARS, check_text, limit_text
from psa_core.training.config import DEFAULT_RESOLUTION, MAX_RESOLUTION

from .cli import OneLineParser
from .models import load_base_model

SAMPLERS = ("euler", "euler_a", "ddim", "dpmpp_2m")
PIPELINE_SAMPLERS = ("default", "pndm", *SAMPLERS)  # what load_pipeline takes (generate offers all of them)

# The SD1.5/SDXL training schedule; single files carry no scheduler config (trainer/models.py uses the same).
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "prediction_type": "epsilon", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}
# What the published SD1.5 (PNDM) and SDXL (Euler discrete) scheduler configs add to that schedule.
DEFAULT_SCHEDULE_EXTRAS = {"sd15": {"skip_prk_steps": True},
                           "sdxl": {"timestep_spacing": "leading", "interpolation_type": "linear"}}


@dataclass
class BuildConfig:
    prompts: str
    base_model: str
    output: str
    family: str = "auto"
    tokenizer: str | None = None
    extra_categories: str = ""
    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    sampler: str = "euler"
    width: int | None = None
    height: int | None = None
    negative_prompt: str = ""
    precision: str = "auto"
    device: str = "auto"

    def validate(self) -> "BuildConfig":
        for flag, value, allowed in (("family", self.family, ("auto", "sd15", "sdxl")),
                                     ("sampler", self.sampler, SAMPLERS), ("precision", self.precision, PRECISIONS),
                                     ("device", self.device, DEVICES)):
            if value not in allowed:
                raise TrainingError(f"--{flag} {value!r} is not allowed; allowed: {', '.join(allowed)}")
        from .generate import MAX_STEPS  # generate's sampling bounds: one limit for both commands

        if not 1 <= self.steps <= MAX_STEPS:
            raise TrainingError(f"--steps {self.steps} is not allowed; allowed: 1 to {MAX_STEPS}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise TrainingError(f"--guidance {self.guidance} is not allowed; allowed: a finite number >= 0")
        if not 0 <= self.seed <= MAX_SEED:
            raise TrainingError(f"--seed must be 0 to {MAX_SEED}, got {self.seed}")
        for flag, value in (("width", self.width), ("height", self.height)):
            if value is not None and (value < 8 or value % 8 or value > MAX_RESOLUTION):
                raise TrainingError(f"--{flag} {value} is not allowed; allowed: a multiple of 8 from 8 to "
                                    f"{MAX_RESOLUTION}")
        check_text(self.negative_prompt, "--negative-prompt")
        return self


def build_parser() -> argparse.ArgumentParser:
    d = BuildConfig("", "", "")
    parser = OneLineParser(
        prog="psa-trainer build-data", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        error_class=TrainingError,
        description="Render a prompt-pair file into a preference dataset (SAGE image names, pairs.jsonl, "
                    "dataset.json) for `train --data <output>/pairs.jsonl --profiles ...`. Resumable: complete pairs "
                    "are skipped when it is run again.")
    parser.add_argument("--prompts", required=True, help=f"the prompt-pair file: {FORMAT_HELP}")
    parser.add_argument("--base-model", required=True, help="diffusers model folder, or single-file .safetensors "
                        "checkpoint")
    parser.add_argument("--output", required=True, help="the dataset folder: new or empty (created when "
                        "missing), or a dataset folder of build-data, completed (any other folder is refused)")
    parser.add_argument("--family", choices=("auto", "sd15", "sdxl"), default=d.family)
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder (vocab.json, merges.txt) for single-file "
                        "checkpoints; default: ComfyUI's comfy/sd1_tokenizer when the pack sits in ComfyUI")
    parser.add_argument("--extra-categories", default=d.extra_categories,
                        help="categories beyond the seven the file may use, comma-separated (recorded in dataset.json)")
    parser.add_argument("--seed", type=int, default=d.seed, help="items without a seed use seed + their index")
    parser.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    parser.add_argument("--sampler", choices=SAMPLERS, default=d.sampler)
    parser.add_argument("--width", type=int, help="image width (default 512 SD1.5, 1024 SDXL)")
    parser.add_argument("--height", type=int, help="image height (default 512 SD1.5, 1024 SDXL)")
    parser.add_argument("--negative-prompt", default=d.negative_prompt, help="negative prompt of both images; "
                        f"{limit_text(MAX_PROMPT_CHARS).lower().rstrip('.')}")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="weights for sampling (auto: fp16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--device", choices=DEVICES, default=d.device)
    return parser


def parse_build_args(argv: list[str]) -> BuildConfig:
    args = vars(build_parser().parse_args(argv))
    return BuildConfig(**args).validate()


def _scheduler(name: str, config: dict, family: str):
    import diffusers
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler)

    classes = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler,
               "dpmpp_2m": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}
    if name != "default":
        return classes[name].from_config(config)
    class_name = config.get("_class_name")
    if class_name is None:  # a single file: the scheduler each family's published folder ships
        return (PNDMScheduler if family == "sd15" else EulerDiscreteScheduler).from_config(
            {**config, **DEFAULT_SCHEDULE_EXTRAS[family]})
    scheduler_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise TrainingError(f"scheduler/scheduler_config.json names {class_name!r}, not a diffusers scheduler; "
                            f"use --sampler with one of: {', '.join(PIPELINE_SAMPLERS[1:])}")
    return scheduler_class.from_config(config)


def _schedule_config(base_model: Path) -> dict:
    file = base_model / "scheduler" / "scheduler_config.json"
    return json.loads(file.read_text()) if base_model.is_dir() and file.is_file() else dict(SD_SCHEDULE)


def load_pipeline(base_model: str, family: str = "auto", tokenizer: str | None = None, sampler: str = "euler",
                  device: str = "auto", precision: str = "auto"):
    """A diffusers pipeline from the trainer's model loading (no Hub access): (pipeline, family, precision).
    `sampler` is one of PIPELINE_SAMPLERS; `default` is the model folder's own scheduler (PNDM for an SD1.5 single
    file, Euler discrete for SDXL, as their published folders have)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    device_type, precision = resolve_compute(device, precision)
    torch_device = torch.device(device_type)
    base = load_base_model(base_model, family, tokenizer, PRECISION_DTYPES[precision])
    encoders = base.load_encoders()
    for text_tokenizer, encoder in zip(encoders.tokenizers, encoders.text_encoders):  # tokenizer files may not say 77
        text_tokenizer.model_max_length = min(text_tokenizer.model_max_length, encoder.config.max_position_embeddings)
    scheduler = _scheduler(sampler, _schedule_config(Path(base_model)), base.family_name)
    if base.family_name == "sd15":
        pipeline = StableDiffusionPipeline(vae=encoders.vae, text_encoder=encoders.text_encoders[0],
                                           tokenizer=encoders.tokenizers[0], unet=base.unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipeline = StableDiffusionXLPipeline(vae=encoders.vae, text_encoder=encoders.text_encoders[0],
                                             text_encoder_2=encoders.text_encoders[1],
                                             tokenizer=encoders.tokenizers[0], tokenizer_2=encoders.tokenizers[1],
                                             unet=base.unet, scheduler=scheduler, add_watermarker=False)
    pipeline.to(torch_device) if precision == "fp32" else pipeline.to(torch_device, PRECISION_DTYPES[precision])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, base.family_name, precision


def make_pipeline(config: BuildConfig):
    """build-data's pipeline: `load_pipeline` with the config's model, sampler, device and precision."""
    return load_pipeline(config.base_model, config.family, config.tokenizer, config.sampler, config.device,
                         config.precision)


def render_pair(pipeline, unsafe_prompt: str, safe_prompt: str, seed: int, steps: int, guidance: float, width: int,
                height: int, negative_prompt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Both prompts in one batch, each with its own CPU generator seeded with `seed`: the same starting noise
    (and, for ancestral samplers, the same step noise) and the same settings. Returns two HxWx3 uint8 images."""
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(2)]
    with torch.inference_mode():
        images = pipeline(prompt=[unsafe_prompt, safe_prompt], negative_prompt=[negative_prompt] * 2,
                          num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                          generator=generators, output_type="np").images
    pixels = (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)
    return pixels[0], pixels[1]


def build_data(config: BuildConfig, log=print) -> dict:
    """Render every item not yet complete; returns counts (rendered, skipped) and where the pairs are."""
    pairs = read_prompt_pairs(config.prompts, config.extra_categories)  # checked whole before loading anything
    check_writable(config.output, f"--output {config.output}", TrainingError)
    dataset = PairDataset(config.output)
    dataset.records()  # a damaged pairs file stops the run here, before rendering
    if foreign := dataset.foreign_entries():  # a user's folder: nothing in it is written or replaced
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TrainingError(f"--output {config.output} holds files that are not a build-data dataset ({shown}); "
                            "allowed: a new or empty folder, or a dataset folder of build-data (its dataset.json) to "
                            "complete")
    started = time.perf_counter()
    pipeline, family, precision = make_pipeline(config)
    width = config.width or DEFAULT_RESOLUTION[family]
    height = config.height or DEFAULT_RESOLUTION[family]
    settings = {"renderer": "diffusers", "pipeline": type(pipeline).__name__, "model": Path(config.base_model).name,
                "model_sha256": model_fingerprint(config.base_model, HashMemo(None)), "family": family,
                "sampler": config.sampler, "steps": config.steps, "guidance_scale": config.guidance, "width": width,
                "height": height, "negative_prompt": config.negative_prompt, "precision": precision}
    log(f"build-data: {len(pairs)} prompt pairs from {Path(config.prompts).name} into {dataset.folder} "
        f"({family}, {config.sampler}, {config.steps} steps, {width}x{height})")
    rendered = skipped = 0
    for index, pair in enumerate(pairs):
        item = PairItem(pair.category, pair.concept, pair.unsafe_prompt, pair.safe_prompt,
                        pair.seed_for(index, config.seed))
        if dataset.is_complete(item, settings):
            skipped += 1
            continue
        unsafe, safe = render_pair(pipeline, item.unsafe_prompt, item.safe_prompt, item.seed, config.steps,
                                   config.guidance, width, height, config.negative_prompt)
        written = dataset.write_pair(item, unsafe, safe, settings, pairs.extra_categories)
        rendered += 1
        log(f"  {index + 1}/{len(pairs)} {'replaced' if written.replaced else 'added'} pair {written.number:05d} "
            f"({pair.category}, {pair.concept}, seed {item.seed})")
    log(f"build-data: rendered {rendered}, skipped {skipped} already complete, in "
        f"{time.perf_counter() - started:.1f} s; train with --data {dataset.folder / PAIRS_NAME} --profiles ...")
    return {"rendered": rendered, "skipped": skipped, "pairs": str(dataset.folder / PAIRS_NAME),
            "config": asdict(config)}
