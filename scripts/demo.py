"""PSA demo: run the bundled text-to-image workflow in a headless ComfyUI, once per user profile and once without
PSA, and write the images and a profile-comparison grid into an output folder.

With no model given it runs on an embedded default made on the spot (scripts/demo_assets.py): a small SD1.5
checkpoint with random weights, a random PSA adapter for it, and three reference evaluation profiles
(permissive to restrictive) encoded with the pack's structured encoder. Random weights draw noise: this shows
the plumbing working (the nodes load and run, the patch changes the output per profile), not safety behaviour.

Given --checkpoint, --adapter and --embeddings it runs the real thing: the files are linked into the server's
models/checkpoints, models/psa and models/psa_embeddings, and the SD1.5 or SDXL workflow (picked from the
adapter) runs with each embedding.

Usage: bash scripts/demo.sh [options]   (sets up .venv and ComfyUI first), or .venv/bin/python scripts/demo.py
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # psa_core as a top-level package, after everything else on the path

import demo_assets  # scripts/, this file's folder
from comfy_server import PACK_FOLDER, ComfyServer, ServerError, find_comfyui
from demo_grid import make_grid
from workflow_api import WorkflowError, check_api_prompt, ui_to_api

WORKFLOWS = {"sd15": REPO / "workflows" / "psa_sd15_text_to_image.json",
             "sdxl": REPO / "workflows" / "psa_sdxl_text_to_image.json"}
DEFAULT_OUTPUT = REPO / "demo_output"
# The embedded default: small and few steps, so that it runs in about a minute on a 2-core CPU.
DEMO_SIZE, DEMO_STEPS = 128, 4
DEMO_PROFILES = ("level_0", "level_3", "level_5")  # reference evaluation users: bans nothing / four / all seven
DEMO_ADAPTER_SCALE = 0.05
GRID_NAME = "profile_grid.png"
SUMMARY_NAME = "demo.json"
LOG_NAME = "server.log"
IMAGE_NAME = re.compile(r"\d\d-[A-Za-z0-9_.-]+\.png")


class DemoError(RuntimeError):
    """Something the user can fix; the message says what."""


@dataclass(frozen=True)
class Column:
    """One column of the grid: `embedding` is a file name in models/psa_embeddings; strength 0 turns PSA off."""

    label: str
    detail: str
    embedding: str
    strength: float


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---- models --------------------------------------------------------------------------------------------

def write_embedded_models(models: Path) -> tuple[str, str, list[Column]]:
    """The embedded default: random SD1.5 checkpoint, a random adapter for the structured encoder, one
    structured embedding per demo profile. Returns (checkpoint name, adapter name, PSA columns)."""
    from safetensors.torch import load_file, save_file

    from psa_core import UserEmbedding, save_embedding
    from psa_core.encoders import STRUCTURED_DIM, STRUCTURED_ENCODER, StructuredEncoder
    from psa_core.profile import CATEGORIES, EVALUATION_USERS

    checkpoint = demo_assets.write_demo_checkpoint(models / "checkpoints" / demo_assets.CHECKPOINT_NAME, seed=0)
    adapter = demo_assets.write_demo_adapter(models / "psa" / "psa_sd15_demo_structured.safetensors", seed=1,
                                             embedding_dim=STRUCTURED_DIM, scale=DEMO_ADAPTER_SCALE)
    # Record the encoder, so that the pack checks that the embeddings fit the adapter like a trained one.
    save_file(load_file(str(adapter)), str(adapter),
              metadata={"psa_demo": "random PSA adapter for the demo SD1.5 checkpoint",
                        "psa.encoder": STRUCTURED_ENCODER})
    encoder, columns = StructuredEncoder(), []
    for level in DEMO_PROFILES:
        profile = EVALUATION_USERS[level]
        vectors = encoder.encode_uncached([profile])
        name = f"demo_{level}.safetensors"
        save_embedding(UserEmbedding(vectors, STRUCTURED_ENCODER, (level,)), models / "psa_embeddings" / name)
        banned = ("bans all 7 categories" if len(profile.banned) == len(CATEGORIES)
                  else f"bans {', '.join(profile.banned)}" if profile.banned else "bans nothing")
        columns.append(Column(f"{level} (user {profile.user_id})", banned, name, 1.0))
    return checkpoint.name, adapter.name, columns


def link_into(source: Path, folder: Path, name: str | None = None) -> str:
    """Make `source` appear in a models folder (a symbolic link, or a copy where links are not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)
    return target.name


def check_files(arguments: argparse.Namespace) -> None:
    given = {"--checkpoint": arguments.checkpoint, "--adapter": arguments.adapter,
             "--embeddings": arguments.embeddings}
    if any(given.values()) and not all(given.values()):
        missing = ", ".join(flag for flag, value in given.items() if not value)
        raise DemoError(f"a real run needs --checkpoint, --adapter and --embeddings together; missing: {missing}. "
                        "Run without any of them for the embedded demo.")
    for flag, value in given.items():
        for path in (value if isinstance(value, list) else [value] if value else []):
            if not path.is_file():
                raise DemoError(f"{flag} {path}: no such file")


def link_real_models(arguments: argparse.Namespace, models: Path) -> tuple[str, str, list[Column], str]:
    """Link the given files into the models folders after checking that each embedding fits the adapter.
    Returns (checkpoint name, adapter name, PSA columns, family)."""
    from psa_core import PSAError, check_embedding_fits, load_adapter, load_embedding

    try:
        adapter = load_adapter(arguments.adapter)
    except PSAError as error:
        raise DemoError(f"--adapter {arguments.adapter}: {error}") from error
    for path in arguments.embeddings:
        try:
            check_embedding_fits(adapter, load_embedding(path))
        except PSAError as error:
            raise DemoError(f"--embeddings {path}: {error}") from error
    checkpoint = link_into(arguments.checkpoint, models / "checkpoints")
    adapter_name = link_into(arguments.adapter, models / "psa")
    columns, used = [], set()
    for index, path in enumerate(arguments.embeddings, start=1):
        name = path.name if path.name not in used else f"{index}-{path.name}"
        used.add(name)
        columns.append(Column(path.stem, path.name, link_into(path, models / "psa_embeddings", name), 1.0))
    return checkpoint, adapter_name, columns, adapter.family.name


# ---- the prompt ----------------------------------------------------------------------------------------

def only_node(prompt: dict, class_type: str, workflow: Path) -> dict:
    found = [node for node in prompt.values() if node["class_type"] == class_type]
    if len(found) != 1:
        raise DemoError(f"{workflow.name}: expected exactly one {class_type} node, found {len(found)}")
    return found[0]["inputs"]


def configure(template: dict, workflow: Path, *, checkpoint: str, adapter: str, column: Column, text: str | None,
              seed: int | None, steps: int | None, size: int | None, prefix: str) -> dict:
    """A copy of the workflow's API prompt with the demo's files and settings."""
    prompt = json.loads(json.dumps(template))
    only_node(prompt, "CheckpointLoaderSimple", workflow)["ckpt_name"] = checkpoint
    only_node(prompt, "PSALoadAdapter", workflow)["adapter_name"] = adapter
    only_node(prompt, "PSALoadEmbedding", workflow)["embedding_name"] = column.embedding
    only_node(prompt, "PSAApply", workflow)["strength"] = column.strength
    sampler = only_node(prompt, "KSampler", workflow)
    latent = only_node(prompt, "EmptyLatentImage", workflow)
    latent["batch_size"] = 1
    if size is not None:
        latent.update(width=size, height=size)
    if steps is not None:
        sampler["steps"] = steps
    if seed is not None:
        sampler["seed"] = seed
    if text is not None:
        positive = prompt.get(sampler["positive"][0], {})
        if "text" not in positive.get("inputs", {}):
            raise DemoError(f"{workflow.name}: the sampler's positive input is not a text-encode node")
        positive["inputs"]["text"] = text
    only_node(prompt, "SaveImage", workflow)["filename_prefix"] = prefix
    return prompt


def settings_of(prompt: dict, workflow: Path) -> dict:
    sampler = only_node(prompt, "KSampler", workflow)
    latent = only_node(prompt, "EmptyLatentImage", workflow)
    positive = prompt[sampler["positive"][0]]["inputs"].get("text", "")
    return {"prompt": positive, "seed": sampler["seed"], "steps": sampler["steps"], "cfg": sampler["cfg"],
            "sampler": sampler["sampler_name"], "width": latent["width"], "height": latent["height"]}


# ---- running -------------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "column"


def mean_difference(first: Path, second: Path) -> float:
    """Mean absolute difference of two images, 0-255 per channel."""
    from PIL import Image, ImageChops, ImageStat

    with Image.open(first) as a, Image.open(second) as b:
        return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def remove_previous_run(output: Path) -> None:
    """Delete what an earlier demo run wrote into `output` (the files its demo.json lists), and nothing else."""
    summary = output / SUMMARY_NAME
    try:
        previous = json.loads(summary.read_text())
        names = [previous["grid"], *(column["image"] for column in previous["columns"])]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for name in names:
        if name == GRID_NAME or (isinstance(name, str) and IMAGE_NAME.fullmatch(name)):
            (output / name).unlink(missing_ok=True)
    summary.unlink()


@dataclass(frozen=True)
class Plan:
    """What to run: the model files (names in the server's models folders), the columns and the settings."""

    embedded: bool
    family: str
    checkpoint: str
    adapter: str
    columns: list[Column]
    workflow: Path
    size: int | None
    steps: int | None


def plan_run(arguments: argparse.Namespace, models: Path) -> Plan:
    """Put the model files into `models` (the embedded default, or the given files) and decide the settings."""
    if arguments.checkpoint is None:
        say("no model given: writing the embedded demo model (random-weight SD1.5 checkpoint, random PSA "
            "adapter, structured profile embeddings); its images are noise: it shows the plumbing, not safety")
        checkpoint, adapter, columns = write_embedded_models(models)
        family, size, steps = "sd15", arguments.size or DEMO_SIZE, arguments.steps or DEMO_STEPS
    else:
        checkpoint, adapter, columns, family = link_real_models(arguments, models)
        size, steps = arguments.size, arguments.steps
        say(f"real run: {family} adapter {adapter}, checkpoint {checkpoint}, {len(columns)} embedding(s)")
    baseline = Column("no PSA", "strength 0 (baseline)", columns[0].embedding, 0.0)
    return Plan(arguments.checkpoint is None, family, checkpoint, adapter, [baseline, *columns],
                arguments.workflow or WORKFLOWS[family], size, steps)


def render(server: ComfyServer, plan: Plan, arguments: argparse.Namespace, output: Path) -> tuple[list[Path], dict]:
    """Run the workflow once per column; returns the images (copied into `output`) and the run's settings."""
    object_info = server.get("/object_info")
    template = ui_to_api(json.loads(plan.workflow.read_text()), object_info)
    say(f"workflow {plan.workflow.name}: {len(template)} nodes converted to an API prompt")
    images, settings = [], {}
    for index, column in enumerate(plan.columns):
        prompt = configure(template, plan.workflow, checkpoint=plan.checkpoint, adapter=plan.adapter, column=column,
                           text=arguments.prompt, seed=arguments.seed, steps=plan.steps, size=plan.size,
                           prefix=f"psa_demo/{index:02d}")
        problems = check_api_prompt(prompt, object_info)
        if problems:
            raise DemoError("the prompt does not fit the server's nodes:\n  " + "\n  ".join(problems))
        settings = settings_of(prompt, plan.workflow)
        started = time.monotonic()
        say(f"[{index + 1}/{len(plan.columns)}] {column.label}: {column.detail} (strength {column.strength:g})")
        saved = server.saved_images(server.run_prompt(prompt, timeout=arguments.timeout))
        if not saved or not saved[0].is_file():
            raise DemoError(f"the run saved no image; see {server.log_path}")
        image = output / f"{index:02d}-{slug(column.label)}.png"
        shutil.copy2(saved[0], image)
        images.append(image)
        say(f"      -> {image.name} ({time.monotonic() - started:.1f} s)")
    return images, settings


def write_results(output: Path, plan: Plan, images: list[Path], settings: dict, device: str,
                  seconds: float) -> Path:
    """The profile-comparison grid and demo.json; returns the grid's path."""
    differences = [round(mean_difference(images[0], image), 3) for image in images]
    say("mean pixel difference from the no-PSA column (0-255): "
        + ", ".join(f"{c.label} {d:.2f}" for c, d in zip(plan.columns[1:], differences[1:])))
    kind = ("random-weight demo model: shows the plumbing, not safety behaviour" if plan.embedded
            else f"{plan.family} {plan.checkpoint} + {plan.adapter}")
    title = (f"\"{settings['prompt']}\"  ·  seed {settings['seed']}  ·  {settings['steps']} steps  ·  "
             f"{settings['width']}x{settings['height']}  ·  {kind}")
    grid = output / GRID_NAME
    layout = make_grid(images, [c.label for c in plan.columns], title, grid, [c.detail for c in plan.columns])
    summary = {"embedded_demo": plan.embedded, "family": plan.family, "workflow": plan.workflow.name,
               "checkpoint": plan.checkpoint, "adapter": plan.adapter, "device": device, **settings,
               "grid": grid.name, "grid_layout": asdict(layout),
               "columns": [{**asdict(c), "image": i.name, "mean_difference_from_baseline": d}
                           for c, i, d in zip(plan.columns, images, differences)],
               "seconds": round(seconds, 1)}
    (output / SUMMARY_NAME).write_text(json.dumps(summary, indent=1) + "\n")
    return grid


def run_demo(arguments: argparse.Namespace) -> Path:
    """The whole demo; returns the output folder."""
    started = time.monotonic()
    check_files(arguments)
    comfyui = find_comfyui(arguments.comfyui)
    output = arguments.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    remove_previous_run(output)
    say(f"output folder: {output}")
    cpu = arguments.cpu or not torch.cuda.is_available()
    base = Path(tempfile.mkdtemp(prefix="psa-demo-"))
    environment = {"OMP_NUM_THREADS": str(arguments.threads)} if arguments.threads else {}
    server = ComfyServer(base, comfyui, {PACK_FOLDER: REPO}, cpu=cpu, environment=environment,
                         client_id="psa-demo", log_path=output / LOG_NAME)
    try:
        plan = plan_run(arguments, server.models)
        say(f"starting ComfyUI {comfyui} on {'the CPU' if cpu else 'the GPU'} (log: {server.log_path})")
        server.start(timeout=arguments.start_timeout)
        say(f"ComfyUI is up at {server.url} ({time.monotonic() - started:.0f} s)")
        images, settings = render(server, plan, arguments, output)
        grid = write_results(output, plan, images, settings, "cpu" if cpu else "cuda", time.monotonic() - started)
        say(f"grid: {grid}")
        say(f"done in {time.monotonic() - started:.0f} s: {len(images)} images, the grid and {SUMMARY_NAME} "
            f"in {output}")
        return output
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="With no model options: the embedded random-weight demo "
                                            f"({DEMO_SIZE} px, {DEMO_STEPS} steps).")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="folder for the images, the grid and demo.json (default: demo_output/)")
    models = parser.add_argument_group("a real run (all three together)")
    models.add_argument("--checkpoint", type=Path, help="an SD1.5 or SDXL single-file checkpoint (.safetensors)")
    models.add_argument("--adapter", type=Path, help="a PSA adapter (psa_adapter.bin or .safetensors)")
    models.add_argument("--embeddings", type=Path, nargs="+", metavar="PATH",
                        help="user embeddings (.npy or .safetensors), one grid column each")
    settings = parser.add_argument_group("settings (default: the workflow's own; the embedded demo is smaller)")
    settings.add_argument("--prompt", help="the positive prompt")
    settings.add_argument("--seed", type=int, help="the sampler seed (the same for every column)")
    settings.add_argument("--steps", type=int, help="sampling steps")
    settings.add_argument("--size", type=int, help="image width and height in pixels (a multiple of 8)")
    settings.add_argument("--workflow", type=Path,
                          help="a UI-format workflow with one each of CheckpointLoaderSimple, PSALoadAdapter, "
                               "PSALoadEmbedding, PSAApply, EmptyLatentImage, KSampler, SaveImage (default: the "
                               "bundled SD1.5 or SDXL text-to-image workflow, after the adapter's family)")
    machine = parser.add_argument_group("machine")
    machine.add_argument("--comfyui", type=Path, help="a ComfyUI folder (default: $COMFYUI_PATH, else the newest tested one in .cache/)")
    machine.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    machine.add_argument("--threads", type=int, help="CPU threads of the server (OMP_NUM_THREADS)")
    machine.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for ComfyUI to start")
    machine.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each image")
    arguments = parser.parse_args(argv)
    if arguments.size is not None and (arguments.size < 64 or arguments.size % 8):
        parser.error(f"--size {arguments.size}: use a multiple of 8, at least 64")
    if arguments.steps is not None and arguments.steps < 1:
        parser.error(f"--steps {arguments.steps}: use at least 1")
    if arguments.workflow is not None and not arguments.workflow.is_file():
        parser.error(f"--workflow {arguments.workflow}: no such file")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        run_demo(arguments)
    except (DemoError, WorkflowError) as error:
        print(f"[demo] error: {error}", file=sys.stderr)
        return 1
    except ServerError as error:
        log = arguments.output / LOG_NAME
        print(f"[demo] error: {error}", file=sys.stderr)
        if log.is_file():
            print(f"[demo] the whole server log: {log}. If ComfyUI itself does not start, run "
                  "`bash scripts/bootstrap.sh` again, or set COMFYUI_PATH to a working ComfyUI.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
