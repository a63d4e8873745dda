"""What every `python -m trainer` command's argument parser shares."""
from __future__ import annotations

import argparse

from psa_core.errors import PSAError


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (unknown flags, bad numbers, a value outside `choices`) as the pack's error: the CLI
    prints it as one `psa-trainer: error:` line and exits 2 (trainer/__main__.py), not argparse's usage block.
    `error_class` is the command's PSAError subclass; `prog` is "psa-trainer <command>"."""

    def __init__(self, *args, error_class: type[PSAError] = PSAError, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_class = error_class

    def error(self, message: str):
        command = self.prog.split()[-1]
        raise self.error_class(f"{message} (see `python -m trainer {command} --help`)")
