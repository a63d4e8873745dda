"""testkit, the development-only fixture package: its models have psa_core.families' layouts, its two LDM
statements (the diffusers models' single-file keys and the torch-only tensor tables the demo writes) agree,
and nothing shipped imports it."""
from __future__ import annotations

import pytest

from comfy_env import REPO
from psa_core.families import FAMILY_NAMES, get_family
from source_imports import development_imports
from testkit import ldm_shapes
from testkit.layouts import unet_layout
from testkit.models import (
    Components,
    ModelSpec,
    build_text_encoders,
    build_unet,
    build_vae,
    ldm_state_dict,
)
from trainer.single_file import UNET_PREFIX, VAE_PREFIX

SHIPPED_PYTHON = ("__init__.py", "nodes", "psa_core", "trainer")


def unrandomised_components(spec: ModelSpec) -> Components:
    """The models of `spec` with their initial weights (the shapes are what matters here)."""
    return Components(spec, build_unet(spec, randomise=False), build_vae(spec, calibrate=False),
                      build_text_encoders(spec, randomise=False))


def shapes(state: dict, prefix: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items() if key.startswith(prefix)}


def differences(ours: dict, theirs: dict) -> list[str]:
    problems = [f"{key}: only in the table" for key in sorted(set(ours) - set(theirs))]
    problems += [f"{key}: only in the checkpoint" for key in sorted(set(theirs) - set(ours))]
    problems += [f"{key}: {ours[key]} in the table, {theirs[key]} in the checkpoint"
                 for key in sorted(set(ours) & set(theirs)) if ours[key] != theirs[key]]
    return problems


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny(request) -> Components:
    return unrandomised_components(ModelSpec.tiny(request.param))


def test_layouts_are_the_families_block_tables():
    for name in FAMILY_NAMES:
        real, narrow = unet_layout(name), unet_layout(name, 32, 64)
        assert real.psa_family() == get_family(name), name
        assert narrow.psa_family() == get_family(name, 32, 64), name
        assert narrow.transformer_depth == real.transformer_depth and narrow.middle_depth == real.middle_depth


def test_tiny_unet_cross_attention_layers_are_the_family_table(tiny: Components):
    family = tiny.spec.unet_layout().psa_family()
    attn2 = [name.removesuffix(".processor") for name in tiny.unet.attn_processors if ".attn2." in name]
    assert attn2 == [layer.diffusers_name for layer in family.layers]
    widths = [tiny.unet.get_submodule(layer.diffusers_name).to_out[0].out_features for layer in family.layers]
    assert widths == [layer.hidden for layer in family.layers]
    assert tiny.unet.config.cross_attention_dim == family.context_dim


def test_single_file_keys_match_the_ldm_tensor_tables(tiny: Components):
    state = ldm_state_dict(tiny)
    spec = tiny.spec
    problems = differences(ldm_shapes.unet_shapes(spec.unet_layout()), shapes(state, UNET_PREFIX))
    problems += differences(ldm_shapes.vae_shapes(spec.vae_channels, spec.vae_layers_per_block),
                            shapes(state, VAE_PREFIX))
    if spec.family == "sd15":
        encoder = tiny.text_encoders[0].config
        table = ldm_shapes.clip_text_shapes(encoder.hidden_size, encoder.num_hidden_layers, encoder.vocab_size,
                                            encoder.max_position_embeddings)
        problems += differences(table, shapes(state, "cond_stage_model."))
    assert not problems, "\n".join(problems[:20])


def test_nothing_shipped_imports_a_development_package():
    files = [REPO / "__init__.py"] + [path for folder in SHIPPED_PYTHON[1:] for path in (REPO / folder).rglob("*.py")]
    imports = {str(path.relative_to(REPO)): development_imports(path.read_text(encoding="utf-8")) for path in files}
    found = {name: packages for name, packages in imports.items() if packages}
    assert not found, f"shipped modules import development-only packages: {found}"
