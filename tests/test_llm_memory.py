"""The LLM under ComfyUI's memory manager (nodes/model_memory.py, docs/comfyui.md §7), in-process: the same
embedding on the CPU, fully loaded and partially loaded; the manager unloading the kept LLM; several profiles per
load; the log lines and the progress bar; the prompt rewriter the same way.

This machine has no GPU. ComfyUI's partial (low-VRAM) load is reached on the CPU through ComfyUI's own decision:
`simulated_gpu` makes ComfyUI treat the CPU as a GPU with `budget` bytes free beside its reserve, so that
`load_models_gpu` computes its low-VRAM budget from that and `ModelPatcher.load` leaves the layers that do not fit
offloaded, marked `comfy_cast_weights` (on a GPU each would be copied to the device for its forward; here the
copy is a no-op, and the tests check that the casting path ran and that every weight-holding layer can take it).

Exactness bound: every placement runs the same module code on the same weights; only where the weights sit
between layers differs. On one device the embeddings are therefore bit-identical (a cast to the same device and
dtype returns the very weight tensor, and the same kernel runs on the same data): the tests assert equality. On
different devices they differ by the rounding of each device's kernels: for float32 that is bounded by
tests/numerics.py's `assert_within_float32_noise` against the float64 result (4 x the float32 noise that a naive
float32 implementation shows on this CPU), which every placement here must meet; for bf16 the bench's --verify
compares a GPU's result with the reference code on that GPU.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import weakref

import pytest
import torch
import transformers
from numerics import assert_within_float32_noise
from tiny_llm import build_tiny_llm
from transformers.models.qwen2 import modeling_qwen2

from psa_core.encoders import LLMEncoder, load_template, render_prompt
from psa_core.encoders.placement import CPU, FULL, LOAD, PARTIAL, RUN, SingleDevice
from psa_core.profile import EVALUATION_USERS

FIVE = ("level_0", "level_1", "level_3", "level_4", "level_5")  # the comparison workflow's profiles


@contextlib.contextmanager
def simulated_gpu(budget: int):
    """ComfyUI treats the CPU as a GPU (NORMAL_VRAM) whose free memory is its inference reserve plus `budget`
    bytes: `load_models_gpu` then offers a model `budget` bytes (its low-VRAM budget) and loads it partially when
    its weights need more. ComfyUI keeps these three in module globals and has no setter for them."""
    import comfy.model_management as mm

    free = mm.minimum_inference_memory() + budget
    saved = mm.vram_state, mm.is_device_cpu, mm.get_free_memory
    mm.vram_state = mm.VRAMState.NORMAL_VRAM
    mm.is_device_cpu = lambda device: False
    mm.get_free_memory = lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free
    try:
        yield
    finally:
        mm.vram_state, mm.is_device_cpu, mm.get_free_memory = saved


class BuildCounter:
    """Counts model constructions (every from_pretrained builds one) and keeps weak references to them."""

    def __init__(self, monkeypatch, cls=modeling_qwen2.Qwen2Model):
        self.built = []
        original = cls.__init__

        def counting_init(model, *args, **kwargs):
            original(model, *args, **kwargs)
            self.built.append(weakref.ref(model))

        monkeypatch.setattr(cls, "__init__", counting_init)

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.built)


class CastCounter:
    """Counts comfy.ops.cast_bias_weight calls: the path of a layer ComfyUI left offloaded."""

    def __init__(self, monkeypatch):
        import comfy.ops

        self.calls = 0
        original = comfy.ops.cast_bias_weight

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(comfy.ops, "cast_bias_weight", counting)


@pytest.fixture
def memory(pack):
    """nodes/model_memory.py, with no LLM kept before or after the test."""
    module = pack.nodes.model_memory
    module.release_kept("test set-up")
    yield module
    module.release_kept("test clean-up")


@pytest.fixture(scope="module")
def template(reference):
    return load_template(reference / "get_embeds.txt")


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory, template):
    profiles = [EVALUATION_USERS[level] for level in FIVE]
    corpus = [template.text] * 3 + [render_prompt(template, p) for p in profiles]
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2", corpus)


def weight_bytes(model_dir, head=False) -> int:
    """float32 bytes of the base model's weights (with the LM head: the causal LM's)."""
    config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    model_class = transformers.AutoModelForCausalLM if head else transformers.AutoModel
    return sum(p.numel() * 4 for p in model_class.from_config(config).parameters())


def exact_embeddings(model_dir, template, profiles, dtype):
    """The recipe written out plainly, one profile at a time, no padding: chat template, last hidden state, mean."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    rows = []
    with torch.no_grad():
        for profile in profiles:
            text = tokenizer.apply_chat_template([{"role": "user", "content": render_prompt(template, profile)}],
                                                 tokenize=False, add_generation_prompt=True)
            hidden = model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"]).last_hidden_state[0]
            rows.append(hidden.mean(dim=0))
    return torch.stack(rows).double()


def encoder(memory, model_dir, template, choice="auto", dtype="float32", **options):
    return LLMEncoder(model_dir, template, dtype=dtype, batch_size=2,
                      placement=memory.ComfyPlacement(choice, node="test"), **options)


def streamed_layers(model) -> int:
    return sum(bool(getattr(m, "comfy_cast_weights", False)) for m in model.modules())


def test_same_embedding_on_cpu_fully_and_partially_loaded(memory, tiny_llm, template, monkeypatch, one_thread):
    import comfy.model_management as mm

    profiles = [EVALUATION_USERS[level] for level in FIVE]
    size = weight_bytes(tiny_llm)
    on_cpu = LLMEncoder(tiny_llm, template, dtype="float32", batch_size=2, placement=SingleDevice("cpu"))
    cpu_vectors = on_cpu.encode_uncached(profiles)
    assert on_cpu.last_placed.mode == CPU

    comfy_cpu = encoder(memory, tiny_llm, template)  # ComfyUI runs on the CPU here: ComfyUI's CPU placement
    comfy_cpu_vectors = comfy_cpu.encode_uncached(profiles)
    assert comfy_cpu.last_placed.mode == CPU and "ComfyUI runs on the CPU" in comfy_cpu.last_placed.reason
    memory.release_kept()

    casts = CastCounter(monkeypatch)
    with simulated_gpu(budget=100 * size):
        full = encoder(memory, tiny_llm, template)
        full_vectors = full.encode_uncached(profiles)
        (kept,) = memory.kept_models()
        assert full.last_placed.mode == FULL and kept.patcher.loaded_size() == kept.patcher.model_size()
        assert streamed_layers(kept.model) == 0 and casts.calls == 0
    memory.release_kept()

    with simulated_gpu(budget=size // 2):
        partial = encoder(memory, tiny_llm, template)
        partial_vectors = partial.encode_uncached(profiles)
        (kept,) = memory.kept_models()
        assert partial.last_placed.mode == PARTIAL, partial.last_placed.describe()
        assert 0 < kept.patcher.loaded_size() < kept.patcher.model_size() and kept.patcher.model.model_lowvram
        assert streamed_layers(kept.model) > 0 and casts.calls > 0  # offloaded layers ran ComfyUI's casting path
        assert kept in memory.kept_models() and kept.patcher in mm.loaded_models()
    # every layer with weights can be left offloaded by ComfyUI (on a GPU it would otherwise miss its weights)
    assert all(hasattr(m, "comfy_cast_weights") for m in kept.model.modules() if list(m.parameters(recurse=False)))

    exact = exact_embeddings(tiny_llm, template, profiles, torch.float64)
    naive32 = exact_embeddings(tiny_llm, template, profiles, torch.float32)
    for name, vectors in (("cpu", cpu_vectors), ("comfy cpu", comfy_cpu_vectors), ("full", full_vectors),
                          ("partial", partial_vectors)):
        assert_within_float32_noise(vectors, exact, naive32, f"{name} embeddings")
        assert torch.equal(vectors, cpu_vectors), name  # one device: bit-identical (module docstring)
    assert (exact[0] - exact[-1]).abs().max() > 1e-2  # the profiles really differ
    # where the model ran is not part of the cache key
    assert len({e.identity for e in (on_cpu, comfy_cpu, full, partial)}) == 1


def test_bf16_is_the_same_bits_in_every_placement(memory, tiny_llm, template):
    profiles = [EVALUATION_USERS[level] for level in FIVE]
    size = weight_bytes(tiny_llm) // 2
    reference = LLMEncoder(tiny_llm, template, dtype="bfloat16", batch_size=2).encode_uncached(profiles)
    with simulated_gpu(budget=100 * size):
        full = encoder(memory, tiny_llm, template, dtype="bfloat16").encode_uncached(profiles)
    memory.release_kept()
    with simulated_gpu(budget=size // 2):
        partial_encoder = encoder(memory, tiny_llm, template, dtype="bfloat16")
        partial = partial_encoder.encode_uncached(profiles)
    assert partial_encoder.last_placed.mode == PARTIAL
    assert torch.equal(full, reference) and torch.equal(partial, reference)
    assert torch.equal(reference, reference.bfloat16().float())  # pooled in bf16


def test_the_manager_unloads_the_kept_llm_when_memory_is_needed(memory, tiny_llm, template, monkeypatch):
    import comfy.model_management as mm

    size = weight_bytes(tiny_llm)
    counter = BuildCounter(monkeypatch)
    profile = [EVALUATION_USERS["level_3"]]
    with simulated_gpu(budget=100 * size):
        first = encoder(memory, tiny_llm, template).encode_uncached(profile)
        (kept,) = memory.kept_models()
        assert kept.patcher in mm.loaded_models() and counter.alive() == 1
        # another model needs all but half of the LLM's weights: ComfyUI unloads the LLM partially, the pack keeps it
        mm.free_memory(mm.get_free_memory() + kept.patcher.loaded_size() // 2, mm.get_torch_device())
        assert memory.kept_models() == [kept] and kept.patcher.loaded_size() < kept.patcher.model_size()
        again = encoder(memory, tiny_llm, template)
        assert torch.equal(again.encode_uncached(profile), first) and len(counter.built) == 1  # reused
        assert not again.last_placed.loaded
        # another model needs everything: ComfyUI unloads the LLM fully, the pack lets it go
        mm.free_memory(1e30, mm.get_torch_device())
    assert memory.kept_models() == [] and kept.patcher not in mm.loaded_models()
    del kept
    assert counter.alive() == 0  # its memory is returned
    # Unload Models (POST /free), which is unload_all_models(), does the same on a CPU-only ComfyUI
    encoder(memory, tiny_llm, template).encode_uncached(profile)
    assert len(memory.kept_models()) == 1 and len(counter.built) == 2
    mm.unload_all_models()
    assert memory.kept_models() == [] and counter.alive() == 0


def encode_node(pack, profile, precision="float32", device="auto", use_cache=False):
    return pack.nodes.nodes_profile.PSAEncodeProfile.execute(profile, "llm", "tiny-qwen2", "get_embeds.txt",
                                                             precision, device, use_cache).result[0]


@pytest.fixture
def llm_folders(register_folders, model_folders, tiny_llm, reference):
    register_folders({"LLM": tiny_llm.parent})
    (model_folders["psa"] / "get_embeds.txt").write_bytes((reference / "get_embeds.txt").read_bytes())


def test_five_encode_nodes_load_the_llm_once_and_log_it(pack, memory, llm_folders, monkeypatch, caplog, tmp_path):
    counter = BuildCounter(monkeypatch)
    monkeypatch.setenv("PSA_EMBEDDING_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger=memory.__name__)
    caplog.set_level(logging.INFO, logger=pack.nodes.nodes_profile.__name__)
    profiles = [EVALUATION_USERS[level] for level in FIVE]
    embeddings = [encode_node(pack, p, use_cache=True) for p in profiles]
    assert len(counter.built) == 1 and counter.alive() == 1  # one load, kept for the next node
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("[PSA] LLM loaded: tiny-qwen2 (float32) for PSA Encode Profile") for line in lines) == 1
    assert sum(line.startswith("[PSA] LLM reused: tiny-qwen2 (float32)") for line in lines) == 4
    assert all("on the CPU" in line and "ComfyUI runs on the CPU" in line for line in lines if "LLM loaded" in line)
    direct = LLMEncoder(pack.nodes.comfy_paths.LLM_FOLDER.find("tiny-qwen2", "llm"),
                        load_template(pack.nodes.comfy_paths.TEMPLATE_FILE.find("get_embeds.txt", "template")),
                        dtype="float32", placement=SingleDevice("cpu"))
    assert all(torch.equal(e.vectors, direct.encode_uncached([p])) for e, p in zip(embeddings, profiles))
    builds = len(counter.built)
    # cached profiles load nothing, even with the kept model released
    memory.release_kept()
    caplog.clear()
    again = [encode_node(pack, p, use_cache=True) for p in profiles]
    assert len(counter.built) == builds and all(torch.equal(a.vectors, b.vectors) for a, b in zip(again, embeddings))
    assert sum("served profile" in r.getMessage() and "from the embedding cache" in r.getMessage()
               for r in caplog.records) == 5 and memory.kept_models() == []
    # another precision is another model: the kept one is released first (one LLM at a time)
    encode_node(pack, profiles[0])
    encode_node(pack, profiles[0], precision="bfloat16")
    assert len(counter.built) == builds + 2 and counter.alive() == 1
    assert [k.label for k in memory.kept_models()] == ["tiny-qwen2 (bfloat16)"]


def test_device_cpu_and_its_tooltip(pack, memory, llm_folders, caplog):
    caplog.set_level(logging.INFO, logger=memory.__name__)
    encode_node(pack, EVALUATION_USERS["level_1"], device="cpu")
    assert any("LLM loaded" in r.getMessage() and "its device input is 'cpu'" in r.getMessage()
               for r in caplog.records)
    schema = {i.id: i for i in pack.nodes.nodes_profile.PSAEncodeProfile.define_schema().inputs}
    assert schema["device"].options == ["auto", "cpu"]
    tooltip = schema["device"].tooltip
    for words in ("memory manager", "fits", "partially", "low-VRAM", "--cpu", "'cpu'", "stays loaded"):
        assert words in tooltip, words
    rewrite = {i.id: i for i in pack.nodes.nodes_dataset.PSARewritePrompt.define_schema().inputs}
    assert rewrite["device"].tooltip == memory.DEVICE_TOOLTIP


def test_progress_while_the_weights_load_and_while_profiles_encode(pack, memory, tiny_llm, template, llm_folders,
                                                                   monkeypatch):
    import comfy.utils

    events = []
    profiles = [EVALUATION_USERS[level] for level in FIVE]
    encoder(memory, tiny_llm, template, progress=lambda *e: events.append(e)).encode_uncached(profiles)
    loads = [e for e in events if e[0] == LOAD]
    tensors = len(list(transformers.AutoModel.from_pretrained(str(tiny_llm), local_files_only=True).state_dict()))
    assert loads[0] == (LOAD, 1, tensors) and (LOAD, tensors, tensors) in loads and loads[-1] == (LOAD, 1, 1)
    assert [e for e in events if e[0] == RUN] == [(RUN, 2, 5), (RUN, 4, 5), (RUN, 5, 5)]  # batches of 2
    assert events.index(loads[-1]) < events.index((RUN, 2, 5))  # loading first, then encoding

    calls = []  # what the node gives the bar (ComfyUI 0.28 throttles what the bar sends on by time)
    original = comfy.utils.ProgressBar.update_absolute

    def recording(bar, value, total=None, preview=None):
        calls.append((value, total))
        return original(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", recording)
    memory.release_kept()
    encode_node(pack, profiles[0])  # loads: the bar's first half while the weights load
    loading = list(calls)
    calls.clear()
    encode_node(pack, profiles[1])  # reused: the whole bar for the encoding
    reusing = list(calls)
    assert all(total == 100 for _, total in loading + reusing)
    values = [v for v, _ in loading]
    assert values == sorted(values) and values[-1] == 100 and len([v for v in values if 0 < v <= 50]) >= 3
    assert [v for v, _ in reusing] == [100]


def test_rewriter_runs_under_the_manager_the_same_way(pack, memory, tmp_path, monkeypatch):
    from psa_core.dataset_build.rewrite import PromptRewriter

    folder = build_tiny_llm(tmp_path / "rewriter", ["a bloody knife fight in a dark alley", "rewrite safely"] * 3)
    size = weight_bytes(folder, head=True)
    counter = BuildCounter(monkeypatch, modeling_qwen2.Qwen2ForCausalLM)
    prompt = ["a bloody knife fight in a dark alley"]
    expected = PromptRewriter(folder, max_new_tokens=8).rewrite(prompt)
    with simulated_gpu(budget=size // 2):
        rewriter = PromptRewriter(folder, max_new_tokens=8, placement=memory.ComfyPlacement("auto", "test"))
        assert rewriter.rewrite(prompt) == expected and rewriter.last_placed.mode == PARTIAL
        (kept,) = memory.kept_models()
        assert kept.model.device == kept.patcher.load_device  # generate() sends its inputs where ComfyUI runs it
        again = PromptRewriter(folder, max_new_tokens=8, placement=memory.ComfyPlacement("auto", "test"))
        assert again.rewrite(prompt) == expected and not again.last_placed.loaded
    assert len(counter.built) == 2  # the plain run and one ComfyUI load


def test_pinned_device_and_streamable_layers(pack, memory, tiny_llm):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llm), local_files_only=True)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    assert memory.make_streamable(model) == []
    memory.pin_input_device(model, torch.device("meta"))
    assert model.device == torch.device("meta") and isinstance(model, modeling_qwen2.Qwen2ForCausalLM)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.can_generate()
    norm = model.model.norm
    norm.comfy_cast_weights = True  # what ComfyUI sets on a layer it leaves offloaded
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after) and norm.bias is None
    assert isinstance(norm.weight, torch.nn.Parameter)  # the layer's own parameter is back after the call
    config = json.loads((tiny_llm / "config.json").read_text())
    assert config["model_type"] == "qwen2"
