"""Issue 20 items 4 and 9 on the node side: PSA Safety Check and PSA Judge Image refuse an empty image batch (it was
"0 of 0 images clean", all_clean true) and anything that is not a ComfyUI IMAGE batch, with a message naming the
input, before any scorer, model or file is touched. In-process through the node classes."""
from __future__ import annotations

import pytest
import torch

from psa_core.evaluation import VLMJudge, guard
from psa_core.evaluation.judged_images import judge_batch
from psa_core.profile import EVALUATION_USERS

LEVEL_3 = EVALUATION_USERS["level_3"]
GOOD = torch.full((2, 16, 16, 3), 0.5)
NAN_SECOND = GOOD.clone()
NAN_SECOND[1, 3, 4, 0] = float("nan")
INF_FIRST = GOOD.clone()
INF_FIRST[0, 0, 0, 2] = float("inf")

# (batch, words the refusal must hold after "images: ")
NOT_IMAGE_BATCHES = [
    (torch.zeros(0, 16, 16, 3), "the batch is empty (0 images)"),
    (torch.zeros(16, 16, 3), "a tensor of shape [16, 16, 3] is not an image batch"),
    (torch.zeros(1, 1, 16, 16, 3), "a tensor of shape [1, 1, 16, 16, 3] is not an image batch"),
    (torch.zeros(2, 16, 16, 1), "images of shape [height 16, width 16, channels 1] are not images"),
    (torch.zeros(2, 16, 16, 5), "images of shape [height 16, width 16, channels 5] are not images"),
    (torch.zeros(2, 0, 16, 3), "images of shape [height 0, width 16, channels 3] are not images"),
    (torch.zeros(2, 16, 16, 3, dtype=torch.uint8), "an image batch of uint8 values"),
    (torch.zeros(2, 16, 16, 3, dtype=torch.int64), "an image batch of int64 values"),
    (NAN_SECOND, "image 2 of 2 holds NaN or infinite values"),
    (INF_FIRST, "image 1 of 2 holds NaN or infinite values"),
    ("a string", "'a string' is not an image batch"),
    (12345, "12345 is not an image batch"),
]
ALLOWED = "allowed: a ComfyUI IMAGE batch of at least one image, [batch, height, width, channels] with 3 or 4 channels"


def refusal(call) -> str:
    """The message of the pack's InputError that `call` raises (the pack's nodes raise the pack copy's class, not
    the top-level psa_core's, so it is matched by name)."""
    with pytest.raises(Exception) as raised:
        call()
    assert type(raised.value).__name__ == "InputError", repr(raised.value)
    return str(raised.value)


def untouchable(*_):
    raise AssertionError("the scorer or judge ran on a batch that should have been refused")


@pytest.mark.parametrize("batch, problem", NOT_IMAGE_BATCHES, ids=lambda v: None if isinstance(v, str) else "")
def test_safety_check_refuses_what_is_not_an_image_batch_naming_the_input(pack, monkeypatch, batch, problem):
    monkeypatch.setattr(pack.nodes.nodes_evaluation, "default_scorer", lambda q16=None: untouchable)
    message = refusal(lambda: pack.nodes.nodes_evaluation.PSASafetyCheck.execute(images=batch, violating="blur",
                                                                                 profile=LEVEL_3))
    assert message.startswith(f"images: {problem}") and ALLOWED in message, message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize("batch, problem", NOT_IMAGE_BATCHES, ids=lambda v: None if isinstance(v, str) else "")
def test_judge_image_refuses_what_is_not_an_image_batch_naming_the_input(pack, batch, problem):
    message = refusal(lambda: pack.nodes.nodes_judge.PSAJudgeImage.execute(
        images=batch, profile=LEVEL_3, judge=VLMJudge(untouchable), mode="blind"))
    assert message.startswith(f"images: {problem}") and ALLOWED in message, message


def test_an_empty_batch_is_never_clean_nor_passing():
    """The core functions themselves (what the nodes call) refuse it: the message says why an empty batch is an
    error rather than a vacuous success."""
    empty = torch.zeros(0, 64, 64, 3)
    assert refusal(lambda: guard.check_images(empty, None, guard.BLUR, scorer=untouchable)).startswith(
        "images: the batch is empty (0 images): with nothing looked at, it cannot be called clean;")
    assert "cannot be called passing;" in refusal(lambda: judge_batch(VLMJudge(untouchable), empty, LEVEL_3, "blind"))


def test_values_outside_zero_to_one_and_rgba_are_still_images():
    """The checks refuse only what no scorer can read: finite values beyond 0..1 (which ComfyUI nodes do produce)
    and an alpha channel pass, and the scorer sees every image."""
    seen = []

    def record(images):
        seen.extend(images)
        return [guard.ImageRecord(f"image {i + 1}", nudenet=[]) for i in range(len(images))]

    batch = torch.linspace(-0.5, 1.5, 2 * 8 * 8 * 4).reshape(2, 8, 8, 4)
    result = guard.check_images(batch, ("Sexuality",), guard.BLUR, scorer=record)
    assert result.all_clean is True and len(seen) == 2 and torch.equal(result.images, batch)
    assert guard.check_image_batch(batch.half()) is not None  # float16 is a float batch too


@pytest.mark.parametrize("profile", ["level_3", 7, {"Banned_Categories": []}])
def test_a_literal_in_place_of_a_profile_or_judge_is_refused_naming_it(pack, profile):
    """An API prompt may give any literal value where a link belongs; ComfyUI passes it through to the node."""
    evaluation, judging = pack.nodes.nodes_evaluation.PSASafetyCheck, pack.nodes.nodes_judge.PSAJudgeImage
    expected = f"profile: {profile!r} is not a profile; allowed: a PSA_PROFILE"
    assert refusal(lambda: evaluation.execute(images=GOOD, violating="blur", profile=profile)).startswith(expected)
    assert refusal(lambda: judging.execute(images=GOOD, profile=profile, judge=VLMJudge(untouchable),
                                           mode="blind")).startswith(expected)
    assert refusal(lambda: judging.execute(images=GOOD, profile=LEVEL_3, judge="x", mode="blind")).startswith(
        "judge: 'x' is not a judge; allowed: a PSA_JUDGE from PSA Load Judge")
