"""`python -m trainer compare`: a vision-language judge compares the images of two folders pair by pair (win rate,
docs/evaluation.md §1) and writes a comparison report.

Images pair by file name: `--a DIR` (the baseline, image A) and `--b DIR` (the method, image B); in output folders of
`python -m trainer generate`, by profile and name, an image of a run without adapter (profile `base`) being every
profile's baseline (psa_core/evaluation/image_sets.py). An image found in one folder only is listed in the report
(`missing`) and not judged. Each pair's profile comes from the label rules
(`--labels` mapping, then `--profile`, then the SAGE name's User_ID); level_0..level_5 are the evaluation users, a
7-digit User_ID is looked up in `--profiles users.csv`, and a pair whose profile has no attributes is an error
record, never a verdict. Blind mode (the default) judges each pair in both orders with a neutral prompt and counts
orders that disagree as a tie; reference mode uses the paper's prompt, baseline always A, once.

The report goes to `--out REPORT.json` with REPORT.csv (one row per pair) and REPORT_summary.csv beside it, each
written atomically; every flag is checked before the model loads (exit code 2 with one message naming the flag), and
so are the report's files (an existing one is replaced only when compare wrote it, or with --overwrite) and whether
they can be written. When the judge answered for no pair at all, the report is written and the exit code is 1.
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
    build_comparison_report,
    compare_pairs,
    read_label_mapping,
    write_comparison_report,
)
from psa_core.evaluation.image_sets import folder_items, pair_items
from psa_core.evaluation.images import IMAGE_SUFFIXES
from psa_core.evaluation.judge_endpoint import DEFAULT_TIMEOUT
from psa_core.evaluation.judge_prompts import BLIND, MODES
from psa_core.evaluation.labels import MAX_LABEL, check_label
from psa_core.evaluation.report import check_report_outputs
from psa_core.precision import PRECISIONS

from .cli import OneLineParser
from .score import (
    DEVICES,
    LABEL_RULE,
    add_judge_arguments,
    check_judge_flags,
    check_judge_profile,
    judge_profiles,
    make_judge,
    read_users,
)


@dataclass
class CompareConfig:
    a: str
    b: str
    judge: str | None
    out: str
    judge_url: str | None = None
    judge_model: str | None = None
    judge_timeout: float = DEFAULT_TIMEOUT
    profiles: str | None = None
    mode: str = BLIND
    names: str = "baseline,PSA"
    labels: str | None = None
    profile: str | None = None
    device: str = "auto"
    precision: str = "auto"
    max_new_tokens: int | None = None  # None: the mode's (judge_settings.py); likewise the next two
    judge_temperature: float | None = None
    judge_json_mode: str | None = None
    overwrite: bool = False

    @property
    def judge_mode(self) -> str:  # the name check_judge_flags reads
        return self.mode

    def method_names(self) -> tuple[str, str]:
        parts = [part.strip() for part in self.names.split(",")]
        return parts[0], parts[1]

    def validate(self) -> CompareConfig:
        for name, value, allowed in (("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise EvaluationError(f"--{name} {value!r} is not allowed; allowed: {', '.join(allowed)}")
        if self.mode not in MODES:
            raise EvaluationError(f"--mode {self.mode!r} is not allowed; allowed: {', '.join(MODES)}")
        for flag, folder in (("--a", self.a), ("--b", self.b)):
            if not Path(folder).is_dir():
                raise EvaluationError(f"{flag} {folder}: not a folder; allowed: a folder of images "
                                      f"({', '.join(IMAGE_SUFFIXES)})")
        if Path(self.a).resolve() == Path(self.b).resolve():
            raise EvaluationError(f"--a and --b are the same folder ({self.a}); allowed: two different folders")
        out = Path(self.out)
        if out.suffix.lower() != ".json" or out.is_dir():
            raise EvaluationError(f"--out {self.out}: allowed: a file name ending in .json (the CSV files go beside "
                                  f"it)")
        if out.resolve().parent in (Path(self.a).resolve(), Path(self.b).resolve()):
            raise EvaluationError(f"--out {self.out}: not inside --a or --b; allowed: any other folder")
        parts = [part.strip() for part in self.names.split(",")]
        if len(parts) != 2 or not all(0 < len(part) <= MAX_LABEL for part in parts) or parts[0] == parts[1]:
            raise EvaluationError(f"--names {self.names!r} is not allowed; allowed: two different names of 1 to "
                                  f"{MAX_LABEL} characters separated by a comma, e.g. baseline,PSA")
        if self.labels is not None and Path(self.labels).suffix.lower() not in (".csv", ".json"):
            raise EvaluationError(f"--labels {self.labels}: allowed: a .csv or .json mapping of image file names to "
                                  f"profile and category")
        if self.profile is not None:
            self.profile = check_label(self.profile, "--profile")
        if self.precision == "fp16" and self.device == "cpu":
            raise EvaluationError("--precision fp16 needs --device cuda; allowed on the CPU: auto, fp32, bf16")
        check_judge_flags(self)
        if self.judge is None and self.judge_url is None:
            raise EvaluationError("compare needs a judge: --judge DIR (a local vision-language model folder) or "
                                  "--judge-url URL with --judge-model (an OpenAI-compatible server)")
        return self


def build_parser() -> argparse.ArgumentParser:
    d = CompareConfig("", "", "", "")
    parser = OneLineParser(
        prog="psa-trainer compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        error_class=EvaluationError,
        description="Compare the images of two folders pair by pair (same file name) with a local vision-language "
                    "judge and write the win/tie/loss report of B over A (JSON, CSV). See docs/evaluation.md.")
    parser.add_argument("--a", required=True, help="folder of image A of each pair (the baseline)")
    parser.add_argument("--b", required=True, help="folder of image B of each pair (the method compared)")
    parser.add_argument("--out", required=True, help="the report, REPORT.json; REPORT.csv and REPORT_summary.csv go "
                        "beside it. An existing file there is replaced only when it is a report file compare wrote "
                        "(the JSON's format, the CSV's header) or with --overwrite; any other file stops the run "
                        "before any work (exit 2), as does a place that cannot be written")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files at the report's names even "
                        "when compare did not write them")
    parser.add_argument("--mode", default=d.mode, help="judge prompt: blind (neutral, both orders, disagreement = "
                        "tie) or reference (the paper's, names the methods, baseline always A)")
    parser.add_argument("--names", default=d.names, help="the methods of A and B, comma-separated (only the "
                        "reference prompt shows them)")
    parser.add_argument("--labels", help="mapping of image file names to profile and category: .csv or .json")
    parser.add_argument("--profiles", help="users table (users.csv format) for numeric User_IDs")
    parser.add_argument("--profile", help="the profile of every pair not in --labels, e.g. level_3")
    parser.add_argument("--device", default=d.device, help=f"device for the judge: {', '.join(DEVICES)}")
    parser.add_argument("--precision", default=d.precision, help=f"judge weights: {', '.join(PRECISIONS)} (auto: "
                        f"bf16 on a GPU that has it, else fp16; fp32 on the CPU)")
    add_judge_arguments(parser, d, judge_help="local vision-language model folder (Qwen2-VL / Qwen2.5-VL style, "
                        "loaded by transformers from local files only)", compare=True)
    return parser


def parse_compare_args(argv: list[str]) -> CompareConfig:
    return CompareConfig(**vars(build_parser().parse_args(argv))).validate()


def compare(config: CompareConfig, log=print, progress: bool | None = None) -> dict:
    """Judge every pair and write the report; returns its summary and where its files went."""
    from tqdm import tqdm

    mapping = read_label_mapping(config.labels) if config.labels else None
    users = read_users(config)
    check_judge_profile(config, users)
    items_a = folder_items(config.a, mapping, config.profile, "--a")
    items_b = folder_items(config.b, mapping, config.profile, "--b")
    pairs, only_a, only_b = pair_items(items_a, items_b)
    if not pairs:
        raise EvaluationError(f"--a {config.a} and --b {config.b}: no pair ({len(items_a)} and {len(items_b)} "
                              f"images); pairs are the same file name (in `generate` folders: the same profile and "
                              f"name, or a `base` image and any profile's image of its name)")
    check_report_outputs(config.out, comparison=True, overwrite=config.overwrite)  # before the judge loads
    profiles = judge_profiles([b.profile for _, b in pairs], users)
    started = time.perf_counter()
    judge = make_judge(config, log)
    with tqdm(total=len(pairs), desc="compare", unit="pair", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        records = compare_pairs([(b.file, a.source, b.source) for a, b in pairs],
                                [(b.profile, b.category) for _, b in pairs], judge, profiles, config.mode,
                                config.method_names(), bar.update, [b.caption for _, b in pairs])
    seconds = time.perf_counter() - started
    settings = {"a": str(Path(config.a).resolve()), "b": str(Path(config.b).resolve()),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
                "config": asdict(config), "judge": {**judge.settings(), "mode": config.mode},
                "names": {"A": config.method_names()[0], "B": config.method_names()[1]},
                "counting": "win/tie/loss of B over A over the pairs with a verdict; blind: both orders, orders that "
                            "disagree count as a tie, a no-verdict in either order makes the pair no_verdict",
                "labels": LABEL_RULE,
                "pairs": "the same file name; in `generate` folders the same profile and name, a `base` image being "
                         "every profile's baseline"}
    report = build_comparison_report(records, settings, only_a, only_b)
    paths = write_comparison_report(report, records, config.out)
    summary = report["summary"]
    rates = "no pair with a verdict" if not summary["judged"] else (
        f"B over A: {summary['win_rate']:.3f} win, {summary['tie_rate']:.3f} tie, {summary['loss_rate']:.3f} loss")
    log(f"compare: {summary['judged']} of {summary['pairs']} pairs with a verdict in {seconds:.1f} s; {rates}; "
        f"{summary['no_verdict']} no verdict, {summary['errors']} not judged; report {paths['json']}")
    if only_a or only_b:
        log(f"compare: {len(only_a)} images only in --a, {len(only_b)} only in --b (listed in the report, not judged)")
    first = next((r.error for r in records if r.error), None)
    if first:
        log(f"compare: {summary['errors']} pairs not judged, e.g. {first}")
    failed = (f"the judge answered for none of the {summary['pairs']} pairs (the errors are in the report)"
              if summary["errors"] == summary["pairs"] else None)
    return {"summary": summary, "paths": {key: str(value) for key, value in paths.items()}, "failed": failed}
