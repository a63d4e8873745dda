"""The training nodes inside a real, in-process ComfyUI, on tiny models built as loader nodes build them
(inside `torch.inference_mode()`, so every weight is an inference tensor).

- The nodes pass the standalone trainer's learning test (learning_setup.py): held-out implicit accuracy ≥ 0.9
  for the profile that bans the category and for the one that allows it.
- With the same seed and data, the node-trained adapter equals the standalone-trained one (SD1.5 and SDXL).
- Cancel mid-training raises ComfyUI's interrupt exception, writes nothing, leaves the input MODEL's
  prediction bit-identical, frees the adapter and optimizer; a second training then succeeds.
- Save: the project's format in models/psa/, listed by PSA Load Adapter at once.
"""
from __future__ import annotations

import gc
import importlib
import json
import math
import weakref
from pathlib import Path

import pytest
from comfy_access import comfy_directories
import torch

from comfy_tiny import comfy_clip, comfy_unet, comfy_vae
from learning_setup import (
    DPO_BATCH,
    DPO_LR,
    DPO_STEPS,
    RESOLUTION,
    pretrained_components,
    write_learning_data,
)
from testkit.models import ModelSpec, build_components, save_single_file, write_tokenizer
from testkit.preference_data import ALLOWS_CATEGORY, BANS_CATEGORY, write_pairs, write_profiles
import psa_core
import psa_core.adapter
import psa_core.training.batches
import psa_core.training.embeddings
import psa_core.training.errors
import psa_core.training.evaluate
import psa_core.training.inputs
import psa_core.training.loop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def temp_folder(folder_paths, tmp_path):
    """ComfyUI's temp folder (where training keeps its cache while it runs), fresh for each test."""
    with comfy_directories(folder_paths, temp=tmp_path / "comfy_temp"):
        yield tmp_path / "comfy_temp"


def _module(pack, name: str):
    return importlib.import_module(f"{pack.__name__}.{name}")


def _graph(components, tokenizer):
    """MODEL, CLIP, VAE as loader nodes make them."""
    with torch.inference_mode():
        return comfy_unet(components), comfy_clip(components, tokenizer), comfy_vae(components)


@pytest.fixture(autouse=True)
def data_outside_comfyui(monkeypatch):
    """The data of these tests lives in pytest's folders, outside ComfyUI's: the server owner's opt-in."""
    monkeypatch.setenv("PSA_ALLOW_OUTSIDE_PATHS", "1")


def _dataset(pack, pairs: Path, profiles: Path, split: str = "all"):
    node = _module(pack, "nodes.nodes_training").PSALoadSageDataset
    with torch.inference_mode():
        return node.execute(str(pairs), str(profiles), "auto", split, 10, RESOLUTION, 0).result[0]


def _train(pack, graph, dataset, steps: int, batch: int, lr: float, seed: int = 0, adapter=None):
    node = _module(pack, "nodes.nodes_training").PSATrainAdapter
    model, clip, vae = graph
    with torch.inference_mode():
        return node.execute(model, clip, vae, dataset, "psa-structured-v1", steps, lr, batch, 1, 5000.0, seed,
                            "auto", False, adapter).result


def _prediction(model, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, model.model.model_config.unet_config["context_dim"], generator=generator)
    with torch.inference_mode():
        return model.get_model_object("diffusion_model")(x, torch.tensor([50.0, 700.0]), context=context).clone()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_training")
    components = build_components(ModelSpec.tiny("sd15"))
    tokenizer = write_tokenizer(folder / "tokenizer")
    pairs = write_pairs(folder / "data", 8, seed=0, name="pairs.jsonl", style="tint")
    profiles = write_profiles(folder / "data")
    return folder, components, tokenizer, pairs, profiles


@pytest.mark.slow
def test_nodes_learn_opposite_preferences_per_profile(pack, folder_paths, tmp_path):
    run = _module(pack, "nodes.training_run")
    model_glue = _module(pack, "nodes.training_model")
    evaluate = psa_core.training.evaluate.evaluate
    batches = psa_core.training.batches
    adapter_module = psa_core.adapter

    components = pretrained_components(tmp_path / "pretrain")
    graph = _graph(components, write_tokenizer(tmp_path / "tokenizer"))
    train_pairs, held_out, profiles = write_learning_data(tmp_path / "data")
    adapter, loss_graph = _train(pack, graph, _dataset(pack, train_pairs, profiles), DPO_STEPS, DPO_BATCH, DPO_LR)
    assert loss_graph.shape[0] == 1 and loss_graph.shape[-1] == 3 and 0 <= loss_graph.min() <= loss_graph.max() <= 1

    model, clip, vae = graph
    family = run.model_family(model)
    dataset = _dataset(pack, held_out, profiles)
    settings = run.in_graph_config(dataset, steps=1, hflip=False, caption_dropout=0.0)
    users = psa_core.training.embeddings.build_user_table(
        dataset.data.records, psa_core.training.inputs.embedding_source(
            None, "psa-structured-v1", dataset.profiles, tmp_path / "embeddings"))
    cache = run._build_cache(model, vae, clip, family, dataset, settings, tmp_path / "cache")
    pairs = batches.CachedPairs(dataset.data, cache, users,
                                batches.AssemblyOptions(0.0, 0.0, False, resolution=RESOLUTION))
    predict = model_glue.ComfyPSAPredictor(model, family)
    schedule = model_glue.noise_schedule(model)
    trained = evaluate(predict, adapter_module.PSAAdapter.from_loaded(adapter), pairs, schedule, draws=32)
    by_user = {users.user_ids[row]: accuracy for row, accuracy in trained.accuracy_by_user().items()}
    off = evaluate(predict, None, pairs, schedule, draws=2)
    print(json.dumps({"accuracy_by_user": by_user, "adapter_off_tie_split": off.tie_split_accuracy}))
    assert by_user[BANS_CATEGORY["User_ID"]] >= 0.9  # prefers the safe image
    assert by_user[ALLOWS_CATEGORY["User_ID"]] >= 0.9  # prefers the unsafe image
    assert off.inside.abs().max().item() == 0.0 and off.tie_split_accuracy == 0.5


# Node-vs-standalone bounds on the relative Frobenius difference of the adapter updates (see the test's docstring).
WHOLE_BOUND, TENSOR_BOUND = 0.05, 0.25


def _node_adapter(pack, tiny_setup, components, steps, lr, batch, seed, cache_dtype):
    folder, _, tokenizer, pairs, profiles = tiny_setup
    run = _module(pack, "nodes.training_run")
    model, clip, vae = _graph(components, tokenizer)
    dataset = _dataset(pack, pairs, profiles)
    settings = run.in_graph_config(dataset, steps, lr=lr, batch=batch, seed=seed, cache_dtype=cache_dtype)
    with torch.inference_mode():
        return run.train_in_graph(model, clip, vae, dataset, settings,
                                  encoder="psa-structured-v1").adapter


def _update_differences(pack, adapter, reference, seed) -> tuple[float, float]:
    """(whole, worst tensor): ‖Δ_adapter − Δ_reference‖ / ‖Δ_reference‖, Δ the change from the seeded start."""
    initial = psa_core.training.loop.new_adapter(reference.family, reference.embedding_dim, seed)
    updates = [(name, adapter.projection[name] - start.detach(), reference.projection[name] - start.detach())
               for name, start in initial.projection_state().items()]
    updates += [(f"to_v_user {i}", ours - start, theirs - start) for i, (ours, theirs, start) in enumerate(
        zip(adapter.value_weights, reference.value_weights, [w.detach() for w in initial.value_weights()]))]
    for name, _, update in updates:
        assert update.norm() > 0, f"{name} did not train"
    worst = max(((ours - theirs).norm() / theirs.norm()).item() for _, ours, theirs in updates)
    difference = torch.cat([(ours - theirs).flatten() for _, ours, theirs in updates])
    whole = (difference.norm() / torch.cat([theirs.flatten() for _, _, theirs in updates]).norm()).item()
    return whole, worst


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("cache_dtype", ["float32", "float16"])
def test_node_training_equals_the_standalone_trainer(pack, folder_paths, tiny_setup, tmp_path, family, cache_dtype):
    """The same seed, data and settings through the node's training (train_in_graph, which PSATrainAdapter calls)
    and through the trainer's command line. Both run the one training step of psa_core (loop.optimizer_step);
    what differs is ComfyUI's UNet, VAE and CLIP against diffusers' (equal to float32 rounding, test_comfy_tiny),
    and a float16 cache, where a latent now and then rounds to the neighbouring float16 value on one side only.

    Compared is the update (the adapter's change from its seeded initialisation) in relative Frobenius norm, over
    the whole adapter and per tensor. The bound cannot come from float32 epsilon alone: Adam divides each gradient
    element by its running size, so where a gradient is at rounding level its step is ±lr either way, and how many
    such elements there are depends on the data, not the CPU's arithmetic; ComfyUI and diffusers also compute
    time embeddings in float32 whatever the model's dtype, so no float64 run of both exists. So the bounds sit
    between the two things the test can show: the rounding noise (measured: whole 3.5e-5 / 2.8e-4 for SD1.5 / SDXL
    with a float32 cache, 4.9e-4 / 3.5e-3 with float16; worst tensor at most 9.6e-3), at least 14x below
    WHOLE_BOUND = 0.05 and 25x below TENSOR_BOUND = 0.25, and the smallest wrong setting a front end could pass
    on, a learning rate off by half (shown below: it moves the update by ~0.3, 6x above the bound)."""
    from trainer.__main__ import main

    folder, components, tokenizer, pairs, profiles = tiny_setup
    if family == "sdxl":
        components = build_components(ModelSpec.tiny("sdxl"), seed=12)
    steps, batch, lr, seed = 6, 4, 1e-3, 11
    adapter = _node_adapter(pack, tiny_setup, components, steps, lr, batch, seed, cache_dtype)

    base = save_single_file(components, tmp_path / "tiny.safetensors")
    output = tmp_path / "standalone"
    assert main(["train", "--base-model", str(base), "--tokenizer", str(tokenizer), "--data", str(pairs),
                 "--profiles", str(profiles), "--encoder", "psa-structured-v1", "--resolution", str(RESOLUTION),
                 "--device", "cpu", "--precision", "fp32", "--steps", str(steps), "--batch", str(batch),
                 "--lr", str(lr), "--warmup-steps", "0", "--seed", str(seed), "--cache-dir", str(tmp_path / "cache"),
                 "--cache-dtype", cache_dtype, "--output", str(output)]) == 0
    standalone = psa_core.load_adapter(output / "psa_adapter.safetensors")
    whole, worst = _update_differences(pack, adapter, standalone, seed)
    print(f"{family}, {cache_dtype} cache: update differs by {whole:.2e} overall, {worst:.2e} in the worst tensor")
    assert whole <= WHOLE_BOUND and worst <= TENSOR_BOUND
    if family == "sd15" and cache_dtype == "float32":
        off = _node_adapter(pack, tiny_setup, components, steps, lr * 1.5, batch, seed, cache_dtype)
        off_whole, _ = _update_differences(pack, off, standalone, seed)
        print(f"learning rate x1.5: update differs by {off_whole:.2e} overall")
        assert off_whole > 4 * WHOLE_BOUND, f"a learning rate off by half moved the update by only {off_whole:.3g}"


def test_cancel_frees_everything_and_changes_nothing(pack, folder_paths, tiny_setup, temp_folder):
    import comfy.model_management
    import comfy.utils

    training_run = _module(pack, "nodes.training_run")
    _, components, tokenizer, pairs, profiles = tiny_setup
    graph = _graph(components, tokenizer)
    dataset = _dataset(pack, pairs, profiles)
    before = _prediction(graph[0])
    watched: list[weakref.ref] = []

    def cancel_at_step_two(value, total, preview, node_id=None):
        if value == 2:
            watched.extend(weakref.ref(o) for o in gc.get_objects()
                           if isinstance(o, (psa_core.adapter.PSAAdapter, torch.optim.Optimizer)))
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_at_step_two)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _train(pack, graph, dataset, steps=50, batch=2, lr=1e-3)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    gc.collect()
    assert len(watched) == 2, "the adapter and its optimizer were seen during training"
    assert all(ref() is None for ref in watched), "the trainable state was freed"
    assert not list(temp_folder.glob("psa_training_*")), "the temporary cache was deleted"
    assert torch.equal(_prediction(graph[0]), before), "the input MODEL predicts exactly as before"
    assert all(p.is_inference() for p in graph[0].model.diffusion_model.parameters()), "its weights were restored"

    adapter, _ = _train(pack, graph, dataset, steps=2, batch=2, lr=1e-3)
    assert adapter.family.name == "sd15"
    assert torch.equal(_prediction(graph[0]), before)
    assert isinstance(adapter, psa_core.LoadedAdapter)
    assert training_run.TRAINER_NAME in adapter.metadata["psa.trainer"]


def test_save_adapter_writes_the_project_format_listed_at_once(pack, folder_paths, model_folders, tiny_setup):
    nodes = _module(pack, "nodes.nodes_training")
    inference = _module(pack, "nodes.nodes_inference")
    _, components, tokenizer, pairs, profiles = tiny_setup
    adapter, _ = _train(pack, _graph(components, tokenizer), _dataset(pack, pairs, profiles), 1, 2, 1e-3)
    names = [nodes.PSASaveAdapter.execute(adapter, "trained/run", "float32").result[0] for _ in range(2)]
    assert names == ["trained/run_00001.safetensors", "trained/run_00002.safetensors"]
    listed = inference.PSALoadAdapter.define_schema().inputs[0].options
    assert set(names) <= set(listed)
    loaded = inference.PSALoadAdapter.execute(names[0]).result[0]
    for key, value in adapter.projection.items():
        assert torch.equal(loaded.projection[key], value)
    assert all(torch.equal(a, b) for a, b in zip(loaded.value_weights, adapter.value_weights))
    assert loaded.metadata["psa.trainer"] == adapter.metadata["psa.trainer"]
    assert json.loads(loaded.metadata["psa.training_config"])["steps"] == 1
    assert psa_core.reference_state_dicts(model_folders["psa"] / names[0])["psa_adapter"]
    for bad in ("../escape", "/abs", "a/../b", ""):
        with pytest.raises(psa_core.PSAError, match="filename_prefix"):
            nodes.PSASaveAdapter.execute(adapter, bad, "float32")


def test_dataset_node_splits_stably_and_reports_bad_paths(pack, folder_paths, tiny_setup):
    _, _, _, pairs, profiles = tiny_setup
    full = _dataset(pack, pairs, profiles, "all").data.records
    train = _dataset(pack, pairs, profiles, "train").data.records
    assert len(full) == 16  # 8 image pairs x 2 profiles
    node = _module(pack, "nodes.nodes_training").PSALoadSageDataset
    held_out = node.execute(str(pairs), str(profiles), "auto", "held_out", 50, 0, 0).result[0].data.records
    train_half = node.execute(str(pairs), str(profiles), "auto", "train", 50, 0, 0).result[0].data.records
    assert set(held_out).isdisjoint(train_half) and len(held_out) + len(train_half) == len(full)
    assert {(r.chosen, r.rejected) for r in held_out}.isdisjoint({(r.chosen, r.rejected) for r in train_half})
    assert set(train) <= set(full)
    assert len(node.execute(str(pairs), str(profiles), "auto", "all", 10, 0, 3).result[0].data.records) == 3
    errors = psa_core.training.errors
    with pytest.raises(psa_core.PSAError, match="path: dataset 'no/such/folder' not found; looked in: "):
        node.execute("no/such/folder", "", "auto", "all", 10, 0, 0)
    with pytest.raises(errors.DatasetError, match="need profiles"):
        node.execute(str(pairs), "", "auto", "all", 10, 0, 0)


def test_weights_moved_after_loading_train_too(pack, folder_paths):
    """A weight made in inference mode and moved outside it (as ComfyUI moves a model to the GPU) no longer
    reports is_inference() but still cannot be saved for backward; the swap covers it (seen first on an H100)."""
    glue = _module(pack, "nodes.training_model")
    with torch.inference_mode():
        layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    layer.to(torch.float64)  # Module._apply assigns .data, as a device move does
    assert not layer[0].weight.is_inference()
    originals = [p for p in layer.parameters()]
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="version counter"):
        layer(x).square().sum().backward()
    with glue.autograd_safe_weights(layer) as swapped:
        layer(x).square().sum().backward()
        assert swapped == 4 and all(a.data_ptr() == b.data_ptr() for a, b in zip(layer.parameters(), originals))
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(a is b for a, b in zip(layer.parameters(), originals)), "the originals are back"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_another_precision_computes_in_it_and_leaves_the_model_as_it_was(pack, folder_paths, tiny_setup, precision,
                                                                          monkeypatch):
    """precision bf16 / fp16 on an fp32-loaded model: ComfyUI casts each layer on the fly (set_model_compute_dtype on
    a clone), fp16 with loss scaling; the graph's model keeps its fp32 weights and predicts exactly as before."""
    _, components, tokenizer, pairs, profiles = tiny_setup
    run = _module(pack, "nodes.training_run")
    backends = []

    class RecordedBackend(run.LocalBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            backends.append(self)

    monkeypatch.setattr(run, "LocalBackend", RecordedBackend)
    graph = _graph(components, tokenizer)
    before = _prediction(graph[0])
    dataset = _dataset(pack, pairs, profiles)
    settings = run.in_graph_config(dataset, 12 if precision == "fp16" else 2, lr=1e-3, batch=2, precision=precision)
    with torch.inference_mode():
        result = run.train_in_graph(*graph, dataset, settings, encoder="psa-structured-v1")
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history.rows)
    assert (backends[0].scaler is not None) == (precision == "fp16"), "loss scaling exactly for fp16 compute"
    if precision == "fp16":  # the first steps overflow at the initial scale 2^16 and are skipped, as in Accelerate
        assert backends[0].scaler.get_scale() < 2.0 ** 16
        assert any(math.isfinite(row["grad_norm"]) for row in result.history.rows), "every step was skipped"
    assert any((w != 0).any() for w in result.adapter.value_weights), "the adapter did not train"
    assert all(p.dtype == torch.float32 for p in graph[0].model.diffusion_model.parameters())
    assert torch.equal(_prediction(graph[0]), before)
    with pytest.raises(psa_core.training.errors.TrainingError, match="allowed: auto, fp32"):
        run.in_graph_config(dataset, 1, precision="fp64")


@pytest.mark.parametrize("family_name", ["sd15", "sdxl"])
def test_training_patch_reaches_every_layer_and_each_one_counts(pack, folder_paths, family_name):
    """The training predictor's attn2 patch fires in all 16 / 70 layers, and the values of each layer change the
    prediction (so none is silently skipped, as a wrong block key would be)."""
    glue = _module(pack, "nodes.training_model")
    run = _module(pack, "nodes.training_run")
    components = build_components(ModelSpec.tiny(family_name), seed=5)
    with torch.inference_mode():
        model = comfy_unet(components)
    family = run.model_family(model)
    assert family.num_layers == (16 if family_name == "sd15" else 70)
    predict = glue.ComfyPSAPredictor(model, family)
    predict.hits = set()
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 8, 8, generator=generator)
    conditioning = {"encoder_hidden_states": torch.randn(1, 77, family.context_dim, generator=generator)}
    if family_name == "sdxl":
        conditioning.update(text_embeds=torch.randn(1, components.spec.pooled_dim, generator=generator),
                            time_ids=torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]))
    zeros = [torch.zeros(1, layer.hidden) for layer in family.layers]
    timesteps = torch.tensor([400])
    with torch.no_grad():
        base = predict(noisy, timesteps, conditioning, None)
        assert torch.equal(predict(noisy, timesteps, conditioning, zeros), base)
        assert predict.hits == {layer.comfy_key for layer in family.layers}
        for layer in family.layers:
            values = list(zeros)
            values[layer.index] = torch.full((1, layer.hidden), 0.5)
            assert not torch.equal(predict(noisy, timesteps, conditioning, values), base), layer.comfy_key
