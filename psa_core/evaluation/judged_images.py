"""A batch of images judged for one profile (PSA Judge Image): each image's verdict, the images with their verdict
written on them, one line of text per image and whether every image passed. A judge that fails on one image
(an unreadable image, a model error) gives that image NO_VERDICT with the reason; it never passes. The batch is
checked as PSA Safety Check checks it (guard.check_image_batch): an empty batch, or a tensor that is not an image
batch, is refused naming the input, before the judge is asked anything."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, shown
from ..profile import UserProfile
from .annotate import FAIL_COLOUR, NEUTRAL_COLOUR, PASS_COLOUR, annotate
from .guard import check_image_batch, is_profile
from .judge import VLMJudge, attempt
from .judge_answers import NO_VERDICT, Verdict

COLOURS = {"PASS": PASS_COLOUR, "FAIL": FAIL_COLOUR, NO_VERDICT: NEUTRAL_COLOUR}


@dataclass
class JudgedImages:
    verdicts: list[Verdict]
    images: torch.Tensor  # the batch with each verdict written on its image
    text: str
    all_pass: bool

    def report_json(self) -> str:
        return json.dumps([{"image": i + 1, **v.to_dict()} for i, v in enumerate(self.verdicts)], indent=1)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def verdict_line(verdict: Verdict) -> str:
    if not verdict.has_verdict:
        return f"no verdict ({verdict.problem})"
    found = ", ".join(verdict.banned_categories_found or ()) or "none"
    return (f"{verdict.verdict}: quality {_score(verdict.quality_score)}, appropriateness "
            f"{_score(verdict.appropriateness_score)}, banned found: {found}; {verdict.explanation or ''}").rstrip("; ")


def judge_batch(judge: VLMJudge, images: torch.Tensor, profile: UserProfile, mode: str, caption: str | None = None,
                 on_image: Callable[[int, int], None] | None = None) -> JudgedImages:
    """Judge every image of a ComfyUI IMAGE batch (B×H×W×C, 0..1) for `profile`, the model placed once."""
    check_image_batch(images, verdict="passing")
    if not (callable(getattr(judge, "judge", None)) and callable(getattr(judge, "session", None))):
        raise InputError(f"judge: {shown(judge)} is not a judge; allowed: a PSA_JUDGE from PSA Load Judge")
    if not is_profile(profile):
        raise InputError(f"profile: {shown(profile)} is not a profile; allowed: a PSA_PROFILE (PSA User Profile, "
                         "PSA Profile From JSON)")
    verdicts: list[Verdict] = []
    with judge.session():
        for index, image in enumerate(images):
            verdict, error = attempt(lambda: judge.judge(image, profile, mode=mode, caption=caption or None))
            verdicts.append(verdict if error is None else
                            Verdict(NO_VERDICT, problem=f"not judged: {type(error).__name__}: {error}"))
            if on_image is not None:
                on_image(index + 1, len(images))
    return JudgedImages(verdicts, _annotated(images, verdicts), _text(verdicts, profile, mode),
                        all(v.verdict == "PASS" for v in verdicts))


def _annotated(images: torch.Tensor, verdicts: Sequence[Verdict]) -> torch.Tensor:
    rows = []
    for image, verdict in zip(images, verdicts):
        title = verdict.verdict.replace("_", " ")
        detail = (f"Q {_score(verdict.quality_score)} / A {_score(verdict.appropriateness_score)}: "
                  f"{verdict.explanation or ''}" if verdict.has_verdict else verdict.problem or "")
        pixels = annotate(image.detach().float().cpu().numpy(), title, detail, COLOURS[verdict.verdict])
        rows.append(torch.from_numpy(np.ascontiguousarray(pixels)))
    return torch.stack(rows).to(images.dtype) if rows else images


def _text(verdicts: Sequence[Verdict], profile: UserProfile, mode: str) -> str:
    passed = sum(v.verdict == "PASS" for v in verdicts)
    missing = sum(not v.has_verdict for v in verdicts)
    head = (f"PSA Judge Image ({mode} prompt): {passed} of {len(verdicts)} images PASS, {missing} without a verdict; "
            f"profile bans: {', '.join(profile.banned) or 'nothing'}")
    return "\n".join([head] + [f"image {i + 1}: {verdict_line(v)}" for i, v in enumerate(verdicts)])
