"""CLIPScore: how well an image matches its caption (docs/evaluation.md §1, §9).

Per image, with f the CLIP image embedding and t the embedding of its caption:

    CLIPScore = 100 · cos(f, t) = 100 · f·t / (‖f‖ ‖t‖)

and a set's CLIPScore is the mean over its images. It is not clipped at 0 (torchmetrics' `CLIPScore` and the
CLIPScore paper's `w·max(cos, 0)` clip; this protocol does not), so a negative cosine gives a negative score.

The paper uses open_clip `ViT-H-14` with the `laion2b_s32b_b79k` weights. The same weights are published as a
transformers CLIPModel folder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), which is what this module reads: any local
transformers CLIPModel folder (config.json, weights, and the tokenizer files vocab.json + merges.txt or
tokenizer.json in the same folder); nothing is downloaded.

Image side: q16.clip_preprocess and q16.CLIPImageEmbedder (the projected embedding
`visual_projection(vision_model(x).pooler_output)`, the model's own image size). For this model open_clip's
evaluation transform is the same: its pretrained entry for ViT-H-14/laion2b_s32b_b79k sets no mean, std,
interpolation or resize mode, so open_clip uses its defaults, `Resize(224, bicubic)` of the short side (torchvision,
on the PIL image), `CenterCrop(224)`, `ToTensor` and `Normalize` with the OpenAI mean (0.48145466, 0.4578275,
0.40821073) and std (0.26862954, 0.26130258, 0.27577711): clip_preprocess does exactly these steps (the q16
tests compare it with that torchvision pipeline). One difference that does not arise here: open_clip converts to
RGB after resizing, clip_preprocess before; images.load_image already gives RGB, so both see the same pixels.

Text side: the CLIP tokenizer of the same folder, truncated to the text model's `max_position_embeddings` (77 for
ViT-H-14; the end-of-text token is kept last, as open_clip's tokenizer keeps it), and `get_text_features`, the
projected embedding at the end-of-text token (open_clip pools at the same position). open_clip also runs ftfy and
HTML unescaping on the caption before lower-casing; the transformers tokenizer normalises only Unicode (NFC),
white space and letter case, so captions with mojibake or HTML entities can tokenise differently.

Embeddings come out in the model's dtype; the cosine is computed in float64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EvaluationError
from .images import load_image
from .q16 import CLIPImageEmbedder, clip_folder_model_type

CLIP_SCORE_SCALE = 100.0
CLIP_SCORE_BATCH = 32
CLIP_SCORE_MODEL = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_OPTION = "CLIPScore model"
_WANTED = f"transformers CLIPModel folder such as {CLIP_SCORE_MODEL}"


def clip_scores_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """100 · cos(image_embeds[i], text_embeds[i]) for [N, D] pairs, in float64 on the CPU. Returns [N]."""
    images = image_embeds.detach().to("cpu", torch.float64)
    texts = text_embeds.detach().to("cpu", torch.float64)
    if images.ndim != 2 or images.shape != texts.shape:
        raise EvaluationError(f"CLIPScore needs image and text embeddings of the same shape [N, D]; got "
                              f"{tuple(images.shape)} and {tuple(texts.shape)}")
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise EvaluationError("the CLIP embeddings hold NaN or infinite values")
    image_norms, text_norms = images.norm(dim=-1), texts.norm(dim=-1)
    if (image_norms == 0).any() or (text_norms == 0).any():
        raise EvaluationError("a CLIP embedding is all zeros: its cosine, and so its CLIPScore, is undefined")
    return CLIP_SCORE_SCALE * (images * texts).sum(dim=-1) / (image_norms * text_norms)


@dataclass(frozen=True)
class CLIPScoreSummary:
    """Mean CLIPScore of `count` images, and the standard deviation of the per-image scores (n − 1; 0 for one)."""

    mean: float
    std: float
    count: int


def summarize_clip_scores(scores: Sequence[float]) -> CLIPScoreSummary:
    """The mean (the set's CLIPScore) and spread of per-image scores."""
    values = [float(score) for score in scores]
    if not values:
        raise EvaluationError("CLIPScore of no images: there is nothing to average")
    if not all(math.isfinite(value) for value in values):
        raise EvaluationError("a CLIPScore is NaN or infinite")
    mean = math.fsum(values) / len(values)
    spread = math.fsum((value - mean) ** 2 for value in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return CLIPScoreSummary(mean, math.sqrt(spread), len(values))


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file()
                                                     and (folder / "merges.txt").is_file())


def _pooled(output: object) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x a BaseModelOutputWithPooling holding them
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPScorer:
    """CLIPScore with a transformers CLIPModel and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: object, name: str = "clip"):
        if not (hasattr(model, "get_text_features") and hasattr(model, "visual_projection")):
            raise EvaluationError(f"{type(model).__name__} is not a CLIP model with both towers; CLIPScore needs a "
                                  f"transformers CLIPModel")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.images = CLIPImageEmbedder.from_model(model, name)
        text_config = model.config.text_config
        self.max_length = int(text_config.max_position_embeddings)
        eos = getattr(text_config, "eos_token_id", None)
        # transformers pools at the first eos_token_id of the config (at the highest id when it is the legacy 2):
        # a tokenizer with another end token would be pooled at the wrong position without any error.
        if eos is not None and eos != 2 and getattr(tokenizer, "eos_token_id", eos) != eos:
            raise EvaluationError(f"{name}: the tokenizer's end-of-text token id {tokenizer.eos_token_id} is not the "
                                  f"text model's eos_token_id {eos}; give the tokenizer of the same CLIP model")

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> CLIPScorer:
        """A transformers CLIPModel folder with its tokenizer files, read locally (nothing is downloaded)."""
        folder = Path(folder)
        model_type = clip_folder_model_type(folder, _OPTION, _WANTED)
        if model_type != "clip":
            raise EvaluationError(f"{_OPTION} {folder}: model_type {model_type!r} is not a CLIPModel ('clip'); "
                                  f"CLIPScore needs both the image and the text tower")
        if not _has_tokenizer(folder):
            raise EvaluationError(f"{_OPTION} {folder}: no tokenizer (vocab.json + merges.txt, or tokenizer.json) in "
                                  f"the folder; give the complete {_WANTED}")
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise EvaluationError(f"{_OPTION} {folder}: cannot be loaded ({str(error)[:300]})") from None
        return cls(model.to(device, dtype), tokenizer, folder.name)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def dtype(self) -> torch.dtype:
        return self.images.dtype

    def image_features(self, images: Sequence[object]) -> torch.Tensor:
        """[N, D] projected image embeddings of `images` (paths, PIL images, arrays: images.load_image)."""
        return self.images([load_image(image) for image in images])

    @torch.inference_mode()
    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """[N, D] projected text embeddings, each caption truncated to the model's max_position_embeddings tokens."""
        for caption in captions:
            if not isinstance(caption, str):
                raise EvaluationError(f"a CLIPScore caption must be text, got {type(caption).__name__}")
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                    attention_mask=tokens["attention_mask"].to(self.device)))

    def clip_score(self, images: Sequence[object], captions: Sequence[str],
                   batch_size: int = CLIP_SCORE_BATCH) -> list[float]:
        """The CLIPScore of each image with its caption (`captions[i]` for `images[i]`), `batch_size` at a time."""
        images, captions = list(images), list(captions)
        if len(images) != len(captions):
            raise EvaluationError(f"CLIPScore needs one caption per image; got {len(images)} images and "
                                  f"{len(captions)} captions")
        if batch_size < 1:
            raise EvaluationError(f"the CLIPScore batch size must be at least 1, got {batch_size}")
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            batch = clip_scores_from_embeddings(self.image_features(images[start:stop]),
                                                self.text_features(captions[start:stop]))
            scores.extend(batch.tolist())
        return scores

    def settings(self) -> dict:
        return {"clip_score_model": self.name, "image_size": self.images.image_size, "max_tokens": self.max_length,
                "embedding_dim": self.images.dim, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "scale": CLIP_SCORE_SCALE, "clipped_at_zero": False}
