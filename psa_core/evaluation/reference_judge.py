"""The reference judge's own result files read into this project's report (docs/evaluation.md §8a).

The reference's `evaluate_images.py` writes one record per image (`*_results.json`: the judge's JSON answer plus
`image_path` and `user_id`), its `compare_images.py` one per pair (`*_comparison_results.json`: the answer plus
the two images' paths, names, method names and levels); a record with an `error` key is an image or pair its judge
could not judge. Each answer goes through the strict reader of a live judge answer (judge_answers.py), after the
reference's bookkeeping keys are taken off; an answer it refuses is counted (`no_verdict`) and named (`refused`),
never dropped.

Numbers, as the reference counts them (its `calculate_stats` and `calculate_comparison_stats`), as fractions:

- one image: `pass_rate`, `banned_respected_rate`, `allowed_respected_rate` over `judged` (the answers read as a
  verdict); `mean_quality` over them, `mean_appropriateness` over those that have the score (the reference counts a
  missing one as 0); `images` (records), `errors` (records the reference marked), `no_verdict`, `passed`;
- a pair: `win_rate`, `tie_rate`, `loss_rate` of B over A over `pairs` (the records without an error, the
  reference's total; a refused answer is in no numerator); `wins`, `ties`, `losses`, `pair_records`, `pair_errors`,
  `pairs_judged`, `pairs_no_verdict`, `mean_improvement`, and per image (`image_a`, `image_b`) the banned/allowed
  respected rates and mean scores over the judged pairs.

Every summary has the numbers of its records' kinds (a report of both kinds has both key sets), with the same per
category (`categories`) and per user (`users`), both read from the image names (SAGE: `user_<id>_<category>_...`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write
from .errors import EvaluationError
from .judge_answers import EQUAL, PASS, A, B, Comparison, Verdict, parse_comparison, parse_verdict
from .labels import UNKNOWN, label_for
from .report import ALL, MAX_CHART_PROFILES, category_order, profile_order, render_bars

FORMAT = "psa-reference-judge-report"
VERSION = 1
SINGLE, PAIR = "single", "pair"
MAX_FILE_BYTES = 256 << 20  # a file, decompressed; the paper's are about 3 MB
SINGLE_BOOKKEEPING = ("image_path", "user_id")
PAIR_BOOKKEEPING = ("model_a_image_path", "model_a_image_name", "model_a_name", "model_b_image_path",
                    "model_b_image_name", "model_b_name", "model_a_level", "model_b_level", "user_id")
_SUFFIX = re.compile(r"(_comparison)?_results\.json(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeRecord:
    """One record of a reference result file: its answer read strictly (`answer`), or the reference's `error`."""

    index: int
    kind: str
    image: str
    profile: str
    category: str
    answer: Verdict | Comparison | None
    error: str | None = None

    @property
    def judged(self) -> bool:
        return self.answer is not None and self.answer.has_verdict


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


# ---- reading -------------------------------------------------------------------------------------------------

def read_result_file(path: str | Path) -> list:
    """The records of a reference result file (a JSON list; `.gz` read as gzip). EvaluationError naming the file
    when it is missing, too large, not JSON or not a list."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--reference-judge {path}: not found; allowed: a reference *_results.json file "
                              "(plain or .gz)")
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError) as error:
        raise EvaluationError(f"--reference-judge {path}: cannot be read ({error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise EvaluationError(f"--reference-judge {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise EvaluationError(f"--reference-judge {path}: not a JSON file ({str(error)[:200]})") from None
    if not isinstance(records, list) or not records:
        raise EvaluationError(f"--reference-judge {path}: not a reference result file; allowed: a non-empty JSON "
                              "list of records, as evaluate_images.py and compare_images.py write")
    return records


def file_kind(records: Sequence, name: str) -> str:
    """SINGLE (evaluate_images.py) or PAIR (compare_images.py), from the records' keys."""
    dicts = [r for r in records if isinstance(r, dict)]
    pair = any("model_a_image_path" in r or "better_content_control" in r for r in dicts)
    single = any("image_path" in r or "overall_assessment" in r for r in dicts)
    if pair == single:
        raise EvaluationError(f"--reference-judge {name}: {'both' if pair else 'neither'} kinds of record; allowed: "
                              "the records of evaluate_images.py (image_path, overall_assessment) or of "
                              "compare_images.py (model_a_image_path, better_content_control)")
    return PAIR if pair else SINGLE


def _image_name(record: dict, kind: str) -> str:
    if kind == PAIR:
        value = record.get("model_a_image_name") or record.get("model_a_image_path")
    else:
        value = record.get("image_path")
    return str(value).replace("\\", "/").rsplit("/", 1)[-1] if isinstance(value, str) and value else UNKNOWN


def judge_records(records: Sequence, kind: str) -> list[JudgeRecord]:
    """Every record read: its answer (the reference's bookkeeping keys taken off) through the strict reader."""
    parse: Callable = parse_comparison if kind == PAIR else parse_verdict
    bookkeeping = PAIR_BOOKKEEPING if kind == PAIR else SINGLE_BOOKKEEPING
    result = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            result.append(JudgeRecord(index, kind, UNKNOWN, UNKNOWN, UNKNOWN,
                                      parse(json.dumps(record, allow_nan=True))))
            continue
        image = _image_name(record, kind)
        label = label_for(image)
        if "error" in record:
            result.append(JudgeRecord(index, kind, image, label.profile, label.category, None, str(record["error"])))
            continue
        answer = {key: value for key, value in record.items() if key not in bookkeeping}
        result.append(JudgeRecord(index, kind, image, label.profile, label.category,
                                  parse(json.dumps(answer, allow_nan=True, ensure_ascii=False))))
    return result


# ---- numbers -------------------------------------------------------------------------------------------------

def single_numbers(records: Sequence[JudgeRecord]) -> dict:
    """The one-image numbers of a group (module docstring)."""
    verdicts = [r.answer for r in records if r.judged]
    passed = sum(v.verdict == PASS for v in verdicts)
    return {"images": len(records), "errors": sum(r.error is not None for r in records),
            "no_verdict": sum(r.answer is not None and not r.judged for r in records), "judged": len(verdicts),
            "passed": passed, "pass_rate": _rate(passed, len(verdicts)),
            "banned_respected_rate": _rate(sum(v.banned_categories_respected for v in verdicts), len(verdicts)),
            "allowed_respected_rate": _rate(sum(v.allowed_categories_respected for v in verdicts), len(verdicts)),
            "mean_quality": _mean([v.quality_score for v in verdicts]),
            "mean_appropriateness": _mean([v.appropriateness_score for v in verdicts]),
            "appropriateness_scored": sum(v.appropriateness_score is not None for v in verdicts)}


def _image_numbers(assessments: Sequence) -> dict:
    return {"banned_respected_rate": _rate(sum(a.banned_categories_respected for a in assessments), len(assessments)),
            "allowed_respected_rate": _rate(sum(a.allowed_categories_respected for a in assessments),
                                            len(assessments)),
            "mean_quality": _mean([a.quality_score for a in assessments]),
            "mean_appropriateness": _mean([a.appropriateness_score for a in assessments])}


def pair_numbers(records: Sequence[JudgeRecord]) -> dict:
    """The pair numbers of a group (module docstring): rates of B over A over the pairs the reference counts."""
    pairs = [r for r in records if r.error is None]
    judged = [r.answer for r in pairs if r.judged]
    wins, ties, losses = (sum(c.better == side for c in judged) for side in (B, EQUAL, A))
    return {"pair_records": len(records), "pair_errors": len(records) - len(pairs), "pairs": len(pairs),
            "pairs_judged": len(judged), "pairs_no_verdict": len(pairs) - len(judged), "wins": wins, "ties": ties,
            "losses": losses, "win_rate": _rate(wins, len(pairs)), "tie_rate": _rate(ties, len(pairs)),
            "loss_rate": _rate(losses, len(pairs)), "mean_improvement": _mean([c.improvement_score for c in judged]),
            "image_a": _image_numbers([c.image_a for c in judged]),
            "image_b": _image_numbers([c.image_b for c in judged])}


def numbers(records: Sequence[JudgeRecord]) -> dict:
    singles = [r for r in records if r.kind == SINGLE]
    pairs = [r for r in records if r.kind == PAIR]
    return {**(single_numbers(singles) if singles else {}), **(pair_numbers(pairs) if pairs else {})}


def summarize(records: Sequence[JudgeRecord]) -> dict:
    """The numbers overall, per category (`categories`) and per user (`users`)."""
    categories = [{"category": c, **numbers([r for r in records if r.category == c])}
                  for c in category_order(r.category for r in records)]
    users = [{"user": u, **numbers([r for r in records if r.profile == u])}
             for u in profile_order(r.profile for r in records)]
    return {**numbers(records), "categories": categories, "users": users}


def _refused(records: Sequence[JudgeRecord]) -> list[dict]:
    return [{"index": r.index, "image": r.image, "problem": r.answer.problem} for r in records
            if r.answer is not None and not r.judged]


def _errors(records: Sequence[JudgeRecord]) -> list[dict]:
    return [{"index": r.index, "image": r.image, "error": r.error} for r in records if r.error is not None]


def build_report(paths: Sequence[str | Path]) -> tuple[dict, dict[str, list[JudgeRecord]]]:
    """The report of reference result files: `summary` over all their records, `files` one entry per file (keyed
    by file name: `kind`, `summary`, `refused`, `errors`), `settings` the inputs with their SHA-256."""
    files, every, inputs = {}, {}, []
    for path in paths:
        path = Path(path)
        if path.name in files:
            raise EvaluationError(f"--reference-judge: two files named {path.name}; allowed: files with different "
                                  "names (the report keys them by name)")
        raw = read_result_file(path)
        kind = file_kind(raw, str(path))
        records = judge_records(raw, kind)
        every[path.name] = records
        files[path.name] = {"kind": kind, "summary": summarize(records), "refused": _refused(records),
                            "errors": _errors(records)}
        inputs.append({"file": path.name, "path": str(path.resolve()), "kind": kind, "records": len(records),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    pooled = [r for records in every.values() for r in records]
    settings = {"inputs": inputs,
                "reader": "each answer through the strict reader of a live judge answer (judge_answers.py); "
                          "refused answers counted as no_verdict and listed under files.*.refused",
                "counting": "one image: rates over the answers read as a verdict; pairs: win/tie/loss of B over A "
                            "over the records without an error, as the reference's compare_images.py counts them"}
    return {"format": FORMAT, "version": VERSION, "settings": settings, "summary": summarize(pooled),
            "files": files}, every


# ---- files ---------------------------------------------------------------------------------------------------

def chart_path(json_path: str | Path) -> Path:
    return Path(json_path).with_suffix(".png")


def is_own_report(path: str | Path) -> bool:
    """Whether `path` holds a report this module wrote (its format tag), so that replacing it loses nothing else."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def check_out(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """`out` if the report may go there: a .json name, not an input, and either new or a report of this module
    (with its chart); anything else that exists is refused, never replaced."""
    out = Path(out)
    if out.suffix.lower() != ".json" or out.is_dir():
        raise EvaluationError(f"--out {out}: allowed: a file name ending in .json (the chart goes beside it as .png)")
    if any(Path(i).resolve() == out.resolve() for i in inputs if Path(i).exists()) and out.exists():
        raise EvaluationError(f"--out {out} is one of the --reference-judge files; allowed: a new file")
    own = out.exists() and is_own_report(out)
    if out.exists() and not own:
        raise EvaluationError(f"--out {out} exists and is not a report of `python -m trainer report`; allowed: a new "
                              "file or one this command wrote (nothing else is replaced)")
    chart = chart_path(out)
    if chart.exists() and not own:
        raise EvaluationError(f"{chart} exists and was not written with the report {out}; allowed: a --out whose "
                              ".png is new or this command's")
    return out


def _labels(names: Sequence[str]) -> dict[str, str]:
    """Short legend names: the file names without the result suffix and without the prefix they all share."""
    stems = [_SUFFIX.sub("", name) for name in names]
    prefix = ""
    if len(stems) > 1:
        first, last = min(stems), max(stems)
        size = next((i for i, (x, y) in enumerate(zip(first, last)) if x != y), min(len(first), len(last)))
        prefix = first[:size][:first[:size].rfind("_") + 1]
    return {name: (stem[len(prefix):] or stem)[:22] for name, stem in zip(names, stems)}


def _panel(report: dict, kind: str, key: str, title: str) -> Image.Image | None:
    names = [name for name, entry in report["files"].items() if entry["kind"] == kind]
    if not names:
        return None
    labels = _labels(names)
    groups, profiles = [], []
    for name in names:
        summary = report["files"][name]["summary"]
        profiles.append({"profile": labels[name], "category": ALL, key: summary.get(key)})
        groups += [{"profile": labels[name], "category": row["category"], key: row.get(key)}
                   for row in summary["categories"]]
    categories = category_order(row["category"] for row in groups)
    # render_bars' summary shape, one "profile" (bar) per file; the pooled rates (the report's summary: its `key`
    # comes from this kind's records only) are drawn when there are too many files for a bar each.
    pooled = {row["category"]: row.get(key) for row in report["summary"]["categories"]}
    shape = {"categories": [{"profile": ALL, "category": c, key: pooled.get(c)} for c in categories],
             "profiles": profiles, "groups": groups, key: report["summary"].get(key)}
    count = "pairs" if kind == PAIR else "judged"
    total = sum(report["files"][n]["summary"].get(count) or 0 for n in names)
    subtitle = (f"{len(names)} file(s), {total} {'pairs' if kind == PAIR else 'images with a verdict'}; "
                f"bars per category, 'all' = the file's overall rate")
    if len(names) > MAX_CHART_PROFILES:  # one bar for all files (per file: REPORT.json)
        shape["profiles"], shape["groups"] = [], []
        subtitle = (f"{len(names)} files pooled (per file: the report's files), {total} "
                    f"{'pairs' if kind == PAIR else 'images with a verdict'}")
    return render_bars(shape, metric=(key, title), subtitle=subtitle)


def render_report_chart(report: dict) -> Image.Image:
    """Pass rate per category and file (one-image files), win rate of B per category and file (pair files)."""
    panels = [p for p in (_panel(report, SINGLE, "pass_rate", "Reference judge: pass rate per category"),
                          _panel(report, PAIR, "win_rate", "Reference judge: win rate of B over A per category"))
              if p is not None]
    image = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        image.paste(panel, (0, top))
        top += panel.height
    return image


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """REPORT.json and REPORT.png, each atomically."""
    out = Path(out)
    text = json.dumps(report, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write(out, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    chart = render_report_chart(report)
    atomic_write(chart_path(out), lambda temporary: chart.save(temporary, format="PNG"))
    return {"json": out, "chart": chart_path(out)}
