"""A vision-language judge (docs/evaluation.md §1): pass rate (one image) and win rate (a pair of images).

`VLMJudge(answer_fn)` puts prompts (judge_prompts.py) and images to `answer_fn(prompt_text, images) -> str` and
reads the answers strictly (judge_answers.py). `VLMJudge.from_folder` makes the answer function of a local chat
vision-language model through transformers (Qwen2-VL, Qwen2.5-VL, or any folder `AutoModelForImageTextToText` and
`AutoProcessor` load with local files only; nothing is downloaded): the processor's chat template with one user
message holding the prompt text, then the images, and the sampling settings of judge_settings.py: greedy decoding
(`do_sample=False`) at temperature 0; above it, sampling from a seed made of the call's prompt and images
(`sampling_seed`), so either way the same inputs give the same answer.

Each call tells an answer function that sets `takes_kind = True` its kind (`kind=IMAGE` or `kind=PAIR`, e.g. for
the most tokens of each kind); any other `answer_fn(prompt_text, images)` is called as before. Where the model runs is the placement's business (psa_core/encoders/placement.py): by default the
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
from .judge_settings import (
    DEFAULT_MAX_NEW_TOKENS,
    IMAGE,
    MAX_NEW_TOKENS_LIMIT,
    PAIR,
    JudgeSettings,
    check_max_tokens,
    sampling_seed,
)

AnswerFn = Callable[[str, Sequence[Image.Image]], str]
T = TypeVar("T")
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
                    should_stop: ShouldStop | None = None, settings: JudgeSettings | None = None) -> VLMJudge:
        """The judge of a local transformers vision-language model folder (module docstring): greedy with
        `max_new_tokens` for every call, unless `settings` says otherwise."""
        model = TransformersVLM(folder, device, dtype, placement, max_new_tokens, should_stop, settings=settings)
        return cls(model, description=model.settings())

    def settings(self) -> dict:
        return dict(self.description)

    @contextlib.contextmanager
    def session(self) -> Iterator[VLMJudge]:
        """Keep the model placed for every call inside the `with` (an answer function without one: nothing)."""
        enter = getattr(self.answer_fn, "session", None)
        with (enter() if enter is not None else contextlib.nullcontext()):
            yield self

    def ask(self, prompt: str, images: Sequence[Image.Image], kind: str) -> str:
        """The answer function's answer, telling it the call's kind when it takes one (module docstring)."""
        if getattr(self.answer_fn, "takes_kind", False):
            return self.answer_fn(prompt, images, kind=kind)
        return self.answer_fn(prompt, images)

    def judge(self, image: object, profile: UserProfile, *, mode: str = BLIND, caption: str | None = None,
              file_name: str | None = None) -> Verdict:
        """One image (a path, PIL image, array or tensor; ImageReadError when it cannot be read) judged for
        `profile`. An answer that is not a complete verdict is NO_VERDICT."""
        check_mode(mode)
        if caption is not None:
            check_text(caption, "caption")
        picture = load_image(image)
        return parse_verdict(self.ask(single_prompt(profile, mode, caption=caption, file_name=file_name),
                                      [picture], IMAGE))

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
        ab = parse_comparison(self.ask(prompt, [first, second], PAIR))
        if mode == REFERENCE:
            return PairVerdict(ab.better, mode, (ab,))
        ba = parse_comparison(self.ask(prompt, [second, first], PAIR))
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
    """The answer function of a local transformers vision-language model:
    `(prompt_text, images, kind=IMAGE) -> answer`, with `settings` (default: greedy, `max_new_tokens` for each kind).
    JSON mode is a server's feature: a local model has none (settings with it on are refused)."""

    takes_kind = True

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 placement=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, should_stop: ShouldStop | None = None,
                 settings: JudgeSettings | None = None):
        from ..encoders.llm import model_fingerprint, read_model_config
        from ..encoders.placement import SingleDevice

        self.folder = check_judge_folder(folder)
        if settings is None:
            settings = JudgeSettings.greedy(check_max_tokens(max_new_tokens))
        if settings.json_mode:
            raise EvaluationError("JSON mode is not available with a local judge model (it is a server's "
                                  "response_format); allowed: JSON mode off, or a judge server")
        self.judge_settings = settings
        try:
            self.config = read_model_config(self.folder)
        except Exception as error:  # noqa: BLE001 - the encoder's message names the folder; keep this one's type
            raise EvaluationError(f"judge folder {self.folder}: {error}") from None
        self.device, self.dtype = torch.device(device), dtype
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
                "dtype": str(self.dtype).removeprefix("torch."),
                "decoding": "sampling, seeded by each call's prompt and images" if self.judge_settings.samples
                else "greedy", **self.judge_settings.to_dict()}

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
                                        cached_tokens=4096 + self.judge_settings.most_tokens)
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

    def __call__(self, prompt: str, images: Sequence[Image.Image], kind: str = IMAGE) -> str:
        with self.session():
            return self._generate(self._placed, prompt, images, kind)

    def _generate(self, placed, prompt: str, images: Sequence[Image.Image], kind: str) -> str:
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
        settings = self.judge_settings
        # Whatever sampling settings the checkpoint ships are replaced: greedy at temperature 0; above it, plain
        # temperature sampling (no top-k, top-p 1, as a chat-completions server's defaults) from a seed of this
        # call's inputs, so answers are reproducible either way.
        config.do_sample, config.num_beams, config.max_new_tokens = settings.samples, 1, settings.tokens_for(kind)
        config.temperature = settings.temperature if settings.samples else None
        config.top_p, config.top_k = (1.0, 0) if settings.samples else (None, None)
        with torch.inference_mode(), _seeded(placed.device, sampling_seed(prompt, images, kind) if settings.samples
                                             else None):
            output = model.generate(**inputs, generation_config=config,
                                    stopping_criteria=stopping_criteria(self.should_stop))
        start = inputs["input_ids"].shape[1]
        return self.processor.batch_decode(output[:, start:], skip_special_tokens=True)[0]


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int | None) -> Iterator[None]:
    """With a seed: the CPU generator and `device`'s seeded for the `with`, and restored afterwards (the caller's
    random state is not touched); without one: nothing."""
    if seed is None:
        yield
        return
    cuda = torch.device(device).type == "cuda"
    index = torch.device(device).index if cuda and torch.device(device).index is not None else (
        torch.cuda.current_device() if cuda else None)
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "IMAGE",
    "MAX_NEW_TOKENS_LIMIT",
    "NO_VERDICT",
    "PAIR",
    "AnswerFn",
    "JudgeSettings",
    "PairVerdict",
    "TransformersVLM",
    "VLMJudge",
    "attempt",
    "check_judge_folder",
]
