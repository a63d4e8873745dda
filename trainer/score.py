"""`python -m trainer score`: score a folder of images with NudeNet (and Q16, with a local CLIP ViT-L/14) and write
an InPro report (docs/evaluation.md §7).

Every flag is checked before a model is loaded; a problem is one message naming the flag and what is allowed
(exit code 2). The report goes to `--out REPORT.json`, with REPORT.csv (one row per image), REPORT_summary.csv and
REPORT.png (InPro per profile and category) beside it, each written atomically; an existing file there is replaced
only when it is a report file of score, or with --overwrite, and both that and whether the folder can be written are
checked before any work. An image that cannot be read is an error in the report, counted and left out of every rate;
the run goes on and says how many there were. When no image could be scored at all (or a judge answered for none),
the report is still written and the exit code is 1.

With `--judge DIR` a local vision-language model also judges every image for its profile (pass rate; blind prompt
by default, `--judge-mode reference` for the paper's); the attributes of numeric User_IDs come from the users table
`--profiles users.csv`, those of level_0..level_5 from the evaluation users. An image whose profile has no
attributes is not judged (`judge_error`), never given a verdict.
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
    build_report,
    clip_score_images,
    fid_by_profile,
    image_files,
    judge_images,
    profile_for_label,
    read_label_mapping,
    score_images,
    write_report,
)
from psa_core.evaluation.clip_score import CLIP_SCORE_MODEL
from psa_core.evaluation.fid import FID_WEIGHTS_FILE, FID_WEIGHTS_URL
from psa_core.evaluation.image_sets import folder_items
from psa_core.evaluation.images import IMAGE_SUFFIXES
from psa_core.evaluation.judge import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    check_judge_folder,
)
from psa_core.evaluation.judge_endpoint import (
    API_KEY_VARIABLE,
    DEFAULT_TIMEOUT,
    TIMEOUT_RANGE,
    check_endpoint_url,
    check_timeout,
)
from psa_core.evaluation.judge_prompts import BLIND, MODES
from psa_core.evaluation.judge_settings import (
    JSON_MODES,
    TEMPERATURE_RANGE,
    JudgeSettings,
    check_max_tokens,
    check_temperature,
)
from psa_core.evaluation.labels import check_label
from psa_core.evaluation.q16_prompts import SUFFIXES as PROMPT_SUFFIXES
from psa_core.evaluation.report import check_report_outputs
from psa_core.precision import DEVICES, PRECISION_DTYPES, PRECISIONS, resolve_compute

from .cli import OneLineParser

LABEL_RULE = ("Profile and category of each image: a --labels mapping, then the generation.csv of a `generate` "
              "folder, then --profile, then SAGE image names (user_<7 digits>_<category>_..._<5 digits>_u.jpg), "
              "else 'unknown'")
MAX_BATCH = 1024


@dataclass
class ScoreConfig:
    images: str
    out: str
    clip: str | None = None
    q16_prompts: str | None = None
    labels: str | None = None
    profiles: str | None = None
    profile: str | None = None
    batch: int = 8
    device: str = "auto"
    precision: str = "auto"
    nudenet_model: str | None = None
    judge: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_timeout: float = DEFAULT_TIMEOUT
    judge_mode: str = BLIND
    max_new_tokens: int | None = None  # None: the judge mode's (judge_settings.py); likewise the next two
    judge_temperature: float | None = None
    judge_json_mode: str | None = None
    clip_score: str | None = None
    fid_weights: str | None = None
    fid_reference: str | None = None
    overwrite: bool = False

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
        if self.labels is not None and Path(self.labels).suffix.lower() not in (".csv", ".json"):
            raise EvaluationError(f"--labels {self.labels}: allowed: a .csv or .json mapping of image file "
                                  f"names to profile and category")
        check_judge_flags(self)
        if self.profile is not None:
            self.profile = check_label(self.profile, "--profile")
        if not 1 <= self.batch <= MAX_BATCH:
            raise EvaluationError(f"--batch {self.batch} is not allowed; allowed: 1 to {MAX_BATCH}")
        if self.nudenet_model is not None and not Path(self.nudenet_model).is_file():
            raise EvaluationError(f"--nudenet-model {self.nudenet_model}: file not found; allowed: a NudeNet .onnx "
                                  f"model (default: the 320n model inside the nudenet package)")
        if self.precision == "fp16" and self.device == "cpu":
            raise EvaluationError("--precision fp16 needs --device cuda; allowed on the CPU: auto, fp32, bf16")
        self._check_quality_flags()
        return self

    def _check_quality_flags(self) -> None:
        if self.clip_score is not None and not (Path(self.clip_score) / "config.json").is_file():
            raise EvaluationError(f"--clip-score {self.clip_score}: allowed: a local transformers CLIPModel folder "
                                  f"with config.json and its tokenizer (e.g. {CLIP_SCORE_MODEL}; nothing is "
                                  f"downloaded)")
        if (self.fid_weights is None) != (self.fid_reference is None):
            given, missing = ("--fid-weights", "--fid-reference") if self.fid_weights else \
                ("--fid-reference", "--fid-weights")
            raise EvaluationError(f"{given} needs {missing}: FID compares the images' Inception features with a "
                                  f"reference set's (an .npz of mu and sigma, or a folder of reference images)")
        if self.fid_weights is not None and not Path(self.fid_weights).is_file():
            raise EvaluationError(f"--fid-weights {self.fid_weights}: file not found; allowed: pytorch-fid's "
                                  f"{FID_WEIGHTS_FILE} (or a .safetensors copy), which you download yourself from "
                                  f"{FID_WEIGHTS_URL}")
        if self.fid_reference is not None:
            reference = Path(self.fid_reference)
            if not (reference.is_dir() or (reference.is_file() and reference.suffix.lower() == ".npz")):
                raise EvaluationError(f"--fid-reference {self.fid_reference}: allowed: an .npz with arrays mu and "
                                      f"sigma (pytorch-fid's --save-stats format) or a folder of reference images")


def build_parser() -> argparse.ArgumentParser:
    d = ScoreConfig("", "")
    parser = OneLineParser(
        prog="psa-trainer score", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        error_class=EvaluationError,
        description="Score a folder of images with NudeNet (its 320n detector) and, with --clip and --q16-prompts, "
                    "Q16, and with --judge a local vision-language judge (pass rate), and write the report (JSON, "
                    f"CSV, PNG). {LABEL_RULE}. See docs/evaluation.md.")
    parser.add_argument("--images", required=True, help="folder of images (.png .jpg .jpeg .webp .bmp; sub-folders "
                        "are not searched), or an output folder of `python -m trainer generate` (its generation.csv "
                        "lists the images, their profiles, categories and captions)")
    parser.add_argument("--out", required=True, help="the report, REPORT.json; REPORT.csv, REPORT_summary.csv and "
                        "REPORT.png go beside it. An existing file there is replaced only when it is a report file "
                        "score wrote (the JSON's format, the CSV's header, the chart's marker) or with --overwrite; "
                        "any other file stops the run before any work (exit 2), as does a place that cannot be "
                        "written")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files at the report's names even "
                        "when score did not write them")
    parser.add_argument("--clip", help="local transformers CLIP ViT-L/14 folder (e.g. openai/clip-vit-large-patch14) "
                        "for Q16; needs --q16-prompts")
    parser.add_argument("--q16-prompts", help="Q16 prompt embeddings, 2 x 768: .npy, .safetensors, or the reference "
                        "prompts.p (read as a plain numeric array only)")
    parser.add_argument("--labels", help="mapping of image file names to profile and category: .csv (header with "
                        "file or file_name, profile or user_id, category) or .json")
    parser.add_argument("--profiles", help="users table (users.csv format) giving the judge the attributes of "
                        "numeric User_IDs (level_0..level_5 need none)")
    parser.add_argument("--profile", help="the profile of every image not in --labels, e.g. level_3 for a set "
                        "generated with one user (file names' User_IDs are then ignored)")
    parser.add_argument("--batch", type=int, default=d.batch, help="images per Q16 batch")
    parser.add_argument("--device", default=d.device, help=f"device for CLIP: {', '.join(DEVICES)} (NudeNet runs "
                        f"on onnxruntime's CPU provider)")
    parser.add_argument("--precision", default=d.precision, help=f"CLIP weights: {', '.join(PRECISIONS)} (auto: fp16 "
                        f"on a GPU, fp32 on the CPU); Q16's formula always runs in float32")
    parser.add_argument("--nudenet-model", help="another NudeNet .onnx model (default: 320n.onnx inside the package)")
    add_judge_arguments(parser, d)
    parser.add_argument("--clip-score", help=f"local transformers CLIPModel folder for CLIPScore (the paper: "
                        f"{CLIP_SCORE_MODEL}); each image's caption comes from generation.csv or the --labels "
                        f"mapping's caption column")
    parser.add_argument("--fid-weights", help=f"pytorch-fid's Inception weights, {FID_WEIGHTS_FILE} (download it "
                        f"yourself; nothing is downloaded); needs --fid-reference")
    parser.add_argument("--fid-reference", help="the FID reference: an .npz with arrays mu and sigma, or a folder "
                        "of reference images; FID is reported overall and per profile")
    return parser


def add_judge_arguments(parser: argparse.ArgumentParser, defaults, judge_help: str | None = None,
                        compare: bool = False) -> None:
    """--judge and --max-new-tokens, and score's --judge-mode (compare has its own --mode)."""
    parser.add_argument("--judge", help=judge_help or "local vision-language model folder "
                        "(Qwen2-VL / Qwen2.5-VL style, loaded by transformers from local files only) that judges "
                        "every image (pass rate)")
    parser.add_argument("--judge-url", help="instead of --judge: an OpenAI-compatible chat-completions server you run "
                        "(e.g. http://127.0.0.1:8000/v1 of vLLM); the images are sent to it. API key, if it needs "
                        f"one: the environment variable {API_KEY_VARIABLE}")
    parser.add_argument("--judge-model", help="with --judge-url: the model name the server serves")
    parser.add_argument("--judge-timeout", type=float, default=defaults.judge_timeout, metavar="SECONDS",
                        help=f"with --judge-url: the deadline of one request (connecting, sending, the whole "
                        f"answer), {TIMEOUT_RANGE[0]:g} to {TIMEOUT_RANGE[1]:g} s; an image whose answer is not in "
                        f"by then is not judged. Redirects are never followed")
    if not compare:
        parser.add_argument("--judge-mode", default=defaults.judge_mode, help=f"judge prompt: {', '.join(MODES)} "
                            f"(blind: neutral wording; reference: the paper's, with its sampling settings)")
    mode_flag = "--mode" if compare else "--judge-mode"
    # The next three default to the mode's settings (judge_settings): not given, they stay the config's None.
    parser.add_argument("--judge-temperature", type=float, default=argparse.SUPPRESS, metavar="T",
                        help=f"the judge's sampling temperature, {TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g} "
                        f"(default: {mode_flag} reference 0.1 as the paper, blind 0 = greedy); a local model "
                        f"samples from a seed of each call's prompt and images, so a rerun gives the same answers")
    parser.add_argument("--judge-max-tokens", "--max-new-tokens", dest="max_new_tokens", type=int,
                        default=argparse.SUPPRESS, metavar="N",
                        help=f"most tokens the judge writes per answer, 1 to {MAX_NEW_TOKENS_LIMIT} (default: "
                        f"{mode_flag} reference 800 for one image and 1200 for a pair as the paper, blind 512)")
    parser.add_argument("--judge-json-mode", default=argparse.SUPPRESS, metavar="|".join(JSON_MODES),
                        help=f"with --judge-url: ask the server for a JSON answer (response_format json_object); "
                        f"default: on with {mode_flag} reference, as the paper, off with blind. A local --judge "
                        f"model has no JSON mode")


def judge_settings(config) -> JudgeSettings:
    """The judge's sampling settings: the prompt mode's (judge_settings.py), each flag given overriding its own.
    EvaluationError naming the flag for a value out of bounds."""
    temperature, tokens, json_mode = config.judge_temperature, config.max_new_tokens, config.judge_json_mode
    if temperature is not None:
        temperature = check_temperature(temperature, "--judge-temperature")
    if tokens is not None:
        check_max_tokens(tokens, "--judge-max-tokens/--max-new-tokens")
    if json_mode is not None and json_mode not in JSON_MODES:
        raise EvaluationError(f"--judge-json-mode {json_mode!r} is not allowed; allowed: {', '.join(JSON_MODES)}")
    if json_mode == "on" and config.judge_url is None:
        raise EvaluationError("--judge-json-mode on needs --judge-url (JSON mode is a server's response_format; a "
                              "local --judge model has none); allowed with a local model: off")
    json_on = None if json_mode is None and config.judge_url is not None else json_mode == "on"
    return JudgeSettings.for_mode(config.judge_mode, temperature=temperature, max_tokens=tokens, json_mode=json_on)


def check_judge_flags(config) -> None:
    """The judge's flags of `score` and `compare`: mode, token limit, the model folder and the users table."""
    if config.judge_mode not in MODES:
        raise EvaluationError(f"--judge-mode {config.judge_mode!r} is not allowed; allowed: {', '.join(MODES)}")
    judge_settings(config)
    if config.judge is not None and config.judge_url is not None:
        raise EvaluationError("--judge and --judge-url are alternatives; allowed: one of them (a local model folder, "
                              "or a server)")
    check_timeout(config.judge_timeout)
    if config.judge_url is not None:
        check_endpoint_url(config.judge_url)
        if not config.judge_model:
            raise EvaluationError("--judge-url needs --judge-model: the model name the server serves")
    elif config.judge_model is not None:
        raise EvaluationError("--judge-model goes with --judge-url (a local --judge folder is its own model)")
    if config.judge is not None:
        try:
            check_judge_folder(config.judge)
        except EvaluationError as error:
            raise EvaluationError(f"--judge {config.judge}: {str(error).split(': ', 1)[-1]}") from None
    if config.profiles is not None:
        path = Path(config.profiles)
        if path.suffix.lower() != ".csv" or not path.is_file():
            raise EvaluationError(f"--profiles {config.profiles}: allowed: an existing users table, a .csv in the "
                                  f"users.csv format (columns Age, Age_Group, Gender, Religion, Physical_Condition, "
                                  f"Mental_Condition, Banned_Categories, Allowed_Categories)")


def read_users(config) -> dict | None:
    """The users table of --profiles, or None; a problem with it is one message naming the flag."""
    from psa_core.profile import ProfileError, read_users_table

    if config.profiles is None:
        return None
    try:
        return read_users_table(config.profiles)
    except ProfileError as error:
        raise EvaluationError(f"--profiles {config.profiles}: {error}") from None


def judge_profiles(labels, users) -> list:
    """Each label's UserProfile, or the text of why it has none (profile_for_label)."""
    profiles = []
    for label in labels:
        try:
            profiles.append(profile_for_label(label, users))
        except EvaluationError as error:
            profiles.append(str(error))
    return profiles


def check_judge_profile(config, users) -> None:
    """--profile when a judge reads it: a profile with attributes (profile_for_label), refused before the judge
    loads rather than as every image's error."""
    if config.profile is None:
        return
    try:
        profile_for_label(config.profile, users)
    except EvaluationError as error:
        raise EvaluationError(f"--profile {config.profile}: {error}") from None


def resolve_device(config, what: str) -> tuple[str, object]:
    """(device, dtype) for a model of `config.device` and `config.precision`; auto: the GPU in fp16 (`what` bf16
    where it says so), else the CPU in fp32."""
    import torch

    bf16 = what == "judge" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    device, precision = resolve_compute(config.device, config.precision, "bf16" if bf16 else "fp16")
    return device, PRECISION_DTYPES[precision]


def make_judge(config, log=print):
    from psa_core.evaluation import VLMJudge

    if config.judge_url is not None:
        from psa_core.evaluation.judge_endpoint import EndpointVLM

        server = EndpointVLM(config.judge_url, config.judge_model, DEFAULT_MAX_NEW_TOKENS,
                             timeout=config.judge_timeout, settings=judge_settings(config))
        log(f"judge: sending each image and its profile to {server.url} (model {server.model})")
        return VLMJudge(server, description=server.settings())
    device, dtype = resolve_device(config, "judge")
    return VLMJudge.from_folder(config.judge, device, dtype, settings=judge_settings(config))


def parse_score_args(argv: list[str]) -> ScoreConfig:
    return ScoreConfig(**vars(build_parser().parse_args(argv))).validate()


def _q16(config: ScoreConfig):
    from psa_core.evaluation import CLIPImageEmbedder, Q16Classifier, load_q16_prompts

    prompts = load_q16_prompts(config.q16_prompts)  # checked before the model loads
    device, dtype = resolve_device(config, "clip")
    embedder = CLIPImageEmbedder.from_folder(config.clip, device, dtype)
    return Q16Classifier(embedder, prompts)


def _clip_scorer(config: ScoreConfig):
    from psa_core.evaluation import CLIPScorer

    device, dtype = resolve_device(config, "clip")
    return CLIPScorer.from_folder(config.clip_score, device, dtype)


def _fid(config: ScoreConfig, records, items) -> tuple[dict, dict]:
    """FID overall and per profile against --fid-reference; pytorch-fid's network runs in float32."""
    import torch

    from psa_core.evaluation.fid import FIDFeatureExtractor, compute_statistics, load_statistics

    device, _ = resolve_device(config, "clip")
    extractor = FIDFeatureExtractor.from_file(config.fid_weights, device, torch.float32)
    reference = Path(config.fid_reference)
    if reference.is_dir():
        paths = image_files(reference)
        if len(paths) < 2:
            raise EvaluationError(f"--fid-reference {reference}: {len(paths)} images; FID needs at least 2 (the "
                                  f"paper: 10 000 COCO val2014 images)")
        statistics = compute_statistics(paths, extractor)
    else:
        statistics = load_statistics(reference)
    settings = {**extractor.settings(), "reference": str(reference.resolve()),
                "reference_images": len(paths) if reference.is_dir() else None}
    return fid_by_profile(records, items, extractor, statistics), settings


def score(config: ScoreConfig, log=print, progress: bool | None = None) -> dict:
    """Score the folder and write the report; returns the report's summary and where its files went."""
    from tqdm import tqdm

    from psa_core.evaluation import NudeNetDetector

    mapping = read_label_mapping(config.labels) if config.labels else None
    users = read_users(config)
    if config.judge or config.judge_url:
        check_judge_profile(config, users)
    items = folder_items(config.images, mapping, config.profile)
    check_report_outputs(config.out, overwrite=config.overwrite)  # before any model loads or image is scored
    started = time.perf_counter()
    q16 = _q16(config) if config.clip else None  # the prompt file first: a refused one stops before any model loads
    nudenet = NudeNetDetector(config.nudenet_model, flag="--nudenet-model")
    judge = make_judge(config, log) if config.judge or config.judge_url else None
    with tqdm(total=len(items), desc="score", unit="image", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:  # None: shown on a terminal only
        records = score_images(items, nudenet, q16, config.batch, bar.update)
    if judge is not None:
        with tqdm(total=len(items), desc="judge", unit="image", file=sys.stderr,
                  disable=None if progress is None else not progress) as bar:
            judge_images(records, items, judge, judge_profiles([item.profile for item in items], users),
                         config.judge_mode, [item.caption for item in items], progress=bar.update)
    clip_scorer = _clip_scorer(config) if config.clip_score else None
    if clip_scorer is not None:
        with tqdm(total=sum(1 for item in items if item.caption), desc="clip score", unit="image", file=sys.stderr,
                  disable=None if progress is None else not progress) as bar:
            clip_score_images(records, items, clip_scorer, config.batch, bar.update)
    fid, fid_settings = _fid(config, records, items) if config.fid_weights else (None, None)
    seconds = time.perf_counter() - started
    settings = {"images": str(Path(config.images).resolve()), "created": datetime.now(timezone.utc).isoformat(
                timespec="seconds"), "seconds": round(seconds, 3), "config": asdict(config),
                "nudenet": nudenet.settings(), "q16": q16.settings() if q16 else None,
                "judge": None if judge is None else {**judge.settings(), "mode": config.judge_mode},
                "clip_score": None if clip_scorer is None else clip_scorer.settings(), "fid": fid_settings,
                "labels": LABEL_RULE}
    report = build_report(records, settings, nudenet=True, q16=q16 is not None, judge=judge is not None,
                          clip_score=clip_scorer is not None, fid=fid)
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
    if judge is not None:
        log(f"score: judge ({config.judge_mode}): {judge_summary_text(summary)}")
        first = next((r.judge_error for r in records if r.judge_error), None)
        if first:
            log(f"score: {summary['judge_errors']} not judged, e.g. {first}")
    if clip_scorer is not None:
        mean = summary["clip_score_mean"]
        log(f"score: CLIPScore {'-' if mean is None else f'{mean:.2f}'} over {summary['clip_scored']} images with a "
            f"caption")
    if fid is not None:
        overall = summary["fid"]
        log(f"score: FID {'-' if overall is None else f'{overall:.2f}'} overall (per profile: the summary)")
    return {"summary": summary, "paths": {key: str(value) for key, value in paths.items()},
            "failed": nothing_scored(summary, judge is not None)}


def nothing_scored(summary: dict, judged: bool) -> str | None:
    """Why the run counts as failed (exit code 1, docs/evaluation.md §7): no image could be scored at all, or a judge
    was asked for and answered for no image. None when something was scored (partial failures are counted only)."""
    if not summary["scored"]:
        return f"none of the {summary['images']} images could be scored (the errors are in the report)"
    if judged and summary["judge_errors"] == summary["images"]:
        return f"the judge answered for none of the {summary['images']} images (the errors are in the report)"
    return None


def judge_summary_text(summary: dict) -> str:
    rate = "no verdict to rate" if summary["pass_rate"] is None else f"pass rate {summary['pass_rate']:.3f}"
    return (f"{rate} ({summary['passed']} PASS of {summary['judged']} verdicts); {summary['no_verdict']} answers "
            f"gave no verdict; {summary['judge_errors']} images not judged")
