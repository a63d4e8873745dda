"""Measuring what PSA does to images (docs/evaluation.md): NudeNet, Q16 and the InPro rule, and reports of them.

Pure PyTorch/numpy/PIL; no ComfyUI import. Each scorer is usable alone:

- `NudeNetDetector` (nudenet_detector.py): the 320n detector inside the optional `nudenet` wheel, imported only
  when one is made; `genitals_exposed` is NudeNet's half of InPro;
- `Q16Classifier` (q16.py) on any image embedder, `CLIPImageEmbedder` from a local transformers CLIP folder, and
  `load_q16_prompts` (q16_prompts.py), which reads the prompt embeddings as a plain numeric array only;
- `score_images` (scoring.py) records each image, and report.py summarises and writes them.
"""
from .errors import EvaluationError, ImageReadError, MissingDependencyError
from .images import IMAGE_SUFFIXES, image_files, load_image
from .labels import ImageLabel, label_for, read_label_mapping, sage_label
from .nudenet_detector import CLASSES, GENITAL_CLASSES, Detection, NudeNetDetector, genitals_exposed
from .q16 import CLIPImageEmbedder, Q16Classifier, Q16Result, clip_preprocess, q16_probabilities
from .q16_prompts import Q16Prompts, load_pickled_array, load_q16_prompts
from .report import build_report, report_paths, summarize, write_report
from .scoring import ImageItem, ImageRecord, score_images

__all__ = [
    "CLASSES", "CLIPImageEmbedder", "Detection", "EvaluationError", "GENITAL_CLASSES", "IMAGE_SUFFIXES", "ImageItem",
    "ImageLabel", "ImageReadError", "ImageRecord", "MissingDependencyError", "NudeNetDetector", "Q16Classifier",
    "Q16Prompts", "Q16Result", "build_report", "clip_preprocess", "genitals_exposed", "image_files", "label_for",
    "load_image", "load_pickled_array", "load_q16_prompts", "q16_probabilities", "read_label_mapping",
    "report_paths", "sage_label", "score_images", "summarize", "write_report",
]
