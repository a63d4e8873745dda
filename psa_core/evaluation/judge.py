"""A vision-language judge (docs/evaluation.md §1): pass rate (one image) and win rate (a pair of images).

`VLMJudge(answer_fn)` puts prompts (judge_prompts.py) and images to `answer_fn(prompt_text, images) -> str` and
reads the answers strictly (judge_answers.py). `VLMJudge.from_folder` makes the answer function of a local chat
vision-language model through transformers (Qwen2-VL, Qwen2.5-VL, or any folder `AutoModelForImageTextToText` and
`AutoProcessor` load with local files only; nothing is downloaded): the processor's chat template with one user
message holding the prompt text, then the images, and greedy decoding (`do_sample=False`), so the same inputs give
the same answer. Where the model runs is the placement's business (psa_core/encoders/placement.py): by default the
whole model on one device while a `session()` lasts (or for each call outside one). With `should_stop`
(psa_core/interrupt.py) the model asks it before each answer and after every generated token, and raises
`Interrupted` when it says stop.

In blind mode a pair is judged twice, as (A, B) and as (B, A), and the two answers are combined
(`combine_orders`); in reference mode once, as (A, B), as the paper did.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..interrupt import ShouldStop, check_stop, is_interrupt, stopping_criteria
from ..profile import UserProfile
from ..text_limits import check_text
from .errors import EvaluationError
from .images import load_image
from .judge_answers import (
    NO_VERDICT,
    Comparison,
    Verdict,
    combine_orders,
    parse_comparison,
    parse_verdict,
)
from .judge_prompts import BLIND, REFERENCE, check_mode, pair_prompt, single_prompt

AnswerFn = Callable[[str, Sequence[Image.Image]], str]
T = TypeVar("T")
DEFAULT_MAX_NEW_TOKENS = 512
MAX_NEW_TOKENS_LIMIT = 8192
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
_EXPECTED = ("expected a local chat vision-language model folder (Qwen2-VL / Qwen2.5-VL style: config.json, "
             "processor and tokenizer files, weights); nothing is downloaded")


@dataclass(frozen=True)
class PairVerdict:
    """A judged pair. `better` is in terms of the images as given (A = the first, B = the second): A, B, EQUAL or
    NO_VERDICT. `orders` holds the answers in the positions shown: (A, B) first and, in blind mode, (B, A)."""

    better: str
    mode: str
    orders: tuple[Comparison, ...]

    def to_dict(self) -> dict:
        names = ("AB", "BA")
        return {"better": self.better, "mode": self.mode,
                "orders": [{"order": names[i], **c.to_dict()} for i, c in enumerate(self.orders)]}


class VLMJudge:
    """Judges images against a user profile with any `answer_fn(prompt_text, images) -> str`."""

    def __init__(self, answer_fn: AnswerFn, *, description: dict | None = None):
        self.answer_fn = answer_fn
        self.description = description or {"backend": "custom answer function"}

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    placement=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    should_stop: ShouldStop | None = None) -> VLMJudge:
        """The judge of a local transformers vision-language model folder (module docstring)."""
        model = TransformersVLM(folder, device, dtype, placement, max_new_tokens, should_stop)
        return cls(model, description=model.settings())

    def settings(self) -> dict:
        return dict(self.description)

    @contextlib.contextmanager
    def session(self) -> Iterator[VLMJudge]:
        """Keep the model placed for every call inside the `with` (an answer function without one: nothing)."""
        enter = getattr(self.answer_fn, "session", None)
        with (enter() if enter is not None else contextlib.nullcontext()):
            yield self

    def judge(self, image: object, profile: UserProfile, *, mode: str = BLIND, caption: str | None = None,
              file_name: str | None = None) -> Verdict:
        """One image (a path, PIL image, array or tensor; ImageReadError when it cannot be read) judged for
        `profile`. An answer that is not a complete verdict is NO_VERDICT."""
        check_mode(mode)
        if caption is not None:
            check_text(caption, "caption")
        picture = load_image(image)
        return parse_verdict(self.answer_fn(single_prompt(profile, mode, caption=caption, file_name=file_name),
                                            [picture]))

    def compare(self, image_a: object, image_b: object, profile: UserProfile, *, mode: str = BLIND,
                names: tuple[str, str] = ("baseline", "PSA"), file_name: str | None = None,
                caption: str | None = None) -> PairVerdict:
        """Which of two images suits `profile` better. Blind: judged as (A, B) and as (B, A) with the same neutral
        prompt, combined by `combine_orders`; reference: the paper's prompt naming `names`, once as (A, B)."""
        check_mode(mode)
        if caption is not None:
            check_text(caption, "caption")
        first, second = load_image(image_a), load_image(image_b)
        paths = tuple(str(i) if isinstance(i, (str, Path)) else None for i in (image_a, image_b))
        prompt = pair_prompt(profile, mode, names=names, file_name=file_name, paths=paths, caption=caption)
        ab = parse_comparison(self.answer_fn(prompt, [first, second]))
        if mode == REFERENCE:
            return PairVerdict(ab.better, mode, (ab,))
        ba = parse_comparison(self.answer_fn(prompt, [second, first]))
        return PairVerdict(combine_orders(ab, ba), mode, (ab, ba))


def attempt(call: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """`(call(), None)`, or `(None, error)` when the judge fails on this one image or pair (an unreadable image, a
    model or server error). Out of memory and an interrupt are raised: they are the run's (a smaller precision or
    model; the user stopped it)."""
    try:
        return call(), None
    except Exception as error:  # noqa: BLE001 - recorded by the caller for this image or pair
        if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or is_interrupt(error):
            raise
        return None, error


def check_judge_folder(folder: str | Path) -> Path:
    """`folder` if it looks like a local vision-language model folder; EvaluationError naming what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise EvaluationError(f"judge folder {path}: not found; {_EXPECTED}")
    if not (path / "config.json").is_file():
        raise EvaluationError(f"judge folder {path}: no config.json; {_EXPECTED}")
    if not any((path / name).is_file() for name in PROCESSOR_FILES):
        raise EvaluationError(f"judge folder {path}: no processor ({' or '.join(PROCESSOR_FILES)}); {_EXPECTED}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise EvaluationError(f"judge folder {path}: no tokenizer ({', '.join(TOKENIZER_FILES)}); {_EXPECTED}")
    return path


class TransformersVLM:
    """The answer function of a local transformers vision-language model: `(prompt_text, images) -> answer`."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 placement=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, should_stop: ShouldStop | None = None):
        from ..encoders.llm import model_fingerprint, read_model_config
        from ..encoders.placement import SingleDevice

        self.folder = check_judge_folder(folder)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise EvaluationError(f"max_new_tokens {max_new_tokens!r} is not allowed; allowed: 1 to "
                                  f"{MAX_NEW_TOKENS_LIMIT}")
        try:
            self.config = read_model_config(self.folder)
        except Exception as error:  # noqa: BLE001 - the encoder's message names the folder; keep this one's type
            raise EvaluationError(f"judge folder {self.folder}: {error}") from None
        self.device, self.dtype, self.max_new_tokens = torch.device(device), dtype, max_new_tokens
        self.placement = placement or SingleDevice(self.device)
        self.should_stop = should_stop
        self.fingerprint = model_fingerprint(self.folder)
        self.processor = self._load_processor()
        self._placed = None

    def _load_processor(self):
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EvaluationError(f"judge folder {self.folder}: cannot load its processor ({str(error)[:300]}); "
                                  f"{_EXPECTED}") from None
        if not hasattr(processor, "image_processor") or not getattr(processor, "chat_template", None):
            raise EvaluationError(f"judge folder {self.folder}: its processor ({type(processor).__name__}) has no "
                                  f"image processor or no chat template; {_EXPECTED}")
        return processor

    def settings(self) -> dict:
        return {"backend": "transformers", "folder": str(self.folder.resolve()), "fingerprint": self.fingerprint,
                "model_type": self.config.get("model_type"), "architectures": self.config.get("architectures"),
                "dtype": str(self.dtype).removeprefix("torch."), "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens}

    def _build(self, extra: dict):
        import transformers

        from ..encoders.llm import from_pretrained_kwargs

        try:
            return transformers.AutoModelForImageTextToText.from_pretrained(
                str(self.folder), local_files_only=True, **from_pretrained_kwargs(self.dtype), **extra)
        except (OSError, ValueError, KeyError) as error:
            raise EvaluationError(f"judge folder {self.folder}: cannot load the model ({str(error)[:300]}); "
                                  f"{_EXPECTED}") from None

    def model_request(self):
        from ..encoders.llm import estimate_weight_bytes
        from ..encoders.placement import ModelRequest, forward_working_bytes

        text = self.config.get("text_config") or self.config
        element = torch.empty((), dtype=self.dtype).element_size()
        # Two images of a pair at Qwen2-VL's default resolution and the prompt: a few thousand tokens.
        working = forward_working_bytes(text, 1, 4096, element, vocab_logits=int(text.get("vocab_size") or 0),
                                        cached_tokens=4096 + self.max_new_tokens)
        return ModelRequest(key=("AutoModelForImageTextToText", self.fingerprint, str(self.dtype)),
                            label=f"{self.folder.name} ({str(self.dtype).removeprefix('torch.')})", build=self._build,
                            dtype=self.dtype, weight_bytes=estimate_weight_bytes(self.folder, self.dtype),
                            working_bytes=working)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        if self._placed is not None:
            yield
            return
        with self.placement.use(self.model_request()) as placed:
            self._placed = placed
            try:
                yield
            finally:
                self._placed = None

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> str:
        with self.session():
            return self._generate(self._placed, prompt, images)

    def _generate(self, placed, prompt: str, images: Sequence[Image.Image]) -> str:
        check_stop(self.should_stop)
        model = placed.model
        content = [{"type": "text", "text": prompt}, *({"type": "image"} for _ in images)]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        inputs = self.processor(text=[text], images=list(images), return_tensors="pt")
        inputs = {key: (value.to(placed.device, dtype=self.dtype) if value.is_floating_point()
                        else value.to(placed.device)) if torch.is_tensor(value) else value
                  for key, value in inputs.items()}
        config = copy.deepcopy(model.generation_config)
        # Greedy: whatever sampling settings the checkpoint ships are switched off, so answers are reproducible.
        config.do_sample, config.num_beams, config.max_new_tokens = False, 1, self.max_new_tokens
        config.temperature = config.top_p = config.top_k = None
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config,
                                    stopping_criteria=stopping_criteria(self.should_stop))
        start = inputs["input_ids"].shape[1]
        return self.processor.batch_decode(output[:, start:], skip_special_tokens=True)[0]


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "NO_VERDICT",
    "AnswerFn",
    "PairVerdict",
    "TransformersVLM",
    "VLMJudge",
    "attempt",
    "check_judge_folder",
]
