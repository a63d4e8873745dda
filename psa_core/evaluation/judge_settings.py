"""How the judge samples its answers (docs/evaluation.md §8, "Sampling settings"): temperature, the most tokens per
answer for each kind of call (one image, a pair) and JSON mode. One source of truth for the defaults of each prompt
mode and for the allowed values.

`reference` mode takes the reference scripts' settings (temperature 0.1, `response_format` `json_object`, 800 tokens
for one image, 1200 for a pair); `blind` keeps greedy decoding (temperature 0), no JSON mode and 512 tokens. Any
setting given explicitly overrides the mode's. JSON mode is a server's feature (an OpenAI-compatible endpoint); a
local model has none, so there it is off.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .errors import EvaluationError
from .judge_prompts import BLIND, REFERENCE

IMAGE, PAIR = "image", "pair"  # the kinds of call: one image judged, two images compared
KINDS = (IMAGE, PAIR)
DEFAULT_MAX_NEW_TOKENS = 512
MAX_NEW_TOKENS_LIMIT = 8192
TEMPERATURE_RANGE = (0.0, 2.0)  # the range OpenAI-compatible servers accept
JSON_MODES = ("on", "off")
# Per prompt mode: (temperature, {kind: max tokens}, json mode). Reference: evaluate_images.py and compare_images.py.
MODE_DEFAULTS = {
    BLIND: (0.0, {IMAGE: DEFAULT_MAX_NEW_TOKENS, PAIR: DEFAULT_MAX_NEW_TOKENS}, False),
    REFERENCE: (0.1, {IMAGE: 800, PAIR: 1200}, True),
}


def check_temperature(value: object, name: str = "temperature") -> float:
    """`value` as a float when it is within TEMPERATURE_RANGE; EvaluationError naming `name` otherwise."""
    low, high = TEMPERATURE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise EvaluationError(f"{name} {value!r} is not allowed; allowed: {low:g} to {high:g} (0: greedy, the same "
                              f"answer every time)")
    return float(value)


def check_max_tokens(value: object, name: str = "max_new_tokens") -> int:
    """`value` when it is an int from 1 to MAX_NEW_TOKENS_LIMIT; EvaluationError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
        raise EvaluationError(f"{name} {value!r} is not allowed; allowed: 1 to {MAX_NEW_TOKENS_LIMIT}")
    return value


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise EvaluationError(f"judge call kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class JudgeSettings:
    """Sampling settings of a judge. `max_tokens` holds the limit per kind of call (IMAGE, PAIR)."""

    temperature: float = 0.0
    max_tokens: tuple[tuple[str, int], ...] = ((IMAGE, DEFAULT_MAX_NEW_TOKENS), (PAIR, DEFAULT_MAX_NEW_TOKENS))
    json_mode: bool = False

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        limits = dict(self.max_tokens)
        if set(limits) != set(KINDS):
            raise EvaluationError(f"max_tokens needs one limit for each kind of call ({', '.join(KINDS)})")
        for kind, value in limits.items():
            check_max_tokens(value, f"max_new_tokens ({kind})")

    @classmethod
    def for_mode(cls, mode: str, *, temperature: float | None = None, max_tokens: int | None = None,
                 json_mode: bool | None = None) -> JudgeSettings:
        """The settings of prompt mode `mode`, each one given (not None) overriding the mode's default;
        `max_tokens` sets the limit of both kinds of call."""
        if mode not in MODE_DEFAULTS:
            raise EvaluationError(f"judge mode {mode!r} is not allowed; allowed: {', '.join(MODE_DEFAULTS)}")
        default_temperature, default_tokens, default_json = MODE_DEFAULTS[mode]
        tokens = dict(default_tokens) if max_tokens is None else {kind: max_tokens for kind in KINDS}
        return cls(default_temperature if temperature is None else temperature,
                   tuple((kind, tokens[kind]) for kind in KINDS), default_json if json_mode is None else json_mode)

    @classmethod
    def greedy(cls, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> JudgeSettings:
        check_max_tokens(max_new_tokens)
        return cls(0.0, tuple((kind, max_new_tokens) for kind in KINDS), False)

    def tokens_for(self, kind: str) -> int:
        return dict(self.max_tokens)[check_kind(kind)]

    @property
    def most_tokens(self) -> int:
        return max(dict(self.max_tokens).values())

    @property
    def samples(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict:
        """What a report records under settings.judge."""
        return {"temperature": self.temperature, "max_tokens": dict(self.max_tokens), "json_mode": self.json_mode}


def sampling_seed(prompt: str, images: Sequence[Image.Image], kind: str) -> int:
    """A 63-bit seed from the call's kind, prompt and images (size, mode and pixels): the same call gets the same
    seed in every run, so a sampling local model gives the same answer again."""
    digest = hashlib.sha256(check_kind(kind).encode() + b"\0" + prompt.encode("utf-8"))
    for image in images:
        digest.update(f"\0{image.mode}:{image.size[0]}x{image.size[1]}\0".encode())
        digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "IMAGE",
    "JSON_MODES",
    "KINDS",
    "MAX_NEW_TOKENS_LIMIT",
    "MODE_DEFAULTS",
    "PAIR",
    "TEMPERATURE_RANGE",
    "JudgeSettings",
    "check_max_tokens",
    "check_temperature",
    "sampling_seed",
]
