"""The README's Sage-unseen recipe (issue 22, item 8) against the CLI it names.

The recipe's commands are the fenced blocks between `<!-- readme-recipe` and `<!-- /readme-recipe -->` in README.md.
Each command is shell-split (a `for run in A B; do ... done` loop is expanded into one command per value), and every
`python -m trainer SUB` command must name an existing subcommand whose `--help` lists each flag the recipe passes, so a
recipe that drifts from the CLI (a renamed or removed flag or subcommand) fails here. This is a parse-level check: the
full run on tiny stand-ins is not done by this test yet (see the report of issue 22)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def recipe_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- readme-recipe")
    end = text.index("<!-- /readme-recipe -->", start)
    blocks = re.findall(r"```\n(.*?)```", text[start:end], flags=re.S)
    assert blocks, "no fenced block inside the readme-recipe markers"
    commands: list[list[str]] = []
    for block in blocks:
        lines = [ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        i = 0
        while i < len(lines):
            loop = re.match(r"\s*for (\w+) in (.*); do\s*$", lines[i])
            if loop:
                var, values = loop.group(1), loop.group(2).split()
                body = []
                i += 1
                while lines[i].strip() != "done":
                    body.append(lines[i])
                    i += 1
                for value in values:
                    for ln in body:
                        commands.append(shlex.split(ln.replace("$" + var, value)))
            else:
                commands.append(shlex.split(lines[i]))
            i += 1
    return commands


def test_recipe_has_every_step() -> None:
    subs = [c[3] for c in recipe_commands() if c[:3] == ["python", "-m", "trainer"]]
    # encode-profiles once, then per model (SD1.5, SDXL): generate PSA + base, score both
    assert subs == ["encode-profiles"] + ["generate", "generate", "score", "score"] * 2


def test_recipe_flags_exist_in_cli() -> None:
    helps: dict[str, str] = {}
    for cmd in recipe_commands():
        assert cmd[:3] == ["python", "-m", "trainer"], cmd
        sub = cmd[3]
        if sub not in helps:
            proc = subprocess.run([sys.executable, "-m", "trainer", sub, "--help"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"`trainer {sub} --help` failed: {proc.stderr[-500:]}"
            helps[sub] = proc.stdout
        for flag in (a for a in cmd[4:] if a.startswith("--")):
            assert re.search(re.escape(flag) + r"(?![\w-])", helps[sub]), f"`trainer {sub}` has no {flag} (README recipe)"
