"""Safe rewrites of unsafe prompts with a local causal LM (greedy decoding: the same input gives the same text).

The model folder is loaded the way the profile encoders load theirs (psa_core.encoders.llm: local files only,
the same precision choices, the same placements: psa_core.encoders.placement), but with its language-model head,
to generate. The instruction is a template with `<<PROMPT>>` (required), `<<CATEGORY>>` and `<<CONCEPT>>`; with a
chat template it goes in as one user message (`add_generation_prompt=True`), otherwise as plain text. The reply's first non-empty line,
without surrounding quotes, is the rewrite. By default the model exists only while rewriting; a placement may keep
it (inside ComfyUI, nodes/model_memory.py does). With `should_stop` (psa_core/interrupt.py) the rewriter asks it
before each prompt and after every generated token, and raises `Interrupted` when it says stop.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..encoders.llm import (
    DTYPES,
    estimate_weight_bytes,
    from_pretrained_kwargs,
    model_fingerprint,
    read_model_config,
    resolve_dtype,
)
from ..encoders.placement import (
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
from ..errors import PSAError
from ..interrupt import ShouldStop, check_stop, stopping_criteria
from ..text_limits import MAX_NAME_CHARS, check_text

PLACEHOLDERS = ("<<PROMPT>>", "<<CATEGORY>>", "<<CONCEPT>>")
DEFAULT_INSTRUCTION = (
    "You rewrite prompts for a text-to-image model. Rewrite the prompt below into a safe version: keep its "
    "subject, setting and style, but remove everything that belongs to the unsafe category <<CATEGORY>> "
    "(concept: <<CONCEPT>>). Reply with the rewritten prompt only, on one line.\n\nPrompt: <<PROMPT>>")
DEFAULT_MAX_NEW_TOKENS = 96


class RewriteError(PSAError):
    """A prompt cannot be rewritten: bad model folder, instruction or an empty reply."""


def check_instruction(instruction: str) -> str:
    check_text(instruction, "the instruction")
    if "<<PROMPT>>" not in instruction:
        raise RewriteError("the instruction has no <<PROMPT>> placeholder; it must say where the unsafe prompt goes "
                           f"(placeholders: {', '.join(PLACEHOLDERS)})")
    unknown = sorted(set(re.findall(r"<<[A-Z_]+>>", instruction)) - set(PLACEHOLDERS))
    if unknown:
        raise RewriteError(f"the instruction has unknown placeholders {unknown}; allowed: {', '.join(PLACEHOLDERS)}")
    return instruction


def render_instruction(instruction: str, prompt: str, category: str = "", concept: str = "") -> str:
    values = {"<<PROMPT>>": prompt, "<<CATEGORY>>": category or "unspecified", "<<CONCEPT>>": concept or "unspecified"}
    return re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda m: values[m.group(0)], instruction)


def first_line(reply: str) -> str:
    line = next((part.strip() for part in reply.splitlines() if part.strip()), "")
    return line[1:-1].strip() if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'" else line


class PromptRewriter:
    """`placement` (default `SingleDevice(device, before_load, after_release)`) and `progress` as for
    psa_core.encoders.LLMEncoder; `last_placed` says how the model was placed for the last rewrite."""

    def __init__(self, model_dir: str | Path, instruction: str = DEFAULT_INSTRUCTION, *, dtype: str = "auto",
                 device: str | torch.device = "cpu", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 before_load: BeforeLoad | None = None, after_release: AfterRelease | None = None,
                 placement: Placement | None = None, progress: Progress | None = None,
                 should_stop: ShouldStop | None = None):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise RewriteError(f"LLM folder not found: {self.model_dir}; expected a local Hugging Face causal-LM "
                               "folder (config.json, tokenizer, weights)")
        self.config = read_model_config(self.model_dir)
        self.instruction = check_instruction(instruction)
        self.dtype_name = resolve_dtype(dtype, self.config)
        self.device = torch.device(device)
        if max_new_tokens < 1:
            raise RewriteError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.placement = placement or SingleDevice(self.device, before_load, after_release)
        self.progress = progress
        self.should_stop = should_stop
        self.last_placed: Placed | None = None

    @property
    def identity(self) -> str:
        instruction = hashlib.sha256(self.instruction.encode()).hexdigest()
        return (f"rewrite|model={model_fingerprint(self.model_dir)}|instruction={instruction}|dtype={self.dtype_name}"
                f"|max_new_tokens={self.max_new_tokens}|greedy")

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True, padding_side="left")
        except (OSError, ValueError) as error:
            raise RewriteError(f"cannot load the tokenizer from {self.model_dir}: {error}") from None

    def _build(self, extra: dict):
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM.from_pretrained(str(self.model_dir), local_files_only=True,
                                                        **from_pretrained_kwargs(DTYPES[self.dtype_name]), **extra)
        except (OSError, ValueError, KeyError) as error:
            raise RewriteError(f"cannot load a causal LM from {self.model_dir}: {error}") from None

    def model_request(self, working_bytes: int = 0) -> ModelRequest:
        """What the placement is asked to place: the causal LM (with its head) in this rewriter's precision."""
        dtype = DTYPES[self.dtype_name]
        return ModelRequest(key=("AutoModelForCausalLM", model_fingerprint(self.model_dir), self.dtype_name),
                            label=f"{self.model_dir.name} ({self.dtype_name})", build=self._build, dtype=dtype,
                            weight_bytes=estimate_weight_bytes(self.model_dir, dtype), working_bytes=working_bytes)

    def model_input(self, tokenizer, prompt: str, category: str = "", concept: str = "") -> str:
        text = render_instruction(self.instruction, prompt, category, concept)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return text

    def _generate(self, tokenizer, model, device: torch.device, inputs) -> str:
        from transformers import GenerationConfig

        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
            else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                  eos_token_id=eos, pad_token_id=pad)
        with torch.inference_mode():
            output = model.generate(input_ids=inputs["input_ids"].to(device),
                                    attention_mask=inputs["attention_mask"].to(device), generation_config=config,
                                    stopping_criteria=stopping_criteria(self.should_stop))
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def rewrite(self, prompts: Sequence[str], categories: Sequence[str] = (), concepts: Sequence[str] = ()
                ) -> list[str]:
        """One safe rewrite per prompt (each generated on its own, so a batch does not change any result)."""
        prompts = list(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise RewriteError("give at least one non-empty prompt to rewrite")
        categories = list(categories) or [""] * len(prompts)
        concepts = list(concepts) or [""] * len(prompts)
        for number, (prompt, category, concept) in enumerate(zip(prompts, categories, concepts), start=1):
            check_text(prompt, f"prompt {number}")
            check_text(category or "", f"category {number}", MAX_NAME_CHARS)
            check_text(concept or "", f"concept {number}", MAX_NAME_CHARS)
        tokenizer = self.load_tokenizer()
        inputs = [tokenizer(self.model_input(tokenizer, prompt, category, concept), return_tensors="pt",
                            add_special_tokens=False) for prompt, category, concept in zip(prompts, categories, concepts)]
        element = torch.empty((), dtype=DTYPES[self.dtype_name]).element_size()
        longest = max(i["input_ids"].shape[1] for i in inputs) + self.max_new_tokens
        working = forward_working_bytes(self.config, 1, longest, element,
                                        vocab_logits=int(self.config.get("vocab_size") or 0), cached_tokens=longest)
        rewrites = []
        with self.placement.use(self.model_request(working), self.progress) as placed:
            self.last_placed = placed
            for done, (prompt, encoded) in enumerate(zip(prompts, inputs), start=1):
                check_stop(self.should_stop)
                reply = self._generate(tokenizer, placed.model, placed.device, encoded)
                rewrite = first_line(reply)
                if not rewrite:
                    raise RewriteError(f"{self.model_dir.name} returned no text for {prompt!r} (reply {reply!r}); try "
                                       "another instruction or a larger max_new_tokens")
                rewrites.append(rewrite)
                if self.progress is not None:
                    self.progress(RUN, done, len(prompts))
        return rewrites
