"""The trainer's command line end to end on tiny SD1.5- and SDXL-layout single-file checkpoints (and a diffusers
folder): config file and flag overrides, the saved adapter (its metadata, the reference loader layout, the
pack's PSALoadAdapter node), the log and plot, and stopping on a non-finite loss."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from psa_core.adapter_file import load_adapter, reference_state_dicts
from psa_core.encoders.structured import STRUCTURED_ENCODER
from psa_core.training.errors import TrainingError
from testkit.models import (
    ModelSpec,
    build_components,
    save_diffusers_folder,
    save_single_file,
    write_tokenizer,
)
from testkit.preference_data import (
    ALLOWS_CATEGORY,
    BANS_CATEGORY,
    write_pairs,
    write_profiles,
)
from trainer.__main__ import EXIT_BAD_INPUT, EXIT_NON_FINITE, main
from trainer.config import parse_train_args


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    sd15 = build_components(ModelSpec.tiny("sd15"), seed=11)
    return {"root": root, "sd15_components": sd15,
            "sd15": save_single_file(sd15, root / "tiny_sd15.safetensors"),
            "sdxl": save_single_file(build_components(ModelSpec.tiny("sdxl"), seed=12), root / "tiny_sdxl.safetensors"),
            "tokenizer": write_tokenizer(root / "tokenizer"),
            "pairs": write_pairs(root / "data", 6, size=32), "profiles": write_profiles(root / "data")}


def pairs_args(ws, output, *extra):
    return ["train", "--base-model", str(ws["sd15"]), "--tokenizer", str(ws["tokenizer"]), "--data", str(ws["pairs"]),
            "--profiles", str(ws["profiles"]), "--encoder", STRUCTURED_ENCODER, "--output", str(output),
            "--resolution", "32", "--batch", "2", "--device", "cpu", "--precision", "fp32", *extra]


def reference_modules(family, embedding_dim):
    """Modules shaped like the reference's saved state: user_proj (proj + norm) and the PSA processors."""
    class Processor(torch.nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.to_k_user = torch.nn.ModuleList([torch.nn.Linear(family.context_dim, hidden, bias=False)])
            self.to_v_user = torch.nn.ModuleList([torch.nn.Linear(family.context_dim, hidden, bias=False)])

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(embedding_dim, family.context_dim)
            self.norm = torch.nn.LayerNorm(family.context_dim)

    return Projection(), torch.nn.ModuleList(Processor(layer.hidden) for layer in family.layers)


def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("base-model: model.safetensors\ndata: data\noutput: out\nsteps: 7\nlr: 1e-4\n"
                      "gradient_checkpointing: true\nhflip: false\n")
    parsed = parse_train_args(["train", "--config", str(config), "--steps", "9", "--hflip"])
    assert (parsed.base_model, parsed.steps, parsed.lr, parsed.gradient_checkpointing, parsed.hflip) == \
        ("model.safetensors", 9, 1e-4, True, True)
    (tmp_path / "run.json").write_text(json.dumps({"base_model": "m", "data": "d", "output": "o", "batch": 3}))
    assert parse_train_args(["train", "--config", str(tmp_path / "run.json")]).batch == 3
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(TrainingError, match="unknown setting 'learning_rate'; allowed: accumulation, .*base-model"):
        parse_train_args(["train", "--config", str(tmp_path / "bad.json")])
    with pytest.raises(TrainingError, match="--base-model is required"):
        parse_train_args(["train", "--data", "d", "--output", "o"])
    with pytest.raises(TrainingError, match="--caption-dropout 2.0 is not allowed; allowed: a finite number from 0 to"):
        parse_train_args(["train", "--base-model", "m", "--data", "d", "--output", "o", "--caption-dropout", "2"])
    assert main(["train", "--data", "d", "--output", "o"]) == EXIT_BAD_INPUT


def test_sd15_single_file_trains_end_to_end_and_the_adapter_loads_everywhere(workspace, tmp_path, pack,
                                                                              model_folders):
    output = tmp_path / "run"
    assert main(pairs_args(workspace, output, "--steps", "3", "--checkpoint-every", "2", "--lr", "1e-3",
                           "--warmup-steps", "0", "--gradient-checkpointing", "--adam-epsilon", "1e-7")) == 0
    adapter_path = output / "psa_adapter.safetensors"
    rows = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    # step 1: the value projections start at zero, so policy = reference, inside = 0 and the loss is log 2 rounded
    # to float32 (within 2⁻²⁴·log 2 < 1e-7)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-7)
    assert {"implicit_accuracy", "reward_margin", "lr", "grad_norm", "pairs_per_second"} <= set(rows[0])
    with Image.open(output / "train_plot.png") as plot:
        assert plot.format == "PNG" and plot.size == (900, 560)
    assert [p.name for p in (output / "checkpoints").iterdir()] == ["checkpoint-0000002"]
    optimizer = torch.load(output / "checkpoints" / "checkpoint-0000002" / "optimizer.pt", weights_only=True)
    assert optimizer["param_groups"][0]["eps"] == 1e-7  # a TrainingConfig field, flag to optimizer

    loaded = load_adapter(adapter_path)
    assert loaded.family.name == "sd15" and loaded.family.num_layers == 16 and loaded.embedding_dim == 33
    assert loaded.encoder == STRUCTURED_ENCODER
    with safe_open(str(adapter_path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["psa.family"] == "sd15" and metadata["psa.encoder"] == STRUCTURED_ENCODER
    assert metadata["psa.embedding_dim"] == "33" and metadata["psa.training_steps"] == "3"
    assert metadata["psa.base_model_sha256"] == hashlib.sha256(workspace["sd15"].read_bytes()).hexdigest()
    assert json.loads(metadata["psa.training_config"])["lr"] == 1e-3
    summary = json.loads(metadata["psa.training_data"])
    assert summary["records"] == 12 and summary["users"] == 2 and summary["categories"] == {"Violence": 12}
    assert any(v.abs().max() > 0 for v in loaded.value_weights), "training moved the value weights"

    projection, processors = reference_modules(loaded.family, 33)
    nested = reference_state_dicts(adapter_path)
    projection.load_state_dict(nested["user_proj"], strict=True)
    processors.load_state_dict(nested["psa_adapter"], strict=True)
    for processor, weight in zip(processors, loaded.value_weights):
        assert torch.equal(processor.to_v_user[0].weight, weight)
        assert torch.equal(processor.to_k_user[0].weight, torch.zeros_like(weight))

    shutil.copy(adapter_path, model_folders["psa"] / "trained.safetensors")
    node = pack.nodes.nodes_inference.PSALoadAdapter
    assert "trained.safetensors" in node.define_schema().inputs[0].options
    from_node = node.execute("trained.safetensors").result[0]
    assert from_node.family.name == "sd15" and from_node.embedding_dim == 33
    embedding = torch.randn(2, 33)
    for ours, theirs in zip(loaded.user_values(embedding).per_layer, from_node.user_values(embedding).per_layer):
        assert torch.equal(ours, theirs)


def test_sdxl_single_file_trains_on_sage_data_with_an_embeddings_folder(workspace, tmp_path):
    data = tmp_path / "sage"
    data.mkdir()
    pairs = [json.loads(line) for line in workspace["pairs"].read_text().splitlines()]
    lines = []
    for index, pair in enumerate(pairs[:4]):
        for user in (BANS_CATEGORY, ALLOWS_CATEGORY):
            bans = user is BANS_CATEGORY
            chosen, rejected = (pair["safe"], pair["unsafe"]) if bans else (pair["unsafe"], pair["safe"])
            names = {}
            for role, name in (("chosen", chosen), ("rejected", rejected)):
                suffix = "s" if name == pair["safe"] else "u"
                names[role] = f"user_{user['User_ID']}_violence_square_{index:05d}_{suffix}.png"
                shutil.copy(workspace["pairs"].parent / name, data / names[role])
            lines.append(json.dumps({"file_name": names["chosen"], **names, "caption": pair["caption"],
                                     "user_data": {"User_ID": user["User_ID"], "Age": user["Age"]}}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    for number, user in enumerate((BANS_CATEGORY, ALLOWS_CATEGORY)):
        np.save(embeddings / f"{user['User_ID']}.npy", np.linspace(-1, 1, 24, dtype=np.float32) * (number + 1))
    output = tmp_path / "run"
    assert main(["train", "--base-model", str(workspace["sdxl"]), "--tokenizer", str(workspace["tokenizer"]),
                 "--data", str(data), "--embeddings", str(embeddings), "--encoder", "test-encoder",
                 "--output", str(output), "--resolution", "32", "--batch", "2", "--steps", "2", "--lr", "1e-3",
                 "--warmup-steps", "0", "--device", "cpu", "--precision", "fp32", "--no-hflip"]) == 0
    loaded = load_adapter(output / "psa_adapter.safetensors")
    assert loaded.family.name == "sdxl" and loaded.family.num_layers == 70 and loaded.embedding_dim == 24
    assert loaded.encoder == "test-encoder"
    projection, processors = reference_modules(loaded.family, 24)
    nested = reference_state_dicts(output / "psa_adapter.safetensors")
    projection.load_state_dict(nested["user_proj"], strict=True)
    processors.load_state_dict(nested["psa_adapter"], strict=True)
    rows = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-7) and len(rows) == 2  # as above


def test_a_diffusers_folder_and_its_single_file_train_the_same_adapter(workspace, tmp_path):
    folder = save_diffusers_folder(workspace["sd15_components"], tmp_path / "diffusers")
    adapters = []
    for name, model in (("file", workspace["sd15"]), ("folder", folder)):
        args = pairs_args(workspace, tmp_path / name, "--steps", "2", "--lr", "1e-3", "--warmup-steps", "0",
                          "--cache-dir", str(tmp_path / f"cache-{name}"))
        args[args.index("--base-model") + 1] = str(model)
        assert main(args) == 0
        adapters.append(load_adapter(tmp_path / name / "psa_adapter.safetensors"))
    for key in adapters[0].projection:
        assert torch.equal(adapters[0].projection[key], adapters[1].projection[key])
    for first, second in zip(adapters[0].value_weights, adapters[1].value_weights):
        assert torch.equal(first, second)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(workspace, tmp_path, capsys):
    output = tmp_path / "run"
    code = main(pairs_args(workspace, output, "--steps", "5", "--checkpoint-every", "1", "--optimizer", "sgd",
                           "--lr", "1e30", "--max-grad-norm", "0", "--warmup-steps", "0", "--weight-decay", "0"))
    error = capsys.readouterr().err
    assert code == EXIT_NON_FINITE
    assert "psa-trainer: stopped: the loss became nan at step 2" in error
    assert "checkpoint-0000001 is kept; resume from it with --resume latest" in error
    assert [p.name for p in (output / "checkpoints").iterdir()] == ["checkpoint-0000001"]
    assert not (output / "psa_adapter.safetensors").exists()
