"""Issue 22 items 1 and 9: PSA Safety Check's coverage per banned category. For each of the seven categories banned
alone, and each detector set (NudeNet; NudeNet + Q16; NudeNet + a judge), a clean-looking image and a flagged one get
the status each detector's declared coverage gives (guard.FLAGS / guard.CLEARS, docs/evaluation.md §7): NudeNet
sees Sexuality only, a Q16 hit violates any ban and a Q16 pass clears none, a judge decides all seven. Any banned
category left unchecked makes the image "not verified" and `all_clean` false. In-process through the node class,
with scripted scorers (guard.py's seam) and a real VLMJudge on a scripted answer function (the real prompt and the
real answer parser run)."""
from __future__ import annotations

import json

import pytest
import torch

from psa_core.evaluation import Detection, ImageRecord, VLMJudge
from psa_core.evaluation import guard
from psa_core.profile import CATEGORIES, UserProfile

NUDITY = "FEMALE_BREAST_EXPOSED"  # one of guard.SEXUAL_CLASSES


def banning(*names: str) -> UserProfile:
    return UserProfile(35, "middle-aged", "male", "None", "healthy", "healthy", tuple(names))


def two_images() -> torch.Tensor:
    return torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))


def scorer(q16: bool, nudity_in_second: bool = False, q16_hit_in_second: bool = False):
    """NudeNet (and, with `q16`, Q16) records: image 1 finds nothing; image 2 as told."""
    def score(images):
        return [ImageRecord(f"image {i + 1}",
                            nudenet=[Detection(NUDITY, 0.9, (1, 2, 3, 4))] if (i == 1 and nudity_in_second) else [],
                            q16=None if not q16 else (0.2, 0.8) if (i == 1 and q16_hit_in_second) else (0.9, 0.1))
                for i in range(len(images))]
    return score


def answer(found: list[str]) -> str:
    return "```json\n" + json.dumps({
        "banned_categories_respected": not found, "banned_categories_found": found,
        "allowed_categories_respected": True, "quality_score": 70, "appropriateness_score": 60,
        "overall_assessment": "FAIL" if found else "PASS", "explanation": "scripted"}) + "\n```"


def scripted_judge(found_in_second: list[str], calls: list[str] | None = None) -> VLMJudge:
    """A judge whose answer finds nothing in a dark image and `found_in_second` in a bright one."""
    def answer_fn(prompt, images):
        if calls is not None:
            calls.append(prompt)
        bright = max(images[0].convert("L").getextrema()) > 127
        return answer(found_in_second if bright else [])
    return VLMJudge(answer_fn)


def dark_and_bright() -> torch.Tensor:
    return torch.stack([torch.full((32, 32, 3), 0.1), torch.full((32, 32, 3), 0.9)])


def run(pack, monkeypatch, images, profile, score, judge=None):
    monkeypatch.setattr(pack.nodes.nodes_evaluation, "default_scorer", lambda q16=None: score)
    node = pack.nodes.nodes_evaluation.PSASafetyCheck
    return node.execute(images=images, violating="black", profile=profile, judge=judge,
                        unchecked="pass through").result


def status(report: str, image: int, category: str) -> str:
    line = report.splitlines()[image]
    part = line.split(" | ")[1]
    return dict(item.rsplit(" ", 1) for item in part.split(", "))[category]


@pytest.mark.parametrize("category", CATEGORIES)
def test_nudenet_alone_sees_sexuality_only(pack, monkeypatch, category):
    images = two_images()
    out, all_clean, report, unchecked = run(pack, monkeypatch, images, banning(category),
                                            scorer(q16=False, nudity_in_second=True))
    # violating: black; not verified: passed through (run() chooses both)
    assert torch.equal(out[0], images[0]) and (out[1].abs().max() == 0) == (category == guard.SEXUALITY)
    if category == guard.SEXUALITY:
        assert (status(report, 1, category), status(report, 2, category)) == ("clear", "violates")
        assert unchecked == "" and report.splitlines()[1].startswith("image 1: clean |")
    else:  # nudity violates nothing here, and nothing could check this ban
        assert (status(report, 1, category), status(report, 2, category)) == ("unchecked", "unchecked")
        assert unchecked == category and all_clean is False
        assert report.splitlines()[1].startswith(f"image 1: not verified: {category} unchecked (connect a judge")
        assert "0 of 2 images clean, 2 not verified" in report.splitlines()[0]
    assert all_clean is False  # image 2 either violates or is not verified


@pytest.mark.parametrize("category", CATEGORIES)
def test_q16_hit_violates_any_ban_and_its_pass_clears_none(pack, monkeypatch, category):
    out, all_clean, report, unchecked = run(pack, monkeypatch, two_images(), banning(category),
                                            scorer(q16=True, q16_hit_in_second=True))
    assert status(report, 2, category) == "violates" and "Q16 inappropriate (p=0.800)" in report.splitlines()[2]
    assert out[1].abs().max() == 0  # violating: black
    expected_first = "clear" if category == guard.SEXUALITY else "unchecked"  # only NudeNet's pass clears
    assert status(report, 1, category) == expected_first
    assert unchecked == ("" if category == guard.SEXUALITY else category) and all_clean is False


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_judge_checks_every_category(pack, monkeypatch, category):
    images = dark_and_bright()
    out, all_clean, report, unchecked = run(pack, monkeypatch, images, banning(category), scorer(q16=False),
                                            judge=scripted_judge([category]))
    assert (status(report, 1, category), status(report, 2, category)) == ("clear", "violates")
    assert unchecked == "" and torch.equal(out[0], images[0]) and out[1].abs().max() == 0
    assert "judge: found nothing" in report.splitlines()[1] and f"judge: found {category}" in report.splitlines()[2]
    # a judge that finds nothing in either image: every image clean
    out, all_clean, report, unchecked = run(pack, monkeypatch, images, banning(category), scorer(q16=False),
                                            judge=scripted_judge([]))
    assert all_clean is True and unchecked == "" and torch.equal(out, images)
    assert "2 of 2 images clean" in report.splitlines()[0]


def test_judge_is_asked_once_per_image_when_the_profile_bans_anything(pack, monkeypatch):
    calls: list[str] = []
    run(pack, monkeypatch, dark_and_bright(), banning(), scorer(q16=False), scripted_judge([], calls))
    assert calls == []  # nothing banned, nothing to ask
    run(pack, monkeypatch, dark_and_bright(), banning("Sexuality", "Violence"), scorer(q16=False),
        scripted_judge([], calls))
    assert len(calls) == 2 and all("Violence" in prompt for prompt in calls)  # one call per image, this profile


def test_a_judge_without_a_verdict_checks_nothing_and_a_named_finding_outside_the_bans_is_no_violation(
        pack, monkeypatch):
    mute = VLMJudge(lambda prompt, images: "I cannot tell.")
    _, all_clean, report, unchecked = run(pack, monkeypatch, two_images(), banning("Violence", "Hate"),
                                          scorer(q16=False), judge=mute)
    assert all_clean is False and unchecked == "Hate, Violence" and "judge: no verdict (" in report
    # found, but not banned by this profile (the judge says the bans are respected)
    other = VLMJudge(lambda prompt, images: answer(["Sexuality"]).replace('"banned_categories_respected": false',
                                                                           '"banned_categories_respected": true'))
    _, all_clean, report, unchecked = run(pack, monkeypatch, dark_and_bright(), banning("Violence"),
                                          scorer(q16=False), judge=other)
    assert all_clean is True and status(report, 2, "Violence") == "clear"

    def failing(prompt, images):
        raise RuntimeError("server down")

    _, all_clean, report, unchecked = run(pack, monkeypatch, two_images(), banning("Violence"), scorer(q16=False),
                                          judge=VLMJudge(failing))
    assert all_clean is False and unchecked == "Violence" and "not judged: RuntimeError: server down" in report


def test_a_judge_that_says_bans_are_broken_without_naming_one_violates_them_all(pack, monkeypatch):
    text = json.dumps({"banned_categories_respected": False, "banned_categories_found": [],
                       "allowed_categories_respected": True, "quality_score": 70, "appropriateness_score": 60,
                       "overall_assessment": "FAIL", "explanation": "something banned"})
    _, all_clean, report, _ = run(pack, monkeypatch, two_images()[:1], banning("Violence", "Hate"),
                                  scorer(q16=False), judge=VLMJudge(lambda prompt, images: text))
    assert all_clean is False and status(report, 1, "Violence") == status(report, 1, "Hate") == "violates"


def test_unchecked_images_get_the_chosen_treatment_and_a_judge_needs_a_profile(pack, monkeypatch):
    images = two_images()
    monkeypatch.setattr(pack.nodes.nodes_evaluation, "default_scorer", lambda q16=None: scorer(q16=False))
    node = pack.nodes.nodes_evaluation.PSASafetyCheck
    for mode in ("blur", "black"):
        out, *_ = node.execute(images=images, violating="pass through", profile=banning("Violence"),
                               unchecked=mode).result
        assert not torch.equal(out[0], images[0]) and (mode == "blur") == bool(out[0].abs().max() > 0)
    out, *_ = node.execute(images=images, violating="black", profile=banning("Violence")).result
    assert not torch.equal(out, images)  # default: unchecked images are blurred, like violating ones
    with pytest.raises(Exception, match="judge: a judge needs the profile"):
        node.execute(images=images, violating="black", judge=scripted_judge([]))
    with pytest.raises(Exception, match="judge: 'x' is not a judge"):
        node.execute(images=images, violating="black", profile=banning("Violence"), judge="x")


def test_the_declared_coverage():
    assert guard.CLEARS == {"NudeNet": ("Sexuality",), "Q16": (), "judge": CATEGORIES}
    assert guard.FLAGS == {"NudeNet": ("Sexuality",), "Q16": CATEGORIES, "judge": CATEGORIES}
    assert len(CATEGORIES) == 7
