"""`python -m trainer report --reference-judge FILE [FILE ...] --out REPORT.json`: the reference judge's own result
files (evaluate_images.py's `*_results.json`, compare_images.py's `*_comparison_results.json`, plain or .gz) read
into this project's report (psa_core/evaluation/reference_judge.py, docs/evaluation.md §8a).

Writes REPORT.json and REPORT.png, each atomically; an existing --out is replaced only when it is a report of this
command (and its .png with it), anything else is refused. Bad input is one message naming the flag (exit code 2).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from psa_core.evaluation.errors import EvaluationError
from psa_core.evaluation.reference_judge import PAIR, build_report, check_out, write_report

from .cli import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="psa-trainer report",
        error_class=EvaluationError,
        description="Read the reference judge's result files (its evaluate_images.py and compare_images.py "
                    "outputs) through this project's strict answer reader into one report: pass and respected "
                    "rates per image file, win/tie/loss of B over A per pair file, per category and per user, "
                    "with a PNG chart. See docs/evaluation.md.")
    parser.add_argument("--reference-judge", nargs="+", required=True, metavar="FILE",
                        help="reference result files, *_results.json or *_comparison_results.json (plain or .gz)")
    parser.add_argument("--out", required=True, help="the report, REPORT.json (REPORT.png goes beside it); an "
                        "existing file is replaced only when this command wrote it")
    return parser


def parse_report_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_out(args.out, args.reference_judge)
    return args


def _line(name: str, entry: dict) -> str:
    s = entry["summary"]
    refused = f", {len(entry['refused'])} answers refused" if entry["refused"] else ""
    if entry["kind"] == PAIR:
        if s["win_rate"] is None:
            return f"{name}: no pair"
        return (f"{name}: B over A {100 * s['win_rate']:.2f}% win, {100 * s['tie_rate']:.2f}% tie, "
                f"{100 * s['loss_rate']:.2f}% loss over {s['pairs']} pairs{refused}, {s['pair_errors']} errors")
    if s["pass_rate"] is None:
        return f"{name}: no verdict in {s['images']} records{refused}"
    return (f"{name}: pass {100 * s['pass_rate']:.2f}%, banned respected {100 * s['banned_respected_rate']:.2f}%, "
            f"allowed respected {100 * s['allowed_respected_rate']:.2f}% over {s['judged']} judged of "
            f"{s['images']}{refused}, {s['errors']} errors")


def report(args: argparse.Namespace, log=print) -> dict:
    """Read the files, write the report; returns it and where its files went."""
    out = check_out(args.out, args.reference_judge)
    result, _ = build_report(args.reference_judge)
    paths = write_report(result, out)
    for name, entry in result["files"].items():
        log(f"report: {_line(name, entry)}")
        for item in entry["refused"]:
            log(f"report:   refused record {item['index']} ({item['image']}): {item['problem']}")
    log(f"report: written {paths['json']} and {paths['chart']}")
    return {"report": result, "paths": {key: str(Path(value)) for key, value in paths.items()}}
