"""Stopping long model work when its caller asks: between generated tokens and between batches.

psa_core never imports ComfyUI, so the caller passes `should_stop`, a function answering whether to stop now
(the nodes pass one that reads ComfyUI's interrupt flag, set by `/interrupt`; the command line passes none). When it
answers True the work raises `Interrupted`. It derives from BaseException, like KeyboardInterrupt, so the handlers
that record one image's failure and go on (psa_core.evaluation.judge.attempt) let it through.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

ShouldStop = Callable[[], bool]


class Interrupted(BaseException):
    """The caller's `should_stop` asked to stop; nothing was finished."""


def is_interrupt(error: BaseException) -> bool:
    """Whether `error` stops the whole run: Interrupted, or ComfyUI's own interrupt, which its layers raise in their
    forward (an Exception in ComfyUI 0.3.x, so a handler of one image's failure would catch it; recognised by
    name, psa_core does not import ComfyUI)."""
    return isinstance(error, Interrupted) or type(error).__name__ == "InterruptProcessingException"


def check_stop(should_stop: ShouldStop | None) -> None:
    """Raise Interrupted when `should_stop` (if any) says so."""
    if should_stop is not None and should_stop():
        raise Interrupted("stopped on request")


def stopping_criteria(should_stop: ShouldStop | None):
    """transformers' `stopping_criteria` for `generate`: asks `should_stop` after every generated token and raises
    Interrupted (a criterion that only returned True would end the answer early, and a cut answer would be
    taken for a real one). None without `should_stop`."""
    if should_stop is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            check_stop(should_stop)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


__all__ = ["Interrupted", "ShouldStop", "check_stop", "is_interrupt", "stopping_criteria"]
