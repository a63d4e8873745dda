"""`python -m trainer train ...` / `psa-trainer train ...`: train a PSA adapter (see `--help`);
`python -m trainer build-data ...`: render a prompt-pair file into a preference dataset (see `build-data --help`);
`python -m trainer generate ...`: render a prompt set per profile with a base model and a PSA adapter (`generate --help`);
`python -m trainer score ...`: score a folder of images with NudeNet and Q16 into an InPro report (`score --help`);
`python -m trainer compare ...`: judge the images of two folders pair by pair into a win-rate report (`compare --help`);
`python -m trainer encode-profiles ...`: {User_ID}.npy embeddings from a local LLM (`encode-profiles --help`);
`python -m trainer report --reference-judge FILE ... --out REPORT.json`: the reference judge's result files read into
a report (`report --help`).

Exit codes: 0 done; 1 `score`/`compare` wrote their report but could score or judge nothing at all; 2 bad input (one
line naming the input); 3 training stopped on a non-finite loss."""
from __future__ import annotations

import sys

from psa_core.errors import PSAError
from psa_core.training.loop import NonFiniteLoss

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_NOTHING_DONE = 1  # score / compare: the report is written, but no image or pair could be scored or judged


def _finished(command: str, result: dict) -> int:
    if result.get("failed"):
        print(f"psa-trainer: {command} failed: {result['failed']}", file=sys.stderr)
        return EXIT_NOTHING_DONE
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import parse_train_args

    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["build-data"]:
            from .build_data import build_data, parse_build_args

            build_data(parse_build_args(argv[1:]))
            return 0
        if argv[:1] == ["encode-profiles"]:
            from .profile_embeddings import encode_profiles

            encode_profiles(argv[1:])
            return 0
        if argv[:1] == ["generate"]:
            from .generate import generate, parse_generate_args

            generate(parse_generate_args(argv[1:]))
            return 0
        if argv[:1] == ["score"]:
            from .score import parse_score_args, score

            return _finished("score", score(parse_score_args(argv[1:])))
        if argv[:1] == ["compare"]:
            from .compare import compare, parse_compare_args

            return _finished("compare", compare(parse_compare_args(argv[1:])))
        if argv[:1] == ["report"]:
            from .reference_report import parse_report_args, report

            report(parse_report_args(argv[1:]))
            return 0
        config = parse_train_args(argv)
        from .train import train  # after the arguments are checked: it imports diffusers and Accelerate

        train(config)
    except NonFiniteLoss as error:
        print(f"psa-trainer: stopped: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except (PSAError, FileNotFoundError) as error:
        print(f"psa-trainer: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
