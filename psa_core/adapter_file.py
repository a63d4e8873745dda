"""Reading and writing PSA adapter files.

Accepted: the reference `psa_adapter.bin` (a `torch.save` of `{"user_proj": {...}, "psa_adapter": {...}}`,
read with `weights_only=True` so no arbitrary pickle ever runs) and flat `.safetensors` files whose keys are
the nested keys prefixed with `user_proj.` / `psa_adapter.`. fp32, fp16 and bf16 are all accepted.
Written: the flat safetensors layout with all 2N+4 tensors (so the reference loader reads it strictly),
plus `__metadata__` saying what the file is.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import PROJECTION_KEYS, LoadedAdapter
from .atomic import atomic_write
from .errors import AdapterFileError
from .families import Family, recognise_family

FORMAT_VERSION = "1"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ACCEPTED_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # by name
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_LAYER_KEY = re.compile(r"psa_adapter\.(\d+)\.to_([kv])_user\.0\.weight")
# The published adapters were trained on Qwen2.5-7B-Instruct embeddings (docs/profiles.md §5).
REFERENCE_ENCODER = "qwen2.5-7b-instruct"
REFERENCE_EMBEDDING_DIM = 3584


def flat_key(group: str, key: str) -> str:
    return f"{group}.{key}"


def value_key(index: int) -> str:
    return f"psa_adapter.{index}.to_v_user.0.weight"


def key_key(index: int) -> str:
    return f"psa_adapter.{index}.to_k_user.0.weight"


class _TensorSource:
    """Uniform lazy access to the tensors of one adapter file: names with shapes, and reads on demand."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 read: Callable[[list[str]], Iterator[torch.Tensor]], metadata: dict[str, str]):
        self.shapes = shapes
        self.read = read
        self.metadata = metadata


def _open_safetensors(path: Path) -> _TensorSource:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            shapes = {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                dtype_name = tensor_slice.get_dtype()
                shapes[key] = (tuple(tensor_slice.get_shape()), _SAFETENSORS_DTYPES.get(dtype_name, dtype_name))
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{path.name}: not a readable safetensors file ({error}); "
                               "the file may be truncated or corrupt, download or export it again") from error

    def read(keys: list[str]) -> Iterator[torch.Tensor]:
        with safe_open(str(path), framework="pt") as handle:
            for key in keys:
                yield handle.get_tensor(key)

    return _TensorSource(shapes, read, metadata)


def _load_pickle_dict(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise AdapterFileError(
            f"{path.name}: refused to load: the file contains Python objects other than tensors, and "
            "unpickling them could run arbitrary code. Only plain tensor files are accepted; convert it "
            "to .safetensors from a trusted copy") from error
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise AdapterFileError(f"{path.name}: not a readable torch file ({error}); the file may be "
                               "truncated or corrupt, download it again") from error


def _flatten_reference_dict(path: Path, data: object) -> dict[str, torch.Tensor]:
    if not isinstance(data, Mapping):
        raise AdapterFileError(f"{path.name}: expected a dict with 'user_proj' and 'psa_adapter', "
                               f"found {type(data).__name__}")
    if "user_proj" in data and "psa_adapter" in data:
        flat = {}
        for group in ("user_proj", "psa_adapter"):
            if not isinstance(data[group], Mapping):
                raise AdapterFileError(f"{path.name}: '{group}' must be a dict of tensors")
            flat.update({flat_key(group, k): v for k, v in data[group].items()})
        return flat
    return dict(data)


def _open_pickle(path: Path) -> _TensorSource:
    flat = _flatten_reference_dict(path, _load_pickle_dict(path))
    shapes = {}
    for key, value in flat.items():
        if not isinstance(value, torch.Tensor):
            raise AdapterFileError(f"{path.name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        shapes[key] = (tuple(value.shape), value.dtype)

    def read(keys: list[str]) -> Iterator[torch.Tensor]:
        data = _flatten_reference_dict(path, _load_pickle_dict(path))
        for key in keys:
            yield data[key]

    return _TensorSource(shapes, read, {})


class _FileValueWeights:
    """Streams `to_v_user` weights from the adapter file, one layer at a time."""

    def __init__(self, path: Path, source: _TensorSource, count: int):
        self.path, self._source, self._count = path, source, count

    def __iter__(self) -> Iterator[torch.Tensor]:
        if not self.path.exists():
            raise AdapterFileError(f"{self.path.name}: the adapter file was removed after loading; "
                                   "put it back or load another adapter")
        return self._source.read([value_key(i) for i in range(self._count)])


def _describe_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_layout(path: Path, source: _TensorSource) -> tuple[Family, int]:
    shapes = source.shapes
    missing = [flat_key("user_proj", k) for k in PROJECTION_KEYS if flat_key("user_proj", k) not in shapes]
    if missing:
        raise AdapterFileError(f"{path.name}: not a PSA adapter: missing {_describe_keys(missing)} "
                               "(expected user_proj.proj.weight/bias, user_proj.norm.weight/bias and "
                               "psa_adapter.<i>.to_v_user.0.weight)")
    unexpected = [k for k in shapes if not k.startswith("user_proj.") and not _LAYER_KEY.fullmatch(k)]
    unexpected += [k for k in shapes if k.startswith("user_proj.") and k[len("user_proj."):] not in PROJECTION_KEYS]
    if unexpected:
        raise AdapterFileError(f"{path.name}: unexpected keys {_describe_keys(unexpected)}; a PSA adapter holds "
                               "only user_proj.{proj,norm}.{weight,bias} and psa_adapter.<i>.to_{k,v}_user.0.weight")
    for key, (shape, dtype) in shapes.items():
        if dtype not in ACCEPTED_DTYPES:
            raise AdapterFileError(f"{path.name}: {key} has dtype {dtype}; accepted: float32, float16, bfloat16")
    context_dim = shapes["user_proj.norm.weight"][0][0]
    proj_shape = shapes["user_proj.proj.weight"][0]
    if len(proj_shape) != 2 or proj_shape[0] % context_dim:
        raise AdapterFileError(f"{path.name}: user_proj.proj.weight has shape {proj_shape}; expected [D, E] with "
                               f"D = {context_dim} (the norm width)")
    if proj_shape[0] != context_dim:
        raise AdapterFileError(f"{path.name}: the projection makes {proj_shape[0] // context_dim} user tokens; "
                               "only num_tokens = 1 is supported (the reference uses 1)")
    for key in ("user_proj.proj.bias", "user_proj.norm.bias"):
        if shapes[key][0] != (context_dim,):
            raise AdapterFileError(f"{path.name}: {key} has shape {shapes[key][0]}; expected ({context_dim},)")
    indices = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_KEY.fullmatch(k))})
    if indices != list(range(len(indices))) or not indices:
        raise AdapterFileError(f"{path.name}: layer indices {indices[:8]}... are not 0..N-1")
    hidden = []
    for i in indices:
        if value_key(i) not in shapes:
            raise AdapterFileError(f"{path.name}: layer {i} has no {value_key(i)}")
        for key in (value_key(i), key_key(i)):
            if key in shapes:
                shape = shapes[key][0]
                if len(shape) != 2 or shape[1] != context_dim:
                    raise AdapterFileError(f"{path.name}: {key} has shape {shape}; expected [H, {context_dim}]")
        hidden.append(shapes[value_key(i)][0][0])
    try:
        family = recognise_family(hidden, context_dim)
    except AdapterFileError as error:
        raise AdapterFileError(f"{path.name}: {error}") from None
    return family, proj_shape[1]


def _check_finite(path: Path, key: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise AdapterFileError(f"{path.name}: tensor {key} contains NaN or infinite values, which would turn every "
                               "image black; the file is damaged or was saved from a diverged training run")


def open_adapter_source(path: str | Path) -> _TensorSource:
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _open_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _open_pickle(path)
    allowed = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
    raise AdapterFileError(f"{path.name}: unsupported file type {path.suffix!r}; allowed: {allowed}")


def load_adapter(path: str | Path) -> LoadedAdapter:
    """Validate an adapter file and return it ready for inference (value weights stay on disk)."""
    path = Path(path)
    source = open_adapter_source(path)
    family, embedding_dim = _check_layout(path, source)
    projection_keys = [flat_key("user_proj", k) for k in PROJECTION_KEYS]
    projection = {name: t.float().clone() for name, t in zip(PROJECTION_KEYS, source.read(projection_keys))}
    for key, tensor in zip(projection_keys, projection.values()):
        _check_finite(path, key, tensor)
    value_keys = [value_key(i) for i in range(family.num_layers)]
    for key, tensor in zip(value_keys, source.read(value_keys)):  # one pass, one layer in memory at a time
        _check_finite(path, key, tensor)
    metadata = source.metadata
    encoder = metadata.get("psa.encoder") or (REFERENCE_ENCODER if embedding_dim == REFERENCE_EMBEDDING_DIM else None)
    return LoadedAdapter(family, embedding_dim, projection, _FileValueWeights(path, source, family.num_layers),
                         encoder, metadata, path.name)


def adapter_metadata(adapter: LoadedAdapter, extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The `__metadata__` we write: what the file is, for people and for our loader."""
    metadata = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in adapter.metadata.items()}
    metadata.update({
        "psa.format_version": FORMAT_VERSION,
        "psa.family": adapter.family.name,
        "psa.family_display": adapter.family.describe(),
        "psa.context_dim": str(adapter.family.context_dim),
        "psa.layer_widths": json.dumps([layer.hidden for layer in adapter.family.layers]),
        "psa.num_layers": str(adapter.family.num_layers),
        "psa.embedding_dim": str(adapter.embedding_dim),
        "psa.layout": "flat reference keys: user_proj.* and psa_adapter.<i>.to_{k,v}_user.0.weight",
    })
    if adapter.encoder:
        metadata["psa.encoder"] = adapter.encoder
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return metadata


def save_adapter(adapter: LoadedAdapter, path: str | Path, dtype: torch.dtype = torch.float32,
                 extra_metadata: Mapping[str, object] | None = None) -> Path:
    """Write the flat reference layout (to_k_user as zeros: it never affects the output) atomically."""
    if dtype not in ACCEPTED_DTYPES:
        raise AdapterFileError(f"cannot save in {dtype}; allowed: float32, float16, bfloat16")
    tensors = {flat_key("user_proj", k): v.detach().to(dtype).contiguous() for k, v in adapter.projection.items()}
    for layer, weight in zip(adapter.family.layers, adapter.value_weights, strict=True):
        value = weight.detach().to(dtype).contiguous()
        tensors[value_key(layer.index)] = value
        tensors[key_key(layer.index)] = torch.zeros_like(value)
    metadata = adapter_metadata(adapter, extra_metadata)
    return atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def reference_state_dicts(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read any accepted adapter file into the reference's nested form (`user_proj`, `psa_adapter`)."""
    source = open_adapter_source(path)
    keys = list(source.shapes)
    nested: dict[str, dict[str, torch.Tensor]] = {"user_proj": {}, "psa_adapter": {}}
    for key, tensor in zip(keys, source.read(keys)):
        group, name = key.split(".", 1)
        nested[group][name] = tensor
    return nested
