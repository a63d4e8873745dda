"""The Q16 prompt embeddings P (2 × D; row 0 "not inappropriate", row 1 "inappropriate"), read as a plain numeric
array only (docs/evaluation.md §1, §7).

Accepted files: `.npy` (read without pickles), `.safetensors` (one tensor, or a tensor named `prompts`), and the
reference's own `prompts.p`, a pickled numpy array. The pickle is read by a restricted unpickler that resolves
exactly three globals, each to a checked stand-in rather than the real callable:

- `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`: accepted only as numpy's own
  pickles call it, `(ndarray, (0,), b"b")`, which gives an empty stand-in for the array's state to fill;
- `numpy.ndarray`: a marker that only that stand-in accepts (calling it, or giving it a state, fails);
- `numpy.dtype`: `('f2' or 'f4', False, True)` only, again a stand-in: its pickled state must be exactly a plain
  little-endian dtype's, `(3, '<', None, None, None, -1, -1, 0)` (byte order '=' too on a little-endian machine),
  so no byte order, flags (object or reference-count flags), fields, subarray, size or alignment can be set.

The array's state `(1, shape, dtype, fortran_order, data)` is checked (shape (2, D), the dtype stand-in, bytes of
exactly the size the shape needs) and only then does numpy make the array, from the bytes. So nothing the pickle
holds reaches a numpy object's state. Any other global (a `__reduce__` payload such as `os.system` or
`builtins.open`), a persistent id, or an extension code is refused before anything is called, and any exception
while reading (numpy's `SystemError` or `RuntimeError` included) becomes the refusal, naming the file. Only pickle
protocols 3 and 4 load (the reference file is protocol 3): protocol 2 spells bytes as a call of `_codecs.encode`,
and numpy writes protocol 5 arrays through `_frombuffer`; both are refused like any other global.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import reprlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import shown
from .errors import EvaluationError

PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
SUFFIXES = (".npy", ".safetensors", *PICKLE_SUFFIXES)
MAX_BYTES = 16 << 20  # Q16's ViT-L/14 prompts are 3 KB; no honest prompt file comes near this
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_DTYPE_KINDS = "biuf"
PICKLED_DTYPES = ("f2", "f4")  # what a prompt pickle may hold: float16 (the reference) or float32
# A plain dtype's pickled state, as numpy writes it: (3, byte order, subarray, names, fields, elsize, alignment, flags)
# with no subarray, names or fields, elsize and alignment -1 ("the type's own") and no flags; version 4 appends
# metadata, which must be None. Byte order '<' or '=' ('=' only on a little-endian machine, where it means '<').
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)
_BYTE_ORDERS = ("<", "=") if sys.byteorder == "little" else ("<",)
_STATE_SHOWN = reprlib.Repr()  # a dtype state in full (9 items at most), its parts cut short
_STATE_SHOWN.maxtuple, _STATE_SHOWN.maxlevel, _STATE_SHOWN.maxstring, _STATE_SHOWN.maxother = 9, 3, 40, 40
_STATE_SHOWN.maxdict = _STATE_SHOWN.maxlist = _STATE_SHOWN.maxset = 4


def _refuse(message: str):
    raise pickle.UnpicklingError(message)


class _NdarrayMarker:
    """What the restricted unpickler hands out for `numpy.ndarray`: usable only as `_reconstruct`'s first argument."""

    __slots__ = ()

    def __reduce__(self):
        raise pickle.PicklingError("not picklable")

    def __setstate__(self, state):
        _refuse("numpy.ndarray given a state of its own")


_NDARRAY = _NdarrayMarker()


class _DtypeStandIn:
    """`numpy.dtype(code, align, copy)` as the pickle calls it: the type code and its state are checked here and the
    real dtype is made from the code alone, so no pickled state ever reaches numpy (docs/evaluation.md §7)."""

    __slots__ = ("dtype", "state_set")

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.state_set = False

    def __setstate__(self, state) -> None:
        if self.state_set:
            _refuse("a numpy.dtype given its state twice")
        if (not isinstance(state, tuple) or len(state) not in (8, 9) or type(state[0]) is not int
                or state[0] != len(state) - 5 or state[1] not in _BYTE_ORDERS
                or any(type(got) is not type(want) or got != want for got, want in zip(state[2:8], _PLAIN_DTYPE_STATE))
                or (len(state) == 9 and state[8] is not None)):
            _refuse(f"numpy.dtype({self.dtype.str[1:]!r}) given the state {_STATE_SHOWN.repr(state)}; only a plain "
                    f"little-endian dtype's state is allowed: (3, '<', None, None, None, -1, -1, 0)")
        self.state_set = True


class _ArrayStandIn:
    """The empty array `_reconstruct` makes, filled by its pickled state `(1, shape, dtype, fortran, bytes)` only
    after every part is checked; the array is then made by numpy from the bytes (`frombuffer`, copied)."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state) -> None:
        if self.array is not None:
            _refuse("an array given its state twice")
        if not isinstance(state, tuple) or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
            _refuse(f"an array state must be (1, shape, dtype, fortran_order, data), found {shown(state)}")
        _, shape, dtype, fortran, data = state
        if (type(shape) is not tuple or len(shape) != 2 or any(type(size) is not int for size in shape)
                or shape[0] != 2 or shape[1] < 1):
            _refuse(f"the array's shape is {shown(shape)}; a Q16 prompt array is (2, D) with D >= 1")
        if type(dtype) is not _DtypeStandIn:
            _refuse(f"the array's dtype is {shown(type(dtype).__name__)}, not a numpy.dtype made by the pickle")
        if not dtype.state_set:
            _refuse(f"the array's numpy.dtype({dtype.dtype.str[1:]!r}) was never given its state")
        if type(fortran) is not bool:
            _refuse(f"the array's fortran_order is {shown(fortran)}, not True or False")
        expected = shape[0] * shape[1] * dtype.dtype.itemsize
        if type(data) is not bytes or len(data) != expected:
            _refuse(f"the array's data is {type(data).__name__} of {len(data) if hasattr(data, '__len__') else '?'} "
                    f"bytes; shape {shape} of {dtype.dtype} needs bytes of {expected}")
        self.array = np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


def _checked_reconstruct(subtype=None, shape=None, typecode=None, *extra):
    if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,) or typecode not in (b"b", "b") or extra:
        _refuse("numpy's _reconstruct called with other arguments than numpy's array pickles use")
    return _ArrayStandIn()


def _checked_dtype(spec=None, align=False, copy=True, *extra):
    if type(spec) is not str or spec not in PICKLED_DTYPES or align is not False or copy is not True or extra:
        _refuse(f"numpy.dtype({shown(spec)}, {shown(align)}, {shown(copy)}) is not allowed: a prompt pickle holds "
                f"float16 or float32 only, as numpy.dtype('f2' or 'f4', False, True)")
    return _DtypeStandIn(np.dtype("<" + spec))


_ALLOWED = {**{name: _checked_reconstruct for name in _RECONSTRUCT_NAMES},
            ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _checked_dtype}


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build a (2, D) float16/float32 numpy array and nothing else (the module docstring)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy's array reconstruction "
                                         f"(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) is "
                                         f"allowed") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: only a plain numpy array is allowed")


def load_pickled_array(data: bytes) -> np.ndarray:
    """The (2, D) float16/float32 array pickled in `data`; raises pickle.UnpicklingError for anything else."""
    try:
        value = NumpyArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as error:  # noqa: BLE001 - SystemError, RuntimeError, ... from a crafted pickle: all refused
        raise pickle.UnpicklingError(f"not a numpy array pickle ({type(error).__name__}: {str(error)[:200]})") from None
    if type(value) is not _ArrayStandIn or value.array is None:
        shown_type = "an array without its state" if type(value) is _ArrayStandIn else type(value).__name__
        raise pickle.UnpicklingError(f"the pickle holds {shown_type}, not a (2, D) float16/float32 numpy array")
    return value.array


@dataclass(frozen=True)
class Q16Prompts:
    """The prompt embeddings as float32 (2, D), with the file they came from."""

    values: np.ndarray
    source: str
    stored_dtype: str
    sha256: str

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def settings(self) -> dict:
        return {"prompts": self.source, "prompts_sha256": self.sha256, "prompts_dtype": self.stored_dtype,
                "prompts_shape": list(self.values.shape)}


def _safetensors_array(path: Path, data: bytes) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as error:
        raise EvaluationError(f"{path.name}: not a readable safetensors file ({str(error)[:200]})") from None
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if "prompts" in tensors:
        return tensors["prompts"]
    raise EvaluationError(f"{path.name}: holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:6])}); allowed: "
                          f"one tensor, or one named 'prompts'")


def prompts_from_array(array: np.ndarray, source: str = "array", sha256: str = "") -> Q16Prompts:
    """Check a (2, D) numeric array and keep it as float32 (the values of a float16 file are exact in float32)."""
    array = np.asarray(array)
    if array.dtype.kind not in _DTYPE_KINDS or array.dtype.fields is not None:
        raise EvaluationError(f"{source}: Q16 prompts must be numbers, found dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != 2 or array.shape[1] < 1:
        raise EvaluationError(f"{source}: Q16 prompts must have shape (2, D) (row 0 'not inappropriate', row 1 "
                              f"'inappropriate'), found {tuple(array.shape)}")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise EvaluationError(f"{source}: Q16 prompts hold NaN or infinite values (as float32)")
    if not (np.linalg.norm(values.astype(np.float64), axis=1) > 0).all():
        raise EvaluationError(f"{source}: a Q16 prompt row is all zeros and cannot be normalised")
    return Q16Prompts(values, source, str(array.dtype), sha256)


def load_q16_prompts(path: str | Path) -> Q16Prompts:
    """Q16 prompt embeddings from `.npy`, `.safetensors` or the reference `prompts.p` (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise EvaluationError(f"{path.name}: Q16 prompt files must end in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise EvaluationError(f"Q16 prompt file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise EvaluationError(f"{path.name}: {path.stat().st_size} bytes, more than a prompt file can be "
                              f"({MAX_BYTES} bytes at most)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise EvaluationError(f"{path.name}: not a numeric .npy array ({str(error)[:200]})") from None
    elif suffix == ".safetensors":
        array = _safetensors_array(path, data)
    else:
        try:
            array = load_pickled_array(data)
        except pickle.UnpicklingError as error:
            raise EvaluationError(f"{path.name}: refused ({error}); a Q16 prompt pickle may hold only a numeric "
                                  f"numpy array") from None
    return prompts_from_array(array, path.name, digest)
