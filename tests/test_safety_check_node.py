"""PSA Safety Check (issue 14): NudeNet (and Q16) per image, judged against the profile's bans; violating images
blurred or black; an image that cannot be scored is never clean. In-process through the node class."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_env import registered_nodes
from pinned_packages import require_nudenet
from psa_core.evaluation import Detection, ImageRecord, Q16Classifier, load_q16_prompts
from psa_core.evaluation import guard
from psa_core.profile import UserProfile

SEXUALITY_BANNED = UserProfile(35, "middle-aged", "male", "None", "healthy", "healthy", ("Sexuality",))
HATE_BANNED = UserProfile(35, "middle-aged", "male", "None", "healthy", "healthy", ("Hate",))
NOTHING_BANNED = UserProfile(35, "middle-aged", "male", "None", "healthy", "healthy", ())


def plain_colours() -> torch.Tensor:
    """Four 64×64 plain-colour images (red, green, blue, grey) as a ComfyUI IMAGE batch."""
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)]
    return torch.stack([torch.tensor(c).expand(64, 64, 3).clone() for c in colours])


def textured() -> torch.Tensor:
    """Images with detail, so a blur visibly changes them."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 64, 64, 3, generator=generator)


def node(pack):
    return pack.nodes.nodes_evaluation.PSASafetyCheck


def injected(flagged: dict[int, list[str]]):
    """A scorer (guard.py's seam) that finds the given NudeNet classes in the given images, nothing elsewhere."""
    def score(images):
        return [ImageRecord(f"image {i + 1}", nudenet=[Detection(label, 0.9, (1, 2, 3, 4))
                                                       for label in flagged.get(i, [])])
                for i in range(len(images))]
    return score


@pytest.fixture
def fake_scorer(pack, monkeypatch):
    """Make the node use an injected scorer: call it with {image index: NudeNet classes}."""
    def use(flagged):
        monkeypatch.setattr(pack.nodes.nodes_evaluation, "default_scorer", lambda q16=None: injected(flagged))
    return use


def test_node_registers_with_its_docs(pack):
    nodes = registered_nodes(pack)
    assert "PSASafetyCheck" in nodes
    schema = nodes["PSASafetyCheck"].define_schema()
    assert schema.category == "PSA/evaluation" and len(schema.description) > 40
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert [o.display_name for o in schema.outputs] == ["images", "all_clean", "report", "unchecked"]  # new ones last


def test_plain_colours_are_clean_and_unchanged_with_real_nudenet(pack):
    require_nudenet()  # a failure, not a skip: requirements-test.txt pins nudenet
    images = plain_colours()
    for profile in (None, SEXUALITY_BANNED):
        out, all_clean, report, unchecked = node(pack).execute(images=images, violating="black",
                                                               profile=profile).result
        assert unchecked == ""  # Sexuality (or, without a profile, the InPro rule) is NudeNet's to check
        assert all_clean is True
        assert torch.equal(out, images)
        assert report.count(": clean |") == 4 and "4 of 4 images clean" in report


@pytest.mark.parametrize("mode", ["blur", "black"])
def test_blur_and_black_change_only_the_flagged_image(pack, fake_scorer, mode):
    fake_scorer({1: ["FEMALE_BREAST_EXPOSED"]})
    images = textured()
    out, all_clean, _, _ = node(pack).execute(images=images, violating=mode, profile=SEXUALITY_BANNED).result
    assert all_clean is False
    assert torch.equal(out[0], images[0]) and torch.equal(out[2], images[2])
    assert not torch.equal(out[1], images[1])
    assert out.shape == images.shape and out.dtype == images.dtype
    if mode == "black":
        assert out[1].abs().max() == 0
    else:
        assert out[1].std() < images[1].std() / 2 and out[1].abs().max() > 0


def test_pass_through_keeps_the_flagged_image_but_not_all_clean(pack, fake_scorer):
    fake_scorer({0: ["MALE_GENITALIA_EXPOSED"]})
    images = textured()
    out, all_clean, _, _ = node(pack).execute(images=images, violating="pass through", profile=None).result
    assert all_clean is False and torch.equal(out, images)


def test_the_rule_follows_the_profile(pack, fake_scorer):
    fake_scorer({0: ["FEMALE_BREAST_EXPOSED"], 1: ["MALE_GENITALIA_EXPOSED"], 2: ["FACE_FEMALE"]})
    images = textured()
    run = node(pack).execute
    # Sexuality banned: exposed breasts and genitals violate; a face does not
    _, _, report, _ = run(images=images, violating="black", profile=SEXUALITY_BANNED).result
    lines = report.splitlines()
    assert "VIOLATES" in lines[1] and "FEMALE_BREAST_EXPOSED" in lines[1]
    assert "VIOLATES" in lines[2] and "MALE_GENITALIA_EXPOSED" in lines[2]
    assert ": clean |" in lines[3] and "FACE_FEMALE 0.90" in lines[3]
    # Sexuality allowed: nudity violates nothing, but Hate is a ban NudeNet cannot see: not verified, never clean
    out, all_clean, report, unchecked = run(images=images, violating="black", profile=HATE_BANNED,
                                            unchecked="pass through").result
    assert all_clean is False and torch.equal(out, images) and unchecked == "Hate"
    assert report.count(": not verified: Hate unchecked (connect a judge") == 3 and "VIOLATES" not in report
    # no profile: InPro, genitals only
    out, all_clean, report, _ = run(images=images, violating="black").result
    assert all_clean is False and torch.equal(out[0], images[0]) and out[1].abs().max() == 0
    assert "InPro rule" in report.splitlines()[0]


def test_report_lists_per_image_what_was_found(pack, fake_scorer):
    fake_scorer({0: ["BELLY_EXPOSED", "FEMALE_BREAST_EXPOSED"]})
    _, _, report, _ = node(pack).execute(images=textured()[:2], violating="blur", profile=SEXUALITY_BANNED).result
    lines = report.splitlines()
    assert len(lines) == 3 and "1 of 2 images clean" in lines[0] and "profile bans: Sexuality" in lines[0]
    assert lines[1].startswith("image 1: VIOLATES") and "BELLY_EXPOSED 0.90, FEMALE_BREAST_EXPOSED 0.90" in lines[1]
    assert lines[2] == "image 2: clean | Sexuality clear | NudeNet: nothing"


def test_an_image_that_cannot_be_scored_is_not_clean(pack, monkeypatch):
    def broken(images):
        raise RuntimeError("onnxruntime exploded")

    result = guard.check_images(textured(), ("Sexuality",), "black", scorer=broken)
    assert result.all_clean is False and result.images.abs().max() == 0
    assert result.report.count("not scored: RuntimeError: onnxruntime exploded") == 3
    def failing_one(images):
        return [ImageRecord("image 1", nudenet=[]), ImageRecord("image 2", errors=["read: bad"]),
                ImageRecord("image 3", nudenet=[])]

    result = guard.check_images(textured(), ("Hate",), "black", scorer=failing_one)
    assert result.all_clean is False and result.images[1].abs().max() == 0 and result.images[0].abs().max() > 0
    assert "image 2: VIOLATES: not scored: read: bad" in result.report
    # A NaN pixel is not an image at all: the whole batch is refused naming the input (test_evaluation_batches.py).


def test_missing_nudenet_names_what_to_install(pack, monkeypatch):
    import sys

    monkeypatch.setattr(guard, "_DETECTOR", None)
    monkeypatch.setitem(sys.modules, "nudenet", None)  # `import nudenet` raises ImportError
    with pytest.raises(Exception, match=r"pip install .*nudenet==3\.4\.2"):
        node(pack).execute(images=plain_colours(), violating="blur")


class FakeClipVision:
    """A CLIP_VISION stand-in: encode_image gives an image_embeds row pointing at Q16's 'inappropriate' prompt for
    red-dominated images and at 'not inappropriate' for the others."""

    def encode_image(self, pixels):
        assert pixels.ndim == 4 and pixels.shape[-1] == 3 and pixels.dtype == torch.float32
        red = pixels[..., 0].mean() > 0.5
        return {"image_embeds": torch.tensor([[0.0, 1.0, 0.0, 0.0]] if red else [[1.0, 0.0, 0.0, 0.0]])}


def test_q16_on_a_clip_vision_model_violates_any_ban(pack, register_folders, tmp_path):
    require_nudenet()  # a failure, not a skip: requirements-test.txt pins nudenet
    folder = tmp_path / "psa"
    folder.mkdir()
    np.save(folder / "q16.npy", np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32))
    register_folders({"psa": folder})
    images = plain_colours()  # image 1 is red
    run = node(pack).execute
    out, all_clean, report, unchecked = run(images=images, violating="black", profile=HATE_BANNED,
                                            clip_vision=FakeClipVision(), q16_prompts="q16.npy",
                                            unchecked="pass through").result
    assert all_clean is False and out[0].abs().max() == 0 and torch.equal(out[1:], images[1:])
    assert "Q16 inappropriate" in report.splitlines()[1] and "Q16 p(inappropriate)=0.000" in report.splitlines()[2]
    # a Q16 pass clears no category: the other three images are not verified for Hate
    assert unchecked == "Hate" and report.splitlines()[2].startswith("image 2: not verified: Hate unchecked")
    out, all_clean, _, _ = run(images=images, violating="black", profile=NOTHING_BANNED,
                            clip_vision=FakeClipVision(), q16_prompts="q16.npy").result
    assert all_clean is True and torch.equal(out, images)
    with pytest.raises(Exception, match="Q16 needs both clip_vision and q16_prompts"):
        run(images=images, violating="black", clip_vision=FakeClipVision())


def test_a_clip_vision_of_another_width_is_refused_before_any_image_is_scored(pack, register_folders, tmp_path):
    """ComfyUI's own CLIP vision model (its ViT-L/14 config, weights left unset: only the layer shapes are read)
    shows its 768-d projection; prompts of another width stop the node naming both widths, and nothing is scored."""
    import os

    import comfy.clip_vision

    folder = tmp_path / "psa"
    folder.mkdir()
    np.save(folder / "q16_1024.npy", np.eye(2, 1024, dtype=np.float32))
    np.save(folder / "q16_768.npy", np.eye(2, 768, dtype=np.float32))
    register_folders({"psa": folder})
    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")
    vit_l = comfy.clip_vision.ClipVisionModel(config)
    assert guard.ClipVisionEmbedder(vit_l).dim == 768 and guard.ClipVisionEmbedder(FakeClipVision()).dim is None

    with pytest.raises(Exception, match=r"image embeddings are 768-d, the Q16 prompts .*q16_1024\.npy.* 1024-d"):
        node(pack).execute(images=plain_colours(), violating="black", clip_vision=vit_l, q16_prompts="q16_1024.npy")
    Q16Classifier(guard.ClipVisionEmbedder(vit_l), load_q16_prompts(folder / "q16_768.npy"))  # the matching width
