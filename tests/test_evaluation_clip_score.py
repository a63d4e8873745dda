"""CLIPScore (psa_core/evaluation/clip_score.py) against an independent implementation written here from the
definition of docs/evaluation.md §1 (100 · cos of the image and caption embeddings, not clipped), on a small
CLIPModel built from a config and saved with a locally written tokenizer (nothing is downloaded)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from numerics import FLOAT64_SLACK, assert_within_float32_noise
from PIL import Image
from torchvision import transforms
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from psa_core.evaluation import EvaluationError
from psa_core.evaluation.clip_score import (
    CLIPScorer,
    clip_scores_from_embeddings,
    summarize_clip_scores,
)
from testkit.models import tokenizer_vocab_size, write_tokenizer

# Written out from the protocol, not imported from the code under test.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TOKENS = 16
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 224, "patch_size": 32}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "vocab_size": tokenizer_vocab_size(), "max_position_embeddings": MAX_TOKENS,
        "bos_token_id": tokenizer_vocab_size() - 2, "eos_token_id": tokenizer_vocab_size() - 1,
        "pad_token_id": tokenizer_vocab_size() - 1}
CAPTIONS = ["a cat", "A photo of a dog on a beach at sunset, highly detailed", "x", "two  birds\tin a tree",
            "an extremely long caption that goes on and on well past sixteen byte tokens"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)).eval()
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def sample_images(count: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(11)
    sizes = [(224, 224), (300, 200), (200, 300), (513, 512), (64, 48)]
    images = []
    for width, height in sizes[:count]:
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((width, height), Image.BILINEAR)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        images.append(Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)))
    return images


def naive_pixels(image: Image.Image) -> torch.Tensor:
    """OpenAI CLIP's (and open_clip's for ViT-H-14) transform, built from torchvision."""
    transform = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])
    return transform(image.convert("RGB"))


def naive_token_ids(tokenizer, caption: str) -> list[int]:
    """Start token, the caption's tokens, end token; a caption longer than the model's positions keeps its first
    MAX_TOKENS − 2 tokens and the end token (as open_clip's tokenizer does)."""
    ids = tokenizer(caption)["input_ids"]
    return ids if len(ids) <= MAX_TOKENS else ids[:MAX_TOKENS - 1] + [ids[-1]]


def naive_clip_scores(model: CLIPModel, tokenizer, images, captions) -> torch.Tensor:
    """One image and one caption at a time, no padding: the text embedding is the projected final hidden state at
    the last (end-of-text) position; 100 · cos in Python floats."""
    dtype = next(model.parameters()).dtype
    scores = []
    with torch.no_grad():
        for image, caption in zip(images, captions):
            pixels = naive_pixels(image)[None].to(dtype)
            f = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)[0]
            ids = torch.tensor([naive_token_ids(tokenizer, caption)])
            t = model.text_projection(model.text_model(input_ids=ids).last_hidden_state[0, -1])
            f, t = [float(v) for v in f], [float(v) for v in t]
            dot = sum(a * b for a, b in zip(f, t))
            scores.append(100.0 * dot / (math.sqrt(sum(a * a for a in f)) * math.sqrt(sum(b * b for b in t))))
    return torch.tensor(scores, dtype=torch.float64)


@pytest.fixture(scope="module")
def reference(clip_folder):
    model = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
    images = sample_images()
    exact = naive_clip_scores(copy.deepcopy(model).double(), tokenizer, images, CAPTIONS)
    float32 = naive_clip_scores(model, tokenizer, images, CAPTIONS)
    return images, exact, float32


def test_clip_score_matches_the_definition_on_a_small_clip(clip_folder, reference, one_thread):
    images, exact, reference_float32 = reference
    tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
    assert len(tokenizer(CAPTIONS[-1])["input_ids"]) > MAX_TOKENS, "the long caption would not test truncation"
    scorer = CLIPScorer.from_folder(clip_folder)
    assert scorer.max_length == MAX_TOKENS and scorer.settings()["clipped_at_zero"] is False
    # Batches of 2 (padded to the longest caption of each batch), and the paths and arrays load_image takes.
    inputs = [images[0], np.asarray(images[1]), images[2], images[3], torch.from_numpy(np.asarray(images[4]).copy())]
    ours = torch.tensor(scorer.clip_score(inputs, CAPTIONS, batch_size=2), dtype=torch.float64)
    assert ours.shape == (5,)
    # Float32 model against its float64 run: the bound is measured on this CPU (tests/numerics.py).
    assert_within_float32_noise(ours, exact, reference_float32, "CLIPScores")
    assert exact.abs().min() > 0.1 and exact.std() > 1.0, "scores too alike: the check would be weak"
    # In float64 end to end only float64 rounding remains (≪ 1e-9 of the 100 · cos scale).
    scorer64 = CLIPScorer.from_folder(clip_folder, dtype=torch.float64)
    ours64 = torch.tensor(scorer64.clip_score(images, CAPTIONS, batch_size=5), dtype=torch.float64)
    assert (ours64 - exact).abs().max().item() <= FLOAT64_SLACK * 100
    summary = summarize_clip_scores(ours64.tolist())
    assert summary.count == 5 and summary.mean == pytest.approx(exact.mean().item(), abs=FLOAT64_SLACK * 100)
    assert summary.std == pytest.approx(exact.std().item(), abs=1e-6)


def test_a_negative_cosine_stays_negative(clip_folder, reference, one_thread):
    images, exact, _ = reference
    scorer = CLIPScorer.from_folder(clip_folder, dtype=torch.float64)
    with torch.no_grad():
        scorer.model.text_projection.weight.neg_()  # every text embedding flips: every cosine changes sign
    flipped = torch.tensor(scorer.clip_score(images, CAPTIONS), dtype=torch.float64)
    assert (flipped + exact).abs().max().item() <= FLOAT64_SLACK * 100
    assert (flipped < 0).any() and (flipped > 0).any()
    summary = summarize_clip_scores(flipped.tolist())
    assert summary.mean == pytest.approx(-exact.mean().item(), abs=FLOAT64_SLACK * 100)
    opposite = clip_scores_from_embeddings(torch.tensor([[1.0, 2.0, -3.0]]), torch.tensor([[-2.0, -4.0, 6.0]]))
    assert opposite.dtype == torch.float64 and opposite.tolist() == pytest.approx([-100.0], abs=1e-12)


def test_embedding_and_input_checks():
    with pytest.raises(EvaluationError, match="all zeros"):
        clip_scores_from_embeddings(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(EvaluationError, match="same shape"):
        clip_scores_from_embeddings(torch.ones(2, 3), torch.ones(1, 3))
    with pytest.raises(EvaluationError, match="NaN or infinite"):
        clip_scores_from_embeddings(torch.tensor([[1.0, float("nan")]]), torch.ones(1, 2))
    with pytest.raises(EvaluationError, match="no images"):
        summarize_clip_scores([])
    assert summarize_clip_scores([42.0]).std == 0.0


def test_folders_without_a_model_or_tokenizer_are_explained(tmp_path, clip_folder):
    with pytest.raises(EvaluationError, match=f"{tmp_path / 'missing'}.*no config.json"):
        CLIPScorer.from_folder(tmp_path / "missing")
    no_tokenizer = tmp_path / "no-tokenizer"
    CLIPModel.from_pretrained(clip_folder, local_files_only=True).save_pretrained(no_tokenizer)
    with pytest.raises(EvaluationError, match=f"{no_tokenizer}: no tokenizer"):
        CLIPScorer.from_folder(no_tokenizer)
    vision_only = tmp_path / "vision"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=24)).save_pretrained(vision_only)
    write_tokenizer(vision_only)
    with pytest.raises(EvaluationError, match="not a CLIPModel"):
        CLIPScorer.from_folder(vision_only)
    scorer = CLIPScorer.from_folder(clip_folder)
    with pytest.raises(EvaluationError, match="one caption per image"):
        scorer.clip_score(sample_images(2), ["only one"])
