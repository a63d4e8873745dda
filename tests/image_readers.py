"""Child process of test_image_gate.py: every image reader of the pack reads one file, and each read's peak RSS
increase is measured on its own.

    python tests/image_readers.py WORK_DIR NORMAL_IMAGE READER [READER ...] -- TARGET_IMAGE [TARGET_IMAGE ...]

Each reader is set up, then reads NORMAL_IMAGE once (a warm-up: lazy imports and first-call allocations are not
counted, and it shows that the reader works), then, for each target, the peak RSS is reset
(`/proc/self/clear_refs`, Linux ≥ 4.0) and it reads the target. Printed, as one JSON object by reader and target
file name: `normal` (what the warm-up returned), `error` and `message` (what the read of the target raised, if
anything), `returned` (what it returned otherwise; the readers that record an error per image instead of raising
return that text) and `increase_mib` (VmHWM after the read minus VmRSS before it).
"""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

Read = Callable[[Path], object]


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    if status_kib("VmHWM") > status_kib("VmRSS") + 4096:
        raise RuntimeError("the peak RSS did not reset; the measurement needs /proc/self/clear_refs")


_DETECTOR = None


def detector():
    global _DETECTOR
    if _DETECTOR is None:
        from psa_core.evaluation import NudeNetDetector

        _DETECTOR = NudeNetDetector(threads=1)
    return _DETECTOR


def q16():
    import numpy as np
    import torch

    from psa_core.evaluation import Q16Classifier

    # Q16 takes any image embedder (docs/evaluation.md); the images are read before it is called.
    return Q16Classifier(lambda pictures: torch.ones(len(pictures), 8), np.eye(2, 8, dtype=np.float32))


def errors_of(records) -> str:
    return " | ".join(error for record in records for error in record.errors)


def training_cache(work: Path) -> Read:
    import torch

    from psa_core.training.cache import CacheSettings, open_or_build_cache
    from psa_core.training.inputs import read_training_data
    from testkit.preference_data import write_pairs, write_profiles

    def encode_images(pixels):
        mean = torch.nn.functional.avg_pool2d(pixels, 4)
        return mean, mean.abs() + 0.1

    def encode_texts(captions):
        return {"encoder_hidden_states": torch.zeros(len(captions), 1, 2)}

    def read(path: Path):
        folder = work / f"training-{path.stem}"
        pairs = write_pairs(folder, 1, size=16)
        data = read_training_data(pairs, "pairs", write_profiles(folder))
        shutil.copyfile(path, data.image_path(data.records[0].rejected))
        cache = open_or_build_cache(folder / "cache", CacheSettings("model", 16), data, encode_images, encode_texts,
                                    log=lambda text: None)
        return f"{len(cache.entries)} images cached"
    return read


def training_image(work: Path) -> Read:
    from psa_core.training.augment import load_rgb

    return lambda path: load_rgb(path).size


def evaluation_image(work: Path) -> Read:
    from psa_core.evaluation import load_image

    return lambda path: load_image(path).size


def nudenet(work: Path) -> Read:
    return lambda path: len(detector().detect(path))


def scoring_loop(work: Path) -> Read:
    from psa_core.evaluation import ImageItem, score_images

    classifier = q16()
    return lambda path: errors_of(score_images([ImageItem(path.name, path)], detector(), classifier))


def q16_classifier(work: Path) -> Read:
    classifier = q16()
    return lambda path: classifier.classify([path])[0].label


def fid(work: Path) -> Read:
    from psa_core.evaluation.fid import FIDFeatureExtractor, build_fid_inception

    extractor = FIDFeatureExtractor(build_fid_inception())
    return lambda path: extractor.features([path]).shape


def clip_score(work: Path) -> Read:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from psa_core.evaluation.clip_score import CLIPScorer
    from testkit.models import tokenizer_vocab_size, write_tokenizer

    folder = work / "tiny-clip"
    torch.manual_seed(0)
    vocab = tokenizer_vocab_size()
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 16, "vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
            "pad_token_id": vocab - 1}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 224, "patch_size": 32}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    write_tokenizer(folder)
    scorer = CLIPScorer.from_folder(folder)
    return lambda path: scorer.clip_score([path], ["a cat"])


def judge(work: Path) -> Read:
    from psa_core.evaluation import VLMJudge
    from psa_core.profile import EVALUATION_USERS

    vlm = VLMJudge(lambda prompt, images: "no verdict")  # any answer function is a judge (docs/evaluation.md)
    profile = next(iter(EVALUATION_USERS.values()))
    return lambda path: vlm.judge(path, profile).verdict


def safety_check(work: Path) -> Read:
    from psa_core.evaluation import guard

    scorer = guard.default_scorer(q16(), detector())
    return lambda path: errors_of(scorer([path]))


def generate_existing(work: Path) -> Read:
    from trainer.generate import _existing_state

    return lambda path: _existing_state(path, "key")


READERS = {"training cache build": training_cache, "training image": training_image,
           "evaluation image": evaluation_image, "NudeNet": nudenet, "score's scoring loop": scoring_loop,
           "Q16": q16_classifier, "FID": fid, "CLIPScore": clip_score, "judge": judge, "Safety Check": safety_check,
           "generate's existing image": generate_existing}


def measure(read: Read, path: Path) -> dict:
    from psa_core.errors import PSAError

    reset_peak()
    before = status_kib("VmRSS")
    try:
        outcome = {"returned": str(read(path))}
    except Exception as error:  # noqa: BLE001 - reported to the test, which judges it
        outcome = {"error": type(error).__name__, "psa_error": isinstance(error, PSAError), "message": str(error)}
    return {**outcome, "increase_mib": (status_kib("VmHWM") - before) / 1024}


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    split = argv.index("--")
    work, normal = Path(argv[0]), Path(argv[1])
    results = {}
    for name in argv[2:split]:
        read = READERS[name](work)
        warm = str(read(normal))
        results[name] = {target.name: {"normal": warm, **measure(read, target)}
                         for target in map(Path, argv[split + 1:])}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
