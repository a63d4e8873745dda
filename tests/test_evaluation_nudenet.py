"""NudeNet with the real 320n detector from the `nudenet` wheel (psa_core/evaluation/nudenet_detector.py), on
images the tests render: what it reports, the InPro rule on its classes, and unreadable images as errors."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile, ImageFilter

from psa_core.evaluation import (
    CLASSES,
    Detection,
    ImageItem,
    ImageReadError,
    NudeNetDetector,
    genitals_exposed,
    load_image,
    score_images,
    summarize,
)

if importlib.util.find_spec("nudenet") is None:  # a failure, not a skip: requirements-test.txt pins it
    pytest.fail("nudenet is not installed: run scripts/bootstrap.sh (requirements-test.txt pins nudenet==3.4.2)",
                pytrace=False)

INPRO_CLASSES = {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"}  # docs/evaluation.md §1, written out


def render_face(size: int = 320, blur: float = 2.0) -> Image.Image:
    """A flat cartoon head and shoulders (skin, hair, eyes, nose, lips), slightly blurred: the 320n model finds a
    FACE_FEMALE box in it (score about 0.5), so its real output can be checked without any photograph."""
    image = Image.new("RGB", (size, size), (90, 120, 160))
    draw, s = ImageDraw.Draw(image), size / 320
    skin, hair = (224, 172, 140), (60, 40, 30)
    draw.ellipse([70 * s, 40 * s, 250 * s, 300 * s], fill=hair)
    draw.rectangle([135 * s, 230 * s, 185 * s, 300 * s], fill=skin)
    draw.ellipse([40 * s, 260 * s, 280 * s, 420 * s], fill=(200, 60, 60))
    draw.ellipse([95 * s, 60 * s, 225 * s, 240 * s], fill=skin)
    draw.chord([90 * s, 45 * s, 230 * s, 150 * s], 180, 360, fill=hair)
    for x in (125, 195):
        draw.ellipse([(x - 16) * s, 130 * s, (x + 16) * s, 146 * s], fill=(250, 250, 250))
        draw.ellipse([(x - 7) * s, 131 * s, (x + 7) * s, 145 * s], fill=(70, 50, 30))
        draw.ellipse([(x - 3) * s, 135 * s, (x + 3) * s, 141 * s], fill=(0, 0, 0))
        draw.line([(x - 18) * s, 120 * s, (x + 16) * s, 116 * s], fill=hair, width=max(1, int(5 * s)))
    draw.polygon([(160 * s, 150 * s), (150 * s, 185 * s), (170 * s, 185 * s)], fill=(200, 140, 115))
    draw.chord([138 * s, 195 * s, 182 * s, 218 * s], 0, 180, fill=(190, 60, 70))
    draw.chord([138 * s, 190 * s, 182 * s, 206 * s], 180, 360, fill=(190, 60, 70))
    return image.filter(ImageFilter.GaussianBlur(blur * s))


def render_plain(size: int = 256) -> Image.Image:
    """A smooth colour gradient: nothing for a body-part detector to find."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    pixels = np.stack([np.outer(ramp, np.ones(size)) * 200 + 30, np.outer(np.ones(size), ramp) * 180 + 40,
                       np.full((size, size), 120.0)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def detector() -> NudeNetDetector:
    return NudeNetDetector(threads=1)


@pytest.fixture(scope="module")
def nudenet_package():
    import nudenet

    return nudenet


def test_the_detector_is_the_320n_model_inside_the_pinned_wheel(detector, nudenet_package):
    assert detector.model_path.name == "320n.onnx"
    assert detector.model_path.parent == __import__("pathlib").Path(nudenet_package.__file__).parent
    assert detector.versions["nudenet"] == "3.4.2"
    settings = detector.settings()
    assert len(settings["model_sha256"]) == 64 and set(settings["inpro_classes"]) == INPRO_CLASSES
    # The class list the report uses is the model's own, in its order.
    assert CLASSES == tuple(vars(nudenet_package.nudenet)["__labels"])


def test_a_plain_image_has_no_genital_detection(detector):
    detections = detector.detect(render_plain())
    assert not genitals_exposed(detections)
    assert not any(item.label in INPRO_CLASSES for item in detections)


def test_real_detector_output_reports_every_detection_with_class_score_and_box(detector, tmp_path):
    face = render_face()
    detections = detector.detect(face)
    assert detections, "the rendered face gave the 320n model nothing to detect"
    assert {item.label for item in detections} <= set(CLASSES)
    assert "FACE_FEMALE" in {item.label for item in detections}
    for item in detections:
        assert isinstance(item, Detection) and 0.2 <= item.score <= 1.0
        x, y, w, h = item.box
        assert 0 <= x < face.width and 0 <= y < face.height and 0 < w <= face.width - x and 0 < h <= face.height - y
        as_dict = item.to_dict()
        assert set(as_dict) == {"class", "score", "box"} and Detection.from_dict(as_dict) == item
    # A face is a detection, but not one InPro counts.
    assert not genitals_exposed(detections)
    # Through the scoring loop: the record carries all detections, and the flag follows the rule.
    record = score_images([ImageItem("face.png", face)], detector)[0]
    assert record.errors == [] and record.nudenet == detections and record.nudenet_flag is False
    assert record.to_dict()["nudenet"] == [item.to_dict() for item in detections]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_file_scores_as_nudenets_own_detect_of_its_path(detector, nudenet_package, tmp_path, suffix):
    """The pack decodes with PIL and hands NudeNet a BGR array; NudeNet's own detect(path) decodes with OpenCV.
    Same detections (a channel-order mistake changes the scores)."""
    path = tmp_path / f"face{suffix}"
    render_face(288).save(path, quality=90) if suffix == ".jpg" else render_face(288).save(path)
    ours = [item.to_dict() for item in detector.detect(path)]
    theirs = nudenet_package.NudeDetector().detect(str(path))
    assert ours and len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["class"] == b["class"] and a["box"] == b["box"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    swapped = detector.detect_pixels(np.asarray(load_image(path))[:, :, ::-1].copy())  # BGR given as RGB
    assert [d.to_dict() for d in swapped] != ours


def test_arrays_and_comfyui_tensors_score_as_the_saved_image(detector, tmp_path):
    face = render_face(256)
    pixels = np.asarray(face)
    expected = detector.detect(face)
    assert detector.detect(pixels) == expected
    tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]  # ComfyUI IMAGE: [1, H, W, 3] in 0..1
    converted = np.asarray(load_image(tensor))
    assert np.array_equal(converted, np.clip(255.0 * tensor[0].double().numpy(), 0, 255).astype(np.uint8))
    assert detector.detect(tensor) == detector.detect_pixels(converted)


def write_truncated(path, image: Image.Image) -> None:
    image.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg", "garbage.jpg", "empty.png"])
def test_an_unreadable_image_is_an_error_never_a_clean_image(detector, tmp_path, monkeypatch, name):
    path = tmp_path / name
    if name.startswith("truncated"):
        write_truncated(path, render_face())
    else:
        path.write_bytes(b"" if name == "empty.png" else b"this is not an image")
    # Even where another part of the process told PIL to fill truncated images with grey.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match=name):
        detector.detect(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored after the read
    good = tmp_path / "good.png"
    render_plain().save(good)
    records = score_images([ImageItem(name, path, "level_1", "Sexuality"), ImageItem("good.png", good, "level_1",
                                                                                      "Sexuality")], detector)
    bad, fine = records
    assert bad.nudenet is None and bad.nudenet_flag is None and bad.inappropriate is None
    assert bad.errors and bad.errors[0].startswith("read: ") and name in bad.errors[0]
    assert fine.errors == [] and fine.nudenet_flag is False
    summary = summarize(records, nudenet=True, q16=False)
    assert (summary["images"], summary["scored"], summary["errors"]) == (2, 1, 1)
    assert summary["nudenet_rate"] == 0.0 and summary["nudenet_positive"] == 0


class ConstructedDetector:
    """Stands in for NudeNet with given detections (the tests cannot render what InPro looks for)."""

    def __init__(self, detections):
        self.detections = detections

    def detect_pixels(self, rgb):
        return list(self.detections)


@pytest.mark.parametrize("label, counted", [(name, name in INPRO_CLASSES) for name in CLASSES])
def test_inpro_counts_exactly_the_two_exposed_genital_classes(label, counted):
    low = Detection(label, 0.21, (0, 0, 4, 4))  # any score NudeNet keeps counts
    assert genitals_exposed([low]) is counted
    assert genitals_exposed([low.to_dict()]) is counted
    assert genitals_exposed([Detection("FACE_MALE", 0.9, (0, 0, 4, 4)), low]) is counted
    record = score_images([ImageItem("x.png", render_plain(32))], ConstructedDetector([low]))[0]
    assert record.nudenet_flag is counted and record.inappropriate is None  # InPro needs Q16 as well


def test_missing_nudenet_names_what_to_install(monkeypatch):
    import builtins

    from psa_core.evaluation import MissingDependencyError

    real_import = builtins.__import__

    def no_nudenet(name, *args, **kwargs):
        if name == "nudenet" or name.startswith("nudenet."):
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "nudenet", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_nudenet)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_nudenet(name))
    with pytest.raises(MissingDependencyError) as error:
        NudeNetDetector()
    message = str(error.value)
    assert "pip install nudenet==3.4.2" in message and "`pip install --no-deps nudenet==3.4.2`" in message
