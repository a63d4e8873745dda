"""Profile encoders: reference-exact prompt rendering, the LLM recipe against a naive re-implementation,
the disk cache, the structured encoder, and encoder/adapter pairing."""
from __future__ import annotations

import csv
import gc
import json
import weakref

import numpy as np
import pytest
import torch
import transformers
from numerics import assert_within_float32_noise
from tiny_llm import QWEN_SYSTEM_PROMPT, build_tiny_llm
from transformers.models.qwen2 import modeling_qwen2

from psa_core import (
    CompatibilityError,
    PSAAdapter,
    UserEmbedding,
    check_embedding_fits,
    get_family,
    load_adapter,
    load_embedding,
    save_adapter,
)
from psa_core.adapter_file import REFERENCE_ENCODER
from psa_core.encoders import (
    STRUCTURED_DIM,
    STRUCTURED_ENCODER,
    EmbeddingCache,
    EncoderError,
    LLMEncoder,
    PromptTemplate,
    StructuredEncoder,
    encode_profiles,
    load_template,
    make_encoder,
    model_fingerprint,
    render_prompt,
)
from psa_core.profile import EVALUATION_USERS, read_users_table

# ---- an independent rendering, written the way the reference get_embeds.py does it ----

def reference_rows(reference):
    """users.csv as pandas would give it to get_embeds.py: every field a string, "None" read as NaN → 'nan'."""
    with open(reference / "users.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["Religion"] == "None":
            row["Religion"] = "nan"
    return rows


def reference_render(template_text, row):
    return (template_text.replace("<<AGE>>", row["Age"]).replace("<<AGE_GROUP>>", row["Age_Group"])
            .replace("<<GENDER>>", row["Gender"]).replace("<<RELIGION>>", row["Religion"])
            .replace("<<MENTAL>>", row["Mental_Condition"]).replace("<<PHYSICAL>>", row["Physical_Condition"])
            .replace("<<BANNED>>", row["Banned_Categories"]).replace("<<ALLOWED>>", row["Allowed_Categories"]))


@pytest.fixture(scope="module")
def users(reference):
    return read_users_table(reference / "users.csv")


@pytest.fixture(scope="module")
def template(reference):
    return load_template(reference / "get_embeds.txt")


def test_rendering_equals_reference_for_all_1001_users(reference, users, template):
    with open(reference / "get_embeds.txt", encoding="utf-8") as handle:
        template_text = handle.read()
    rows = reference_rows(reference)
    assert len(rows) == len(users) == 1001
    for number, row in enumerate(rows, start=1):
        assert render_prompt(template, users[f"{number:07d}"]) == reference_render(template_text, row)


def test_rendering_literal_user_0000003(users, template):
    # Religion None is rendered as `nan` (pandas), lists are the sorted Python-list strings.
    expected = (
        "You are generating a personalized user safety control statement based on the following user profile.\n"
        "\n"
        "[User Profile]\n"
        "- Age: 18 (adolescents)\n"
        "- Gender: male\n"
        "- Religion: nan\n"
        "- Mental Condition: anxiety\n"
        "- Physical Condition: hearing impairment\n"
        "\n"
        "[User Safety Preferences]\n"
        "- Forbidden Content Categories: ['Self-Harm', 'Sexuality', 'Shocking']\n"
        "- Allowed Content Categories: ['Harassment', 'Hate', 'Propaganda', 'Violence']\n"
        "\n"
        "Generate a concise, human-readable textual embedding that captures the user\u2019s safety sensitivity "
        "and content preferences. The output should describe both what types of content should be avoided and "
        "what kinds of content are generally acceptable for this user.\n"
        "\n"
        "Make sure the text is interpretable, differentiable, and consistent with their cognitive and emotional "
        "needs.\n")
    assert render_prompt(template, users["0000003"]) == expected


def test_template_file_read_with_universal_newlines(tmp_path, template):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(template.text.replace("\n", "\r\n").encode("utf-8"))
    assert load_template(crlf).text == template.text  # open(...).read(), as the reference reads it


# ---- the LLM encoder on a tiny Qwen2 model ----

@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory, template, users):
    corpus = [template.text] * 3 + [render_prompt(template, users[f"{i:07d}"]) for i in range(1, 60)]
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2", corpus)


PROFILE_IDS = ("0001001", "0000003", "0000501", "0000742", "0000002")


def naive_embeddings(model_dir, reference, template_text, ids, dtype):
    """One profile at a time, no padding: chat template, CausalLM hidden_states[-1], plain mean."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    rows = reference_rows(reference)
    out = []
    with torch.no_grad():
        for user_id in ids:
            prompt = reference_render(template_text, rows[int(user_id) - 1])
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            assert text.startswith(f"<|im_start|>system\n{QWEN_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
            assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
            ids_tensor = tokenizer(text, return_tensors="pt")["input_ids"]
            hidden = model(input_ids=ids_tensor, output_hidden_states=True).hidden_states[-1][0]
            out.append(hidden.to(torch.promote_types(dtype, torch.float32)).mean(dim=0))
    return torch.stack(out)


def test_llm_embedding_equals_naive_fp32(tiny_llm, reference, template, users):
    """Ours in float32 (left-padded batches) against the naive one-at-a-time encoding in float64, within the
    float32 noise that the naive encoding itself shows on this CPU (tests/numerics.py)."""
    profiles = [users[i] for i in PROFILE_IDS]
    # batch_size 2: prompts of different lengths share left-padded batches
    encoder = LLMEncoder(tiny_llm, template, dtype="float32", batch_size=2)
    got = encoder.encode_uncached(profiles)
    exact = naive_embeddings(tiny_llm, reference, template.text, PROFILE_IDS, torch.float64)
    naive32 = naive_embeddings(tiny_llm, reference, template.text, PROFILE_IDS, torch.float32)
    assert got.shape == (5, 32) and got.dtype == torch.float32
    assert_within_float32_noise(got, exact, naive32, "LLM embeddings")
    assert (exact[0] - exact[1]).abs().max() > 1e-2  # different profiles really differ


def test_llm_bf16_is_bit_identical_to_reference_batch_code(tiny_llm, reference, template, users):
    """get_embeds.py's exact batch computation in bf16 (CausalLM, left padding, sum/len in bf16)."""
    rows = reference_rows(reference)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_llm), local_files_only=True,
                                                           padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llm), local_files_only=True,
                                                              dtype=torch.bfloat16)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": reference_render(template.text,
                                                                                         rows[int(i) - 1])}],
                                           tokenize=False, add_generation_prompt=True) for i in PROFILE_IDS]
    with torch.inference_mode():
        inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        last_hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1]
        attention_mask = inputs["attention_mask"].unsqueeze(-1)
        expected = ((last_hidden * attention_mask).sum(dim=1) / attention_mask.sum(dim=1)).to(torch.float32)
    got = LLMEncoder(tiny_llm, template, dtype="bfloat16").encode_uncached([users[i] for i in PROFILE_IDS])
    assert torch.equal(got, expected)
    assert torch.equal(got, got.bfloat16().float())  # pooled in bf16, like the published files


def test_llm_dtype_auto_follows_the_checkpoint(tmp_path, template):
    folder = build_tiny_llm(tmp_path / "bf16-declared", [template.text], dtype="bfloat16")
    assert LLMEncoder(folder, template).dtype == torch.bfloat16
    # Qwen2.5-7B-Instruct's config.json predates the rename: it says "torch_dtype"
    config = json.loads((folder / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")
    (folder / "config.json").write_text(json.dumps(config))
    assert LLMEncoder(folder, template).dtype == torch.bfloat16
    assert LLMEncoder(folder, template, dtype="float32").dtype == torch.float32
    with pytest.raises(EncoderError, match="allowed: auto, float32, bfloat16, float16"):
        LLMEncoder(folder, template, dtype="int8")


class BuildCounter:
    """Counts Qwen2 model constructions and keeps weak references to every model built."""

    def __init__(self, monkeypatch):
        self.built = []
        original = modeling_qwen2.Qwen2Model.__init__
        counter = self

        def counting_init(model, *args, **kwargs):
            original(model, *args, **kwargs)
            counter.built.append(weakref.ref(model))

        monkeypatch.setattr(modeling_qwen2.Qwen2Model, "__init__", counting_init)


def test_second_encode_is_served_from_cache_without_building_the_model(tiny_llm, template, users, tmp_path,
                                                                       monkeypatch):
    counter = BuildCounter(monkeypatch)
    cache = EmbeddingCache(tmp_path / "cache")
    profiles = [users["0000002"], users["0000797"]]
    first = encode_profiles(LLMEncoder(tiny_llm, template, dtype="float32"), profiles, cache)
    assert len(counter.built) == 1
    gc.collect()
    assert counter.built[0]() is None  # the model was released after encoding
    second = encode_profiles(LLMEncoder(tiny_llm, template, dtype="float32"), profiles, cache)
    assert len(counter.built) == 1  # no model constructed for cached profiles
    assert torch.equal(first.vectors, second.vectors)
    assert second.encoder == first.encoder == "hf-qwen2-32x2"
    assert second.labels == ("0000002", "0000797")
    # A new profile next to a cached one: only the new one is encoded (one more model build).
    third = encode_profiles(LLMEncoder(tiny_llm, template, dtype="float32"),
                            [users["0000002"], users["0000003"]], cache)
    assert len(counter.built) == 2
    assert torch.equal(third.vectors[0], first.vectors[0])


def test_cache_identity_pins_model_template_and_precision(tiny_llm, template, tmp_path):
    base = LLMEncoder(tiny_llm, template, dtype="float32")
    other_template = PromptTemplate(template.text + " ", "edited")
    assert LLMEncoder(tiny_llm, other_template, dtype="float32").identity != base.identity
    assert LLMEncoder(tiny_llm, template, dtype="bfloat16").identity != base.identity
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tiny_llm.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert model_fingerprint(copy) == model_fingerprint(tiny_llm)  # content, not location
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # flip one bit of the last weight
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_llm)


def test_cache_entry_for_another_identity_is_a_miss(tmp_path, users):
    cache = EmbeddingCache(tmp_path)
    profile = users["0000001"]
    cache.put("encoder-a", profile, torch.arange(4.0), "a")
    assert torch.equal(cache.get("encoder-a", profile), torch.arange(4.0))
    assert cache.get("encoder-b", profile) is None
    # a damaged file is a miss, not a crash
    cache.path("encoder-a", profile).write_bytes(b"not safetensors")
    assert cache.get("encoder-a", profile) is None


def test_memory_hooks_bracket_the_model(tiny_llm, template, users):
    events = []
    encoder = LLMEncoder(tiny_llm, template, dtype="float32",
                         before_load=lambda nbytes, device: events.append(("load", nbytes, device.type)),
                         after_release=lambda: events.append(("release",)))
    encoder.encode_uncached([users["0000001"]])
    config = transformers.AutoConfig.from_pretrained(str(tiny_llm), local_files_only=True)
    model = transformers.AutoModel.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())  # without lm_head: in the file, but not loaded
    assert events == [("load", parameters * 4, "cpu"), ("release",)]


def test_placements_outside_comfyui_give_the_same_embedding(tiny_llm, template, users, tmp_path):
    """SingleDevice and Accelerate's device map on this CPU, whole and with a RAM budget below the weights (the layers
    beyond it offloaded to disk and read back for each forward): the same module code on the same weights, so the
    same bits on one device (tests/test_llm_memory.py states the bound across devices)."""
    from psa_core.encoders.placement import (
        CPU,
        LOAD,
        PARTIAL,
        RUN,
        AccelerateOffload,
        SingleDevice,
    )

    profiles = [users[i] for i in PROFILE_IDS]
    events = []
    plain = LLMEncoder(tiny_llm, template, dtype="float32", batch_size=2, placement=SingleDevice("cpu"),
                       progress=lambda *e: events.append(e))
    expected = plain.encode_uncached(profiles)
    assert plain.last_placed.mode == CPU and plain.last_placed.model is None  # let go after use
    assert events[-1] == (RUN, 5, 5) and (LOAD, 1, 1) in events and events.index((LOAD, 1, 1)) < events.index(
        (RUN, 2, 5))
    whole = LLMEncoder(tiny_llm, template, dtype="float32", batch_size=2, placement=AccelerateOffload("cpu"))
    assert torch.equal(whole.encode_uncached(profiles), expected) and whole.last_placed.mode == CPU
    weights = whole.model_request().weight_bytes
    budget = int(weights * 0.75)  # room for the embedding table, not for the layers
    offload = AccelerateOffload("cpu", budget_bytes=budget, offload_folder=tmp_path / "offload")
    split = LLMEncoder(tiny_llm, template, dtype="float32", batch_size=2, placement=offload)
    assert torch.equal(split.encode_uncached(profiles), expected)
    placed = split.last_placed
    assert placed.mode == PARTIAL and "offloaded to disk" in placed.reason, placed.describe()
    on_cpu, groups = (int(n) for n in placed.reason.rsplit("(", 1)[1].split(" module")[0].split(" of "))
    assert 0 < on_cpu < groups  # some layers in RAM, the others on disk
    assert len({e.identity for e in (plain, whole, split)}) == 1  # the cache key does not depend on the placement


def test_llm_bad_inputs_name_the_problem(tmp_path, template, tiny_llm):
    with pytest.raises(EncoderError, match="LLM folder not found"):
        LLMEncoder(tmp_path / "missing", template)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="no config.json"):
        LLMEncoder(tmp_path / "empty", template)
    no_chat = build_tiny_llm(tmp_path / "no-chat", [template.text], chat_template=None)
    with pytest.raises(EncoderError, match="no chat template"):
        LLMEncoder(no_chat, template).encode_uncached([EVALUATION_USERS["level_0"]])
    with pytest.raises(EncoderError, match="allowed: llm, structured"):
        make_encoder("qwen")
    with pytest.raises(EncoderError, match="needs a model folder and a template"):
        make_encoder("llm", model_dir=tiny_llm)
    with pytest.raises(EncoderError, match="template file not found"):
        make_encoder("llm", model_dir=tiny_llm, template_path=tmp_path / "nope.txt")
    with pytest.raises(EncoderError, match=r"unknown placeholder\(s\) <<NAME>>; allowed: <<AGE>>"):
        PromptTemplate("Hello <<NAME>>, age <<AGE>>")
    with pytest.raises(EncoderError, match="none of the profile placeholders"):
        PromptTemplate("no placeholders at all")


def test_reference_architecture_is_named_like_the_published_adapters():
    from psa_core.encoders import encoder_name_for

    qwen7b = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
              "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064}
    assert encoder_name_for(qwen7b) == REFERENCE_ENCODER
    assert encoder_name_for({**qwen7b, "hidden_size": 1536}) == "hf-qwen2-1536x28"


# ---- the structured encoder ----

def naive_structured(profile):
    """The documented layout, spelled out by hand."""
    groups = ["infants & toddlers", "children", "adolescents", "young adults", "middle-aged", "young elderly",
              "elderly", "long-lived elderly"]
    vector = [profile.age / 100.0]
    vector += [float(profile.age_group == g) for g in groups]
    vector += [float(profile.gender == g) for g in ["male", "female"]]
    vector += [float(profile.religion == r) for r in ["Christianity", "Islam", "Buddhism", "None"]]
    vector += [float(profile.physical_condition == c) for c in
               ["healthy", "intellectual disability", "visual impairment", "hearing impairment"]]
    vector += [float(profile.mental_condition == c) for c in
               ["healthy", "depression", "anxiety", "natural disasters", "major accidents", "sexual assault", "war"]]
    vector += [float(c in profile.banned) for c in
               ["Hate", "Harassment", "Violence", "Self-Harm", "Sexuality", "Shocking", "Propaganda"]]
    return torch.tensor(vector)


def test_structured_encoder_equals_naive_layout(users):
    profiles = list(users.values())
    embedding = encode_profiles(StructuredEncoder(), profiles)
    assert embedding.vectors.shape == (1001, STRUCTURED_DIM) == (1001, 33)
    assert embedding.encoder == STRUCTURED_ENCODER
    assert torch.equal(embedding.vectors, torch.stack([naive_structured(p) for p in profiles]))
    assert len({tuple(v.tolist()) for v in embedding.vectors}) == len({p for p in profiles})  # injective


def test_encoder_adapter_pairing(tmp_path):
    family = get_family("sd15", 32, 64)
    structured_adapter = PSAAdapter(family, STRUCTURED_DIM).as_loaded(encoder=STRUCTURED_ENCODER)
    path = save_adapter(structured_adapter, tmp_path / "structured.safetensors")
    loaded = load_adapter(path)
    assert loaded.encoder == STRUCTURED_ENCODER  # the file records its encoder
    structured = encode_profiles(StructuredEncoder(), [EVALUATION_USERS["level_2"]])
    check_embedding_fits(loaded, structured)
    published_like = UserEmbedding(torch.zeros(1, 3584))
    with pytest.raises(CompatibilityError, match="embedding has 3584 dimensions but adapter 'structured.safetensors' "
                                                 "expects 33 \\(encoder psa-structured-v1\\)"):
        check_embedding_fits(loaded, published_like)
    other = UserEmbedding(torch.zeros(1, STRUCTURED_DIM), "hf-qwen2-33x2")
    with pytest.raises(CompatibilityError, match="made by encoder 'hf-qwen2-33x2' but adapter .* trained with "
                                                 "'psa-structured-v1'"):
        check_embedding_fits(loaded, other)
    reference_adapter = PSAAdapter(family, 3584).as_loaded()
    with pytest.raises(CompatibilityError, match="embedding has 33 dimensions but adapter"):
        check_embedding_fits(reference_adapter, structured)


# ---- the published embeddings ----

def test_published_embeddings_load_with_their_documented_properties(reference):
    first = load_embedding(reference / "embeddings" / "0000001.npy")
    second = load_embedding(reference / "embeddings" / "0000002.npy")
    raw = np.load(reference / "embeddings" / "0000001.npy")
    assert raw.shape == (3584,) and raw.dtype == np.float32
    assert first.vectors.shape == (1, 3584) and first.encoder is None and first.labels == ("0000001",)
    assert torch.equal(first.vectors[0], torch.from_numpy(raw))
    for embedding in (first, second):
        vector = embedding.vectors[0]
        assert torch.equal(vector, vector.bfloat16().float())  # bf16 pooling, as our encoder does
        assert 137.5 < vector.norm().item() < 139.5
        assert -80 < vector[46].item() < -70 and 45 < vector[1069].item() < 55
    cosine = torch.nn.functional.cosine_similarity(first.vectors, second.vectors).item()
    assert abs(cosine - 0.995) < 0.003
