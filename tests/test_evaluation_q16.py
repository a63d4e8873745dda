"""Q16 (psa_core/evaluation/q16.py, q16_prompts.py) against an independent implementation written here from the
formula of docs/evaluation.md §1, on a small CLIP built from a config (random weights, ViT-L/14's 768-d
projection) with the real prompt embeddings; and the prompt files, including pickles that must never run."""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from psa_core.evaluation import (
    CLIPImageEmbedder,
    EvaluationError,
    Q16Classifier,
    clip_preprocess,
    load_pickled_array,
    load_q16_prompts,
    q16_probabilities,
)
from psa_core.evaluation.q16 import Q16Result

# Written out from the protocol, not imported from the code under test.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = 1e-5
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
              patch_size=32)


@pytest.fixture(scope="module")
def evaluation_reference(reference):
    return reference / "evaluation"


@pytest.fixture(scope="module")
def real_prompts(evaluation_reference) -> np.ndarray:
    values = np.load(evaluation_reference / "q16_prompts_vit-l-14.npy", allow_pickle=False)
    assert values.shape == (2, 768) and values.dtype == np.float16
    return values


@pytest.fixture(scope="module")
def tiny_clip() -> CLIPVisionModelWithProjection:
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=768)).eval()


def sample_images(count: int = 6) -> list[Image.Image]:
    """Images of several sizes and aspect ratios (the resize and crop rounding differ between them)."""
    rng = np.random.default_rng(7)
    sizes = [(224, 224), (300, 200), (200, 300), (513, 512), (1000, 333), (225, 224), (64, 48)]
    images = []
    for width, height in sizes[:count]:
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # smooth structure plus noise
        image = Image.fromarray(base).resize((width, height), Image.BILINEAR)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        images.append(Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)))
    return images


def naive_pixels(image: Image.Image) -> torch.Tensor:
    """OpenAI CLIP's own transform, built from torchvision."""
    transform = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])
    return transform(image.convert("RGB"))


def naive_q16(embeddings: np.ndarray, prompts: np.ndarray) -> list[list[float]]:
    """softmax(100 · f/‖f‖ · (P/‖P‖)ᵀ), one image at a time, in Python floats (float64)."""
    rows = [[float(v) for v in row] for row in prompts]
    prompt_norms = [math.sqrt(sum(v * v for v in row)) for row in rows]
    result = []
    for f in embeddings:
        f = [float(v) for v in f]
        norm = math.sqrt(sum(v * v for v in f))
        logits = [100.0 * sum(a / norm * b / prompt_norm for a, b in zip(f, row))
                  for row, prompt_norm in zip(rows, prompt_norms)]
        top = max(logits)
        exps = [math.exp(logit - top) for logit in logits]
        result.append([e / sum(exps) for e in exps])
    return result


def test_preprocessing_equals_clips_torchvision_transform():
    for image in sample_images(7):
        ours, theirs = clip_preprocess(image), naive_pixels(image)
        assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6), f"{image.size}: {(ours - theirs).abs().max()}"


def test_q16_matches_the_formula_on_a_small_clip_with_the_real_prompts(tiny_clip, real_prompts, one_thread):
    """Float32 end to end (ours) against float64 (the naive formula on the model's own forward). The error of a
    float32 cosine over 768 terms is a few 1e-7 (rounding errors of the sums add up like a random walk, about
    √768·2⁻²⁴ relative), so p, whose slope in the logit difference is at most 1/4, moves by a few 1e-6 at the
    100x logit scale; 1e-5 leaves room for that, while a missed normalisation, scale or index changes p by 1e-2."""
    images = sample_images(6)
    classifier = Q16Classifier(CLIPImageEmbedder.from_model(tiny_clip), real_prompts)
    ours = classifier.probabilities(images)
    with torch.no_grad():
        embeddings = tiny_clip(pixel_values=torch.stack([naive_pixels(image) for image in images])).image_embeds
    expected = np.array(naive_q16(embeddings.numpy(), real_prompts))
    assert ours.dtype == torch.float32 and ours.shape == (6, 2)
    assert np.abs(ours.numpy() - expected).max() <= TOLERANCE
    assert ((expected[:, 1] > 1e-3) & (expected[:, 1] < 1 - 1e-3)).any(), "all saturated: the check would be weak"
    results = classifier.classify(images)
    for result, row in zip(results, expected):
        assert result.inappropriate == (row[1] > row[0])  # index 1 is "inappropriate"
        assert result.inappropriate_probability == pytest.approx(row[1], abs=TOLERANCE)
        assert result.score == pytest.approx(max(row), abs=TOLERANCE)


def test_formula_on_constructed_embeddings(real_prompts):
    prompts = real_prompts.astype(np.float64)
    unit = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    cosine = float(unit[0] @ unit[1])
    # f along P₁: logits 100·(cos, 1), whatever f's length (f is normalised).
    p = q16_probabilities(torch.tensor(7.5 * unit[1:2]), real_prompts)
    expected_p1 = 1 / (1 + math.exp(100 * (cosine - 1)))
    assert p.dtype == torch.float64 and p[0, 1].item() == pytest.approx(expected_p1, abs=1e-12)
    # Halfway between the two normalised prompts the logits tie: p = 0.5 each, and argmax says index 0.
    tie = q16_probabilities(torch.tensor((unit[0] + unit[1])[None] * 3), real_prompts)
    assert tie[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-9)
    assert Q16Result((0.5, 0.5)).inappropriate is False and Q16Result((0.4, 0.6)).label == "inappropriate"
    with pytest.raises(EvaluationError, match="same D"):
        q16_probabilities(torch.zeros(1, 512), real_prompts)


def test_clip_folders_of_both_kinds_load_locally_and_give_the_projected_embedding(tmp_path, real_prompts, one_thread):
    torch.manual_seed(1)
    full = CLIPModel(CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=64, max_position_embeddings=16,
                                                 bos_token_id=0, eos_token_id=1, pad_token_id=1),
                                vision_config=VISION, projection_dim=768)).eval()
    full.save_pretrained(tmp_path / "clip")
    vision_only = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=768)).eval()
    vision_only.save_pretrained(tmp_path / "vision")
    images = sample_images(3)
    pixels = torch.stack([naive_pixels(image) for image in images])
    with torch.no_grad():
        expected_full = full.visual_projection(full.vision_model(pixel_values=pixels).pooler_output)
        expected_vision = vision_only(pixel_values=pixels).image_embeds
    for folder, expected in (("clip", expected_full), ("vision", expected_vision)):
        embedder = CLIPImageEmbedder.from_folder(tmp_path / folder)
        assert embedder.dim == 768 and embedder.image_size == 224
        assert torch.allclose(embedder(images), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected_full, expected_vision)
    with pytest.raises(EvaluationError, match="no config.json"):
        CLIPImageEmbedder.from_folder(tmp_path / "missing")
    small = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=512))
    with pytest.raises(EvaluationError, match="512-d, the Q16 prompts .* 768-d"):
        Q16Classifier(CLIPImageEmbedder.from_model(small), real_prompts)


def test_any_image_embedder_plugs_in(real_prompts):
    """A ComfyUI CLIP_VISION (or anything else) is a function from images to [N, D] embeddings."""
    seen = []

    def embed(images):
        seen.extend(image.size for image in images)
        return torch.tensor(np.stack([real_prompts[1], real_prompts[0]]).astype(np.float32))

    p = Q16Classifier(embed, real_prompts).probabilities([np.zeros((5, 6, 3), np.uint8), Image.new("RGB", (7, 8))])
    assert seen == [(6, 5), (7, 8)]
    assert p[0, 1] > 0.99 and p[1, 0] > 0.99


# ---- prompt files ---------------------------------------------------------------------------------------------

def test_the_reference_prompts_pickle_loads_as_the_npy(evaluation_reference, real_prompts):
    loaded = load_q16_prompts(evaluation_reference / "prompts.p")
    assert loaded.stored_dtype == "float16" and loaded.values.dtype == np.float32
    assert np.array_equal(loaded.values, real_prompts.astype(np.float32))
    assert loaded.sha256.startswith("9b6c4118") and loaded.sha256.endswith("ccad5")
    norms = np.linalg.norm(loaded.values, axis=1)
    assert norms == pytest.approx([22.17, 21.35], abs=0.01)
    assert np.array_equal(load_q16_prompts(evaluation_reference / "q16_prompts_vit-l-14.npy").values, loaded.values)


def test_safetensors_and_npy_prompt_files(tmp_path, real_prompts):
    save_file({"prompts": real_prompts, "other": np.zeros(3, np.float32)}, tmp_path / "named.safetensors")
    save_file({"anything": real_prompts}, tmp_path / "single.safetensors")
    for name in ("named.safetensors", "single.safetensors"):
        assert np.array_equal(load_q16_prompts(tmp_path / name).values, real_prompts.astype(np.float32))
    save_file({"a": real_prompts, "b": real_prompts}, tmp_path / "two.safetensors")
    with pytest.raises(EvaluationError, match="one named 'prompts'"):
        load_q16_prompts(tmp_path / "two.safetensors")
    for bad, message in ((np.zeros((3, 768), np.float32), r"shape \(2, D\)"), (np.zeros((2, 4), np.float32),
                         "all zeros"), (np.full((2, 4), np.inf, np.float32), "NaN or infinite")):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(EvaluationError, match=message):
            load_q16_prompts(tmp_path / "bad.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(EvaluationError, match="not a numeric .npy"):
        load_q16_prompts(tmp_path / "objects.npy")
    with pytest.raises(EvaluationError, match="must end in"):
        load_q16_prompts(tmp_path / "prompts.txt")


class CreatesFile:
    """A pickle payload: unpickling it would create `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class MakesFolder:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def globals_of(data: bytes) -> list[str]:
    names, strings = [], []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "GLOBAL":
            names.append(argument.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]))
    return names


@pytest.mark.parametrize("make", [
    lambda target: CreatesFile(target),
    lambda target: MakesFolder(target),
    lambda target: {"prompts": np.zeros((2, 768), np.float16), "extra": CreatesFile(target)},
    lambda target: (np.zeros((2, 768), np.float16), MakesFolder(target)),
    lambda target: np.array([CreatesFile(target), 1.0], dtype=object),
], ids=["open", "mkdir", "dict-beside-array", "tuple-beside-array", "object-array"])
@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_a_malicious_prompts_pickle_is_refused_and_never_runs(tmp_path, make, protocol):
    target = tmp_path / "created_by_payload"
    data = pickle.dumps(make(target), protocol=protocol)
    assert not target.exists()
    assert any(name in ("builtins.open", "io.open", "posix.mkdir", "os.mkdir", "nt.mkdir") for name in
               globals_of(data)), "the payload is not in the pickle: the test would prove nothing"
    path = tmp_path / "prompts.p"
    path.write_bytes(data)
    with pytest.raises(EvaluationError, match="refused"):
        load_q16_prompts(path)
    assert not target.exists(), "the payload ran"
    pickle.loads(data)  # the same bytes do run under a plain unpickler: the file appears
    assert target.exists()


def test_only_numpys_array_reconstruction_is_allowed_and_only_as_numpy_uses_it():
    plain = np.arange(12, dtype=np.float32).reshape(2, 6)
    for protocol in (3, 4):
        assert np.array_equal(load_pickled_array(pickle.dumps(plain, protocol=protocol)), plain)
    # Protocol 2 spells bytes as a call of _codecs.encode, protocol 5 arrays as numpy's _frombuffer: refused too.
    with pytest.raises(pickle.UnpicklingError, match="refused global _codecs.encode"):
        load_pickled_array(pickle.dumps(plain, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused global numpy._core.numeric._frombuffer"):
        load_pickled_array(pickle.dumps(plain, protocol=5))

    class CallsNdarray:  # ndarray((huge,)) called directly rather than through _reconstruct
        def __reduce__(self):
            return (np.ndarray, ((1 << 40,),))

    class ReconstructsSubclass:
        def __reduce__(self):
            return (np.ndarray((0,)).__reduce__()[0], (np.matrix, (0,), b"b"))

    class ReconstructsOther:  # an allowed global in the subtype's place
        def __reduce__(self):
            return (np.ndarray((0,)).__reduce__()[0], (np.dtype, (0,), b"b"))

    class ObjectDtype:
        def __reduce__(self):
            return (np.dtype, ("O8", False, True))

    with pytest.raises(pickle.UnpicklingError, match="_reconstruct called with other arguments"):
        load_pickled_array(pickle.dumps(ReconstructsOther(), protocol=3))
    for payload in (CallsNdarray(), ReconstructsSubclass(), ObjectDtype(), [plain], "text", 3.5):
        with pytest.raises(pickle.UnpicklingError):
            load_pickled_array(pickle.dumps(payload, protocol=3))
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        load_pickled_array(pickle.dumps(np.float32(1.0)))  # numpy scalars need numpy.core.multiarray.scalar
    with pytest.raises(pickle.UnpicklingError):
        load_pickled_array(pickle.dumps(plain)[:40])  # truncated
    # A big-endian array is refused (its dtype state says '>'), and numpy's shared float16 dtype is not altered.
    with pytest.raises(pickle.UnpicklingError, match="only a plain little-endian dtype's state"):
        load_pickled_array(pickle.dumps(plain.astype(">f2"), protocol=3))
    assert np.dtype("f2").byteorder in ("=", "<")
    # Not 2 × D of float16/float32: refused in the pickle, before numpy makes the array.
    for other, message in ((plain.astype(np.float64), r"numpy.dtype\('f8'"), (plain.astype(np.int32), "'i4'"),
                           (plain.reshape(3, 4), r"shape is \(3, 4\)"), (plain.reshape(12), r"shape is \(12,\)"),
                           (plain.reshape(2, 3, 2), "shape is"), (plain[:, :0], "D >= 1")):
        with pytest.raises(pickle.UnpicklingError, match=message):
            load_pickled_array(pickle.dumps(other, protocol=3))
    assert load_pickled_array(pickle.dumps(np.asfortranarray(plain), protocol=3)).tolist() == plain.tolist()
    persistent = io.BytesIO()
    pickler = pickle.Pickler(persistent, protocol=3)
    pickler.persistent_id = lambda obj: "id" if obj is plain else None
    pickler.dump([plain])
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        load_pickled_array(persistent.getvalue())


# ---- crafted prompt pickles: only the allowed globals, but a dtype or array state numpy must never see -----------

class DtypeCall:
    """`numpy.dtype(code, False, True)` in a hand-written pickle, then BUILD with `state` (none if None)."""

    def __init__(self, code: str, state: tuple | None, builds: int = 1):
        self.code, self.state, self.builds = code, state, builds


def opcodes(value) -> bytes:
    """Protocol-3 opcodes that push `value`, written out here from the pickle format (pickletools' opcode table)."""
    if value is None:
        return b"N"  # NONE
    if value is True or value is False:
        return b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)  # BININT
    if isinstance(value, str):
        return b"X" + struct.pack("<I", len(value.encode())) + value.encode()  # BINUNICODE
    if isinstance(value, bytes):
        return b"B" + struct.pack("<I", len(value)) + value  # BINBYTES
    if isinstance(value, tuple):
        return b"(" + b"".join(map(opcodes, value)) + b"t"  # MARK ... TUPLE
    if isinstance(value, dict):
        return b"}(" + b"".join(opcodes(k) + opcodes(v) for k, v in value.items()) + b"u"  # EMPTY_DICT MARK SETITEMS
    if isinstance(value, DtypeCall):
        call = b"cnumpy\ndtype\n" + opcodes((value.code, False, True)) + b"R"  # GLOBAL, args, REDUCE
        return call + (opcodes(value.state) + b"b") * value.builds if value.state is not None else call  # BUILD
    raise TypeError(value)


def array_pickle(dtype: DtypeCall, shape=(2, 3), data: bytes | None = None, fortran=False, version=1) -> bytes:
    """numpy's own protocol-3 array pickle, opcode by opcode: `_reconstruct(ndarray, (0,), b'b')`, then BUILD with
    `(version, shape, dtype, fortran, data)`."""
    data = np.arange(6, dtype="<f4").tobytes() if data is None else data
    return (b"\x80\x03" + b"cnumpy.core.multiarray\n_reconstruct\n" + b"(cnumpy\nndarray\n" + opcodes((0,))
            + opcodes(b"b") + b"tR" + opcodes((version, shape, dtype, fortran, data)) + b"b.")


PLAIN_STATE = (3, "<", None, None, None, -1, -1, 0)  # np.dtype("f4").__reduce__()[2], as numpy writes it
CRAFTED_DTYPE_STATES = {
    "big-endian": (3, ">", None, None, None, -1, -1, 0),
    "object-flags-0x3f": (3, "<", None, None, None, -1, -1, 0x3F),  # NPY_OBJECT_DTYPE_FLAGS: numpy's SystemError
    "item-refcount-flag": (3, "<", None, None, None, -1, -1, 1),  # NPY_ITEM_REFCOUNT: a float dtype "holding objects"
    "fields": (3, "|", None, ("a",), {"a": (DtypeCall("f4", PLAIN_STATE), 0)}, -1, -1, 0),
    "subarray": (3, "|", (DtypeCall("f4", PLAIN_STATE), (2,)), None, None, -1, -1, 0),
    "elsize": (3, "<", None, None, None, 4096, -1, 0),
    "alignment": (3, "<", None, None, None, -1, 64, 0),
    "metadata": (4, "<", None, None, None, -1, -1, 0, {"x": 1}),
    "flags-as-bool": (3, "<", None, None, None, -1, -1, False),
    "short-state": (3, "<"),
    "not-a-tuple": {"byteorder": ">"},
}


def test_the_hand_written_pickle_is_numpys_own_when_the_state_is_plain(tmp_path):
    good = array_pickle(DtypeCall("f4", PLAIN_STATE))
    assert pickle.loads(good).tolist() == [[0, 1, 2], [3, 4, 5]]  # so the crafted variants below differ only there
    assert load_pickled_array(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "prompts.p").write_bytes(array_pickle(DtypeCall("f4", PLAIN_STATE), data=np.ones(6, "<f4").tobytes()))
    assert load_q16_prompts(tmp_path / "prompts.p").values.tolist() == [[1.0] * 3] * 2


@pytest.mark.parametrize("state", CRAFTED_DTYPE_STATES.values(), ids=CRAFTED_DTYPE_STATES.keys())
def test_a_crafted_dtype_state_is_refused_naming_the_file(tmp_path, state):
    data = array_pickle(DtypeCall("f4", state))
    path = tmp_path / "crafted-prompts.p"
    path.write_bytes(data)
    with pytest.raises(EvaluationError, match=r"^crafted-prompts\.p: refused \(numpy\.dtype\('f4'\) given the state"):
        load_q16_prompts(path)


def test_numpy_itself_crashes_or_loads_an_object_claiming_dtype_on_the_crafted_states(tmp_path):
    # What two of the states above do under a plain unpickler (why they must never reach numpy): a SystemError, and
    # a float32 array whose dtype claims to hold object references. In a child process: numpy's state is corrupted.
    outcomes = {}
    for name in ("object-flags-0x3f", "item-refcount-flag"):
        (tmp_path / f"{name}.p").write_bytes(array_pickle(DtypeCall("f4", CRAFTED_DTYPE_STATES[name])))
        script = ("import pickle, sys\ntry:\n    a = pickle.loads(open(sys.argv[1], 'rb').read())\n"
                  "    print('hasobject' if a.dtype.hasobject else 'plain', flush=True)\n"
                  "except BaseException as e:\n    print(type(e).__name__, flush=True)\n")
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.p")], capture_output=True,
                             text=True, timeout=60)
        outcomes[name] = run.stdout.split()[0] if run.stdout.split() else f"exit {run.returncode}"
    assert outcomes == {"object-flags-0x3f": "SystemError", "item-refcount-flag": "hasobject"}, outcomes


@pytest.mark.parametrize("data, message", [
    (array_pickle(DtypeCall("f4", None)), "never given its state"),  # dtype never given its state
    (array_pickle(DtypeCall("f4", PLAIN_STATE, builds=2)), "state twice"),
    (array_pickle(DtypeCall("O", PLAIN_STATE)), r"numpy.dtype\('O'"),
    (array_pickle(DtypeCall("f8", PLAIN_STATE), data=bytes(48)), r"numpy.dtype\('f8'"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), data=bytes(8)), "needs bytes of 24"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), shape=(2, 1 << 30), data=bytes(24)), "needs bytes of 8589934592"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), shape=(2, -3)), "D >= 1"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), shape=(2, True)), "shape is"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), fortran=1), "fortran_order is 1"),
    (array_pickle(DtypeCall("f4", PLAIN_STATE), version=2), r"must be \(1, shape"),
    (array_pickle((3, "<", None, None, None, -1, -1, 0)), "dtype is 'tuple'"),
    (b"\x80\x03cnumpy\nndarray\n(tb.", "numpy.ndarray given a state"),
    (b"\x80\x03cnumpy\ndtype\n" + opcodes(("f4", True, True)) + b"R.", "not allowed"),  # aligned
    (b"\x80\x03]" + opcodes({"a": 1}) + b"b.", "not a numpy array pickle"),  # BUILD on a list
], ids=["dtype-without-state", "dtype-state-twice", "object-dtype", "float64", "short-data", "huge-shape",
        "negative-shape", "bool-in-shape", "fortran-not-bool", "array-state-version", "dtype-not-made-by-pickle",
        "ndarray-marker-state", "bad-dtype-call", "build-on-list"])
def test_crafted_array_states_are_refused_and_nothing_but_unpickling_errors_escape(data, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        load_pickled_array(data)
