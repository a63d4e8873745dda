"""The reference-exact LLM encoder (docs/profiles.md §5, get_embeds.py).

Any local Hugging Face causal-LM folder, loaded with transformers from local files only. Per profile: the
template filled in the reference's way, the chat template with a single user message and
`add_generation_prompt=True`, left-padded batches (32 by default) with `truncation=True`, one forward pass,
the last hidden state (after the final norm), and a masked mean `sum / count` computed in the model's dtype
(bf16 for Qwen2.5-7B-Instruct), then cast to fp32. Where the model runs and how long it stays loaded is the
placement's business (psa_core.encoders.placement, docs/profiles.md §7): by default it exists only while encoding.
"""
from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import torch

from ..adapter_file import REFERENCE_ENCODER
from ..errors import shown
from ..fingerprint import file_version
from ..json_text import JSONTextError, parse_json
from ..profile import UserProfile
from .base import EncoderError, ProfileEncoder
from .placement import (
    RUN,
    AfterRelease,
    BeforeLoad,
    ModelRequest,
    Placed,
    Placement,
    Progress,
    SingleDevice,
    forward_working_bytes,
)
from .template import PromptTemplate, render_prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto",) + tuple(DTYPES)
REFERENCE_BATCH_SIZE = 32
POOLING = "last-hidden-masked-mean-v1"
# Qwen2.5-7B(-Instruct)'s architecture; its embeddings are what the published adapters were trained on.
_REFERENCE_SIGNATURE = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                        "vocab_size": 152064}
_WHOLE_FILE_LIMIT = 16 << 20
_SAMPLE = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

_fingerprints: dict[tuple, str] = {}


def _top_level_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def model_fingerprint(model_dir: str | Path) -> str:
    """A content identity of a model folder: small files whole, large ones by size, head and tail.

    Memoised on the folder and its files' versions (psa_core.fingerprint), so a cache hit costs a directory
    listing, not a hash."""
    model_dir = Path(model_dir).resolve()
    files = _top_level_files(model_dir)
    versions = tuple(file_version(p) for p in files)
    memo_key = (str(model_dir), tuple(p.name for p in files), versions)
    if memo_key not in _fingerprints:
        digest = hashlib.sha256()
        for path, version in zip(files, versions):
            with path.open("rb") as handle:  # raises FileNotFoundError for a file removed since the listing
                size = version.size
                digest.update(f"{path.name}\0{size}\0".encode())
                if size <= _WHOLE_FILE_LIMIT:
                    digest.update(handle.read())
                else:
                    digest.update(handle.read(_SAMPLE))
                    handle.seek(size - _SAMPLE)
                    digest.update(handle.read(_SAMPLE))
        _fingerprints[memo_key] = digest.hexdigest()
    return _fingerprints[memo_key]


def read_model_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise EncoderError(f"{model_dir} is not a Hugging Face model folder (no config.json); expected a local "
                           "causal-LM folder with config.json, tokenizer files and weights, e.g. "
                           "Qwen2.5-7B-Instruct for the published adapters")
    try:
        config = parse_json(config_path.read_bytes())
    except JSONTextError as error:
        raise EncoderError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise EncoderError(f"{config_path}: expected a JSON object")
    return config


def encoder_name_for(config: dict) -> str:
    """What the embeddings are called in adapter metadata: the reference name for Qwen2.5-7B's architecture."""
    if all(config.get(k) == v for k, v in _REFERENCE_SIGNATURE.items()):
        return REFERENCE_ENCODER
    return f"hf-{config.get('model_type', 'unknown')}-{config.get('hidden_size')}x{config.get('num_hidden_layers')}"


def resolve_dtype(dtype: str, config: dict) -> str:
    """The dtype name a precision choice means for the model of `config`: "auto" is the checkpoint's own."""
    if dtype == "auto":  # the reference's torch_dtype="auto": whatever the checkpoint declares
        declared = config.get("dtype") or config.get("torch_dtype") or "float32"
        if declared not in DTYPES:
            raise EncoderError(f"the model declares dtype {declared!r}; choose one of {', '.join(DTYPES)}")
        return declared
    if dtype not in DTYPES:
        raise EncoderError(f"unknown precision {dtype!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    return dtype


def _safetensors_elements(path: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Element count per dtype name from a safetensors header, read without loading any weights; tensors whose name
    starts with one of `skip` are not counted."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise EncoderError(f"{path}: not a safetensors file ({size} bytes, shorter than its header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:  # a corrupt length would otherwise ask for exabytes of memory
            raise EncoderError(f"{path}: not a safetensors file (its header claims {length} bytes of {size})")
        try:
            header = parse_json(handle.read(length))
        except JSONTextError as error:
            raise EncoderError(f"{path}: not a safetensors file (header: {error})") from None
    counts: dict[str, int] = {}
    entries = header.items() if isinstance(header, dict) else ()
    for key, entry in entries:
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(entry.get("dtype"), str)):
            raise EncoderError(f"{path}: not a safetensors file (tensor {shown(key)} has no valid shape and dtype)")
        if key.startswith(skip):
            continue
        counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + math.prod(shape)
    return counts


def estimate_weight_bytes(model_dir: Path, dtype: torch.dtype, skip: tuple[str, ...] = ()) -> int:
    """Bytes the weights take in `dtype`, from safetensors headers (file sizes for other formats); `skip`: name
    prefixes of tensors that are not loaded (the base model skips `lm_head.`)."""
    element = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in _top_level_files(model_dir):
        if path.suffix == ".safetensors":
            for name, count in _safetensors_elements(path, skip).items():
                total += count * (element if name in ("F32", "BF16", "F16") else _SAFETENSORS_BYTES.get(name, 4))
        elif path.suffix in _WEIGHT_SUFFIXES:
            total += path.stat().st_size
    return total


def from_pretrained_kwargs(dtype: torch.dtype) -> dict:
    """The `from_pretrained` keyword that loads the weights in `dtype`, for the installed transformers."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    # transformers renamed torch_dtype to dtype in 4.56; older versions would pass an unknown `dtype` on silently.
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reference pooling, in the hidden states' dtype: `(h * m).sum(1) / m.sum(1)`, then fp32."""
    mask = attention_mask.unsqueeze(-1)
    return ((hidden * mask).sum(dim=1) / mask.sum(dim=1)).to(torch.float32)


class LLMEncoder(ProfileEncoder):
    """Encode profiles with a local causal LM. Nothing is loaded until `encode_uncached` runs.

    `placement` decides where the model runs and how long it stays (psa_core.encoders.placement); without one it is
    `SingleDevice(device, before_load, after_release)`: the whole model on `device` while encoding, where
    `before_load(bytes, device)` runs before the weights are loaded and `after_release()` after the model has been
    deleted. `progress(stage, done, total)` is told while the weights load and as the profiles are encoded. After an
    encode, `last_placed` says how the model was placed."""

    def __init__(self, model_dir: str | Path, template: PromptTemplate, *, dtype: str = "auto",
                 device: str | torch.device = "cpu", batch_size: int = REFERENCE_BATCH_SIZE,
                 before_load: BeforeLoad | None = None, after_release: AfterRelease | None = None,
                 placement: Placement | None = None, progress: Progress | None = None):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise EncoderError(f"LLM folder not found: {self.model_dir}; expected a local Hugging Face causal-LM "
                               "folder (config.json, tokenizer, weights), e.g. Qwen2.5-7B-Instruct for the "
                               "published adapters")
        self.config = read_model_config(self.model_dir)
        self.template = template
        self.dtype_name = resolve_dtype(dtype, self.config)
        self.dtype = DTYPES[self.dtype_name]
        self.device = torch.device(device)
        if batch_size < 1:
            raise EncoderError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.placement = placement or SingleDevice(self.device, before_load, after_release)
        self.progress = progress
        self.last_placed: Placed | None = None
        self.name = encoder_name_for(self.config)

    @property
    def identity(self) -> str:
        # Where the model runs is not part of it: a placement changes the numbers by rounding only (§7).
        return (f"llm|{self.name}|model={model_fingerprint(self.model_dir)}|template={self.template.sha256}"
                f"|dtype={self.dtype_name}|{POOLING}")

    @property
    def dim(self) -> int | None:
        return self.config.get("hidden_size")

    def prompts(self, profiles: Sequence[UserProfile]) -> list[str]:
        return [render_prompt(self.template, p) for p in profiles]

    def chat_texts(self, tokenizer, profiles: Sequence[UserProfile]) -> list[str]:
        if not getattr(tokenizer, "chat_template", None):
            raise EncoderError(f"the tokenizer in {self.model_dir} has no chat template; the reference recipe "
                               "needs an instruct model's chat template (e.g. Qwen2.5-7B-Instruct)")
        return [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True) for prompt in self.prompts(profiles)]

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True, padding_side="left")
        except (OSError, ValueError) as error:
            raise EncoderError(f"cannot load the tokenizer from {self.model_dir}: {error}") from None

    def _build(self, extra: dict):
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the base model skips lm_head: expected, not worth a warning
        try:
            return transformers.AutoModel.from_pretrained(str(self.model_dir), local_files_only=True,
                                                          **from_pretrained_kwargs(self.dtype), **extra)
        except (OSError, ValueError, KeyError) as error:
            raise EncoderError(f"cannot load the model from {self.model_dir}: {error}") from None
        finally:
            transformers.logging.set_verbosity(verbosity)

    def model_request(self, working_bytes: int = 0) -> ModelRequest:
        """What the placement is asked to place: the base model (no LM head) in this encoder's precision."""
        return ModelRequest(key=("AutoModel", model_fingerprint(self.model_dir), self.dtype_name),
                            label=f"{self.model_dir.name} ({self.dtype_name})", build=self._build, dtype=self.dtype,
                            weight_bytes=estimate_weight_bytes(self.model_dir, self.dtype, skip=("lm_head.",)),
                            working_bytes=working_bytes)

    def batches(self, tokenizer, profiles: Sequence[UserProfile]) -> list[dict]:
        """The tokenized, left-padded batches of the reference (`truncation=True`), in profile order."""
        texts = self.chat_texts(tokenizer, profiles)
        return [tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True, truncation=True)
                for start in range(0, len(texts), self.batch_size)]

    def encode_uncached(self, profiles: Sequence[UserProfile]) -> torch.Tensor:
        tokenizer = self.load_tokenizer()
        batches = self.batches(tokenizer, profiles)
        element = torch.empty((), dtype=self.dtype).element_size()
        working = max(forward_working_bytes(self.config, *b["input_ids"].shape, element) for b in batches)
        rows, done = [], 0
        with self.placement.use(self.model_request(working), self.progress) as placed:
            self.last_placed = placed
            with torch.inference_mode():
                for inputs in batches:
                    input_ids = inputs["input_ids"].to(placed.device)
                    attention_mask = inputs["attention_mask"].to(placed.device)
                    # use_cache=False: no key/value cache is kept (nothing is generated); the outputs are the same
                    hidden = placed.model(input_ids=input_ids, attention_mask=attention_mask,
                                          use_cache=False).last_hidden_state
                    rows.append(masked_mean(hidden, attention_mask).cpu())
                    del hidden, input_ids, attention_mask  # nothing of the forward outlives the use of the model
                    done += len(inputs["input_ids"])
                    if self.progress is not None:
                        self.progress(RUN, done, len(profiles))
        return torch.cat(rows)
