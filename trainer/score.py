"""`python -m trainer score`: score a folder of images with NudeNet (and Q16, with a local CLIP ViT-L/14) and write
an InPro report (docs/evaluation.md §7).

Every flag is checked before a model is loaded; a problem is one message naming the flag and what is allowed
(exit code 2). The report goes to `--out REPORT.json`, with REPORT.csv (one row per image), REPORT_summary.csv and
REPORT.png (InPro per profile and category) beside it, each written atomically. An image that cannot be read is
an error in the report, counted and left out of every rate; the run goes on and says how many there were.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from psa_core.evaluation import (
    EvaluationError,
    ImageItem,
    build_report,
    image_files,
    label_for,
    read_label_mapping,
    score_images,
    write_report,
)
from psa_core.evaluation.images import IMAGE_SUFFIXES
from psa_core.evaluation.labels import check_label
from psa_core.evaluation.q16_prompts import SUFFIXES as PROMPT_SUFFIXES
from psa_core.precision import PRECISION_DTYPES, PRECISIONS

DEVICES = ("auto", "cpu", "cuda")
MAX_BATCH = 1024


@dataclass
class ScoreConfig:
    images: str
    out: str
    clip: str | None = None
    q16_prompts: str | None = None
    profiles: str | None = None
    profile: str | None = None
    batch: int = 8
    device: str = "auto"
    precision: str = "auto"
    nudenet_model: str | None = None

    def validate(self) -> ScoreConfig:
        for name, value, allowed in (("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise EvaluationError(f"--{name} {value!r} is not allowed; allowed: {', '.join(allowed)}")
        images = Path(self.images)
        if not images.is_dir():
            raise EvaluationError(f"--images {self.images}: not a folder; allowed: a folder of images "
                                  f"({', '.join(IMAGE_SUFFIXES)})")
        out = Path(self.out)
        if out.suffix.lower() != ".json":
            raise EvaluationError(f"--out {self.out}: allowed: a file name ending in .json (the CSV and PNG files go "
                                  f"beside it)")
        if out.is_dir():
            raise EvaluationError(f"--out {self.out} is a folder; allowed: a file name ending in .json")
        if out.resolve().parent == images.resolve():
            raise EvaluationError(f"--out {self.out}: not inside --images (the report's PNG chart would be scored "
                                  f"as an image next time); allowed: any other folder")
        if (self.clip is None) != (self.q16_prompts is None):
            given, missing = ("--clip", "--q16-prompts") if self.clip else ("--q16-prompts", "--clip")
            raise EvaluationError(f"{given} needs {missing}: Q16 runs with both (a local CLIP ViT-L/14 folder and "
                                  f"the prompt embeddings), or neither for a NudeNet-only report")
        if self.clip is not None and not (Path(self.clip) / "config.json").is_file():
            raise EvaluationError(f"--clip {self.clip}: allowed: a local transformers CLIP folder with config.json "
                                  f"(CLIPModel or CLIPVisionModelWithProjection; nothing is downloaded)")
        if self.q16_prompts is not None:
            prompts = Path(self.q16_prompts)
            if prompts.suffix.lower() not in PROMPT_SUFFIXES:
                raise EvaluationError(f"--q16-prompts {self.q16_prompts}: allowed: a file ending in "
                                      f"{', '.join(PROMPT_SUFFIXES)}")
            if not prompts.is_file():
                raise EvaluationError(f"--q16-prompts {self.q16_prompts}: file not found")
        if self.profiles is not None and Path(self.profiles).suffix.lower() not in (".csv", ".json"):
            raise EvaluationError(f"--profiles {self.profiles}: allowed: a .csv or .json mapping of image file "
                                  f"names to profile and category")
        if self.profile is not None:
            self.profile = check_label(self.profile, "--profile")
        if not 1 <= self.batch <= MAX_BATCH:
            raise EvaluationError(f"--batch {self.batch} is not allowed; allowed: 1 to {MAX_BATCH}")
        if self.nudenet_model is not None and not Path(self.nudenet_model).is_file():
            raise EvaluationError(f"--nudenet-model {self.nudenet_model}: file not found; allowed: a NudeNet .onnx "
                                  f"model (default: the 320n model inside the nudenet package)")
        if self.precision == "fp16" and self.device == "cpu":
            raise EvaluationError("--precision fp16 needs --device cuda; allowed on the CPU: auto, fp32, bf16")
        return self


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors (unknown flags, bad numbers) also exit 2, one line
        raise EvaluationError(f"{message} (see `python -m trainer score --help`)")


def build_parser() -> argparse.ArgumentParser:
    d = ScoreConfig("", "")
    parser = _Parser(
        prog="psa-trainer score", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Score a folder of images with NudeNet (its 320n detector) and, with --clip and --q16-prompts, "
                    "Q16, and write the InPro report (JSON, CSV, PNG). Profile and category of each image: --profiles "
                    "mapping, then --profile, then SAGE image names (user_<7 digits>_<category>_..._<5 digits>_u.jpg), "
                    "else 'unknown'. See docs/evaluation.md.")
    parser.add_argument("--images", required=True, help="folder of images (.png .jpg .jpeg .webp .bmp; sub-folders "
                        "are not searched)")
    parser.add_argument("--out", required=True, help="the report, REPORT.json; REPORT.csv, REPORT_summary.csv and "
                        "REPORT.png go beside it (replaced when they exist)")
    parser.add_argument("--clip", help="local transformers CLIP ViT-L/14 folder (e.g. openai/clip-vit-large-patch14) "
                        "for Q16; needs --q16-prompts")
    parser.add_argument("--q16-prompts", help="Q16 prompt embeddings, 2 x 768: .npy, .safetensors, or the reference "
                        "prompts.p (read as a plain numeric array only)")
    parser.add_argument("--profiles", help="mapping of image file names to profile and category: .csv (header with "
                        "file or file_name, profile or user_id, category) or .json")
    parser.add_argument("--profile", help="the profile of every image not in --profiles, e.g. level_3 for a set "
                        "generated with one user (file names' User_IDs are then ignored)")
    parser.add_argument("--batch", type=int, default=d.batch, help="images per Q16 batch")
    parser.add_argument("--device", default=d.device, help=f"device for CLIP: {', '.join(DEVICES)} (NudeNet runs "
                        f"on onnxruntime's CPU provider)")
    parser.add_argument("--precision", default=d.precision, help=f"CLIP weights: {', '.join(PRECISIONS)} (auto: fp16 "
                        f"on a GPU, fp32 on the CPU); Q16's formula always runs in float32")
    parser.add_argument("--nudenet-model", help="another NudeNet .onnx model (default: 320n.onnx inside the package)")
    return parser


def parse_score_args(argv: list[str]) -> ScoreConfig:
    return ScoreConfig(**vars(build_parser().parse_args(argv))).validate()


def _q16(config: ScoreConfig):
    import torch

    from psa_core.evaluation import CLIPImageEmbedder, Q16Classifier, load_q16_prompts

    prompts = load_q16_prompts(config.q16_prompts)  # checked before the model loads
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise EvaluationError("--device cuda but no CUDA device is available; allowed here: auto, cpu")
    precision = config.precision if config.precision != "auto" else ("fp16" if cuda else "fp32")
    if precision == "fp16" and not cuda:
        raise EvaluationError("--precision fp16 needs a GPU; allowed on the CPU: auto, fp32, bf16")
    dtype = PRECISION_DTYPES[precision]
    embedder = CLIPImageEmbedder.from_folder(config.clip, "cuda" if cuda else "cpu", dtype)
    return Q16Classifier(embedder, prompts)


def score(config: ScoreConfig, log=print, progress: bool | None = None) -> dict:
    """Score the folder and write the report; returns the report's summary and where its files went."""
    from tqdm import tqdm

    from psa_core.evaluation import NudeNetDetector

    mapping = read_label_mapping(config.profiles) if config.profiles else None
    files = image_files(config.images)
    if not files:
        raise EvaluationError(f"--images {config.images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    items = []
    for path in files:
        label = label_for(path.name, mapping, config.profile)
        items.append(ImageItem(path.name, path, label.profile, label.category))
    started = time.perf_counter()
    q16 = _q16(config) if config.clip else None  # the prompt file first: a refused one stops before any model loads
    nudenet = NudeNetDetector(config.nudenet_model)
    with tqdm(total=len(items), desc="score", unit="image", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:  # None: shown on a terminal only
        records = score_images(items, nudenet, q16, config.batch, bar.update)
    seconds = time.perf_counter() - started
    settings = {"images": str(Path(config.images).resolve()), "created": datetime.now(timezone.utc).isoformat(
                timespec="seconds"), "seconds": round(seconds, 3), "config": asdict(config),
                "nudenet": nudenet.settings(), "q16": q16.settings() if q16 else None,
                "labels": "mapping (--profiles), then --profile, then SAGE image names, else 'unknown'"}
    report = build_report(records, settings, nudenet=True, q16=q16 is not None)
    paths = write_report(report, records, config.out)
    summary = report["summary"]
    inpro = "InPro not computed (needs --clip and --q16-prompts)" if summary["inpro"] is None else \
        f"InPro {summary['inpro']:.3f}" if summary["scored"] else "InPro: no image scored"
    log(f"score: {summary['scored']} of {summary['images']} images scored in {seconds:.1f} s; {inpro}; "
        f"report {paths['json']}")
    if summary["errors"]:
        count = summary["errors"]
        log(f"score: {count} {'image' if count == 1 else 'images'} could not be scored (the errors are in the report; "
            f"left out of every rate)")
    return {"summary": summary, "paths": {key: str(value) for key, value in paths.items()}}
