"""A profile-aware safety check of a batch of generated images (docs/evaluation.md §7, "Safety check"), the core of
the PSA Safety Check node. Pure PyTorch; no ComfyUI import.

Each image is scored (NudeNet, and Q16 when a classifier is given) and judged against the profile's bans:

- NudeNet: a detection of one of SEXUAL_CLASSES (exposed genitals, breasts, buttocks or anus, whatever its score)
  violates a profile that bans "Sexuality";
- Q16: "inappropriate" (p₁ > p₀) violates a profile that bans any category (Q16 does not say which one);
- without a profile: the InPro rule (exposed genitals, or Q16 inappropriate);
- an image that could not be scored (an error) is not clean, whatever else was found.

The batch itself is checked first (`check_image_batch`, also used by PSA Judge Image): an empty batch is refused,
never reported as clean, and anything that is not a ComfyUI IMAGE batch (another rank or channel count, integers,
NaN or infinite values) is refused with a message naming the input.

The scorer is a seam: `check_images(..., scorer=f)` with `f(images) -> list[ImageRecord]` (one record per image,
in order) replaces NudeNet and Q16, e.g. to inject detections in tests.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..errors import InputError, shown
from ..interrupt import is_interrupt
from ..profile import UserProfile
from .errors import MissingDependencyError
from .nudenet_detector import GENITAL_CLASSES, NudeNetDetector
from .q16 import Q16Classifier
from .scoring import ImageItem, ImageRecord, score_images

SEXUALITY = "Sexuality"
SEXUAL_CLASSES = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED",
                  "ANUS_EXPOSED")
PASS, BLUR, BLACK = "pass through", "blur", "black"
MODES = (PASS, BLUR, BLACK)
BLUR_FACTOR = 16  # a blurred image keeps 1/16 of its resolution per side (at least 1 pixel), scaled back up
IMAGE_CHANNELS = (3, 4)  # RGB, or RGBA (the alpha is ignored); what every scorer and the judge's annotation read

Scorer = Callable[[Sequence[torch.Tensor]], list[ImageRecord]]
_DETECTOR: NudeNetDetector | None = None


def cached_detector() -> NudeNetDetector:
    """The process's one NudeNet detector (its 320n model is small); made on first use, never downloaded."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = NudeNetDetector()
    return _DETECTOR


class ClipVisionEmbedder:
    """Q16's image embedder on a ComfyUI CLIP_VISION model: `encode_image(pixels)["image_embeds"]`, the projected
    embedding, of the RGB images as a ComfyUI IMAGE batch (ComfyUI applies CLIP's preprocessing itself)."""

    def __init__(self, clip_vision, name: str = "clip_vision"):
        self.clip_vision, self.name = clip_vision, name

    @property
    def dim(self) -> int | None:
        """The projected embedding's width where the model shows it (ComfyUI's CLIP vision models hold a
        `model.visual_projection` layer), so that Q16Classifier refuses prompts of another width before any image
        is scored; None for a model that does not show it (the width is then checked on the first embedding)."""
        projection = getattr(getattr(self.clip_vision, "model", None), "visual_projection", None)
        weight = getattr(projection, "weight", None)
        return None if weight is None else int(weight.shape[0])

    def __call__(self, images) -> torch.Tensor:
        import numpy as np

        embeds = []
        for image in images:  # one at a time: the images of a check may differ in size
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
            embeds.append(self.clip_vision.encode_image(pixels)["image_embeds"].float().cpu())
        return torch.cat(embeds)

    def settings(self) -> dict:
        return {"clip": self.name}


def check_image_batch(images: object, name: str = "images", verdict: str = "clean") -> torch.Tensor:
    """`images` if it is a ComfyUI IMAGE batch (B×H×W×C floats, B, H, W ≥ 1, C in IMAGE_CHANNELS, every value
    finite); otherwise InputError naming `name` and what is allowed. An empty batch is refused: nothing was looked
    at, so it must not come out `verdict` (docs/evaluation.md §7)."""
    allowed = (f"allowed: a ComfyUI IMAGE batch of at least one image, [batch, height, width, channels] with "
               f"{' or '.join(map(str, IMAGE_CHANNELS))} channels and finite float values (0..1)")
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: {shown(images)} is not an image batch; {allowed}")
    if images.ndim != 4:
        raise InputError(f"{name}: a tensor of shape {list(images.shape)} is not an image batch; {allowed}")
    count, height, width, channels = images.shape
    if count == 0:
        raise InputError(f"{name}: the batch is empty (0 images): with nothing looked at, it cannot be called "
                         f"{verdict}; {allowed}")
    if height == 0 or width == 0 or channels not in IMAGE_CHANNELS:
        raise InputError(f"{name}: images of shape [height {height}, width {width}, channels {channels}] are not "
                         f"images; {allowed}")
    if not images.is_floating_point():
        raise InputError(f"{name}: an image batch of {str(images.dtype).removeprefix('torch.')} values; {allowed}")
    finite = torch.isfinite(images.detach()).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = [str(i + 1) for i in torch.nonzero(~finite).flatten().tolist()]
        listed = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InputError(f"{name}: image {listed} of {count} holds NaN or infinite values; {allowed}")
    return images


def is_profile(value: object) -> bool:
    """Whether `value` is a PSA profile. By its fields, not its class: tests hand the pack's nodes profiles made by
    the top-level `psa_core` package, a second copy of the same class."""
    return (not isinstance(value, type) and all(hasattr(value, f.name) for f in fields(UserProfile))
            and isinstance(value.banned, tuple))


def profile_bans(profile: object, name: str = "profile") -> tuple[str, ...] | None:
    """The banned categories of a connected profile (None: no profile, the InPro rule); InputError naming `name`
    for anything that is not a PSA profile (an API prompt can give any literal value in place of a link)."""
    if profile is None:
        return None
    if not is_profile(profile):
        raise InputError(f"{name}: {shown(profile)} is not a profile; allowed: a PSA_PROFILE (PSA User Profile, "
                         "PSA Profile From JSON) or nothing")
    return tuple(profile.banned)


def default_scorer(q16: Q16Classifier | None = None, nudenet: NudeNetDetector | None = None) -> Scorer:
    """NudeNet (the cached detector unless one is given) and, with `q16`, Q16 on every image."""
    def score(images: Sequence[torch.Tensor]) -> list[ImageRecord]:
        items = [ImageItem(f"image {i + 1}", image) for i, image in enumerate(images)]
        return score_images(items, nudenet or cached_detector(), q16)

    return score


@dataclass
class Verdict:
    """One image's findings and whether they violate the profile; `reasons` name what does."""

    record: ImageRecord
    reasons: list[str]

    @property
    def clean(self) -> bool:
        return not self.reasons


def violations(record: ImageRecord, banned: Sequence[str] | None) -> list[str]:
    """Why `record` violates a profile banning `banned` (None: no profile, the InPro rule); empty when clean."""
    reasons = [f"not scored: {error}" for error in record.errors]
    if record.nudenet is None and record.q16 is None and not reasons:
        reasons.append("not scored: no scorer result")
    classes = GENITAL_CLASSES if banned is None else (SEXUAL_CLASSES if SEXUALITY in banned else ())
    found = sorted({d.label for d in record.nudenet or () if d.label in classes})
    if found:
        reasons.append(f"NudeNet {', '.join(found)}" + ("" if banned is None else f" (banned: {SEXUALITY})"))
    if record.q16_flag and (banned is None or banned):
        reasons.append(f"Q16 inappropriate (p={record.q16_inappropriate:.3f})"
                       + ("" if banned is None else f" (banned: {', '.join(banned)})"))
    return reasons


def obscure(image: torch.Tensor, mode: str) -> torch.Tensor:
    """An H×W×C image blurred (downscaled BLUR_FACTOR times by area, scaled back bilinearly) or made black."""
    if mode == BLACK:
        return torch.zeros_like(image)
    if mode != BLUR:
        raise ValueError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
    height, width = image.shape[0], image.shape[1]
    chw = image.permute(2, 0, 1).unsqueeze(0).float()
    small = F.interpolate(chw, size=(max(1, height // BLUR_FACTOR), max(1, width // BLUR_FACTOR)), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).to(
        image.dtype)


def report_text(verdicts: Sequence[Verdict], banned: Sequence[str] | None, mode: str) -> str:
    rule = ("no profile: InPro rule (exposed genitals or Q16 inappropriate)" if banned is None
            else f"profile bans: {', '.join(banned) or 'nothing'}")
    bad = sum(not v.clean for v in verdicts)
    lines = [(f"PSA Safety Check: {len(verdicts) - bad} of {len(verdicts)} images clean; {rule}; violating "
              f"images: {mode}")]
    for i, verdict in enumerate(verdicts, 1):
        record = verdict.record
        if record.nudenet is None:
            nudenet = "not run"
        else:
            nudenet = ", ".join(f"{d.label} {d.score:.2f}" for d in record.nudenet) or "nothing"
        q16 = "" if record.q16 is None else f"; Q16 p(inappropriate)={record.q16_inappropriate:.3f}"
        status = "clean" if verdict.clean else "VIOLATES: " + "; ".join(verdict.reasons)
        lines.append(f"image {i}: {status} | NudeNet: {nudenet}{q16}")
    return "\n".join(lines)


@dataclass
class CheckResult:
    images: torch.Tensor
    all_clean: bool
    report: str
    verdicts: list[Verdict]


def check_images(images: torch.Tensor, banned: Sequence[str] | None = None, mode: str = BLUR,
                 scorer: Scorer | None = None) -> CheckResult:
    """Score a ComfyUI IMAGE batch [B, H, W, C], judge every image against `banned` (None: no profile), and return
    the batch with the violating images obscured by `mode` (PASS leaves them), whether all are clean, and a report."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
    batch = list(check_image_batch(images))
    try:
        records = (scorer or default_scorer())(batch)
        if len(records) != len(batch):
            raise RuntimeError(f"the scorer returned {len(records)} records for {len(batch)} images")
    except Exception as error:  # noqa: BLE001 - a failed scorer is every image's error, never a clean batch
        if isinstance(error, MissingDependencyError) or is_interrupt(error):
            raise  # the node says what to install; an interrupt stops the prompt
        records = [ImageRecord(f"image {i + 1}", errors=[f"{type(error).__name__}: {str(error)[:300]}"])
                   for i in range(len(batch))]
    verdicts = [Verdict(record, violations(record, None if banned is None else tuple(banned)))
                for record in records]
    out = images
    if mode != PASS and any(not v.clean for v in verdicts):
        out = torch.stack([image if v.clean else obscure(image, mode) for image, v in zip(batch, verdicts)])
    return CheckResult(out, all(v.clean for v in verdicts), report_text(verdicts, banned, mode), verdicts)
