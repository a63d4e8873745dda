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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import folder_paths

from ..psa_core import LoadedAdapter, PSAError, get_family
from ..psa_core.adapter import PSAAdapter
from ..psa_core.families import Family
from ..psa_core.numbers import check_number
from ..psa_core.training.batches import AssemblyOptions, CachedPairs, PairOrder
from ..psa_core.training.cache import CacheSettings, open_or_build_cache
from ..psa_core.training.embeddings import build_user_table
from ..psa_core.training.errors import TrainingError
from ..psa_core.training.inputs import embedding_source
from ..psa_core.training.loop import (DEFAULT_RESOLUTION, DEFAULTS, LocalBackend, StepInputs, new_adapter,
                                      optimizer_step)
from ..psa_core.training.loss import DEFAULT_BETA
from ..psa_core.training.optim import build_lr_scheduler, build_optimizer
from ..psa_core.training.records import LabelledData
from ..psa_core.training.report import History, render_history
from .attention_patch import check_model_family, describe_model, find_cross_attention_outputs
from .training_model import (
    ComfyPSAPredictor,
    autograd_safe_weights,
    gradient_checkpointing,
    graph_encoders,
    noise_schedule,
)

TRAINER_NAME = "comfyui PSATrainAdapter 1"
PRECISIONS = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PREVIEW_EVERY_S = 5.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSADataset:
    """What PSALoadSageDataset hands on: labelled pairs, their profiles file, and the training resolution."""

    data: LabelledData
    profiles: str | None
    resolution: int  # 0: the model family's native size
    description: str


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    lr: float = DEFAULTS.lr
    batch: int = 1
    accumulation: int = 1
    beta: float = DEFAULT_BETA
    seed: int = 0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    hflip: bool = DEFAULTS.hflip
    caption_dropout: float = DEFAULTS.caption_dropout
    cache_dtype: str = DEFAULTS.cache_dtype

    def __post_init__(self) -> None:
        # Widgets were checked by validation; linked values arrive here unchecked, and a NaN lr or beta trains NaN.
        check_number(self.lr, "lr", low=0.0)
        check_number(self.beta, "beta", low=0.0)

    @property
    def warmup_steps(self) -> int:
        """PSAlign warms up for 500 of 5000 steps; short in-graph runs warm up for the same tenth."""
        return min(DEFAULTS.warmup_steps, self.steps // 10)


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


def _training_model(model, settings: TrainingSettings):
    if settings.precision not in PRECISIONS:
        raise TrainingError(f"precision {settings.precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    trainee = model.clone()
    dtype = PRECISIONS[settings.precision]
    if dtype is not None and dtype != trainee.model.get_dtype():
        trainee.set_model_compute_dtype(dtype)
    return trainee


def compute_dtype(model) -> torch.dtype:
    """The dtype the UNet computes in: a cast set on the model (ComfyUI's manual cast), else its weights' dtype."""
    return model.get_model_object("manual_cast_dtype") or model.model.get_dtype()


def _build_cache(model, vae, clip, family, dataset: PSADataset, settings: TrainingSettings, folder: Path):
    resolution = dataset.resolution or DEFAULT_RESOLUTION[family.name]
    encode_images, encode_texts = graph_encoders(model, vae, clip, family)
    cache_settings = CacheSettings("comfyui-graph", resolution, settings.hflip, settings.cache_dtype,
                                   f"{family.name}: graph VAE posterior mean/std x scale; graph CLIP")
    cache = open_or_build_cache(folder, cache_settings, dataset.data, encode_images, encode_texts, log=log.info)
    return cache, resolution


def train_in_graph(model, clip, vae, dataset: PSADataset, settings: TrainingSettings,
                   embeddings_folder: str | None = None, encoder: str | None = None,
                   resume: LoadedAdapter | None = None,
                   on_step: Callable[[int, int, dict], None] | None = None) -> TrainingResult:
    """Train an adapter for `model`; the input model, clip and vae are left as they were."""
    import comfy.model_management  # not at import: it picks the device, and tests choose the CPU first

    family = model_family(model)
    if resume is not None and resume.family.name != family.name:
        raise TrainingError(f"the adapter to continue is for {resume.family.describe()} but the model is "
                            f"{family.describe()}")
    device = comfy.model_management.get_torch_device()
    temp = Path(folder_paths.get_temp_directory())
    temp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="psa_training_", dir=temp))
    trainee = _training_model(model, settings)
    adapter = optimizer = lr_scheduler = None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # 1. Users and the latent/text cache, with the graph's own encoders.
            source = embedding_source(embeddings_folder, encoder, dataset.profiles, work)
            users = build_user_table(dataset.data.records, source)
            cache, resolution = _build_cache(model, vae, clip, family, dataset, settings, work)
            options = AssemblyOptions(settings.caption_dropout, 0.0, settings.hflip,
                                      time_ids=family.name == "sdxl", resolution=resolution)
            pairs = CachedPairs(dataset.data, cache, users, options)
            order = PairOrder(len(pairs), settings.batch, settings.seed)

            # 2. Only the UNet on the device, loaded in full (this evicts the VAE, CLIP and other models).
            comfy.model_management.soft_empty_cache()
            comfy.model_management.load_models_gpu([trainee], memory_required=1e20, force_full_load=True)

            # 3. The adapter (new or continued), its optimizer and schedule.
            if resume is not None:
                if resume.embedding_dim != users.dim:
                    raise TrainingError(f"the adapter to continue takes {resume.embedding_dim}-d embeddings but "
                                        f"the users' embeddings are {users.dim}-d; use the same profile encoder")
                adapter = PSAAdapter.from_loaded(resume)
            else:
                adapter = new_adapter(family, users.dim, settings.seed)
            adapter.to(device)
            optimizer = build_optimizer(adapter.parameters(), DEFAULTS.optimizer, settings.lr, DEFAULTS.weight_decay)
            lr_scheduler = build_lr_scheduler(optimizer, DEFAULTS.lr_schedule, settings.warmup_steps, settings.steps)
            backend = LocalBackend(device, settings.accumulation, loss_scaling=compute_dtype(trainee) == torch.float16)
            history = _run_steps(trainee, family, pairs, order, settings, backend, adapter,
                                 backend.prepare_optimizer(optimizer), lr_scheduler, on_step)
            trained = adapter.cpu().as_loaded(users.encoder, _metadata(settings, dataset, users, resolution),
                                              name="trained in ComfyUI")
            return TrainingResult(trained, history)
    finally:
        # A traceback kept after an error or Cancel holds these frames' locals: empty the GPU state explicitly.
        if optimizer is not None:
            optimizer.state.clear()
        if adapter is not None:
            adapter.cpu()
        del adapter, optimizer, lr_scheduler
        shutil.rmtree(work, ignore_errors=True)
        comfy.model_management.soft_empty_cache()


def _run_steps(trainee, family, pairs, order, settings, backend, adapter, optimizer, lr_scheduler,
               on_step) -> History:
    import comfy.model_management
    import comfy.utils

    diffusion_model = trainee.get_model_object("diffusion_model")
    predict = ComfyPSAPredictor(trainee, family)
    inputs = StepInputs(predict, pairs, order, noise_schedule(trainee), settings.seed, settings.beta,
                        settings.accumulation, DEFAULTS.max_grad_norm)
    history = History()
    bar = comfy.utils.ProgressBar(settings.steps)
    console = tqdm(total=settings.steps, desc="PSA train", unit="step", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
    interrupted = comfy.model_management.throw_exception_if_processing_interrupted
    last_preview = -math.inf
    try:
        with autograd_safe_weights(diffusion_model), \
                gradient_checkpointing(diffusion_model, settings.gradient_checkpointing):
            for step in range(settings.steps):
                started = time.perf_counter()
                metrics = optimizer_step(backend, inputs, adapter, optimizer, lr_scheduler, step,
                                         step * settings.accumulation, between_micro_batches=interrupted)
                row = history.add(step + 1, metrics, seconds=time.perf_counter() - started)
                console.set_postfix(loss=f"{row['loss_ema']:.4f}", acc=f"{row['accuracy_ema']:.3f}")
                console.update(1)
                preview = None
                if time.perf_counter() - last_preview > PREVIEW_EVERY_S or step + 1 == settings.steps:
                    preview, last_preview = ("PNG", render_history(history.rows), 512), time.perf_counter()
                bar.update_absolute(step + 1, settings.steps, preview)
                if on_step is not None:
                    on_step(step + 1, settings.steps, row)
    finally:
        console.close()
    return history


def _metadata(settings: TrainingSettings, dataset: PSADataset, users, resolution: int) -> dict[str, object]:
    return {
        "psa.trainer": TRAINER_NAME,
        "psa.training_steps": str(settings.steps),
        "psa.training_config": {**asdict(settings), "resolution": resolution, "warmup_steps": settings.warmup_steps},
        "psa.training_data": {**dataset.data.summary(), "users": len(users.user_ids), "source": dataset.description},
        "psa.dpo_beta": f"{settings.beta:g} (inside = -0.5*beta*delta; diffusers' SD1.5 beta is half of it)",
    }
