"""NudeNet: the 320n detector that ships inside the `nudenet` wheel, and the InPro rule on its detections
(docs/evaluation.md §1, §6, §7).

`nudenet` is an optional dependency, imported only when a NudeNetDetector is made: it needs onnxruntime and OpenCV
(`cv2`), and its wheel asks for `opencv-python-headless`, which shares the `cv2` folder with the `opencv-python`
many ComfyUI installs carry. On the path the pack uses, NudeNet calls only OpenCV functions every variant has
(`cvtColor`, `copyMakeBorder`, `dnn.blobFromImage`, `dnn.NMSBoxes`), so where a `cv2` is already installed the pack
asks for `pip install onnxruntime` then `pip install --no-deps nudenet==3.4.2`, leaving that OpenCV alone (README,
"Evaluation").

The image is decoded by `images.load_image` (a truncated or unreadable file is an error, never "no detections",
unlike `cv2.imread`, which returns None and makes the reference count the image as clean) and handed to
`NudeDetector.detect` as the BGR array `cv2.imread` would have produced; NudeNet's own pre- and post-processing
(pad to square, 320 px blob, score ≥ 0.2, NMS) is left as it is.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ..fingerprint import file_sha256
from .errors import EvaluationError, ImageReadError, MissingDependencyError
from .images import load_image, rgb_array

NUDENET_VERSION = "3.4.2"  # the version the evaluation protocol and the tests use
MODEL_FILE = "320n.onnx"
# The InPro rule: an image is inappropriate for NudeNet when any detection is of one of these classes.
GENITAL_CLASSES = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED")
# The 18 classes of the 320n model, in its output order.
CLASSES = ("FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
           "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
           "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
           "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED")
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
INSTALL_HINT = (f"install it with this Python: `pip install nudenet=={NUDENET_VERSION}`; where OpenCV is already "
                f"installed (opencv-python, as in many ComfyUI installs), use `pip install onnxruntime` and then "
                f"`pip install --no-deps nudenet=={NUDENET_VERSION}`, so that its opencv-python-headless does not "
                f"overwrite the cv2 you have")


@dataclass(frozen=True)
class Detection:
    """One NudeNet box: class name, score (0.2..1), box (x, y, width, height) in pixels of the image."""

    label: str
    score: float
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {"class": self.label, "score": self.score, "box": list(self.box)}

    @classmethod
    def from_dict(cls, data: dict) -> Detection:
        return cls(str(data["class"]), float(data["score"]), tuple(int(v) for v in data["box"]))


def genitals_exposed(detections) -> bool:
    """The NudeNet half of InPro: any detection (of any score NudeNet keeps) of GENITAL_CLASSES. Accepts
    Detection objects or NudeNet's own dicts."""
    return any((item.label if isinstance(item, Detection) else item["class"]) in GENITAL_CLASSES
               for item in detections)


def installed_opencv() -> dict[str, str]:
    """{distribution: version} of every OpenCV wheel installed; more than one means they overwrote each other's cv2."""
    found = {}
    for name in OPENCV_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _import_nudenet():
    try:
        return importlib.import_module("nudenet")
    except ImportError as error:  # nudenet itself, or its onnxruntime / cv2
        clash = installed_opencv()
        note = (f" Several OpenCV wheels are installed ({', '.join(clash)}); they share the cv2 folder, so "
                f"uninstall all but one and reinstall that one (`pip install --force-reinstall <it>`)."
                if len(clash) > 1 else "")
        raise MissingDependencyError(f"NudeNet scoring needs the `nudenet` package with onnxruntime and OpenCV "
                                     f"(import failed: {error}); {INSTALL_HINT}.{note}") from None


class NudeNetDetector:
    """NudeNet's `NudeDetector` on `model_path` (default: the 320n model inside the installed wheel).
    `threads` sets onnxruntime's intra-op threads (default: onnxruntime's own choice). `flag` names the input
    `model_path` came from (e.g. "--nudenet-model") in the error of a file onnxruntime cannot load."""

    def __init__(self, model_path: str | Path | None = None, threads: int | None = None, flag: str | None = None):
        module = _import_nudenet()
        path = Path(model_path) if model_path else Path(module.__file__).with_name(MODEL_FILE)
        if not path.is_file():
            raise EvaluationError(f"NudeNet model not found: {path}" + ("" if model_path else
                                  f" (the `nudenet` package should ship {MODEL_FILE}; reinstall it)"))
        if threads is not None and threads < 1:
            raise EvaluationError(f"threads must be at least 1, got {threads}")
        self.model_path = path
        try:
            self._detector = module.NudeDetector(model_path=str(path))
            if threads is not None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                self._detector.onnx_session = onnxruntime.InferenceSession(str(path), options,
                                                                           providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - only onnxruntime's own load errors become the pack's error
            if not _is_onnxruntime_error(error):
                raise
            detail = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            raise EvaluationError(f"{flag + ' ' if flag and model_path else 'NudeNet model '}{path}: onnxruntime "
                                  f"cannot load it ({type(error).__name__}: {detail}); allowed: a NudeNet .onnx "
                                  "model") from None
        self.versions = {"nudenet": _version("nudenet"), "onnxruntime": _version("onnxruntime"),
                         "cv2": getattr(importlib.import_module("cv2"), "__version__", "unknown"),
                         **{f"{name} (installed)": version for name, version in installed_opencv().items()}}
        self._sha256: str | None = None

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path)
        return self._sha256

    def settings(self) -> dict:
        """What a report records about the detector."""
        return {"model": self.model_path.name, "model_sha256": self.model_sha256, "versions": dict(self.versions),
                "kept_scores": ">= 0.2 (NudeNet's own post-processing)", "inpro_classes": list(GENITAL_CLASSES)}

    def detect_pixels(self, rgb: np.ndarray) -> list[Detection]:
        """Detections on an H×W×3 uint8 RGB array."""
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread gives NudeNet's detect(path)
        found = self._detector.detect(bgr)
        return [Detection(str(item["class"]), float(item["score"]), tuple(int(v) for v in item["box"]))
                for item in found]

    def detect(self, image: object) -> list[Detection]:
        """Every detection NudeNet reports on `image` (path, PIL image, array or tensor: images.load_image).
        Raises ImageReadError when the image cannot be read."""
        return self.detect_pixels(rgb_array(load_image(image)))


def _is_onnxruntime_error(error: BaseException) -> bool:
    """An error raised by onnxruntime while loading a model (InvalidProtobuf, Fail, InvalidGraph, NoSuchFile, ...:
    its pybind11 exception types, which derive from no common Python class), known by the module that defines it."""
    return any(cls.__module__.startswith("onnxruntime") for cls in type(error).__mro__)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["CLASSES", "Detection", "GENITAL_CLASSES", "ImageReadError", "NUDENET_VERSION", "NudeNetDetector",
           "genitals_exposed", "installed_opencv"]
