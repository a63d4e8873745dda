"""The profile nodes in a real in-process ComfyUI: widgets and presets, JSON, encoding with the cache and
ComfyUI's memory management, saving, per-image batches through PSAApply, and the comparison workflow."""
from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest
import tiny_models as tm
import torch
from comfy_env import REPO, registered_nodes
from numerics import assert_same_after_float32_rounding
from safetensors.torch import save_file
from tiny_llm import build_tiny_llm
from transformers.models.qwen2 import modeling_qwen2
import psa_core
import psa_core.encoders
import psa_core.profile

NODE_IDS = ("PSAUserProfile", "PSAProfileFromJSON", "PSAEncodeProfile", "PSASaveEmbedding", "PSAEmbeddingBatch")
STRUCTURED = "psa-structured-v1"


def nodes(pack):
    return pack.nodes.nodes_profile


def out(node_output):
    return node_output.result


def profile_widgets(preset="custom", age=35, age_group="auto", gender="male", religion="None",
                    physical_condition="healthy", mental_condition="healthy", banned_from="toggles", **toggles):
    values = {"preset": preset, "age": age, "age_group": age_group, "gender": gender, "religion": religion,
              "physical_condition": physical_condition, "mental_condition": mental_condition,
              "banned_from": banned_from}
    names = ("ban_hate", "ban_harassment", "ban_violence", "ban_self_harm", "ban_sexuality", "ban_shocking",
             "ban_propaganda")
    values.update({name: toggles.get(name, False) for name in names})
    return values


def test_nodes_are_registered_with_stable_ids(pack, comfy_server):
    """(Their tooltips are checked with every other node's in test_node_docs.py.)"""
    listed = registered_nodes(pack)
    assert set(NODE_IDS) <= set(listed)
    inputs = [i.id for i in listed["PSAUserProfile"].define_schema().inputs]
    assert inputs == ["preset", "age", "age_group", "gender", "religion", "physical_condition", "mental_condition",
                      "banned_from", "ban_hate", "ban_harassment", "ban_violence", "ban_self_harm", "ban_sexuality",
                      "ban_shocking", "ban_propaganda"]
    info = comfy_server.get("/object_info/PSAEncodeProfile")["PSAEncodeProfile"]
    assert info["output"] == ["PSA_EMBEDDING"] and info["input"]["required"]["profile"][0] == "PSA_PROFILE"


def test_user_profile_widgets_toggles_rules_and_presets(pack):
    node = nodes(pack).PSAUserProfile
    profile, text = out(node.execute(**profile_widgets(age=16, religion="Islam", ban_hate=True, ban_self_harm=True)))
    assert profile.banned == ("Hate", "Self-Harm") and profile.age_group == "adolescents"
    assert text == profile.canonical_json()
    suggested, _ = out(node.execute(**profile_widgets(age=16, religion="Islam", banned_from="rule-based suggestion",
                                                      ban_hate=False)))
    assert suggested.banned == ("Hate", "Propaganda", "Self-Harm", "Sexuality", "Violence")
    presets = node.define_schema().inputs[0].options
    assert presets == ["custom", "level_0 (0001001)", "level_1 (0000797)", "level_2 (0000697)", "level_3 (0000002)",
                       "level_4 (0000742)", "level_5 (0000501)"]
    level5, _ = out(node.execute(**profile_widgets(preset="level_5 (0000501)", age=80)))  # widgets ignored
    assert level5.user_id == "0000501" and level5.age == 5 and len(level5.banned) == 7


def test_user_profile_validation_messages(pack):
    node = nodes(pack).PSAUserProfile
    assert node.validate_inputs(preset="custom", age=12, age_group="middle-aged") == (
        "age_group: Age_Group 'middle-aged' covers ages 35-59 but Age is 12; the allowed group for age 12 is "
        "'children'")
    assert "age 150 is out of range; allowed: an integer from 0 to 100" in node.validate_inputs(
        preset="custom", age=150, age_group="auto")
    assert "preset 'level_9' is not allowed; allowed: custom, level_0 (0001001)" in node.validate_inputs(
        preset="level_9", age=30, age_group="auto")
    assert node.validate_inputs(preset="level_1 (0000797)", age=12, age_group="middle-aged") is True
    assert node.validate_inputs(preset="custom", age=40, age_group="middle-aged") is True


def test_profile_from_json_node(pack, reference):
    node = nodes(pack).PSAProfileFromJSON
    default_json = node.define_schema().inputs[0].default
    profile, _ = out(node.execute(default_json, "error"))
    assert profile.to_dict() == psa_core.profile.EVALUATION_USERS["level_3"].to_dict()
    sage = json.dumps({"User_ID": "0000033", "Cluster_ID": "19", "Age": 41, "Age_Group": "middle-aged",
                       "Gender": "female", "Religion": "Buddhism", "Physical_Condition": "hearing impairment",
                       "Mental_Condition": "healthy"})
    assert "no Banned_Categories" in node.validate_inputs(json=sage, missing_bans="error")
    with pytest.raises(psa_core.PSAError, match="no Banned_Categories"):
        node.execute(sage, "error")
    ruled, _ = out(node.execute(sage, "rule-based suggestion"))
    assert ruled.banned == ("Harassment", "Hate", "Propaganda", "Shocking") and ruled.user_id == "0000033"
    message = node.validate_inputs(json='{"Age": 30, "Gender": "male",', missing_bans="error")
    assert message.startswith("json: malformed profile JSON at line 1 column 30")
    assert "unknown category 'Nudity'; allowed: 'Hate'" in node.validate_inputs(
        json=default_json.replace('"Shocking"', '"Nudity"'), missing_bans="error")
    assert "missing_bans 'ignore' is not allowed" in node.validate_inputs(json=default_json, missing_bans="ignore")


@pytest.fixture(scope="module")
def tiny_llm_root(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("models_llm")
    text = (reference / "get_embeds.txt").read_text(encoding="utf-8")
    build_tiny_llm(root / "tiny-qwen2", [text] * 3)
    return root


def encode(pack, profile, encoder="structured", llm="tiny-qwen2", template="get_embeds.txt", precision="float32",
           device="auto", use_cache=True):
    return out(nodes(pack).PSAEncodeProfile.execute(profile, encoder, llm, template, precision, device,
                                                    use_cache))[0]


class Spy:
    """Records calls to a real function and still calls it."""

    def __init__(self, monkeypatch, module, name):
        self.calls = []  # (args, kwargs)
        original = getattr(module, name)

        def spy(*args, **kwargs):
            self.calls.append((args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


def test_encode_llm_through_comfyui_folders_cache_and_memory(pack, register_folders, model_folders, tiny_llm_root, reference,
                                                             tmp_path, monkeypatch):
    """The LLM is loaded through ComfyUI's manager (load_models_gpu with the forward's working memory), kept for the
    next encode node, skipped for cached profiles, and let go once released (tests/test_llm_memory.py covers the
    placements and the manager's unloading)."""
    import comfy.model_management as mm

    memory = pack.nodes.model_memory
    memory.release_kept()
    register_folders({"LLM": tiny_llm_root})
    shutil.copy(reference / "get_embeds.txt", model_folders["psa"] / "get_embeds.txt")
    monkeypatch.setenv("PSA_EMBEDDING_CACHE", str(tmp_path / "cache"))
    built = []
    original_init = modeling_qwen2.Qwen2Model.__init__

    def counting_init(model, *args, **kwargs):
        original_init(model, *args, **kwargs)
        built.append(weakref.ref(model))

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "__init__", counting_init)
    requests = Spy(monkeypatch, mm, "load_models_gpu").calls

    profile = psa_core.profile.EVALUATION_USERS["level_3"]
    first = encode(pack, profile, encoder="llm")
    assert len(built) == 1 and built[0]() is not None  # built once, and kept for the next encode node
    (kept,) = memory.kept_models()
    assert len(requests) == 1 and requests[0][0][0] == [kept.patcher] and requests[0][1]["memory_required"] > 0
    assert kept.patcher in mm.loaded_models()
    second = encode(pack, profile, encoder="llm")
    assert len(built) == 1 and len(requests) == 1  # served from the cache: no model, no memory juggling
    assert torch.equal(second.vectors, first.vectors)
    uncached = encode(pack, profile, encoder="llm", use_cache=False)
    assert len(built) == 1 and len(requests) == 2 and torch.equal(uncached.vectors, first.vectors)  # reused
    direct = psa_core.encoders.LLMEncoder(tiny_llm_root / "tiny-qwen2", psa_core.encoders.load_template(
        reference / "get_embeds.txt"), dtype="float32").encode_uncached([profile])
    assert torch.equal(first.vectors, direct) and first.encoder == "hf-qwen2-32x2" and first.labels == ("0000002",)
    memory.release_kept()
    del kept
    requests.clear()  # (the spy holds the patcher it was given)
    gc.collect()
    assert memory.kept_models() == [] and built[0]() is None  # let go once released


def test_encode_errors_name_what_was_wrong(pack, register_folders, model_folders, tiny_llm_root, monkeypatch):
    register_folders({"LLM": tiny_llm_root})
    profile = psa_core.profile.EVALUATION_USERS["level_0"]
    with pytest.raises(psa_core.PSAError, match=r"LLM folder 'Qwen-missing' not found; looked in: "):
        encode(pack, profile, encoder="llm", llm="Qwen-missing")
    with pytest.raises(psa_core.PSAError, match=r"template file 'nothing.txt' not found; looked in: .*psa"):
        encode(pack, profile, encoder="llm", template="nothing.txt")
    with pytest.raises(psa_core.PSAError, match="encoder 'bert' is not allowed; allowed: llm, structured"):
        encode(pack, profile, encoder="bert")


def test_save_embedding_then_load_it_with_the_loader(pack, model_folders):
    profiles = [psa_core.profile.EVALUATION_USERS[level] for level in ("level_0", "level_5")]
    embedding = out(nodes(pack).PSAEmbeddingBatch.execute(embedding_1=encode(pack, profiles[0]),
                                                          embedding_2=encode(pack, profiles[1])))[0]
    result = nodes(pack).PSASaveEmbedding.execute(embedding, "two users")
    assert (model_folders["psa_embeddings"] / "two users.safetensors").is_file()
    assert "saved 2 x 33 embedding (psa-structured-v1)" in result.ui.as_dict()["text"][0]
    loader = pack.nodes.nodes_inference.PSALoadEmbedding
    assert "two users.safetensors" in loader.define_schema().inputs[0].options
    loaded = out(loader.execute("two users.safetensors"))[0]
    assert torch.equal(loaded.vectors, embedding.vectors) and loaded.encoder == STRUCTURED
    assert loaded.labels == ("0001001", "0000501")
    for bad in ("../escape", "sub/dir", "", ".hidden"):
        assert f"filename {bad!r} is not allowed (" in nodes(pack).PSASaveEmbedding.validate_inputs(filename=bad)
        with pytest.raises(psa_core.PSAError, match="is not allowed"):
            nodes(pack).PSASaveEmbedding.execute(embedding, bad)


def test_embedding_batch_order_gaps_and_mixed_encoders(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("PSA_EMBEDDING_CACHE", str(tmp_path / "cache"))
    levels = psa_core.profile.EVALUATION_USERS
    a, b, c = (encode(pack, levels[k]) for k in ("level_0", "level_2", "level_4"))
    assert not (tmp_path / "cache").exists()  # the structured encoder is never cached
    batch = out(nodes(pack).PSAEmbeddingBatch.execute(embedding_1=a, embedding_2=b, embedding_3=c))[0]
    assert torch.equal(batch.vectors, torch.cat([a.vectors, b.vectors, c.vectors]))
    assert batch.labels == ("0001001", "0000697", "0000742") and batch.encoder == STRUCTURED
    with pytest.raises(psa_core.PSAError, match="embedding_2 not connected but embedding_3 is"):
        nodes(pack).PSAEmbeddingBatch.execute(embedding_1=a, embedding_3=c)
    other = psa_core.UserEmbedding(torch.zeros(1, 33), "hf-qwen2-33x2")
    with pytest.raises(psa_core.CompatibilityError, match="different encoders"):
        nodes(pack).PSAEmbeddingBatch.execute(embedding_1=a, embedding_2=other)


# ---- per-image profiles in one sampling run ----



@pytest.fixture(scope="module")
def sd15(folder_paths):
    """float64 weights (and a float64 adapter below): batched and one-by-one runs then agree to the derived bound of
    tests/numerics.py on any CPU."""
    return tm.build_model("sd15", dtype=torch.float64)


def adapter_file(pack, path, embedding_dim, encoder=None):
    family = psa_core.get_family("sd15", tm.TINY_CHANNELS, tm.TINY_CONTEXT["sd15"])
    nested = tm.random_adapter_tensors(family, embedding_dim)
    flat = {f"{group}.{key}": t.contiguous() for group, tensors in nested.items() for key, t in tensors.items()}
    save_file(flat, str(path), metadata={"psa.encoder": encoder} if encoder else None)
    return psa_core.load_adapter(path)


def one_step(model, noise):
    """ComfyUI's sampling path (both CFG branches), one step: [(cond_denoised, uncond_denoised, x)]."""
    return tm.sample(model, "sd15", steps=1, cfg=5.0, noise=noise, denoised=True)[1]


def batch_equals_separate_runs(pack, model, adapter, embeddings):
    apply = pack.nodes.nodes_inference.PSAApply
    adapter = tm.in_float64(adapter)
    batch = out(nodes(pack).PSAEmbeddingBatch.execute(
        **{f"embedding_{i + 1}": e for i, e in enumerate(embeddings)}))[0]
    noise = torch.randn(len(embeddings), 4, 8, 8, generator=torch.Generator().manual_seed(7))
    (together,) = one_step(out(apply.execute(model, adapter, batch, 1.0, 0.0, 1.0))[0], noise)
    for i, embedding in enumerate(embeddings):
        (alone,) = one_step(out(apply.execute(model, adapter, embedding, 1.0, 0.0, 1.0))[0], noise[i:i + 1])
        for name, batched, single in zip(("cond", "uncond"), together, alone):
            assert_same_after_float32_rounding(batched[i:i + 1], single, alone[2], f"profile {i}, {name}")
    # the profiles really change the images: item 0 under every profile differs
    under_each = [one_step(out(apply.execute(model, adapter, e, 1.0, 0.0, 1.0))[0], noise[:1])[0][0] for e in embeddings]
    assert min((under_each[0] - x).abs().max().item() for x in under_each[1:]) > 1e-3


def test_batch_of_five_profiles_equals_five_separate_runs(pack, sd15, tmp_path, one_thread):
    adapter = adapter_file(pack, tmp_path / "structured.safetensors", 33, STRUCTURED)
    profiles = [nodes(pack).PSAUserProfile.execute(**profile_widgets(preset=name)).result[0]
                for name in ("level_0 (0001001)", "level_1 (0000797)", "level_3 (0000002)", "level_4 (0000742)",
                             "level_5 (0000501)")]
    batch_equals_separate_runs(pack, sd15, adapter, [encode(pack, p) for p in profiles])


def test_published_embeddings_batch_through_psa_apply(pack, sd15, tmp_path, reference, one_thread):
    adapter = adapter_file(pack, tmp_path / "reference_dim.safetensors", 3584)
    published = [psa_core.load_embedding(reference / "embeddings" / f"{i}.npy") for i in ("0000001", "0000002")]
    assert all(e.dim == 3584 and e.encoder is None for e in published)
    batch_equals_separate_runs(pack, sd15, adapter, published)


def test_encoder_adapter_mismatch_stops_psa_apply(pack, sd15, tmp_path):
    apply = pack.nodes.nodes_inference.PSAApply
    structured_adapter = adapter_file(pack, tmp_path / "structured.safetensors", 33, STRUCTURED)
    wrong_encoder = psa_core.UserEmbedding(torch.zeros(1, 33), "hf-qwen2-33x2")
    with pytest.raises(psa_core.CompatibilityError,
                       match="made by encoder 'hf-qwen2-33x2' but adapter 'structured.safetensors' was trained with "
                             "'psa-structured-v1'; encode the profile with 'psa-structured-v1'"):
        apply.execute(sd15, structured_adapter, wrong_encoder, 1.0, 0.0, 1.0)
    reference_adapter = adapter_file(pack, tmp_path / "published_like.safetensors", 3584)
    structured = encode(pack, psa_core.profile.EVALUATION_USERS["level_1"])
    with pytest.raises(psa_core.CompatibilityError,
                       match=r"embedding has 33 dimensions but adapter 'published_like.safetensors' expects 3584 "
                             r"\(encoder qwen2.5-7b-instruct\)"):
        apply.execute(sd15, reference_adapter, structured, 1.0, 0.0, 1.0)


# ---- the comparison workflow ----

def test_comparison_workflow_matches_the_schemas(pack):
    workflow = json.loads((REPO / "workflows" / "psa_profile_comparison.json").read_text())
    assert workflow["version"] == 0.4
    by_id = {node["id"]: node for node in workflow["nodes"]}
    profiles = [n for n in workflow["nodes"] if n["type"] == "PSAUserProfile"]
    presets = [n["widgets_values"][0] for n in profiles]
    assert len(profiles) == 5
    bans = [len(nodes(pack).PSAUserProfile.execute(**profile_widgets(preset=p)).result[0].banned) for p in presets]
    assert bans == sorted(bans) and bans[0] == 0 and bans[-1] == 7  # permissive to restrictive
    ours = {cls.define_schema().node_id: cls.define_schema() for cls in nodes(pack).NODES}
    ours.update({cls.define_schema().node_id: cls.define_schema() for cls in pack.nodes.nodes_inference.NODES})
    for node in workflow["nodes"]:
        schema = ours.get(node["type"])
        if schema is None:
            continue
        widgets = [i for i in schema.inputs if i.get_io_type() in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        assert len(node["widgets_values"]) == len(widgets), node["type"]
        for spec, value in zip(widgets, node["widgets_values"]):
            if spec.get_io_type() == "COMBO" and node["type"] != "PSALoadAdapter":  # (a file list)
                assert value in spec.options, (node["type"], spec.id, value)
        sockets = [i.id for i in schema.inputs if i.get_io_type() not in ("INT", "FLOAT", "STRING", "BOOLEAN",
                                                                             "COMBO")]
        assert [i["name"] for i in node["inputs"]] == sockets, node["type"]
    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        assert by_id[source]["outputs"][slot]["type"] == kind
        assert by_id[target]["inputs"][target_slot]["type"] == kind and by_id[target]["inputs"][target_slot][
            "link"] == link_id
    latent = next(n for n in workflow["nodes"] if n["type"] == "EmptyLatentImage")
    assert latent["widgets_values"][2] == 5  # one batch of five
    assert {n["type"] for n in workflow["nodes"]} >= {"PSAEmbeddingBatch", "PSAApply", "KSampler", "ImageGrid",
                                                      "LatentBatchSeedBehavior"}
