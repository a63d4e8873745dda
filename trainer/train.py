"""The training run, top to bottom: data → base model → cache → adapter → DPO steps → checkpoints → adapter file.

Devices come from 🤗 Accelerate: the CPU, one GPU, or several processes started by `accelerate launch`
(or torchrun, also across machines). Only the adapter and its optimizer are prepared (DDP-wrapped); the frozen
UNet is moved to the device by hand. Every process assembles its own micro-batches from the shared cache;
which pairs and which random numbers a micro-batch uses depends only on its global number (batches.py).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from psa_core.adapter_file import SAVE_DTYPES, save_adapter
from psa_core.atomic import atomic_write
from psa_core.outputs import check_writable
from psa_core.training import checkpoint as checkpoints
from psa_core.training.config import PRECISION_DTYPES, TrainingConfig
from psa_core.training.errors import TrainingError
from psa_core.training.loop import NonFiniteLoss, optimizer_step
from psa_core.training.records import SKIPPED_REPORT
from psa_core.training.report import History
from psa_core.training.run import assemble_run, training_metadata

from .data import base_fingerprint, open_cache, read_data, user_table
from .hook import DiffusersPSAPredictor
from .models import load_base_model
from .report import RunLog, plot_run

TRAINER_NAME = "psa-trainer 1"
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's mixed_precision names
# Settings a resumed run must share with the checkpoint, or the continuation would not be the same run.
RESUME_KEYS = ("seed", "batch", "base_model_sha256", "cache_key", "family", "embedding_dim", "beta", "steps")
RUN_FILES = ("train_log.jsonl", "train_plot.png", SKIPPED_REPORT)  # besides the adapter and checkpoints/


def make_accelerator(config: TrainingConfig) -> tuple[Accelerator, str]:
    """The accelerator for this run, and the UNet's compute precision (fp32, bf16 or fp16)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but no CUDA device is available; use --device cpu")
    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not on_gpu:
        raise TrainingError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    accelerator = Accelerator(mixed_precision=ACCELERATE_PRECISION[precision],
                              gradient_accumulation_steps=config.accumulation, cpu=not on_gpu)
    return accelerator, precision


def resume_checkpoint(config: TrainingConfig, root: Path) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "latest":
        found = checkpoints.latest_checkpoint(root)
        if found is None:
            raise TrainingError(f"--resume latest: no complete checkpoint in {root}")
        return found
    if not Path(config.resume).is_dir():
        raise TrainingError(f"--resume {config.resume}: no such checkpoint folder; allowed: latest, or a checkpoint "
                            f"folder such as {root / checkpoints.checkpoint_name(config.checkpoint_every)}")
    return Path(config.resume)


def check_run_folder(config: TrainingConfig) -> Path | None:
    """Before any work: --output and --cache-dir can be written, nothing there stands where this run writes its
    files, and a finished adapter, or the log and plot of an earlier run, are replaced only with --overwrite (or, for
    the log and plot, when the run resumes). Returns the checkpoint to resume from, if any."""
    output = Path(config.output)
    existing = next(p for p in (output, *output.parents) if p.exists())
    if not existing.is_dir():
        raise TrainingError(f"--output {output}: {existing} is a file; allowed: a folder (created if missing)")
    adapter = output / config.output_name
    for path in (adapter, *(output / name for name in RUN_FILES)):
        if path.is_dir():
            raise TrainingError(f"{path} is a folder, and this run writes a file there; move it away, or use "
                                f"another --output{' or --output-name' if path == adapter else ''}")
    root = output / "checkpoints"
    if root.exists() and not root.is_dir():
        raise TrainingError(f"{root} is a file, and this run keeps its checkpoints there; move it or use another "
                            "--output")
    if adapter.exists() and not config.overwrite:
        raise TrainingError(f"{adapter} is the adapter of a finished run; to replace it pass --overwrite, or train "
                            "into another --output or --output-name")
    if not config.resume and not config.overwrite:  # a new run: log and plot of an earlier one are not replaced
        earlier = [name for name in RUN_FILES if (output / name).exists() or (output / name).is_symlink()]
        if earlier:
            raise TrainingError(f"--output {output} already holds {', '.join(earlier)} of an earlier run (or files "
                                "of that name); they are not replaced: continue that run with --resume latest, pass "
                                "--overwrite to replace them, or train into a new --output folder")
    resume_from = resume_checkpoint(config, root)
    if resume_from is None and checkpoints.list_checkpoints(root):
        raise TrainingError(f"{output} already holds checkpoints of another run; continue it with --resume latest, "
                            "or train into a new --output folder")
    # Last, the writes that try it: a folder refused above is left exactly as it was (its mtime included).
    try:
        handle, probe = tempfile.mkstemp(prefix=".psa-trainer-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise TrainingError(f"--output {output}: cannot write in {existing} ({error.strerror or error}); allowed: "
                            "a folder this user can write to") from None
    if config.cache_dir:  # where the latent/text cache and the hash memo are written, also before any work
        check_writable(config.cache_dir, f"--cache-dir {config.cache_dir}", TrainingError)
    return resume_from


def train(config: TrainingConfig) -> Path:
    """Run the training described by `config`; returns the path of the saved adapter."""
    output = Path(config.output)
    resume_from = check_run_folder(config)
    accelerator, precision = make_accelerator(config)
    main = accelerator.is_main_process
    say = (lambda text: tqdm.write(text, file=sys.stderr)) if main else (lambda text: None)
    # numpy's global generator takes 32-bit seeds; the run's own random numbers all come from derived_seed.
    set_seed(config.seed % 2**31, device_specific=True)
    world, rank = accelerator.num_processes, accelerator.process_index

    # 1. The data: labelled pairs and their users' embeddings.
    data = read_data(config)
    if data.skipped and main:
        output.mkdir(parents=True, exist_ok=True)
        report = "\n\n".join(data.skipped) + "\n"
        atomic_write(output / SKIPPED_REPORT, lambda temporary: temporary.write_text(report))
        say(f"left out (--skip-invalid), also listed in {output / SKIPPED_REPORT}:\n{report}")
    users = user_table(config, data)

    # 2. The frozen base model (UNet now; VAE and text encoders only if the cache must be built).
    base = load_base_model(config.base_model, config.family, config.tokenizer, PRECISION_DTYPES[precision])
    family = base.family
    resolution = config.resolution_for(base.family_name)

    # 3. The latent/text cache: built once by the main process, opened by the others.
    with accelerator.main_process_first():
        fingerprint = base_fingerprint(config, data)
        cache = open_cache(config, base, data, fingerprint, resolution, accelerator.device, build=main, log=say)
    # 4. The UNet with the PSA hooks: the policy (values given) and the reference (values None) in one model.
    unet = base.unet.to(accelerator.device)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    predict = DiffusersPSAPredictor(unet, family)

    # 5. Pairs and their order, the trainable adapter in fp32, its optimizer and LR schedule; the last three
    #    continued from a checkpoint when resuming.
    run = assemble_run(config, family, data, cache, users)
    adapter, optimizer, lr_scheduler = run.adapter, run.optimizer, run.lr_scheduler
    identity = {"seed": config.seed, "batch": config.batch, "base_model_sha256": fingerprint, "cache_key": cache.key,
                "family": family.describe(), "embedding_dim": users.dim, "beta": config.beta, "steps": config.steps}
    checkpoint_root = output / "checkpoints"
    start_step, micro_batches = 0, 0
    if resume_from is not None:
        loaded = checkpoints.read_checkpoint(resume_from)
        changed = [k for k in RESUME_KEYS if loaded.state["identity"].get(k) != identity[k]]
        if changed:
            raise TrainingError(f"cannot resume from {resume_from.name}: {', '.join(changed)} changed since the "
                                "checkpoint; resume with the same settings, data and base model")
        adapter.load_state_dict(loaded.adapter)
        optimizer.load_state_dict(loaded.optimizer)
        lr_scheduler.load_state_dict(loaded.scheduler)
        start_step, micro_batches = loaded.state["step"], loaded.state["micro_batches"]
        rng = loaded.rng(rank)
        if rng is not None:
            checkpoints.restore_rng_state(rng)
        say(f"resuming from {resume_from} at step {start_step}")
    adapter, optimizer = accelerator.prepare(adapter, optimizer)

    if main:
        output.mkdir(parents=True, exist_ok=True)
    log = RunLog(output / "train_log.jsonl", start_step) if main else None
    pairs_per_step = config.batch * config.accumulation * world
    say(f"training {family.describe()} adapter: {len(run.pairs)} pairs, {len(users.user_ids)} users, "
        f"{pairs_per_step} pairs per step ({config.batch} x {config.accumulation} accumulation x {world} "
        f"processes), {precision} precision on {accelerator.device}")

    # 6. The loop: `accumulation` micro-batches per optimizer step on every process.
    history = History(log.rows if log else ())
    progress = tqdm(total=config.steps, initial=start_step, disable=not main, desc="train", unit="step",
                    dynamic_ncols=True)
    started = time.perf_counter()
    inputs = run.step_inputs(predict, base.schedule)
    for step in range(start_step, config.steps):
        step_started = time.perf_counter()
        try:
            metrics = optimizer_step(accelerator, inputs, adapter, optimizer, lr_scheduler, step, micro_batches)
        except NonFiniteLoss as stop:
            raise NonFiniteLoss(stop.what, stop.value, stop.step, _stop_advice(checkpoint_root)) from None
        micro_batches += config.accumulation * world

        row = history.add(step + 1, metrics, epoch=run.order.epoch_of(micro_batches - 1),
                          pairs_per_second=pairs_per_step / (time.perf_counter() - step_started),
                          elapsed_s=time.perf_counter() - started)
        if log:
            log.append(row)
        progress.set_postfix(loss=f"{row['loss_ema']:.4f}", acc=f"{row['accuracy_ema']:.3f}",
                             pairs_s=f"{row['pairs_per_second']:.2f}")
        progress.update(1)
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            state = {"step": step + 1, "micro_batches": micro_batches, "identity": identity,
                     "world_size": world, "accumulation": config.accumulation, "config": config.to_dict()}
            save_checkpoint(accelerator, checkpoint_root, adapter, optimizer, lr_scheduler, state,
                            config.keep_checkpoints)
            if log:
                plot_run(log.rows, output / "train_plot.png")
    progress.close()

    # 7. The adapter file, with what it is and how it was trained.
    accelerator.wait_for_everyone()
    path = output / config.output_name
    if main:
        trained = accelerator.unwrap_model(adapter)
        loaded = trained.as_loaded(users.encoder, name=config.output_name)
        metadata = {**training_metadata(TRAINER_NAME, run, data, users), "psa.base_model": base.source.name,
                    "psa.base_model_sha256": identity["base_model_sha256"]}
        save_adapter(loaded, path, SAVE_DTYPES[config.save_dtype], metadata)
        plot_run(log.rows, output / "train_plot.png")
        say(f"saved {path}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return path


def save_checkpoint(accelerator: Accelerator, root: Path, adapter, optimizer, lr_scheduler, state: dict,
                    keep: int) -> None:
    """All processes write their random state into the staging folder; the main process the rest, then renames."""
    staging = checkpoints.staging_dir(root, state["step"])
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    checkpoints.write_rank_files(staging, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoints.write_main_files(staging, accelerator.unwrap_model(adapter).state_dict(), optimizer.state_dict(),
                                     lr_scheduler.state_dict(), state)
        checkpoints.finalize(staging, keep or None)
    accelerator.wait_for_everyone()


def _stop_advice(root: Path) -> str:
    last = checkpoints.latest_checkpoint(root)
    kept = f"The last good checkpoint {last} is kept; resume from it with --resume latest" if last else \
        "No checkpoint had been written yet"
    return (f"{kept}, and lower --lr, raise --beta only with care, or use --precision bf16/no instead of fp16")

