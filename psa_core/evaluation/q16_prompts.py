"""The Q16 prompt embeddings P (2 × D; row 0 "not inappropriate", row 1 "inappropriate"), read as a plain numeric
array only (docs/evaluation.md §1, §7).

Accepted files: `.npy` (read without pickles), `.safetensors` (one tensor, or a tensor named `prompts`), and the
reference's own `prompts.p`, a pickled numpy array. The pickle is read by a restricted unpickler that resolves
exactly three globals, each to a checked stand-in rather than the real callable:

- `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`: accepted only as numpy's own
  pickles call it, `(ndarray, (0,), b"b")`, which makes an empty array for the state to fill;
- `numpy.ndarray`: a marker that only that stand-in accepts (calling it, or building an object of it, fails);
- `numpy.dtype`: numeric (bool, integer, float) type codes only, always copied (so its state cannot alter numpy's
  shared dtype objects).

Any other global (a `__reduce__` payload such as `os.system` or `builtins.open`), a persistent id, or an extension
code is refused before anything is called; what loads must be a plain numeric `numpy.ndarray` of shape (2, D).
So only pickle protocols 3 and 4 load (the reference file is protocol 3): protocol 2 spells bytes as a call of
`_codecs.encode`, and numpy writes protocol 5 arrays through `_frombuffer`; both are refused like any other global.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import shown
from .errors import EvaluationError

PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")
SUFFIXES = (".npy", ".safetensors", *PICKLE_SUFFIXES)
MAX_BYTES = 16 << 20  # Q16's ViT-L/14 prompts are 3 KB; no honest prompt file comes near this
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_REAL_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's own, wherever this numpy version keeps it
_DTYPE_KINDS = "biuf"


class _NdarrayMarker:
    """What the restricted unpickler hands out for `numpy.ndarray`: usable only as `_reconstruct`'s first argument."""

    def __reduce__(self):
        raise pickle.PicklingError("not picklable")


_NDARRAY = _NdarrayMarker()


def _checked_reconstruct(subtype=None, shape=None, typecode=None, *extra):
    if subtype is not _NDARRAY or tuple(shape or ()) != (0,) or typecode not in (b"b", "b") or extra:
        raise pickle.UnpicklingError("numpy's _reconstruct called with other arguments than numpy's array pickles use")
    return _REAL_RECONSTRUCT(np.ndarray, (0,), b"b")


def _checked_dtype(spec=None, align=False, copy=True, *extra):
    if not isinstance(spec, str) or extra:
        raise pickle.UnpicklingError(f"numpy.dtype({shown(spec)}) is not a plain numeric type")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise pickle.UnpicklingError(f"numpy.dtype({shown(spec)}) is not a numpy type") from None
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy.dtype({shown(spec)}) is not a plain numeric type")
    return np.dtype(spec, align=bool(align), copy=True)


_ALLOWED = {**{name: _checked_reconstruct for name in _RECONSTRUCT_NAMES},
            ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _checked_dtype}


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays of numbers and nothing else (the module docstring)."""

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
    """The numeric numpy array pickled in `data`; raises pickle.UnpicklingError for anything else."""
    try:
        value = NumpyArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            RecursionError, OverflowError) as error:
        raise pickle.UnpicklingError(f"not a numpy array pickle ({type(error).__name__}: {str(error)[:200]})") from None
    if type(value) is not np.ndarray or value.dtype.kind not in _DTYPE_KINDS or value.dtype.fields is not None:
        raise pickle.UnpicklingError(f"the pickle holds {type(value).__name__}"
                                     f"{f' of {value.dtype}' if isinstance(value, np.ndarray) else ''}, "
                                     f"not a numeric numpy array")
    return value


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
