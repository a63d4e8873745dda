"""Profile nodes: build a safety profile, encode it into a PSA embedding, save it, batch several.

The heavy lifting lives in psa_core (profile model, encoders, cache); these nodes only resolve ComfyUI
folders (comfy_paths) and run the LLM under ComfyUI's memory manager (model_memory: full, partial or CPU load, kept
for the next encode node).
"""
from __future__ import annotations

import json as _json
import logging

from comfy_api.latest import io, ui

from ..psa_core import UserEmbedding, save_embedding
from ..psa_core.encoders import (
    DTYPE_CHOICES,
    ENCODER_CHOICES,
    LLM,
    EmbeddingCache,
    encode_profiles,
    make_encoder,
)
from ..psa_core.errors import shown
from ..psa_core.text_limits import MAX_JSON_CHARS, MAX_NAME_CHARS, MAX_PATH_CHARS, limit_text
from ..psa_core.profile import (
    AGE_GROUPS,
    CATEGORIES,
    EVALUATION_USERS,
    GENDERS,
    MAX_AGE,
    MENTAL_CONDITIONS,
    MIN_AGE,
    PHYSICAL_CONDITIONS,
    RELIGIONS,
    ProfileError,
    UserProfile,
    age_group_for,
    profile_from_dict,
    profile_from_json,
)
from .checked_node import CheckedNode, about
from .comfy_paths import EMBEDDING_NAME, LLM_FOLDER, OUTSIDE_RULE, TEMPLATE_FILE, embedding_cache_folder
from .model_memory import DEVICE_TOOLTIP, DEVICES, LOG_PREFIX, ComfyPlacement, NodeProgress, node_label
from .psa_types import PSAEmbeddingType

log = logging.getLogger(__name__)
CATEGORY = "PSA/profile"
# A psa_core.profile.UserProfile (immutable, validated).
PSAProfileType = io.Custom("PSA_PROFILE")

CUSTOM = "custom"
PRESETS = {f"{level} ({p.user_id})": p for level, p in EVALUATION_USERS.items()}
AUTO = "auto"
BAN_TOGGLES, BAN_RULES = "toggles", "rule-based suggestion"
MISSING_BANS_ERROR = "error"
TOGGLE_NAMES = {category: "ban_" + category.lower().replace("-", "_") for category in CATEGORIES}
MAX_BATCH_INPUTS = 8


def _preset_tooltip() -> str:
    lines = [f"{name}: banned {', '.join(p.banned) or 'nothing'}" for name, p in PRESETS.items()]
    return ("'custom' uses the widgets below; a reference evaluation user (docs/profiles.md §4) ignores them. "
            + "; ".join(lines))


def _profile_outputs() -> list:
    return [PSAProfileType.Output(display_name="profile", tooltip="The validated safety profile."),
            io.String.Output(display_name="profile_json", tooltip="The profile's canonical JSON (reference "
                                                                  "column names, sorted lists).")]


class PSAUserProfile(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        toggles = [io.Boolean.Input(name, default=False, tooltip=f"Ban {category} content for this user "
                                                                  f"(used when banned_from is '{BAN_TOGGLES}').")
                   for category, name in TOGGLE_NAMES.items()]
        return io.Schema(
            node_id="PSAUserProfile",
            display_name="PSA User Profile",
            category=CATEGORY,
            description="A user's safety profile in the reference schema: who they are and which of the 7 "
                        "content categories are banned for them.",
            inputs=[
                io.Combo.Input("preset", options=[CUSTOM, *PRESETS], default=CUSTOM, tooltip=_preset_tooltip()),
                io.Int.Input("age", default=35, min=MIN_AGE, max=MAX_AGE,
                             tooltip=f"Age in years, {MIN_AGE}-{MAX_AGE}."),
                io.Combo.Input("age_group", options=[AUTO, *AGE_GROUPS], default=AUTO,
                               tooltip="'auto' derives it from age; an explicit group must contain the age."),
                io.Combo.Input("gender", options=list(GENDERS), default="male",
                               tooltip="The user's gender, as the reference profiles record it."),
                io.Combo.Input("religion", options=list(RELIGIONS), default="None",
                               tooltip="The user's religion ('None' for none). With banned_from "
                                       f"'{BAN_RULES}', a religion bans Hate and Propaganda."),
                io.Combo.Input("physical_condition", options=list(PHYSICAL_CONDITIONS), default="healthy",
                               tooltip="The user's physical condition. With banned_from "
                                       f"'{BAN_RULES}', anything but 'healthy' bans Shocking and Harassment."),
                io.Combo.Input("mental_condition", options=list(MENTAL_CONDITIONS), default="healthy",
                               tooltip="The user's mental condition or the trauma they lived through. With "
                                       f"banned_from '{BAN_RULES}', anything but 'healthy' (or an age under 18) "
                                       "bans Sexuality, Self-Harm and Violence."),
                io.Combo.Input("banned_from", options=[BAN_TOGGLES, BAN_RULES], default=BAN_TOGGLES,
                               tooltip="Where the banned categories come from: the toggles below, or the rules of "
                                       "the reference get_banned.txt (minor or unstable mental condition: "
                                       "Sexuality, Self-Harm, Violence; non-healthy physical condition: Shocking, "
                                       "Harassment; Islam, Christianity or Buddhism: Hate, Propaganda)."),
                *toggles,
            ],
            outputs=_profile_outputs(),
        )

    @classmethod
    def check_inputs(cls, preset: str | None, age: int | None, age_group: str | None) -> None:
        if preset not in (None, CUSTOM) or age is None or age_group in (None, AUTO):
            return  # a preset ignores the widgets; the schema already checked each of them
        with about("age_group"):
            profile_from_dict({"Age": age, "Age_Group": age_group, "Gender": GENDERS[0], "Religion": "None",
                               "Physical_Condition": "healthy", "Mental_Condition": "healthy",
                               "Banned_Categories": []})

    @classmethod
    def execute(cls, preset: str, age: int, age_group: str, gender: str, religion: str, physical_condition: str,
                mental_condition: str, banned_from: str, **toggles: bool) -> io.NodeOutput:
        if preset != CUSTOM:
            if preset not in PRESETS:  # a linked combo is not checked at validation
                raise ProfileError(f"preset {shown(preset)} is not allowed; allowed: {', '.join([CUSTOM, *PRESETS])}")
            profile = PRESETS[preset]
        else:
            fields = {"Age": age, "Age_Group": age_group_for(age) if age_group == AUTO else age_group,
                      "Gender": gender, "Religion": religion, "Physical_Condition": physical_condition,
                      "Mental_Condition": mental_condition}
            if banned_from == BAN_TOGGLES:
                fields["Banned_Categories"] = [c for c, name in TOGGLE_NAMES.items() if toggles.get(name)]
            elif banned_from != BAN_RULES:
                raise ProfileError(f"banned_from {banned_from!r} is not allowed; allowed: {BAN_TOGGLES}, {BAN_RULES}")
            profile = profile_from_dict(fields, suggest_missing_bans=True)
        return io.NodeOutput(profile, profile.canonical_json())


class PSAProfileFromJSON(CheckedNode):
    TEXT_LIMITS = {"json": MAX_JSON_CHARS}

    @classmethod
    def define_schema(cls) -> io.Schema:
        example = EVALUATION_USERS["level_3"].to_dict()
        del example["Allowed_Categories"]
        return io.Schema(
            node_id="PSAProfileFromJSON",
            display_name="PSA Profile From JSON",
            category=CATEGORY,
            description="Read a safety profile from JSON: a profile object with the reference column names, a "
                        "SAGE user_data object, or a whole SAGE metadata.jsonl line.",
            inputs=[
                io.String.Input("json", multiline=True, default=_json.dumps(example, indent=2),
                                tooltip="A JSON object with Age, Gender, Religion, Physical_Condition, "
                                        "Mental_Condition and Banned_Categories (or Allowed_Categories); "
                                        "Age_Group is optional. SAGE user_data has no bans: see missing_bans. "
                                        f"{limit_text(MAX_JSON_CHARS)}"),
                io.Combo.Input("missing_bans", options=[MISSING_BANS_ERROR, BAN_RULES], default=MISSING_BANS_ERROR,
                               tooltip="When the JSON has no Banned/Allowed_Categories (e.g. SAGE user_data): "
                                       "stop with an error, or use the reference get_banned.txt rules."),
            ],
            outputs=_profile_outputs(),
        )

    @classmethod
    def check_inputs(cls, json: str | None, missing_bans: str | None) -> None:
        if json is not None:
            with about("json"):  # a linked missing_bans (None) is taken leniently
                profile_from_json(json, suggest_missing_bans=missing_bans != MISSING_BANS_ERROR)

    @classmethod
    def execute(cls, json: str, missing_bans: str) -> io.NodeOutput:
        profile = profile_from_json(json, suggest_missing_bans=missing_bans == BAN_RULES)
        return io.NodeOutput(profile, profile.canonical_json())


class PSAEncodeProfile(CheckedNode):
    PATH_INPUTS = {"llm": LLM_FOLDER, "template": TEMPLATE_FILE}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSAEncodeProfile",
            display_name="PSA Encode Profile",
            category=CATEGORY,
            description="Turn a safety profile into the embedding PSA is conditioned on. 'llm' is the reference "
                        "recipe (needed by the published adapters, with Qwen2.5-7B-Instruct and get_embeds.txt); "
                        "'structured' needs no model, for adapters trained with it. Results are cached on disk.",
            inputs=[
                PSAProfileType.Input("profile", tooltip="From PSA User Profile or PSA Profile From JSON."),
                io.Combo.Input("encoder", options=list(ENCODER_CHOICES), default=LLM,
                               tooltip="llm: a local Hugging Face causal LM (reference recipe). structured: a "
                                       "deterministic 33-value vector of the profile, no model."),
                io.String.Input("llm", default="Qwen2.5-7B-Instruct",
                                tooltip="The LLM folder (config.json, tokenizer, weights): a folder name under "
                                        f"models/LLM/ ({OUTSIDE_RULE}). Loaded from local files only; used by the "
                                        f"llm encoder only. {limit_text(MAX_PATH_CHARS)}"),
                io.String.Input("template", default="get_embeds.txt",
                                tooltip=f"The prompt template file: a name under models/psa/ or models/LLM/ "
                                        f"({OUTSIDE_RULE}). The published adapters need the reference "
                                        f"get_embeds.txt. {limit_text(MAX_PATH_CHARS)}"),
                io.Combo.Input("precision", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="LLM precision. 'auto' uses the checkpoint's dtype (bf16 for Qwen2.5, as "
                                       "the reference did); other precisions give slightly different embeddings."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="llm only. " + DEVICE_TOOLTIP),
                io.Boolean.Input("use_cache", default=True,
                                 tooltip="llm: reuse embeddings cached on disk (models/psa_cache/, or the folder in "
                                         "PSA_EMBEDDING_CACHE) for the same model, template, precision and profile; "
                                         "a cached profile loads no model."),
            ],
            outputs=[PSAEmbeddingType.Output(display_name="embedding", tooltip="One row for this profile.")],
        )

    @classmethod
    def execute(cls, profile: UserProfile, encoder: str, llm: str, template: str, precision: str, device: str,
                use_cache: bool) -> io.NodeOutput:
        options, progress = {}, None
        if encoder == LLM:
            progress = NodeProgress()
            options = {"model_dir": LLM_FOLDER.find(llm, "llm"),
                       "template_path": TEMPLATE_FILE.find(template, "template"), "dtype": precision,
                       "placement": ComfyPlacement(device, node="PSA Encode Profile"),
                       "progress": progress}
        profile_encoder = make_encoder(encoder, **options)
        # the structured encoder is cheaper to run than a cache read
        cache = EmbeddingCache(embedding_cache_folder()) if use_cache and encoder == LLM else None
        embedding = encode_profiles(profile_encoder, [profile], cache)
        if progress is not None:
            if getattr(profile_encoder, "last_placed", None) is None:
                log.info("%s not needed: PSA Encode Profile%s served profile %s from the embedding cache, no model "
                         "loaded", LOG_PREFIX, node_label(), profile.label)
            progress.finish()
        return io.NodeOutput(embedding)


class PSASaveEmbedding(CheckedNode):
    PATH_INPUTS = {"filename": EMBEDDING_NAME}
    TEXT_LIMITS = {"filename": MAX_NAME_CHARS}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSASaveEmbedding",
            display_name="PSA Save Embedding",
            category=CATEGORY,
            description="Save an embedding to models/psa_embeddings/<name>.safetensors (with its encoder in the "
                        "metadata), so PSA Load Embedding can use it without the LLM.",
            inputs=[
                PSAEmbeddingType.Input("embedding", tooltip="The embedding to save (one or several rows)."),
                io.String.Input("filename", default="profile",
                                tooltip="File name without folder; letters, digits, '.', '_', '-' and spaces. "
                                        "'.safetensors' is added; an existing file of that name is replaced. "
                                        f"{limit_text(MAX_NAME_CHARS)}"),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, embedding: UserEmbedding, filename: str) -> io.NodeOutput:
        path = save_embedding(embedding, EMBEDDING_NAME.path(filename, "filename"))
        return io.NodeOutput(ui=ui.PreviewText(f"saved {embedding.count} x {embedding.dim} embedding "
                                               f"({embedding.encoder or 'unknown encoder'}) to {path}"))


class PSAEmbeddingBatch(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = [PSAEmbeddingType.Input("embedding_1", tooltip="Profile for item 1 of the sampler batch.")]
        inputs += [PSAEmbeddingType.Input(f"embedding_{i}", optional=True,
                                          tooltip=f"Profile for the next item(s) of the batch (item {i} when "
                                                  "every input has one row). Connect inputs in order.")
                   for i in range(2, MAX_BATCH_INPUTS + 1)]
        return io.Schema(
            node_id="PSAEmbeddingBatch",
            display_name="PSA Embedding Batch",
            category=CATEGORY,
            description="Stack embeddings into one per-image batch: with a latent batch of the same size, item i "
                        "of the sampler batch uses row i (PSA Apply). All must come from the same encoder.",
            inputs=inputs,
            outputs=[PSAEmbeddingType.Output(display_name="embedding", tooltip="All rows, in input order.")],
        )

    @classmethod
    def execute(cls, **embeddings: UserEmbedding | None) -> io.NodeOutput:
        given = [embeddings.get(f"embedding_{i}") for i in range(1, MAX_BATCH_INPUTS + 1)]
        last = max(i for i, e in enumerate(given) if e is not None)
        gaps = [f"embedding_{i + 1}" for i in range(last) if given[i] is None]
        if gaps:
            raise ProfileError(f"{', '.join(gaps)} not connected but embedding_{last + 1} is; connect the inputs "
                               "in order so that row i is item i of the batch")
        return io.NodeOutput(UserEmbedding.concatenate(given[: last + 1]))


NODES = [PSAUserProfile, PSAProfileFromJSON, PSAEncodeProfile, PSASaveEmbedding, PSAEmbeddingBatch]
