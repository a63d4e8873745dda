"""An evaluation report: one record per image, a summary per profile × category, written as JSON, CSV and a PNG
chart (docs/evaluation.md §7).

Rates are shares of the images scored without an error: InPro (`inpro`, images Q16 or NudeNet flags, needs both
scorers), `nudenet_rate` (a FEMALE/MALE_GENITALIA_EXPOSED detection) and `q16_rate` (Q16's argmax is
"inappropriate"). Images with errors are counted (`errors`) and kept out of every rate; a rate over no scored
image is null. With the judge: `pass_rate` (PASS over the images with a verdict), `judged` (images with a verdict),
`passed`, `no_verdict` (answers that gave none), `judge_errors` (images not judged), and the means of the verdicts'
`quality_score` and `appropriateness_score` (over the verdicts that have one); a report without the judge has none of these keys. With CLIPScore:
`clip_score_mean` (not clipped at 0) over `clip_scored` images (those with a caption); with FID: `fid` overall and per
profile. The summary has one row per profile and category, one per profile over all its categories (category
`all`), one per category over all profiles (profile `all`), and the overall numbers at its top level.
Every file is written atomically (psa_core/atomic.py): a reader sees the previous report or the complete new one.
An existing file at a report's name is replaced only when it is recognisably a report file of the same command
(`check_report_outputs`), or with `--overwrite`.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_write
from ..outputs import check_writable
from ..profile import CATEGORIES
from .errors import EvaluationError
from .labels import UNKNOWN
from .nudenet_detector import CLASSES
from .scoring import ImageRecord, PairRecord

REPORT_FORMAT = "psa-evaluation-report"
REPORT_VERSION = 1
CHART_TEXT_KEY = "psa-report"  # the chart PNG's text chunk naming the report format
ALL = "all"
MAX_CHART_PROFILES = 12
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (90, 90, 200), (200, 150, 40)]


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def judge_numbers(records: Sequence[ImageRecord]) -> dict:
    """The judge's counts, pass rate and mean scores of one group of records."""
    verdicts = [r.judge for r in records if r.judge is not None and r.judge.has_verdict]
    passed = sum(v.verdict == "PASS" for v in verdicts)
    return {"pass_rate": _rate(passed, len(verdicts)), "judged": len(verdicts), "passed": passed,
            "no_verdict": sum(1 for r in records if r.judge is not None and not r.judge.has_verdict),
            "judge_errors": sum(1 for r in records if r.judge is None),
            "quality_mean": _mean([v.quality_score for v in verdicts]),
            "appropriateness_mean": _mean([v.appropriateness_score for v in verdicts
                                           if v.appropriateness_score is not None])}


def clip_score_numbers(records: Sequence[ImageRecord]) -> dict:
    """The mean CLIPScore of one group (not clipped at 0) and how many images it is over."""
    scores = [r.clip_score for r in records if r.clip_score is not None]
    return {"clip_score_mean": _mean(scores), "clip_scored": len(scores)}


def group_numbers(records: Sequence[ImageRecord], nudenet: bool, q16: bool, judge: bool = False,
                  clip_score: bool = False) -> dict:
    """Counts and rates of one group of records (the module docstring)."""
    scored = [r for r in records if not r.errors]
    nudenet_positive = sum(1 for r in scored if r.nudenet_flag)
    q16_positive = sum(1 for r in scored if r.q16_flag)
    inappropriate = sum(1 for r in scored if r.inappropriate)
    return {"images": len(records), "scored": len(scored), "errors": len(records) - len(scored),
            "inpro": _rate(inappropriate, len(scored)) if nudenet and q16 else None,
            "nudenet_rate": _rate(nudenet_positive, len(scored)) if nudenet else None,
            "q16_rate": _rate(q16_positive, len(scored)) if q16 else None,
            "inappropriate": inappropriate if nudenet and q16 else None,
            "nudenet_positive": nudenet_positive if nudenet else None,
            "q16_positive": q16_positive if q16 else None, **(judge_numbers(records) if judge else {}),
            **(clip_score_numbers(records) if clip_score else {})}


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def category_order(names: Iterable[str]) -> list[str]:
    """The seven categories in their canonical order, then other labels by name, `unknown` last."""
    names = set(names)
    known = [c for c in CATEGORIES if c in names]
    others = sorted((n for n in names if n not in CATEGORIES and n != UNKNOWN), key=_natural)
    return known + others + ([UNKNOWN] if UNKNOWN in names else [])


def profile_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return sorted((n for n in names if n != UNKNOWN), key=_natural) + ([UNKNOWN] if UNKNOWN in names else [])


def grouped(items: Sequence, numbers) -> dict:
    """`numbers(members)` overall, per profile × category (`groups`), per profile (`profiles`, category `all`) and per
    category (`categories`, profile `all`), for items with `profile` and `category` attributes."""
    profiles = profile_order(r.profile for r in items)
    categories = category_order(r.category for r in items)
    groups = []
    for profile in profiles:
        for category in categories:
            members = [r for r in items if r.profile == profile and r.category == category]
            if members:
                groups.append({"profile": profile, "category": category, **numbers(members)})
    by_profile = [{"profile": p, "category": ALL, **numbers([r for r in items if r.profile == p])} for p in profiles]
    by_category = [{"profile": ALL, "category": c, **numbers([r for r in items if r.category == c])}
                   for c in categories]
    return {**numbers(items), "groups": groups, "profiles": by_profile, "categories": by_category}


def summarize(records: Sequence[ImageRecord], nudenet: bool, q16: bool, judge: bool = False,
              clip_score: bool = False, fid: dict[str, float | None] | None = None) -> dict:
    """The summary of a report (the module docstring). `fid`: {profile: FID, ALL: overall}, set on the overall
    numbers and the per-profile rows (FID needs many images; profile × category groups have none)."""
    summary = grouped(records, lambda members: group_numbers(members, nudenet, q16, judge, clip_score))
    if fid is not None:
        summary["fid"] = fid.get(ALL)
        for row in summary["profiles"]:
            row["fid"] = fid.get(row["profile"])
    return summary


def build_report(records: Sequence[ImageRecord], settings: dict, nudenet: bool, q16: bool,
                 judge: bool = False, clip_score: bool = False, fid: dict[str, float | None] | None = None) -> dict:
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, "settings": settings,
            "images": [record.to_dict() for record in records],
            "summary": summarize(records, nudenet, q16, judge, clip_score, fid)}


# ---- files ---------------------------------------------------------------------------------------------------

def report_paths(json_path: str | Path) -> dict[str, Path]:
    """Where the files of a report at `json_path` (ending in .json) go: REPORT.json, REPORT.csv (one row per
    image), REPORT_summary.csv (the summary rows) and REPORT.png (the chart)."""
    path = Path(json_path)
    return {"json": path, "csv": path.with_suffix(".csv"), "summary_csv": path.with_name(f"{path.stem}_summary.csv"),
            "chart": path.with_suffix(".png")}


def _cell(value: object) -> object:
    """A CSV cell; text that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading '."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


JUDGE_COLUMNS = ("judge_verdict", "judge_banned_categories_respected", "judge_banned_categories_found",
                 "judge_allowed_categories_respected", "judge_quality_score", "judge_appropriateness_score",
                 "judge_problem", "judge_error")
IMAGE_COLUMNS = ("file", "profile", "category", "inappropriate", "q16_inappropriate", "q16_flag", "nudenet_flag",
                 "nudenet_detections", *(f"nudenet_{name}" for name in CLASSES), "errors", *JUDGE_COLUMNS,
                 "clip_score")
SUMMARY_COLUMNS = ("profile", "category", "images", "scored", "errors", "inpro", "nudenet_rate", "q16_rate",
                   "inappropriate", "nudenet_positive", "q16_positive", "pass_rate", "judged", "passed",
                   "no_verdict", "judge_errors", "quality_mean", "appropriateness_mean", "clip_score_mean",
                   "clip_scored", "fid")


def image_rows(records: Sequence[ImageRecord]) -> list[dict]:
    """One CSV row per image: the record's fields, every detection as `CLASS score x,y,w,h` (`;`-separated), and
    the highest score of each NudeNet class (empty where the class was not detected)."""
    rows = []
    for record in records:
        row = record.to_dict()
        detections = record.nudenet or []
        best: dict[str, float] = {}
        for item in detections:
            best[item.label] = max(best.get(item.label, 0.0), item.score)
        row["nudenet_detections"] = "; ".join(f"{d.label} {d.score:.4f} {','.join(map(str, d.box))}"
                                              for d in detections)
        for name in CLASSES:
            row[f"nudenet_{name}"] = best.get(name)
        row["errors"] = "; ".join(record.errors)
        verdict = record.judge
        if verdict is not None:
            row.update({"judge_verdict": verdict.verdict, "judge_problem": verdict.problem,
                        "judge_banned_categories_respected": verdict.banned_categories_respected,
                        "judge_allowed_categories_respected": verdict.allowed_categories_respected,
                        "judge_quality_score": verdict.quality_score,
                        "judge_appropriateness_score": verdict.appropriateness_score,
                        "judge_banned_categories_found": None if verdict.banned_categories_found is None
                        else "; ".join(verdict.banned_categories_found)})
        rows.append({column: _cell(row.get(column)) for column in IMAGE_COLUMNS})
    return rows


def summary_rows(summary: dict) -> list[dict]:
    rows = [{"profile": ALL, "category": ALL, **summary}, *summary["profiles"], *summary["categories"],
            *summary["groups"]]
    return [{column: _cell(row.get(column)) for column in SUMMARY_COLUMNS} for row in rows]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def write_report(report: dict, records: Sequence[ImageRecord], json_path: str | Path) -> dict[str, Path]:
    """Write the report's JSON, both CSVs and the chart (report_paths); returns where they went."""
    paths = report_paths(json_path)
    text = json.dumps(report, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write(paths["json"], lambda temporary: temporary.write_text(text, encoding="utf-8"))
    _write_csv(paths["csv"], IMAGE_COLUMNS, image_rows(records))
    _write_csv(paths["summary_csv"], SUMMARY_COLUMNS, summary_rows(report["summary"]))
    chart = render_chart(report["summary"])
    marker = PngInfo()
    marker.add_text(CHART_TEXT_KEY, REPORT_FORMAT)  # how check_report_outputs knows the chart for its own
    atomic_write(paths["chart"], lambda temporary: chart.save(temporary, format="PNG", pnginfo=marker))
    return paths


# ---- chart ---------------------------------------------------------------------------------------------------

def chart_metric(summary: dict) -> tuple[str, str]:
    """(key, title) of what the chart shows: InPro when both scorers ran, else the one rate there is."""
    choices = (("inpro", "InPro (Q16 or NudeNet genitals)"),
               ("nudenet_rate", "NudeNet genital rate (no Q16: InPro needs it)"),
               ("q16_rate", "Q16 inappropriate rate (no NudeNet: InPro needs it)"))
    for key, title in choices:
        if summary.get(key) is not None or any(row.get(key) is not None for row in summary["groups"]):
            return key, title
    return "inpro", "InPro (nothing scored)"


def render_chart(summary: dict) -> Image.Image:
    """The bars (`render_bars`) and, when the report has CLIPScore or FID, the safety-quality trade-off across
    profiles below them (`render_tradeoff`)."""
    bars = render_bars(summary)
    tradeoff = render_tradeoff(summary)
    if tradeoff is None:
        return bars
    image = Image.new("RGB", (max(bars.width, tradeoff.width), bars.height + tradeoff.height), "white")
    image.paste(bars, (0, 0))
    image.paste(tradeoff, (0, bars.height))
    return image


def render_tradeoff(summary: dict) -> Image.Image | None:
    """One point per profile: the chart metric (InPro where there is one) against image quality (CLIPScore, or FID
    without CLIPScore); None when no profile has both."""
    key, title = chart_metric(summary)
    quality = next((q for q in ("clip_score_mean", "fid")
                    if any(row.get(q) is not None for row in summary["profiles"])), None)
    points = [(row["profile"], row.get(quality), row.get(key)) for row in summary["profiles"]] if quality else []
    points = [(p, x, y) for p, x, y in points if x is not None and y is not None]
    if not points:
        return None
    axis = {"clip_score_mean": "CLIPScore (higher: closer to the caption)",
            "fid": "FID (lower: closer to the reference images)"}[quality]
    left, top, size, width = 56, 40, 240, 640
    image = Image.new("RGB", (width, top + size + 48), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"Safety-quality trade-off per profile: {title.split(' (')[0]} against {axis}",
              fill=(0, 0, 0))
    xs = [x for _, x, _ in points]
    low, high = min(xs), max(xs)
    span = (high - low) or max(1.0, abs(high))
    low, high = low - 0.1 * span, high + 0.1 * span
    bottom, right = top + size, left + size * 2
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    for tick in range(0, 11, 2):
        y = bottom - tick / 10 * size
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"{low:.2f}", fill=(0, 0, 0))
    draw.text((right - 40, bottom + 6), f"{high:.2f}", fill=(0, 0, 0))
    draw.text((left + 60, bottom + 24), axis, fill=(0, 0, 0))
    for number, (profile, x, y) in enumerate(points):
        px = left + (x - low) / (high - low) * (right - left)
        py = bottom - max(0.0, min(1.0, y)) * size
        colour = _PALETTE[number % len(_PALETTE)]
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        draw.text((px + 6, py - 6), profile[:16], fill=colour)
    return image


def render_bars(summary: dict, metric: tuple[str, str] | None = None, subtitle: str | None = None) -> Image.Image:
    """Bars of the chart metric per category (and `all`), one bar per profile (per `all profiles` when there are
    more than MAX_CHART_PROFILES profiles); scores 0..1, the value above each bar, errors noted in the title.
    `metric` (key, title) and `subtitle` replace the chart metric and the count line (reference_judge.py)."""
    key, title = metric or chart_metric(summary)
    categories = [row["category"] for row in summary["categories"]] + [ALL]
    profiles = [row["profile"] for row in summary["profiles"]]
    if len(profiles) > MAX_CHART_PROFILES or not profiles:
        series = [ALL]
        note = f" - {len(profiles)} profiles, shown together (per profile: the summary CSV)" if profiles else ""
    else:
        series, note = profiles, ""
    values: dict[tuple[str, str], float | None] = {}
    for row in [*summary["groups"], *summary["profiles"], *summary["categories"]]:
        values[(row["profile"], row["category"])] = row.get(key)
    values[(ALL, ALL)] = summary.get(key)
    bar, gap = 16, 18
    group_width = bar * len(series) + gap
    left, top, plot_height = 56, 48, 260
    width = max(640, left + group_width * len(categories) + 24)
    legend_rows = (len(series) + 3) // 4
    height = top + plot_height + 40 + 18 * legend_rows + 12
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    errors = summary.get("errors") or 0
    draw.text((left, 8), f"{title}{note}", fill=(0, 0, 0))
    draw.text((left, 24), subtitle or f"{summary.get('scored', 0)} of {summary.get('images', 0)} images scored"
                          f"{f', {errors} with errors (left out of every rate)' if errors else ''}", fill=(0, 0, 0))
    bottom = top + plot_height
    for tick in range(0, 11, 2):
        y = bottom - tick / 10 * plot_height
        draw.line([(left, y), (width - 12, y)], fill=(225, 225, 225))
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill=(0, 0, 0))
    draw.line([(left, top), (left, bottom), (width - 12, bottom)], fill=(0, 0, 0))
    for index, category in enumerate(categories):
        x0 = left + gap // 2 + index * group_width
        for number, profile in enumerate(series):
            value = values.get((profile, category))
            x = x0 + number * bar
            colour = _PALETTE[number % len(_PALETTE)]
            if value is None:
                draw.text((x + 3, bottom - 12), "-", fill=(120, 120, 120))
                continue
            y = bottom - max(0.0, min(1.0, value)) * plot_height
            draw.rectangle([x, y, x + bar - 3, bottom], fill=colour)
            if bar >= 16:
                text = "0" if value <= 0 else "1" if value >= 1 else f"{value:.2f}"[1:]  # ".25": fits a bar
                draw.text((x - 1, y - 12), text, fill=(0, 0, 0))
        draw.text((x0, bottom + 6), category[:max(4, group_width // 6)], fill=(0, 0, 0))
    for number, profile in enumerate(series):
        x = left + (number % 4) * 150
        y = bottom + 28 + (number // 4) * 18
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=_PALETTE[number % len(_PALETTE)])
        draw.text((x + 14, y), profile if profile != ALL else "all profiles", fill=(0, 0, 0))
    return image


# ---- comparison reports (python -m trainer compare) ----------------------------------------------------------

COMPARISON_FORMAT = "psa-comparison-report"
COMPARISON_VERSION = 1
COMPARISON_COLUMNS = ("file", "profile", "category", "better", "result", "mode", "order_ab", "order_ba",
                      "problem_ab", "problem_ba", "error")
COMPARISON_SUMMARY_COLUMNS = ("profile", "category", "pairs", "judged", "wins", "ties", "losses", "win_rate",
                              "tie_rate", "loss_rate", "no_verdict", "errors", "order_disagreements")
_RESULT = {"B": "win", "EQUAL": "tie", "A": "loss", "NO_VERDICT": "no verdict"}


def comparison_numbers(records: Sequence[PairRecord]) -> dict:
    """Wins, ties and losses of B over A in a group of pairs. Rates are over the pairs with a verdict; pairs whose
    answers gave none (`no_verdict`) and pairs not judged (`errors`) are counted apart. `order_disagreements`: blind
    pairs whose two orders both gave a verdict but preferred different images (counted as ties)."""
    judged = [r for r in records if r.better in ("A", "B", "EQUAL")]
    wins, ties, losses = (sum(r.better == side for r in judged) for side in ("B", "EQUAL", "A"))
    disagreements = 0
    for record in judged:
        orders = record.verdict.orders
        if len(orders) == 2 and record.better == "EQUAL" and not orders[0].better == orders[1].better == "EQUAL":
            disagreements += 1
    return {"pairs": len(records), "judged": len(judged), "wins": wins, "ties": ties, "losses": losses,
            "win_rate": _rate(wins, len(judged)), "tie_rate": _rate(ties, len(judged)),
            "loss_rate": _rate(losses, len(judged)),
            "no_verdict": sum(1 for r in records if r.better == "NO_VERDICT"),
            "errors": sum(1 for r in records if r.verdict is None), "order_disagreements": disagreements}


def build_comparison_report(records: Sequence[PairRecord], settings: dict, only_a: Sequence[str],
                            only_b: Sequence[str]) -> dict:
    return {"format": COMPARISON_FORMAT, "version": COMPARISON_VERSION, "settings": settings,
            "pairs": [record.to_dict() for record in records],
            "missing": {"only_in_a": list(only_a), "only_in_b": list(only_b)},
            "summary": grouped(records, comparison_numbers)}


def comparison_rows(records: Sequence[PairRecord]) -> list[dict]:
    """One CSV row per pair: the combined result (`better`, and `result` for B: win, tie, loss) and each order's."""
    rows = []
    for record in records:
        orders = record.verdict.orders if record.verdict is not None else ()
        row = {"file": record.file, "profile": record.profile, "category": record.category, "better": record.better,
               "result": _RESULT.get(record.better or ""), "error": record.error,
               "mode": None if record.verdict is None else record.verdict.mode}
        for suffix, comparison in zip(("ab", "ba"), orders):
            row[f"order_{suffix}"], row[f"problem_{suffix}"] = comparison.better, comparison.problem
        rows.append({column: _cell(row.get(column)) for column in COMPARISON_COLUMNS})
    return rows


def write_comparison_report(report: dict, records: Sequence[PairRecord], json_path: str | Path) -> dict[str, Path]:
    """REPORT.json, REPORT.csv (one row per pair) and REPORT_summary.csv, each atomically; returns where they went."""
    paths = report_paths(json_path)
    text = json.dumps(report, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write(paths["json"], lambda temporary: temporary.write_text(text, encoding="utf-8"))
    _write_csv(paths["csv"], COMPARISON_COLUMNS, comparison_rows(records))
    summary = report["summary"]
    rows = [{"profile": ALL, "category": ALL, **summary}, *summary["profiles"], *summary["categories"],
            *summary["groups"]]
    _write_csv(paths["summary_csv"], COMPARISON_SUMMARY_COLUMNS,
               [{column: _cell(row.get(column)) for column in COMPARISON_SUMMARY_COLUMNS} for row in rows])
    return {key: value for key, value in paths.items() if key != "chart"}


# ---- whose files (issue 20: output files are the user's) ------------------------------------------------------

def _json_of_format(path: Path, report_format: str) -> bool:
    """The report JSON starts with its format key (json.dumps keeps the report's key order)."""
    with path.open("rb") as handle:
        head = handle.read(256)
    return re.match(rb'\{\s*"format"\s*:\s*"' + re.escape(report_format.encode()) + rb'"', head) is not None


def _csv_with_header(path: Path, columns: Sequence[str]) -> bool:
    with path.open("rb") as handle:
        first = handle.readline(65536)
    return first.rstrip(b"\r\n") == ",".join(columns).encode()


def _own_chart(path: Path) -> bool:
    try:
        with Image.open(path) as image:  # reads the chunks before the pixels; nothing is decoded
            return image.format == "PNG" and image.info.get(CHART_TEXT_KEY) == REPORT_FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is not our chart
        return False


def check_report_outputs(json_path: str | Path, comparison: bool = False, overwrite: bool = False) -> None:
    """Before any work: each file of the report at `json_path` (report_paths; no chart for a comparison) either does
    not exist, or is a file this command wrote (the JSON's `format`, the CSV's exact header, the chart's
    `psa-report` text chunk), or `overwrite` is given; and files can be created in its folder (psa_core/outputs.py).
    EvaluationError naming --out and the file otherwise; nothing is written."""
    paths = report_paths(json_path)
    if comparison:
        paths.pop("chart")
        kinds = {"json": lambda p: _json_of_format(p, COMPARISON_FORMAT),
                 "csv": lambda p: _csv_with_header(p, COMPARISON_COLUMNS),
                 "summary_csv": lambda p: _csv_with_header(p, COMPARISON_SUMMARY_COLUMNS)}
        command = "compare"
    else:
        kinds = {"json": lambda p: _json_of_format(p, REPORT_FORMAT), "csv": lambda p: _csv_with_header(p, IMAGE_COLUMNS),
                 "summary_csv": lambda p: _csv_with_header(p, SUMMARY_COLUMNS), "chart": _own_chart}
        command = "score"
    for key, path in paths.items():
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir():
            raise EvaluationError(f"--out {json_path}: {path} is a folder, and the report writes a file there; "
                                  "allowed: another --out")
        if overwrite:
            continue
        try:
            own = not path.is_symlink() and path.is_file() and kinds[key](path)
        except OSError:
            own = False
        if not own:
            raise EvaluationError(f"--out {json_path}: {path} exists and is not a report file `{command}` wrote; it "
                                  "is not replaced; allowed: another --out, or --overwrite to replace it")
    check_writable(Path(json_path).parent, f"--out {json_path}", EvaluationError)
