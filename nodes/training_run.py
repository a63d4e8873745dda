"""Training a PSA adapter on the graph's MODEL, CLIP and VAE, inside ComfyUI's process and on its GPU.

The same steps as the standalone trainer (trainer/train.py), with the graph's models instead of diffusers ones:
encode the pairs once with the graph's VAE and CLIP into a temporary cache, evict every other model, make the
frozen UNet autograd-safe without copying it, then run `psa_core.training.loop.optimizer_step` step by step,
checking for Cancel before every micro-batch and showing loss and accuracy on the node. Whatever happens,
`finally` restores the model, frees the optimizer and the trainable tensors, and deletes the cache.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import folder_paths

from ..psa_core import LoadedAdapter, PSAError, get_family
from ..psa_core.adapter import PSAAdapter
from ..psa_core.families import Family
from ..psa_core.training.cache import open_or_build_cache
from ..psa_core.training.config import PRECISION_DTYPES, TrainingConfig, short_run_warmup
from ..psa_core.training.embeddings import build_user_table
from ..psa_core.training.errors import TrainingError
from ..psa_core.training.inputs import embedding_source
from ..psa_core.training.loop import LocalBackend, optimizer_step
from ..psa_core.training.records import LabelledData
from ..psa_core.training.report import History, render_history
from ..psa_core.training.run import TrainingRun, assemble_run, cache_settings, training_metadata
from .attention_patch import check_model_family, describe_model, find_cross_attention_outputs
from .training_model import (
    ComfyPSAPredictor,
    autograd_safe_weights,
    gradient_checkpointing,
    graph_encoders,
    noise_schedule,
)

TRAINER_NAME = "comfyui PSATrainAdapter 1"
PREVIEW_EVERY_S = 5.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSADataset:
    """What PSALoadSageDataset hands on: labelled pairs, their profiles file, and the training resolution."""

    data: LabelledData
    profiles: str | None
    resolution: int  # 0: the model family's native size
    description: str


def in_graph_config(dataset: PSADataset, steps: int, **settings: object) -> TrainingConfig:
    """The node's training configuration: TrainingConfig's defaults, the dataset's resolution (0: the family's
    native size), the warm-up scaled to the run's length (short_run_warmup) and the node's settings by keyword.
    Checks every value (linked ones arrive unchecked)."""
    return TrainingConfig(steps=steps, resolution=dataset.resolution or None, warmup_steps=short_run_warmup(steps),
                          **settings)


@dataclass
class TrainingResult:
    adapter: LoadedAdapter
    history: History


def model_family(model) -> Family:
    """The PSA family whose layer table matches the model's cross-attention layers (at the model's widths)."""
    config = model.model.model_config.unet_config
    channel_mult = tuple(config.get("channel_mult") or ()) or None
    for name in ("sd15", "sdxl"):
        try:
            family = get_family(name, config.get("model_channels"), config.get("context_dim"), channel_mult)
            check_model_family(model, family)
        except PSAError:  # not this family's layout
            continue
        return family
    layers = find_cross_attention_outputs(model.get_model_object("diffusion_model"))
    raise TrainingError(f"PSA trains SD1.5 or SDXL models; this model is {describe_model(layers, config.get('context_dim'))}")


def _training_model(model, config: TrainingConfig):
    trainee = model.clone()
    dtype = PRECISION_DTYPES.get(config.precision)  # "auto": as the graph loaded it
    if dtype is not None and dtype != trainee.model.get_dtype():
        trainee.set_model_compute_dtype(dtype)
    return trainee


def compute_dtype(model) -> torch.dtype:
    """The dtype the UNet computes in: a cast set on the model (ComfyUI's manual cast), else its weights' dtype."""
    return model.get_model_object("manual_cast_dtype") or model.model.get_dtype()


def _build_cache(model, vae, clip, family, dataset: PSADataset, config: TrainingConfig, folder: Path):
    encode_images, encode_texts = graph_encoders(model, vae, clip, family)
    settings = cache_settings(config, "comfyui-graph", config.resolution_for(family.name),
                              f"{family.name}: graph VAE posterior mean/std x scale; graph CLIP")
    return open_or_build_cache(folder, settings, dataset.data, encode_images, encode_texts, log=log.info)


def train_in_graph(model, clip, vae, dataset: PSADataset, config: TrainingConfig,
                   embeddings_folder: str | None = None, encoder: str | None = None,
                   resume: LoadedAdapter | None = None,
                   on_step: Callable[[int, int, dict], None] | None = None) -> TrainingResult:
    """Train an adapter for `model` (`config` from in_graph_config); the input model, clip and vae are left as
    they were."""
    import comfy.model_management  # not at import: it picks the device, and tests choose the CPU first

    family = model_family(model)
    if resume is not None and resume.family.name != family.name:
        raise TrainingError(f"the adapter to continue is for {resume.family.describe()} but the model is "
                            f"{family.describe()}")
    device = comfy.model_management.get_torch_device()
    temp = Path(folder_paths.get_temp_directory())
    temp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="psa_training_", dir=temp))
    trainee = _training_model(model, config)
    run = None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # 1. Users and the latent/text cache, with the graph's own encoders.
            source = embedding_source(embeddings_folder, encoder, dataset.profiles, work)
            users = build_user_table(dataset.data.records, source)
            cache = _build_cache(model, vae, clip, family, dataset, config, work)

            # 2. Only the UNet on the device, loaded in full (this evicts the VAE, CLIP and other models).
            comfy.model_management.soft_empty_cache()
            comfy.model_management.load_models_gpu([trainee], memory_required=1e20, force_full_load=True)

            # 3. Pairs and their order, the adapter (new or continued), its optimizer and schedule.
            if resume is not None and resume.embedding_dim != users.dim:
                raise TrainingError(f"the adapter to continue takes {resume.embedding_dim}-d embeddings but the "
                                    f"users' embeddings are {users.dim}-d; use the same profile encoder")
            start = PSAAdapter.from_loaded(resume) if resume is not None else None
            run = assemble_run(config, family, dataset.data, cache, users, start)
            run.adapter.to(device)
            backend = LocalBackend(device, config.accumulation, loss_scaling=compute_dtype(trainee) == torch.float16)
            history = _run_steps(trainee, run, backend, on_step)
            metadata = training_metadata(TRAINER_NAME, run, dataset.data, users, source=dataset.description)
            trained = run.adapter.cpu().as_loaded(users.encoder, metadata, name="trained in ComfyUI")
            return TrainingResult(trained, history)
    finally:
        # A traceback kept after an error or Cancel holds these frames' locals: empty the GPU state explicitly.
        if run is not None:
            run.optimizer.state.clear()
            run.adapter.cpu()
        del run
        shutil.rmtree(work, ignore_errors=True)
        comfy.model_management.soft_empty_cache()


def _run_steps(trainee, run: TrainingRun, backend: LocalBackend, on_step) -> History:
    import comfy.model_management
    import comfy.utils

    config = run.config
    diffusion_model = trainee.get_model_object("diffusion_model")
    inputs = run.step_inputs(ComfyPSAPredictor(trainee, run.family), noise_schedule(trainee))
    optimizer = backend.prepare_optimizer(run.optimizer)
    history = History()
    bar = comfy.utils.ProgressBar(config.steps)
    console = tqdm(total=config.steps, desc="PSA train", unit="step", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
    interrupted = comfy.model_management.throw_exception_if_processing_interrupted
    last_preview = -math.inf
    try:
        with autograd_safe_weights(diffusion_model), \
                gradient_checkpointing(diffusion_model, config.gradient_checkpointing):
            for step in range(config.steps):
                started = time.perf_counter()
                metrics = optimizer_step(backend, inputs, run.adapter, optimizer, run.lr_scheduler, step,
                                         step * config.accumulation, between_micro_batches=interrupted)
                row = history.add(step + 1, metrics, seconds=time.perf_counter() - started)
                console.set_postfix(loss=f"{row['loss_ema']:.4f}", acc=f"{row['accuracy_ema']:.3f}")
                console.update(1)
                preview = None
                if time.perf_counter() - last_preview > PREVIEW_EVERY_S or step + 1 == config.steps:
                    preview, last_preview = ("PNG", render_history(history.rows), 512), time.perf_counter()
                bar.update_absolute(step + 1, config.steps, preview)
                if on_step is not None:
                    on_step(step + 1, config.steps, row)
    finally:
        console.close()
    return history

