"""In-graph training benchmark (issue 5): PSA Train Adapter against the standalone trainer, same model and data.

One random-weight SD1.5 single file at real widths (UNet, CLIP-L and VAE, as ComfyUI's loader expects), one set of synthetic pairs,
the same batch, resolution, precision and seed. Each arm runs in a fresh process of its own, so memory peaks
do not mix:

- standalone: `trainer.train.train` (Accelerate, the diffusers UNet), with its latent/text cache built by an
  untimed run first, so the timed run loads only the UNet, as a long run does after its first minutes;
- node: `PSATrainAdapter.execute` in an in-process ComfyUI on the checkpoint as CheckpointLoaderSimple loads it
  (weights made inside inference mode, as in a prompt run); its cache is built with the graph's VAE and CLIP
  before training, so its peak is measured from the first timed step on (weights, adapter, optimizer and
  activations; the UNet is resident by then).

Reported: the median time of the timed optimizer steps and the peak memory of each arm (CUDA:
torch.cuda.max_memory_allocated; bench/memory.py), and node ÷ standalone. `--check` exits 1 unless both ratios are
≤ 1.10. On the CPU the run is a smoke test: there ComfyUI keeps the graph's VAE and CLIP in the same RAM as the
UNet, so the node arm's RSS also holds them, and only the step times compare.

    .venv/bin/python bench/bench_train_nodes.py                                 # CPU smoke run (64 px)
    python bench/bench_train_nodes.py --device cuda --resolution 512 --batch 4  # GPU, SD1.5 real widths
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from memory import Memory  # bench/memory.py, beside this script  # noqa: E402

PRECISION_FLAGS = {"bf16": ("bf16", "bfloat16"), "fp32": ("fp32", "float32")}  # trainer flag, ComfyUI dtype name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--resolution", type=int, help="default: 512 on cuda, 64 on cpu")
    parser.add_argument("--batch", type=int, help="default: 4 on cuda, 2 on cpu")
    parser.add_argument("--steps", type=int, help="timed steps (default: 10 on cuda, 3 on cpu)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on cuda, 1 on cpu)")
    parser.add_argument("--precision", choices=tuple(PRECISION_FLAGS), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--check", action="store_true", help="exit 1 unless both ratios are <= 1.10")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--arm", choices=("standalone", "node"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.resolution = args.resolution or (512 if cuda else 64)
    args.batch = args.batch or (4 if cuda else 1)
    args.steps = args.steps or (10 if cuda else 3)
    args.warmup = args.warmup or (3 if cuda else 1)
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    return args


def comfy_tokenizer() -> Path:
    from comfy_env import comfyui_path

    return comfyui_path() / "comfy" / "sd1_tokenizer"


def prepare(args: argparse.Namespace, work: Path) -> None:
    import torch

    from testkit.models import ModelSpec, build_components, save_single_file
    from testkit.preference_data import write_pairs, write_profiles

    save_single_file(build_components(ModelSpec.real("sd15")), work / "base.safetensors",
                     torch.float16 if args.device == "cuda" else torch.float32)
    write_pairs(work / "data", args.pairs, size=64, seed=0, style="tint")
    write_profiles(work / "data")


def trainer_args(args: argparse.Namespace, work: Path, steps: int, output: str) -> list[str]:
    return ["train", "--base-model", str(work / "base.safetensors"), "--tokenizer", str(comfy_tokenizer()),
            "--data", str(work / "data" / "pairs.jsonl"), "--profiles", str(work / "data" / "profiles.json"),
            "--encoder", "psa-structured-v1", "--resolution", str(args.resolution), "--device", args.device,
            "--precision", PRECISION_FLAGS[args.precision][0], "--batch", str(args.batch), "--steps", str(steps),
            "--warmup-steps", "0", "--lr", "1e-4", "--cache-dir", str(work / "cache"), "--checkpoint-every", "100000",
            "--output", str(work / output)]


def run_standalone(args: argparse.Namespace, work: Path) -> dict:
    from trainer.__main__ import main

    memory = Memory(args.device)
    memory.steps_begin()  # no hook inside the trainer: its whole run counts (its cache is prebuilt)
    assert main(trainer_args(args, work, args.warmup + args.steps, "standalone")) == 0
    rows = [json.loads(line) for line in (work / "standalone" / "train_log.jsonl").read_text().splitlines()]
    seconds = [args.batch / row["pairs_per_second"] for row in rows[args.warmup:]]
    return {"step_s": statistics.median(seconds), "peak_bytes": memory.peak()}


def run_node(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from comfy_env import import_comfy_in_process, import_pack

    import_comfy_in_process(cpu=args.device == "cpu")
    import comfy.sd

    memory = Memory(args.device)  # before the checkpoint loads: weights count, as in the standalone arm

    pack = import_pack()
    from importlib import import_module

    nodes = import_module(f"{pack.__name__}.nodes.nodes_training")
    training_run = import_module(f"{pack.__name__}.nodes.training_run")
    dtype = getattr(torch, PRECISION_FLAGS[args.precision][1])
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(work / "base.safetensors"), output_vae=True, output_clip=True,
            embedding_directory=None, model_options={"dtype": dtype})
        dataset = nodes.PSALoadSageDataset.execute(str(work / "data" / "pairs.jsonl"),
                                                   str(work / "data" / "profiles.json"), "auto", "all", 10,
                                                   args.resolution, 0).result[0]
    seconds: list[float] = []

    def on_step(step: int, total: int, row: dict) -> None:
        if step == args.warmup:
            memory.steps_begin()
        elif step > args.warmup:
            seconds.append(row["seconds"])

    settings = training_run.in_graph_config(dataset, args.warmup + args.steps, lr=1e-4, batch=args.batch, seed=0)
    with torch.inference_mode():
        training_run.train_in_graph(model, clip, vae, dataset, settings, encoder="psa-structured-v1",
                                    on_step=on_step)
    return {"step_s": statistics.median(seconds), "peak_bytes": memory.peak()}


def spawn(args: argparse.Namespace, work: Path, arm: str, argv: list[str]) -> dict:
    out = work / f"{arm}.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1" if args.device == "cpu" else "8"))
    subprocess.run([sys.executable, __file__, *argv, "--arm", arm, "--work", str(work)], check=True, env=env)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.arm:
        result = run_standalone(args, args.work) if args.arm == "standalone" else run_node(args, args.work)
        (args.work / f"{args.arm}.json").write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="psa_bench_nodes_") as folder:
        work = Path(folder)
        started = time.perf_counter()
        prepare(args, work)
        from trainer.__main__ import main as trainer_main

        assert trainer_main(trainer_args(args, work, 1, "cache_run")) == 0  # builds the standalone cache, untimed
        print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
        results = {arm: spawn(args, work, arm, argv) for arm in ("standalone", "node")}
    time_ratio = results["node"]["step_s"] / results["standalone"]["step_s"]
    memory_ratio = results["node"]["peak_bytes"] / results["standalone"]["peak_bytes"]
    summary = {"device": args.device, "resolution": args.resolution, "batch": args.batch,
               "precision": args.precision, "timed_steps": args.steps, **results,
               "step_time_ratio": time_ratio, "peak_memory_ratio": memory_ratio}
    if args.device == "cuda":
        import torch

        summary["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(summary, indent=1))
    print("\n| measure | standalone | node | node ÷ standalone | target |\n|---|---|---|---|---|")
    print(f"| step time (median) | {results['standalone']['step_s'] * 1000:.1f} ms | "
          f"{results['node']['step_s'] * 1000:.1f} ms | {time_ratio:.3f} | ≤ 1.10 |")
    print(f"| peak memory | {results['standalone']['peak_bytes'] / 2**20:.0f} MiB | "
          f"{results['node']['peak_bytes'] / 2**20:.0f} MiB | {memory_ratio:.3f} | ≤ 1.10 |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.check and (time_ratio > 1.10 or (args.device == "cuda" and memory_ratio > 1.10)):
        print("FAILED: node training is more than 10 % slower or larger than the standalone trainer")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
