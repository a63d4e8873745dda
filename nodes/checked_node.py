"""The validation layer every PSA node shares: derive from CheckedNode, never write validate_inputs.

ComfyUI runs its own range and option checks only for the inputs that a node's validate_inputs does not name (and
for none when it takes **kwargs), so a hand-written validate_inputs silently turns them off. CheckedNode generates
validate_inputs naming only what the pack must check itself: every float input (NaN passes any range check), every
combo (ComfyUI 0.3.x never checks a V3 node's combo values: it looks for a list where V3 declares "COMBO"), every
text input (ComfyUI has no length bound for one: each gets `text_limit`, from psa_core/text_limits.py), every
input in PATH_INPUTS (names of files and folders, under psa_core.paths), and the parameters of the node's
check_inputs. Those inputs are re-checked against the schema (range, options, length) first, so no declared limit
goes unchecked; ComfyUI keeps checking all the others (a text input has nothing else to check: ComfyUI still turns
a literal into text before any of this).

Long model work in psa_core stops when the `should_stop` it is given says so, raising psa_core's `Interrupted`;
nodes pass `comfy_should_stop`, and every CheckedNode's `execute` turns `Interrupted` into ComfyUI's own interrupt,
so the prompt ends as interrupted.

At validation a linked input arrives as None, like a literal null, and is left alone; so `execute` checks the same
widgets and names again, and every int input, with the values it is actually given (a NaN or an out-of-range number
from a linked node, a null sent for a combo), before the node's own code runs.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from comfy_api.latest import io

from ..psa_core.errors import InputError, PSAError, shown
from ..psa_core.interrupt import Interrupted
from ..psa_core.numbers import check_number
from ..psa_core.text_limits import MAX_PATH_CHARS, MAX_PROMPT_CHARS, check_text
from .comfy_paths import ReadPath, WriteName

MAX_LISTED_OPTIONS = 20


def check_widget(spec: io.Input, value: Any, text_limit: int = MAX_PROMPT_CHARS) -> None:
    """The limits the schema declares for one widget input: range and finiteness, the options of a combo, or (a
    text input) at most `text_limit` characters."""
    if isinstance(spec, io.String.Input):
        check_text(value, spec.id, text_limit)
    elif isinstance(spec, (io.Float.Input, io.Int.Input)):
        check_number(value, spec.id, spec.min, spec.max, integer=isinstance(spec, io.Int.Input))
    elif isinstance(spec, io.Combo.Input) and value not in spec.options:
        options = spec.options
        listed = ", ".join(map(str, options[:MAX_LISTED_OPTIONS]))
        more = f" and {len(options) - MAX_LISTED_OPTIONS} more" if len(options) > MAX_LISTED_OPTIONS else ""
        raise InputError(f"{spec.id} {shown(value)} is not allowed; allowed: {listed or 'none available'}{more}")


@contextmanager
def about(name: str) -> Iterator[None]:
    """Prefix a PSAError raised inside with the input it is about: every refusal names its input."""
    try:
        yield
    except PSAError as error:
        raise type(error)(f"{name}: {error}") from None


class CheckedNode(io.ComfyNode):
    """Base class of the pack's nodes. Override `check_inputs` (keyword parameters named after inputs, each None when
    linked or absent; raise PSAError) for checks across inputs or of their content."""

    PATH_INPUTS: ClassVar[Mapping[str, ReadPath | WriteName]] = {}
    # The length bound of a text input not named here: MAX_PATH_CHARS for a path input, else MAX_PROMPT_CHARS.
    TEXT_LIMITS: ClassVar[Mapping[str, int]] = {}

    @classmethod
    def text_limit(cls, name: str) -> int:
        """The most characters text input `name` takes (its tooltip states it)."""
        return cls.TEXT_LIMITS.get(name, MAX_PATH_CHARS if name in cls.PATH_INPUTS else MAX_PROMPT_CHARS)

    @classmethod
    def check_inputs(cls) -> None:
        """No checks beyond the schema's and the path policy's."""

    @classmethod
    def check_values(cls, values: Mapping[str, Any]) -> None:
        """Every check of the generated validate_inputs, raising PSAError: schema limits, path policy, check_inputs."""
        cls.check_widgets(values, at_run=False)
        cls.check_inputs(**{name: values.get(name) for name in inspect.signature(cls.check_inputs).parameters})

    @classmethod
    def check_widgets(cls, values: Mapping[str, Any], at_run: bool) -> None:
        """Schema limits and path policy of the checked inputs in `values`. At validation None means linked (not
        known yet); at run time a None for a required input is a literal null and is refused too."""
        schema = {spec.id: spec for spec in cls.define_schema().inputs}  # fresh: combo options follow the folders
        problems = []
        for name, value in values.items():
            if name not in schema or (value is None and not (at_run and not schema[name].optional)):
                continue
            try:
                check_widget(schema[name], value, cls.text_limit(name))
                if name in cls.PATH_INPUTS:
                    cls.PATH_INPUTS[name].check(value, name)
            except PSAError as error:
                problems.append(str(error))
        if problems:
            raise InputError("\n".join(problems))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_CHECKED_INPUTS" in cls.__dict__:
            return  # ComfyUI's locked copy of a node class (same namespace): already set up
        if "validate_inputs" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: define check_inputs, not validate_inputs (a hand-written one turns off "
                            "ComfyUI's own checks of every input it names)")
        schema = cls.define_schema()
        inputs = [spec.id for spec in schema.inputs]
        names = [spec.id for spec in schema.inputs
                 if isinstance(spec, (io.Float.Input, io.Combo.Input, io.String.Input))]
        names += [*cls.PATH_INPUTS, *inspect.signature(cls.check_inputs).parameters]
        names = list(dict.fromkeys(names))
        unknown = [name for name in [*names, *cls.TEXT_LIMITS] if name not in inputs]
        if unknown:
            raise TypeError(f"{cls.__name__}: checks name inputs it does not have: {unknown}")
        cls._CHECKED_INPUTS = tuple(names)
        if names:
            cls.validate_inputs = classmethod(_validator(names))
        # At run time also every int: ComfyUI checks a linked int's range at no point.
        at_run = list(dict.fromkeys(names + [spec.id for spec in schema.inputs if isinstance(spec, io.Int.Input)]))
        if "execute" in cls.__dict__:
            cls.execute = classmethod(_checked_execute(cls.__dict__["execute"].__func__, at_run))


def _validator(names: list[str]):
    def validate_inputs(cls, **values: Any) -> bool | str:
        try:
            cls.check_values(values)
        except PSAError as error:
            return str(error)
        return True

    # ComfyUI reads the argument names (inspect.getfullargspec) to decide which inputs it leaves to this function.
    parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
    validate_inputs.__signature__ = inspect.Signature(
        [inspect.Parameter("cls", parameter)] + [inspect.Parameter(name, parameter, default=None) for name in names])
    return validate_inputs


def _checked_execute(execute, names: list[str]):
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def checked(cls, *args: Any, **kwargs: Any):
        given = signature.bind(cls, *args, **kwargs).arguments
        cls.check_widgets({name: given[name] for name in names if name in given}, at_run=True)
        try:
            return execute(cls, *args, **kwargs)
        except Interrupted:
            raise_comfy_interrupt()

    return checked


def comfy_should_stop() -> bool:
    """ComfyUI's interrupt flag (set by /interrupt and the Cancel button): the `should_stop` nodes give psa_core."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def raise_comfy_interrupt() -> None:
    """Raise ComfyUI's interrupt exception, clearing the flag as its own check does (the prompt ends as
    interrupted, and the next prompt starts clean)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    raise comfy.model_management.InterruptProcessingException()  # the flag was cleared meanwhile
