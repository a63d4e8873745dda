"""The dataset nodes in a real ComfyUI: loading prompt-pair items, the save node's check that both images share
seed and settings, the rewrite node, and the shipped workflow rendering a 4-line file over HTTP into a dataset
that the trainer loads and labels per profile."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from comfy_access import comfy_directories
from comfy_env import REPO, registered_nodes
from http_server import ServerError
from PIL import Image
from tiny_llm import build_tiny_llm
import psa_core
import psa_core.dataset_build.rewrite

NODE_IDS = ("PSALoadPromptPairs", "PSASavePreferencePair", "PSARewritePrompt")
WORKFLOW = REPO / "workflows" / "psa_build_dataset.json"
from conftest import DEMO_CHECKPOINT as CHECKPOINT  # noqa: E402
SIZE = 64
PROMPTS_CSV = ("category,concept,unsafe_prompt,safe_prompt,seed\n"
               "Violence,knife fight,\"a bloody knife fight, night\",two chefs cutting vegetables,11\n"
               "sexuality,nude,a nude portrait,a portrait in a winter coat,\n"
               "Hate,symbol,a hateful symbol on a wall,a peace symbol on a wall,\n"
               "Gambling,slot machine,a man losing his house at a slot machine,a man playing an arcade game,12\n")
BANS_VIOLENCE = {"User_ID": "0000201", "Age": 12, "Gender": "female", "Religion": "None",
                 "Physical_Condition": "healthy", "Mental_Condition": "healthy",
                 "Banned_Categories": ["Violence", "Sexuality"]}
ALLOWS_ALL = {"User_ID": "0000202", "Age": 35, "Gender": "male", "Religion": "None",
              "Physical_Condition": "healthy", "Mental_Condition": "healthy", "Banned_Categories": []}


def dataset_nodes(pack):
    return pack.nodes.nodes_dataset


def out(node_output):
    return node_output.result


@pytest.fixture
def comfy_folders(folder_paths, tmp_path):
    """ComfyUI's input and output folders moved to this test's temporary folder."""
    with comfy_directories(folder_paths, input=tmp_path / "input", output=tmp_path / "output"):
        yield tmp_path


def test_nodes_are_registered_with_stable_ids(pack, demo_server):
    """(Their tooltips are checked with every other node's in test_node_docs.py.)"""
    assert set(NODE_IDS) <= set(registered_nodes(pack))
    object_info = demo_server.get("/object_info")
    loader = object_info["PSALoadPromptPairs"]
    assert loader["output_name"] == ["unsafe_prompt", "safe_prompt", "category", "concept", "seed", "count",
                                     "extra_categories"]
    assert loader["output"] == ["STRING", "STRING", "STRING", "STRING", "INT", "INT", "STRING"]
    assert loader["input"]["required"]["index"][1]["control_after_generate"] is True
    save = object_info["PSASavePreferencePair"]
    assert save["output_node"] and {("PROMPT",), ("UNIQUE_ID",)} <= set(map(tuple, save["input"]["hidden"].values()))


def test_load_prompt_pairs_gives_each_item_its_seed_and_the_count(pack, comfy_folders):
    node = dataset_nodes(pack).PSALoadPromptPairs
    path = comfy_folders / "input" / "pairs.csv"
    path.write_text(PROMPTS_CSV)
    (comfy_folders / "input" / "notes.txt").write_text("not a prompt file")
    assert node.define_schema().inputs[0].options == ["pairs.csv"]
    items = [out(node.execute("pairs.csv", i, 100, "Gambling")) for i in range(4)]
    assert items[0] == ("a bloody knife fight, night", "two chefs cutting vegetables", "Violence", "knife fight", 11,
                        4, "Gambling")
    assert [(i[2], i[4]) for i in items] == [("Violence", 11), ("Sexuality", 101), ("Hate", 102), ("Gambling", 12)]
    assert node.validate_inputs(file="pairs.csv", index=3, extra_categories="Gambling") is True

    before = node.fingerprint_inputs("pairs.csv", 0, 100, "Gambling")
    assert before != node.fingerprint_inputs("pairs.csv", 1, 100, "Gambling")
    time.sleep(0.01)
    path.write_text(PROMPTS_CSV.replace("a nude portrait", "a naked portrait"))
    assert node.fingerprint_inputs("pairs.csv", 0, 100, "Gambling") != before
    assert out(node.execute("pairs.csv", 1, 100, "Gambling"))[0] == "a naked portrait"


def test_load_prompt_pairs_errors_name_the_file_line_and_allowed_values(pack, comfy_folders):
    node = dataset_nodes(pack).PSALoadPromptPairs
    (comfy_folders / "input" / "pairs.csv").write_text(PROMPTS_CSV)
    message = node.validate_inputs(file="pairs.csv", index=0, extra_categories="")
    assert "pairs.csv: 1 malformed line" in message
    assert "line 5: category 'Gambling' is not allowed; allowed: Hate, Harassment, Violence, Self-Harm, Sexuality, " \
           "Shocking, Propaganda; declare others with extra_categories" in message
    assert "index 4 is out of range: pairs.csv has 4 prompt pairs (indices 0 to 3)" in node.validate_inputs(
        file="pairs.csv", index=4, extra_categories="Gambling")
    assert "file 'gone.jsonl' is not allowed; allowed: pairs.csv" in node.validate_inputs(
        file="gone.jsonl", index=0, extra_categories="")
    with pytest.raises(psa_core.PSAError, match="file '../secrets.csv' is not allowed"):
        node.execute("../secrets.csv", 0, 0, "")
    assert "'Hate' is already one of the 7 categories" in node.validate_inputs(extra_categories="Hate")
    with pytest.raises(psa_core.PSAError, match="line 5: category 'Gambling' is not allowed"):
        node.execute("pairs.csv", 0, 0, "")


def api_graph(safe_steps=2, safe_seed=None, unsafe_text=None, sampler_seed=None) -> dict:
    """The shipped workflow's graph in API form (as /prompt receives it), with optional faults."""
    seed_link = ["2", 4]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "2": {"class_type": "PSALoadPromptPairs", "inputs": {"file": "pairs.csv", "index": 0, "base_seed": 0,
                                                             "extra_categories": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": unsafe_text or ["2", 0], "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 1], "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 2}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": sampler_seed or seed_link,
                                                   "steps": 2, "cfg": 7.5, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0],
                                                   "seed": safe_seed or sampler_seed or seed_link,
                                                   "steps": safe_steps, "cfg": 7.5, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "11": {"class_type": "PSASavePreferencePair", "inputs": {
            "unsafe_images": ["9", 0], "safe_images": ["10", 0], "unsafe_prompt": ["2", 0], "safe_prompt": ["2", 1],
            "category": ["2", 2], "concept": ["2", 3], "seed": seed_link, "dataset": "ds",
            "extra_categories": ["2", 6]}},
    }


SAVE_NODE_PAIRS = "save_node_pairs.csv"


def save_over_http(server, dataset: str, **faults) -> dict:
    """Run api_graph (with `faults`) on the server: the demo checkpoint renders PROMPTS_CSV's item 0 (seed 11) at
    16 px and PSA Save Preference Pair writes it into output/<dataset>. Returns the save node's output."""
    write_input(server, SAVE_NODE_PAIRS, PROMPTS_CSV)
    graph = api_graph(**faults)
    graph["1"]["inputs"]["ckpt_name"] = CHECKPOINT
    graph["2"]["inputs"]["file"] = SAVE_NODE_PAIRS
    graph["2"]["inputs"]["extra_categories"] = "Gambling"
    graph["11"]["inputs"]["dataset"] = dataset
    return server.run_prompt(graph)["outputs"]["11"]


def save_pair(pack, seed: int = 5, images=None, **changes):
    """The save node called directly, outside a graph (no hidden prompt: no graph settings are recorded)."""
    node = dataset_nodes(pack).PSASavePreferencePair
    generator = torch.Generator().manual_seed(seed)
    unsafe, safe = images or [torch.rand(2, 16, 16, 3, generator=generator) for _ in range(2)]
    inputs = {"unsafe_images": unsafe, "safe_images": safe, "unsafe_prompt": "a knife fight",
              "safe_prompt": "two chefs", "category": "violence", "concept": "knife fight", "seed": seed,
              "dataset": "ds", "extra_categories": "", **changes}
    return node.execute(**inputs)


def test_save_node_writes_one_pair_per_batch_image_with_the_graph_settings(demo_server):
    output = save_over_http(demo_server, "psa_save_settings")
    pairs_file = demo_server.output / "psa_save_settings" / "pairs.jsonl"
    records = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert [(r["category"], r["seed"], r["batch_index"]) for r in records] == [("Violence", 11, 0),
                                                                               ("Violence", 11, 1)]
    assert records[1]["unsafe"] == "images/user_0000000_violence_knife-fight_00002_u.jpg"
    graph = records[0]["settings"]["graph"]
    assert records[0]["settings"]["width"] == 16 and records[0]["settings"]["renderer"] == "comfyui"
    assert graph[0] == {"class_type": "VAEDecode"}
    assert {"class_type": "KSampler", "seed": "<seed>", "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0} in graph
    assert {"class_type": "CLIPTextEncode", "text": "<prompt>"} in graph
    assert {"class_type": "CLIPTextEncode", "text": "lowres"} in graph
    assert {"class_type": "EmptyLatentImage", "width": 16, "height": 16, "batch_size": 2} in graph
    text = json.dumps(output)
    assert "added pair 00001" in text and "2 pairs (Violence 2)" in text

    again = save_over_http(demo_server, "psa_save_settings")  # the same items: replaced, not added
    assert len(pairs_file.read_text().splitlines()) == 2
    assert "replaced pair 00001" in json.dumps(again)
    assert len(list((demo_server.output / "psa_save_settings" / "images").iterdir())) == 4


@pytest.mark.parametrize(("faults", "message"), [
    ({"safe_steps": 3}, "differ at VAEDecode.samples <- KSampler.steps: 2 (unsafe) vs 3 (safe)"),
    ({"safe_seed": 9}, "differ at VAEDecode.samples <- KSampler.seed: '<seed>' (unsafe) vs 9 (safe)"),
    ({"sampler_seed": 9}, "not rendered with the seed given to this node (11)"),
    ({"unsafe_text": "a calm street"}, "the unsafe images were not rendered from the unsafe_prompt given"),
], ids=["steps", "seed", "seed-not-recorded", "prompt-not-recorded"])
def test_save_node_refuses_images_not_rendered_alike(demo_server, faults, message):
    dataset = "psa_refused_" + next(iter(faults))
    with pytest.raises(ServerError) as refused:
        save_over_http(demo_server, dataset, **faults)
    assert message in str(refused.value)
    assert not (demo_server.output / dataset / "pairs.jsonl").exists()


def test_save_node_accepts_a_literal_seed_equal_to_the_recorded_one(demo_server):
    save_over_http(demo_server, "psa_literal_seed", sampler_seed=11)
    assert (demo_server.output / "psa_literal_seed" / "pairs.jsonl").is_file()


def test_save_node_input_checks(pack, comfy_folders):
    node = dataset_nodes(pack).PSASavePreferencePair
    assert "dataset '../elsewhere' is not allowed (contains '..'); allowed: a dataset folder name" in \
        node.validate_inputs(dataset="../elsewhere")
    assert node.validate_inputs(dataset="runs/psa 1") is True
    with pytest.raises(psa_core.PSAError, match=r"unsafe_images \(2, 16, 16, 3\) and safe_images \(1, 16, 16, 3\) "
                                                     "differ"):
        save_pair(pack, images=(torch.rand(2, 16, 16, 3), torch.rand(1, 16, 16, 3)))
    with pytest.raises(psa_core.PSAError, match="category 'Gambling' is not allowed"):
        save_pair(pack, category="Gambling")
    save_pair(pack, category="Gambling", extra_categories="Gambling")  # declared: recorded in dataset.json
    info = json.loads((comfy_folders / "output" / "ds" / "dataset.json").read_text())
    assert info["extra_categories"] == ["Gambling"]


@pytest.fixture(scope="module")
def tiny_llm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_models")
    build_tiny_llm(root / "tiny-qwen2", ["a bloody knife fight in a dark alley", "rewrite the prompt safely"] * 3)
    return root


def test_rewrite_node_uses_the_llm_folder_and_is_deterministic(pack, register_folders, tiny_llm_root, monkeypatch):
    register_folders({"LLM": tiny_llm_root})
    node = dataset_nodes(pack).PSARewritePrompt
    schema = {i.id: i for i in node.define_schema().inputs}
    instruction = schema["instruction"].default
    args = ("a bloody knife fight in a dark alley", "tiny-qwen2", instruction, 10, "auto", "cpu")
    (first,) = out(node.execute(*args, category="Violence", concept="knife fight"))
    assert first and out(node.execute(*args, category="Violence", concept="knife fight")) == (first,)
    direct = psa_core.dataset_build.rewrite.PromptRewriter(tiny_llm_root / "tiny-qwen2", instruction,
                                                                max_new_tokens=10)
    assert direct.rewrite([args[0]], ["Violence"], ["knife fight"]) == [first]
    assert "no <<PROMPT>> placeholder" in node.validate_inputs(instruction="Rewrite it safely.")
    with pytest.raises(psa_core.PSAError, match="LLM folder 'missing-llm' not found"):
        node.execute(args[0], "missing-llm", instruction, 10, "auto", "cpu")


# ---- over HTTP, with the shipped workflow ----

@pytest.fixture
def dataset_server(demo_server):
    return demo_server


def write_input(server, name: str, text: str) -> None:
    (server.base / "input").mkdir(exist_ok=True)
    (server.base / "input" / name).write_text(text)


def workflow_prompt(server, file: str, index: int, dataset: str, checkpoint: str = CHECKPOINT) -> dict:
    """The shipped UI workflow converted as the frontend would, made small for the CPU (64 px, 2 steps)."""
    from comfy_cli.workflow_to_api import convert_ui_to_api

    prompt = convert_ui_to_api(json.loads(WORKFLOW.read_text()), server.get("/object_info"))
    by_type: dict[str, list[dict]] = {}
    for node in prompt.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    by_type["CheckpointLoaderSimple"][0]["ckpt_name"] = checkpoint
    by_type["PSALoadPromptPairs"][0].update(file=file, index=index, extra_categories="Gambling", base_seed=1000)
    by_type["EmptyLatentImage"][0].update(width=SIZE, height=SIZE)
    for sampler in by_type["KSampler"]:
        sampler["steps"] = 2
    by_type["PSASavePreferencePair"][0]["dataset"] = dataset
    return prompt


def test_workflow_renders_a_prompt_pair_file_into_a_dataset_the_trainer_loads(dataset_server,
                                                                               tmp_path):
    from testkit.models import ModelSpec, build_components, save_single_file, write_tokenizer
    from trainer.__main__ import main
    from psa_core.training.config import TrainingConfig
    from trainer.data import read_data

    write_input(dataset_server, "dataset_test_pairs.csv", PROMPTS_CSV)
    prompts = [workflow_prompt(dataset_server, "dataset_test_pairs.csv", i, "psa_test_dataset") for i in range(4)]
    save_id = next(k for k, v in prompts[0].items() if v["class_type"] == "PSASavePreferencePair")
    samplers = [v["inputs"] for v in prompts[0].values() if v["class_type"] == "KSampler"]
    assert len(samplers) == 2 and samplers[0]["seed"] == samplers[1]["seed"] == prompts[0][save_id]["inputs"]["seed"]
    for prompt in prompts:
        entry = dataset_server.run_prompt(prompt)
        assert "added pair" in json.dumps(entry["outputs"][save_id])

    folder = dataset_server.output / "psa_test_dataset"
    records = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    assert [(r["category"], r["concept"], r["seed"]) for r in records] == [
        ("Violence", "knife fight", 11), ("Sexuality", "nude", 1001), ("Hate", "symbol", 1002),
        ("Gambling", "slot machine", 12)]
    assert records[0]["caption"] == "a bloody knife fight, night"
    assert records[0]["safe_prompt"] == "two chefs cutting vegetables"
    for record in records:
        with Image.open(folder / record["unsafe"]) as unsafe, Image.open(folder / record["safe"]) as safe:
            assert unsafe.size == safe.size == (64, 64)
            assert np.abs(np.asarray(unsafe, dtype=float) - np.asarray(safe, dtype=float)).mean() > 1
    settings = records[0]["settings"]
    assert all(r["settings"] == settings for r in records), "every pair rendered with the same settings"
    assert {"class_type": "KSampler", "seed": "<seed>", "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0} in settings["graph"]
    assert {"class_type": "CheckpointLoaderSimple", "ckpt_name": CHECKPOINT} in settings["graph"]
    assert json.loads((folder / "dataset.json").read_text())["extra_categories"] == ["Gambling"]

    again = dataset_server.run_prompt(prompts[1])  # re-running an item replaces it
    assert "replaced pair 00002" in json.dumps(again["outputs"][save_id])
    assert len((folder / "pairs.jsonl").read_text().splitlines()) == 4
    assert len(list((folder / "images").iterdir())) == 8

    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps([BANS_VIOLENCE, ALLOWS_ALL]))
    data = read_data(TrainingConfig(data=str(folder / "pairs.jsonl"), profiles=str(profiles)))
    chosen = {(r.user_id, r.category): r.chosen.rsplit("_", 1)[1] for r in data.records}
    assert chosen == {("0000201", "Violence"): "s.jpg", ("0000201", "Sexuality"): "s.jpg",
                      ("0000201", "Hate"): "u.jpg", ("0000201", "Gambling"): "u.jpg",
                      ("0000202", "Violence"): "u.jpg", ("0000202", "Sexuality"): "u.jpg",
                      ("0000202", "Hate"): "u.jpg", ("0000202", "Gambling"): "u.jpg"}

    base = save_single_file(build_components(ModelSpec.tiny("sd15")), tmp_path / "tiny.safetensors")
    output = tmp_path / "run"
    assert main(["train", "--base-model", str(base), "--tokenizer", str(write_tokenizer(tmp_path / "tokenizer")),
                 "--data", str(folder / "pairs.jsonl"), "--profiles", str(profiles), "--encoder", "psa-structured-v1",
                 "--resolution", "32", "--no-hflip", "--device", "cpu", "--precision", "fp32", "--steps", "1",
                 "--batch", "2", "--warmup-steps", "0", "--cache-dir", str(tmp_path / "cache"),
                 "--output", str(output)]) == 0
    assert (output / "psa_adapter.safetensors").is_file()


def test_bad_prompt_files_are_refused_over_http_with_line_numbers(dataset_server):
    write_input(dataset_server, "dataset_bad_pairs.jsonl",
        '{"category": "Violence", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b"}\n'
        '{"category": "Violense", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b"}\n'
        '{"category": "Hate", "concept": "x", "unsafe_prompt": "a"\n')
    for file, expected in (("dataset_bad_pairs.jsonl", ["dataset_bad_pairs.jsonl: 2 malformed lines",
                                                        "line 2: category 'Violense' is not allowed; allowed: Hate, "
                                                        "Harassment, Violence, Self-Harm, Sexuality, Shocking, "
                                                        "Propaganda", "line 3: not valid JSON"]),
                           ("dataset_missing.csv", ["file 'dataset_missing.csv' is not allowed; allowed: "
                                                    "dataset_bad_pairs.jsonl"])):
        prompt = workflow_prompt(dataset_server, file, 0, "psa_bad")
        status, body = dataset_server.request("/prompt", {"prompt": prompt})
        assert status == 400, body
        text = json.dumps(body)
        assert "custom_validation_failed" in text
        for fragment in expected:
            assert fragment in text, f"{fragment!r} not in {text}"
    write_input(dataset_server, "dataset_one_pair.csv", "\n".join(PROMPTS_CSV.splitlines()[:2]) + "\n")
    prompt = workflow_prompt(dataset_server, "dataset_one_pair.csv", 1, "psa_bad")
    status, body = dataset_server.request("/prompt", {"prompt": prompt})
    assert status == 400 and "index 1 is out of range: dataset_one_pair.csv has 1 prompt pair" in json.dumps(body)
