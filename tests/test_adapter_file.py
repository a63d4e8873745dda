"""Adapter files: the reference .bin and flat .safetensors in, our flat safetensors out, bad files refused."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import tiny_models as tm
from naive_reference import naive_user_token
from numerics import FLOAT64_SLACK
from psa_core import AdapterFileError, get_family, load_adapter, reference_state_dicts, save_adapter
from psa_core.adapter import PSAAdapter

FAMILY = get_family("sd15", 32, 64)
E = tm.TINY_EMBEDDING_DIM


class ReferenceProjection(nn.Module):  # PSAProjection, as the reference defines it
    def __init__(self, embedding_dim, context_dim):
        super().__init__()
        self.proj = nn.Linear(embedding_dim, context_dim)
        self.norm = nn.LayerNorm(context_dim)


class ReferenceProcessor(nn.Module):  # PSAAttnProcessor2_0's parameters
    def __init__(self, hidden, context_dim):
        super().__init__()
        self.to_k_user = nn.ModuleList([nn.Linear(context_dim, hidden, bias=False)])
        self.to_v_user = nn.ModuleList([nn.Linear(context_dim, hidden, bias=False)])


def reference_modules(family, embedding_dim):
    return (ReferenceProjection(embedding_dim, family.context_dim),
            nn.ModuleList(ReferenceProcessor(l.hidden, family.context_dim) for l in family.layers))


def naive_values(nested, embeddings):
    tokens = torch.cat([naive_user_token(embeddings, nested["user_proj"]),
                        naive_user_token(torch.zeros(1, embeddings.shape[1]), nested["user_proj"])])
    return [tokens @ nested["psa_adapter"][f"{l.index}.to_v_user.0.weight"].double().T for l in FAMILY.layers]


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@pytest.mark.parametrize("projection_dtype, value_dtype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
def test_loads_reference_formats_and_computes_user_values(tmp_path, suffix, projection_dtype, value_dtype):
    nested = tm.random_adapter_tensors(FAMILY, E)
    nested["user_proj"] = {k: v.to(projection_dtype) for k, v in nested["user_proj"].items()}
    nested["psa_adapter"] = {k: v.to(value_dtype) for k, v in nested["psa_adapter"].items()}
    adapter = load_adapter(tm.write_adapter(nested, tmp_path / f"psa_adapter{suffix}"))
    assert adapter.family == FAMILY and adapter.embedding_dim == E
    embeddings = torch.randn(2, E)
    values = adapter.user_values(embeddings)
    assert values.num_users == 2
    for ours, naive in zip(values.per_layer, naive_values(nested, embeddings), strict=True):
        assert ours.dtype == torch.float32 and ours.shape == naive.shape
        # ours: float32 sums of at most 64 products (E = 48, D = 64) and one LayerNorm; a float32 sum of n products
        # is within n·2⁻²⁴ (≤ 3.8e-6) of the float64 one, relative to the values' scale: 1e-5 holds on any CPU.
        assert (ours.double() - naive).abs().max() <= 1e-5 * max(1.0, naive.abs().max().item())


def test_only_the_projection_stays_in_memory(tmp_path):
    adapter = load_adapter(tm.write_adapter(tm.random_adapter_tensors(FAMILY, E), tmp_path / "a.safetensors"))
    assert adapter.resident_parameters() == FAMILY.context_dim * (E + 3)
    assert isinstance(adapter.projection, dict) and not isinstance(adapter.value_weights, list)


def test_saved_file_loads_strictly_in_the_reference_layout_and_round_trips(tmp_path):
    nested = tm.random_adapter_tensors(FAMILY, E)
    adapter = load_adapter(tm.write_adapter(nested, tmp_path / "psa_adapter.bin"))
    saved = save_adapter(adapter, tmp_path / "ours.safetensors", extra_metadata={"psa.note": "test"})
    reference = reference_state_dicts(saved)
    projection, processors = reference_modules(FAMILY, E)
    projection.load_state_dict(reference["user_proj"], strict=True)
    processors.load_state_dict(reference["psa_adapter"], strict=True)
    for layer in FAMILY.layers:
        assert torch.equal(processors[layer.index].to_v_user[0].weight,
                           nested["psa_adapter"][f"{layer.index}.to_v_user.0.weight"])
        assert not processors[layer.index].to_k_user[0].weight.any()  # to_k_user never affects the output
    again = load_adapter(saved)
    assert again.metadata["psa.family"] == "sd15" and again.metadata["psa.embedding_dim"] == str(E)
    assert again.metadata["psa.num_layers"] == "16" and again.metadata["psa.format_version"] == "1"
    assert again.metadata["psa.note"] == "test"
    embeddings = torch.randn(1, E)
    for a, b in zip(adapter.user_values(embeddings).per_layer, again.user_values(embeddings).per_layer):
        assert torch.equal(a, b)


def test_trainable_module_and_loaded_adapter_agree(tmp_path):
    """The module's forward and the loaded view's user values both compute W_v LN(P e + b), by different calls;
    compared in float64 (a float64 copy of the module, the view's float32 tensors widened exactly): equal to
    float64 rounding (FLOAT64_SLACK of the scale, tests/numerics.py)."""
    module = PSAAdapter(FAMILY, E)
    with torch.no_grad():
        for linear in module.to_v_user:
            linear.weight.normal_()
    loaded = module.as_loaded(name="trained")
    wide = dataclasses.replace(loaded, projection={k: v.double() for k, v in loaded.projection.items()},
                               value_weights=[w.double() for w in loaded.value_weights])
    embeddings = torch.randn(3, E, dtype=torch.float64)
    for from_module, from_loaded in zip(copy.deepcopy(module).double()(embeddings),
                                        wide.user_values(embeddings).per_layer, strict=True):
        assert from_module.dtype == from_loaded.dtype == torch.float64
        bound = FLOAT64_SLACK * from_loaded.abs().max().item()
        assert (from_module - from_loaded[:3]).abs().max().item() <= bound
    back = PSAAdapter.from_loaded(load_adapter(save_adapter(loaded, tmp_path / "t.safetensors")))
    for a, b in zip(module.parameters(), back.parameters()):
        assert torch.equal(a, b)


class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "psa_adapter.bin"
    torch.save({"user_proj": {"proj.weight": CreatesAFile(str(marker))}, "psa_adapter": {}}, path)
    with pytest.raises(AdapterFileError, match="psa_adapter.bin: refused to load.*arbitrary code"):
        load_adapter(path)
    assert not marker.exists()
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(CreatesAFile(str(marker))))
    with pytest.raises(AdapterFileError, match="raw.bin"):
        load_adapter(raw)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_truncated_and_corrupt_files_are_named(tmp_path, suffix):
    path = tm.write_adapter(tm.random_adapter_tensors(FAMILY, E), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=f"cut{suffix}: .*truncated or corrupt"):
        load_adapter(path)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00\x01not a model" * 100)
    with pytest.raises(AdapterFileError, match=f"garbage{suffix}"):
        load_adapter(garbage)


def test_wrong_key_sets_are_explained(tmp_path):
    ip_adapter = tmp_path / "ip_adapter.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
              str(ip_adapter))
    with pytest.raises(AdapterFileError, match="ip_adapter.safetensors: not a PSA adapter: missing user_proj"):
        load_adapter(ip_adapter)
    nested = tm.random_adapter_tensors(FAMILY, E)
    nested["psa_adapter"]["0.to_q_user.0.weight"] = torch.zeros(1)
    with pytest.raises(AdapterFileError, match="unexpected keys psa_adapter.0.to_q_user.0.weight"):
        load_adapter(tm.write_adapter(nested, tmp_path / "extra.safetensors"))
    nested = tm.random_adapter_tensors(FAMILY, E)
    del nested["psa_adapter"]["15.to_v_user.0.weight"], nested["psa_adapter"]["15.to_k_user.0.weight"]
    with pytest.raises(AdapterFileError, match="15 value layers.*SD1.5 has 16"):
        load_adapter(tm.write_adapter(nested, tmp_path / "short.safetensors"))


def test_other_bad_files(tmp_path):
    with pytest.raises(AdapterFileError, match="adapter file not found: .*nowhere.safetensors"):
        load_adapter(tmp_path / "nowhere.safetensors")
    (tmp_path / "adapter.txt").write_text("x")
    with pytest.raises(AdapterFileError, match="unsupported file type '.txt'; allowed: .safetensors"):
        load_adapter(tmp_path / "adapter.txt")
    nested = tm.random_adapter_tensors(FAMILY, E)
    nested["user_proj"]["proj.weight"] = torch.zeros(4 * FAMILY.context_dim, E)
    with pytest.raises(AdapterFileError, match="makes 4 user tokens; only num_tokens = 1"):
        load_adapter(tm.write_adapter(nested, tmp_path / "tokens.safetensors"))
    nested = tm.random_adapter_tensors(FAMILY, E)
    nested["psa_adapter"]["0.to_v_user.0.weight"] = torch.zeros(32, 64, dtype=torch.int32)
    with pytest.raises(AdapterFileError, match="dtype I32; accepted: float32, float16, bfloat16"):
        load_adapter(tm.write_adapter(nested, tmp_path / "ints.safetensors"))
    torch.save([1, 2, 3], tmp_path / "list.bin")
    with pytest.raises(AdapterFileError, match="expected a dict with 'user_proj' and 'psa_adapter'"):
        load_adapter(tmp_path / "list.bin")


def test_removed_file_after_loading_is_explained(tmp_path):
    path = tm.write_adapter(tm.random_adapter_tensors(FAMILY, E), tmp_path / "gone.safetensors")
    adapter = load_adapter(path)
    path.unlink()
    with pytest.raises(AdapterFileError, match="gone.safetensors: the adapter file was removed after loading"):
        adapter.user_values(torch.randn(1, E))
