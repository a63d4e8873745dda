"""Profile-encoding benchmark (issues 3 and 15).

1. Cached encode: what PSAEncodeProfile does for a profile already in the disk cache (build the encoder,
   fingerprint the model folder, hash the profile, read the cached file). Threshold: median <= 10 ms.
2. Structured encode: one profile through the model-free encoder. Threshold: median <= 1 ms.
3. LLM encode, uncached: wall time and peak memory (CUDA: max allocated; CPU: peak RSS increase, sampled
   every 1 ms) of loading the model, encoding, and releasing it. The tiny Qwen2 test model by default;
   `--llm DIR` measures a real local model (e.g. Qwen2.5-7B-Instruct) instead. Reported, no threshold.
4. Placements (with --device cpu; skipped with --no-placements): 1 profile, and 5 profiles encoded one node at a time as the
   comparison workflow does, each arm from nothing loaded: wall time, peak RSS increase and how many times the
   weights were read, for
   - `cpu`: psa_core's SingleDevice (the model loaded for every encode and released after it: the pack before
     issue 15);
   - `comfyui full` / `comfyui partial`: nodes/model_memory.py's placement in an in-process ComfyUI that treats the
     CPU as a GPU with room for all the weights / for half of them (tests/test_llm_memory.py's simulated_gpu:
     ComfyUI's own load_models_gpu decides, its low-VRAM path leaves the other layers offloaded and casts them per
     forward); the model is loaded once and kept for the next node;
   - `accelerate partial`: psa_core's AccelerateOffload with a RAM budget of 3/4 of the weights (the rest
     offloaded to disk and read back for each forward), as outside ComfyUI.
   Every arm's embeddings must equal the `cpu` arm's (the same bits on one device). Needs ComfyUI (COMFYUI_PATH or
   the tested one under .cache/) for the comfyui arms.

5. With --verify (meant for a GPU): the device's fp32 embedding against the CPU's (<= 1e-5), its bf16 embedding
   against get_embeds.py's own batch code run on the same device (bit-identical), the device memory left once the
   encoder has released the model (must be back to where it started), and Accelerate's partial load (half the
   weights on the GPU) against the full load on the same device (bit-identical).

    .venv/bin/python bench/bench_encode.py [--llm DIR] [--device cpu|cuda] [--runs 50] [--verify]
                                           [--no-placements] [--template get_embeds.txt] [--json out.json]

Exits 1 when a threshold or a check is missed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from psa_core.encoders import (
    EmbeddingCache,
    StructuredEncoder,
    encode_profiles,
    load_template,
    make_encoder,
)
from psa_core.profile import EVALUATION_USERS

CACHED_LIMIT_MS = 10.0
STRUCTURED_LIMIT_MS = 1.0


def reference_dir() -> Path:
    return Path(os.environ.get("PSA_REFERENCE_DIR") or REPO.parent / "shared" / "reference")


def median_ms(function, runs: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class PeakMemory:
    """Peak memory above the starting point while the block runs."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.process, self.base, self.running = psutil.Process(), psutil.Process().memory_info().rss, True
        self.peak = self.base

        def sample():
            while self.running:
                self.peak = max(self.peak, self.process.memory_info().rss)
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.peak_bytes = self.peak - self.base


def verify(model_dir: Path, template_path: Path, device: torch.device) -> list[tuple[str, str, str, bool]]:
    import transformers

    from psa_core.encoders import LLMEncoder

    template = load_template(template_path)
    profiles = list(EVALUATION_USERS.values())
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    on_device = LLMEncoder(model_dir, template, dtype="float32", device=device).encode_uncached(profiles)
    left = (torch.cuda.memory_allocated(device) - base) if device.type == "cuda" else 0
    on_cpu = LLMEncoder(model_dir, template, dtype="float32").encode_uncached(profiles)
    fp32_diff = (on_device - on_cpu).abs().max().item()
    # get_embeds.py's batch code, verbatim in substance, on the same device in bf16
    encoder = LLMEncoder(model_dir, template, dtype="bfloat16", device=device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True,
                                                           padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True,
                                                              dtype=torch.bfloat16).to(device)
    with torch.inference_mode():
        inputs = tokenizer(encoder.chat_texts(tokenizer, profiles), return_tensors="pt", padding=True,
                           truncation=True).to(device)
        last_hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
        mask = inputs["attention_mask"].unsqueeze(-1)
        reference = ((last_hidden * mask).sum(dim=1) / mask.sum(dim=1)).to(torch.float32).cpu()
    del model, last_hidden
    same = torch.equal(encoder.encode_uncached(profiles), reference)
    rows = [(f"fp32 {device.type} vs cpu, max abs diff", f"{fp32_diff:.2e}", "<= 1e-5", fp32_diff <= 1e-5),
            (f"bf16 {device.type} vs get_embeds.py code", "identical" if same else "DIFFERENT", "identical", same),
            (f"{device.type} memory left after release", f"{left / 2**20:.2f} MiB", "0 MiB", left == 0)]
    if device.type == "cuda":
        from psa_core.encoders.placement import AccelerateOffload

        half = LLMEncoder(model_dir, template, dtype="float32").model_request().weight_bytes // 2
        split = LLMEncoder(model_dir, template, dtype="float32",
                           placement=AccelerateOffload(device, budget_bytes=half)).encode_uncached(profiles)
        same = torch.equal(split, on_device)
        rows.append((f"fp32 {device.type} partial (Accelerate) vs full", "identical" if same else "DIFFERENT",
                     "identical", same))
    return rows


ARM_NAMES = ("cpu", "comfyui full", "comfyui partial", "accelerate partial")


def placement_arms(model_dir: Path, template_path: Path, dtype: str) -> list[dict]:
    """Section 4 of the docstring: one dict per (arm, profile count) with seconds, peak bytes, loads, vectors."""
    import gc

    import transformers
    from comfy_env import import_comfy_in_process, import_pack

    from psa_core.encoders import LLMEncoder
    from psa_core.encoders.placement import AccelerateOffload, SingleDevice

    import_comfy_in_process()
    memory = import_pack().nodes.model_memory
    from test_llm_memory import (
        simulated_gpu,  # the suite's simulation of a GPU's free memory on the CPU
    )

    template = load_template(template_path)
    profiles = [EVALUATION_USERS[level] for level in ("level_0", "level_1", "level_3", "level_4", "level_5")]
    weights = LLMEncoder(model_dir, template, dtype=dtype).model_request().weight_bytes
    loads = []
    original = transformers.AutoModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(1)
        return original(cls, *args, **kwargs)

    transformers.AutoModel.from_pretrained = classmethod(counting)
    results = []
    try:
        for arm in ARM_NAMES:
            for count in (1, 5):
                memory.release_kept("benchmark arm")
                gc.collect()
                placement = {"cpu": lambda: SingleDevice("cpu"),
                             "comfyui full": lambda: memory.ComfyPlacement("auto", "bench"),
                             "comfyui partial": lambda: memory.ComfyPlacement("auto", "bench"),
                             "accelerate partial": lambda: AccelerateOffload("cpu", budget_bytes=weights * 3 // 4),
                             }[arm]
                budget = {"comfyui full": 100 * weights, "comfyui partial": weights // 2}.get(arm)
                context = simulated_gpu(budget) if budget is not None else contextlib.nullcontext()
                loads.clear()
                with context, PeakMemory(torch.device("cpu")) as peak:
                    start = time.perf_counter()
                    rows = [LLMEncoder(model_dir, template, dtype=dtype, placement=placement()).encode_uncached([p])
                            for p in profiles[:count]]  # one encode per profile: one node each
                    seconds = time.perf_counter() - start
                results.append({"arm": arm, "profiles": count, "seconds": seconds, "peak_bytes": peak.peak_bytes,
                                "loads": len(loads), "vectors": torch.cat(rows)})
        memory.release_kept("benchmark done")
    finally:
        transformers.AutoModel.from_pretrained = classmethod(original)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", type=Path, help="a local HF causal-LM folder (default: the tiny Qwen2 test model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--template", type=Path, help="prompt template (default: the reference get_embeds.txt)")
    parser.add_argument("--verify", action="store_true", help="device-vs-CPU and reference-code checks")
    parser.add_argument("--no-placements", action="store_true", help="skip the placement arms (section 4)")
    args = parser.parse_args()
    device = torch.device(args.device)
    template_path = args.template or reference_dir() / "get_embeds.txt"
    profile = EVALUATION_USERS["level_3"]

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.llm is None:
            from tiny_llm import build_tiny_llm

            model_dir = build_tiny_llm(scratch / "tiny-qwen2", [load_template(template_path).text] * 3)
            model_label, dtype = "tiny Qwen2 (hidden 32, 2 layers)", "float32"
        else:
            model_dir, model_label, dtype = args.llm, args.llm.name, "auto"

        def llm_encoder():
            return make_encoder("llm", model_dir=model_dir, template_path=template_path, dtype=dtype, device=device)

        cache = EmbeddingCache(scratch / "cache")
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            encoded = encode_profiles(llm_encoder(), [profile], cache)
            llm_seconds = time.perf_counter() - start
        cached_ms = median_ms(lambda: encode_profiles(llm_encoder(), [profile], cache), args.runs)
        assert torch.equal(encode_profiles(llm_encoder(), [profile], cache).vectors, encoded.vectors)
        structured_ms = median_ms(lambda: encode_profiles(StructuredEncoder(), [profile]), args.runs)
        checks = verify(model_dir, template_path, device) if args.verify else []
        arms = [] if args.no_placements or device.type != "cpu" else placement_arms(model_dir, template_path, dtype)

    rows = [
        ("cached encode (PSAEncodeProfile path)", f"{cached_ms:.3f} ms", f"<= {CACHED_LIMIT_MS:g} ms",
         cached_ms <= CACHED_LIMIT_MS),
        ("structured encode", f"{structured_ms:.4f} ms", f"<= {STRUCTURED_LIMIT_MS:g} ms",
         structured_ms <= STRUCTURED_LIMIT_MS),
        (f"LLM encode, uncached: {model_label}, {device.type}", f"{llm_seconds:.3f} s", "reported", True),
        ("LLM encode peak memory", f"{memory.peak_bytes / 2**20:.1f} MiB", "reported", True),
    ] + checks
    for result in arms:
        reference = next(r for r in arms if r["arm"] == "cpu" and r["profiles"] == result["profiles"])
        same = torch.equal(result["vectors"], reference["vectors"])
        plural = "s" if result["profiles"] > 1 else ""
        name = f"{result['arm']}, {result['profiles']} profile{plural}: time, peak RSS, loads"
        value = f"{result['seconds']:.3f} s, {result['peak_bytes'] / 2**20:.1f} MiB, {result['loads']}"
        rows.append((name, value, "= cpu bits", same))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>12}  {'threshold':>10}  ok")
    for name, value, limit, ok in rows:
        print(f"{name:<{width}}  {value:>12}  {limit:>10}  {'yes' if ok else 'NO'}")
    print(f"(median of {args.runs} runs; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"embedding dim {encoded.dim}, encoder {encoded.encoder})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cached_encode_ms": cached_ms, "structured_encode_ms": structured_ms,
                                         "llm_encode_s": llm_seconds, "llm_peak_bytes": memory.peak_bytes,
                                         "llm": model_label, "device": device.type,
                                         "placements": [{k: v for k, v in r.items() if k != "vectors"}
                                                        for r in arms]}, indent=2))
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
