"""The image gate (psa_core/images.py): every image reader of the pack refuses an image with more pixels than the
bound before decoding it, and truncated or damaged files, naming the file; every other image reads as before.

The memory tests run the readers in a child process (tests/image_readers.py) that measures each read's peak RSS
increase on its own."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from image_readers import READERS
from psa_core.errors import InputError, PSAError
from psa_core.evaluation import ImageReadError as EvaluationImageReadError
from psa_core.evaluation import load_image
from psa_core.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, image_size, open_image
from psa_core.training.augment import load_rgb

CHILD = Path(__file__).with_name("image_readers.py")
BOMB_SIDE = 12000  # the issue's bomb: 144 Mpx, over the bound but under PIL's own refusal (2 x 89.5 Mpx)
# The acceptance bound. Reading the bomb decodes at least 144 MB (one byte per pixel of PIL's mode "1") and the
# readers' RGB conversion 432 MB more, so any decode is caught; a refused header costs well under 1 MiB.
MAX_INCREASE_MIB = 100


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def single_colour_png(width: int, height: int, data: tuple[int, int] | None = None) -> bytes:
    """A black 1-bit grey PNG whose header says `width` x `height`, holding the pixel data of an image of size
    `data` (default: the header's, a well-formed image). 12000 x 12000 compresses to about 17 KB."""
    data_width, data_height = data or (width, height)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (data_width + 7) // 8)  # filter byte "none", then the packed pixels
    pixels = b"".join(compressor.compress(row) for _ in range(data_height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels)
            + png_chunk(b"IEND", b""))


def gif_frame(width: int, height: int) -> bytes:
    """One GIF image descriptor at (0, 0) claiming `width` x `height`, with the LZW data of a single pixel."""
    return b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + bytes([2, 2, 0x44, 0x01, 0])


def gif_screen(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"


def run_readers(work: Path, normal: Path, readers: list[str], targets: list[Path], bound: int | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(MAX_PIXELS_ENV, None)
    if bound is not None:
        env[MAX_PIXELS_ENV] = str(bound)
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(CHILD), str(work), str(normal), *readers, "--", *map(str, targets)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gate")
    made = {"normal": folder / "normal.png", "bomb": folder / "bomb.png", "lying": folder / "lying.png",
            "gif_bomb": folder / "gif_bomb.gif"}
    Image.new("RGB", (40, 30), (200, 10, 10)).save(made["normal"])
    made["bomb"].write_bytes(single_colour_png(BOMB_SIDE, BOMB_SIDE))
    # The header says 64 x 64; the data holds 12000 rows of 12000 pixels.
    made["lying"].write_bytes(single_colour_png(64, 64, data=(BOMB_SIDE, BOMB_SIDE)))
    # A 1 x 1 screen whose first frame claims 12000 x 12000: PIL takes the frame's size as the image's.
    made["gif_bomb"].write_bytes(gif_screen(1, 1) + gif_frame(BOMB_SIDE, BOMB_SIDE) + b"\x3b")
    return made


def test_the_bomb_is_the_issues_file(files):
    assert files["bomb"].stat().st_size < 20_000  # "a 17 KB PNG of 12000x12000 pixels"
    with Image.open(files["bomb"]) as image:  # PIL alone would decode it: only a warning below 2 x 89.5 Mpx
        assert image.size == (BOMB_SIDE, BOMB_SIDE) and image.mode == "1"


@pytest.fixture(scope="module")
def bomb_reads(files, tmp_path_factory) -> dict:
    return run_readers(tmp_path_factory.mktemp("readers"), files["normal"], list(READERS), [files["bomb"]])


@pytest.mark.slow
@pytest.mark.parametrize("reader", list(READERS))
def test_the_png_bomb_is_refused_by_every_reader_with_under_100_mib_more_memory(bomb_reads, files, reader):
    result = bomb_reads[reader][files["bomb"].name]
    assert result["increase_mib"] < MAX_INCREASE_MIB, result
    if reader == "generate's existing image":  # an unreadable file at a planned name is a damaged image of its own
        assert result == {**result, "normal": "other", "returned": "damaged"}
        return
    text = result.get("message") or result.get("returned")
    named = "images/pairs_00000_u.png" if reader == "training cache build" else str(files["bomb"])
    assert result.get("psa_error", True) and named in text, result
    assert f"{BOMB_SIDE}x{BOMB_SIDE} is 144000000 pixels, more than the {DEFAULT_MAX_PIXELS} allowed" in text
    assert MAX_PIXELS_ENV in text


@pytest.mark.slow
def test_the_measurement_sees_a_decoded_bomb_once_the_bound_is_raised(files, tmp_path):
    """The bound raised to the bomb's size: the same read decodes it, and the child measures that."""
    result = run_readers(tmp_path, files["normal"], ["training image"], [files["bomb"]],
                         bound=BOMB_SIDE * BOMB_SIDE)["training image"][files["bomb"].name]
    assert result["returned"] == f"({BOMB_SIDE}, {BOMB_SIDE})"
    assert result["increase_mib"] > (BOMB_SIDE * BOMB_SIDE * 4) / 2**20 * 0.9, result  # mode "1" plus RGB


@pytest.mark.slow
def test_headers_that_lie_cost_no_memory(files, tmp_path):
    results = run_readers(tmp_path, files["normal"], ["evaluation image", "training image"],
                          [files["lying"], files["gif_bomb"]])
    for reader, by_file in results.items():
        lying, gif = by_file[files["lying"].name], by_file[files["gif_bomb"].name]
        assert lying["increase_mib"] < MAX_INCREASE_MIB and gif["increase_mib"] < MAX_INCREASE_MIB, (reader, by_file)
        assert lying["returned"] == "(64, 64)"  # what the header says; the data beyond it is never decompressed
        assert gif["error"] == "ImageReadError" and f"{BOMB_SIDE}x{BOMB_SIDE} is 144000000 pixels" in gif["message"]


# The trainer's command line run in-process, writing its peak RSS (kB) to the file named first when it exits.
PEAK_WRAPPER = """import atexit, pathlib, runpy, sys
peak = pathlib.Path(sys.argv.pop(1))
atexit.register(lambda: peak.write_text(next(line.split()[1] for line in open("/proc/self/status")
                                             if line.startswith("VmHWM:"))))
sys.argv[0] = "trainer"
runpy.run_module("trainer", run_name="__main__", alter_sys=True)
"""


def score_peak_mib(images: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CHILD.parents[1])}
    env.pop(MAX_PIXELS_ENV, None)
    peak = out.with_suffix(".peak")
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak), "score", "--images", str(images), "--out",
                           str(out), "--device", "cpu"], cwd=CHILD.parents[1], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    return done, int(peak.read_text()) / 1024


@pytest.mark.slow
def test_score_refuses_the_bomb_with_under_100_mib_more_memory_than_without_it(files, tmp_path):
    """`python -m trainer score` end to end (NudeNet): a folder with the bomb peaks no more than 100 MiB above the
    same folder without it (before the gate: about 2 GB more)."""
    plain, bombed = tmp_path / "plain", tmp_path / "bombed"
    for folder in (plain, bombed):
        folder.mkdir()
        Image.open(files["normal"]).save(folder / "a.png")
    (bombed / "b.png").write_bytes(files["bomb"].read_bytes())
    without, peak_without = score_peak_mib(plain, tmp_path / "plain.json")
    with_bomb, peak_with = score_peak_mib(bombed, tmp_path / "bombed.json")
    assert without.returncode == 0 and with_bomb.returncode == 0, with_bomb.stderr[-2000:]
    assert peak_with - peak_without < MAX_INCREASE_MIB, (peak_without, peak_with)
    rows = {row["file"]: row for row in json.loads((tmp_path / "bombed.json").read_text())["images"]}
    assert rows["a.png"]["errors"] == [] and rows["b.png"]["nudenet"] is None
    assert f"image {bombed / 'b.png'}: {BOMB_SIDE}x{BOMB_SIDE} is 144000000 pixels" in rows["b.png"]["errors"][0]
    assert "1 image could not be scored" in with_bomb.stdout + with_bomb.stderr


# ---- in this process: damaged files, formats, frames, the bound's setting, bit-identical reads -------------------

READERS_HERE = {"open_image": lambda path: _open(path), "load_rgb": load_rgb, "load_image": load_image}


def _open(path):
    with open_image(path) as image:
        return image.copy()


def truncated(image: Image.Image, suffix: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if suffix == ".png" else "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def textured(size: int = 96) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind, problem", [
    ("truncated.png", "cannot be read (image file is truncated"),
    ("truncated.jpg", "cannot be read (image file is truncated"),
    ("garbage.png", "not an image file in a format the pack reads; allowed: PNG, JPEG, WebP, BMP, GIF, TIFF"),
    ("empty.png", "not an image file in a format the pack reads"),
    ("drawing.eps", "not an image file in a format the pack reads"),  # PIL's EPS plugin would start Ghostscript
])
@pytest.mark.parametrize("reader", list(READERS_HERE))
def test_damaged_files_are_refused_naming_the_file(tmp_path, monkeypatch, kind, problem, reader):
    path = tmp_path / kind
    if kind.startswith("truncated"):
        path.write_bytes(truncated(textured(), path.suffix))
    else:
        path.write_bytes({"garbage.png": b"this is not an image", "empty.png": b"",
                          "drawing.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"}[kind])
    # Even where another part of the process told PIL to fill truncated images with grey.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError) as caught:
        READERS_HERE[reader](path)
    assert str(caught.value).startswith(f"image {path}: ") and problem in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored after the read


def test_one_error_class_for_every_reader():
    assert EvaluationImageReadError is ImageReadError and issubclass(ImageReadError, PSAError)


def test_the_bound_is_checked_on_the_header_and_can_be_raised(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    at, over = tmp_path / "at.png", tmp_path / "over.png"
    at.write_bytes(single_colour_png(8192, 8192, data=(1, 1)))  # the header is all image_size reads
    over.write_bytes(single_colour_png(8193, 8192, data=(1, 1)))
    assert DEFAULT_MAX_PIXELS == 8192 * 8192 and image_size(at) == (8192, 8192)
    with pytest.raises(ImageReadError, match=rf"image {over}: 8193x8192 is 67117056 pixels, more than the 67108864 "
                                             rf"allowed; allowed: at most 67108864 pixels .*{MAX_PIXELS_ENV}"):
        image_size(over)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(8193 * 8192))
    assert image_size(over) == (8193, 8192)

    normal = tmp_path / "normal.png"
    textured(40).save(normal)  # 1600 pixels, decoded
    monkeypatch.setenv(MAX_PIXELS_ENV, "1599")
    for read in READERS_HERE.values():
        with pytest.raises(ImageReadError, match=rf"image {normal}: 40x40 is 1600 pixels, more than the 1599"):
            read(normal)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1600")
    for read in READERS_HERE.values():
        assert np.array_equal(np.asarray(read(normal)), np.asarray(textured(40)))


def test_a_pil_image_opened_but_not_decoded_is_bounded_like_its_file(files):
    with Image.open(files["bomb"]) as image, pytest.raises(ImageReadError, match=rf"image {files['bomb']}: "
                                                                              rf"12000x12000 is 144000000 pixels"):
        load_image(image)
    with Image.open(files["normal"]) as image:
        assert load_image(image).size == (40, 30)


@pytest.mark.parametrize("value", ["many", "0", "-5", "1e9", "12.5"])
def test_a_bound_that_is_no_whole_positive_number_is_refused_naming_the_variable(tmp_path, monkeypatch, value):
    path = tmp_path / "normal.png"
    textured(8).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    with pytest.raises(InputError, match=rf"{MAX_PIXELS_ENV}='{value}' is not allowed; allowed: a whole number of "
                                         rf"pixels of at least 1 \(unset: 67108864"):
        load_image(path)


def test_only_the_first_frame_of_an_animation_is_read(tmp_path):
    frames = [Image.new("P", (40, 30), colour) for colour in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 250, 0, 0, 0, 250, 0] + [0] * 759)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    path = tmp_path / "animated.gif"
    # A third frame claiming 12000 x 12000 pixels: never decoded, as no frame after the first is.
    path.write_bytes(buffer.getvalue()[:-1] + gif_frame(BOMB_SIDE, BOMB_SIDE) + b"\x3b")
    for read in READERS_HERE.values():
        assert np.array_equal(np.asarray(read(path).convert("RGB")), np.full((30, 40, 3), (250, 0, 0), np.uint8))


# ---- normal images: read exactly as before the gate ----------------------------------------------------------------

def before_training(path: Path) -> np.ndarray:
    """The training reader before the gate: PIL's convert to RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def before_evaluation(path: Path) -> np.ndarray:
    """The evaluation reader before the gate: decoded whole, EXIF orientation applied, 16-bit grey to its high
    byte, then RGB."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.asarray(image).astype(np.int64)
            image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def sample_files(folder: Path) -> list[Path]:
    rgb = textured(48)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 48), dtype=np.uint8)))
    grey16 = Image.fromarray(np.random.default_rng(5).integers(0, 65536, (24, 32), dtype=np.uint16))
    palette = rgb.quantize(16)
    palette.info["transparency"] = 3
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90°
    rgb.crop((0, 0, 48, 20)).save(rotated, "JPEG", quality=90, exif=exif)
    saved = {"rgb.png": (rgb, {}), "rgba.png": (rgba, {}), "grey.png": (rgb.convert("L"), {}),
             "grey_alpha.png": (rgba.convert("LA"), {}), "grey16.png": (grey16, {}), "bits.png": (rgb.convert("1"), {}),
             "palette.png": (palette, {"transparency": 3}), "photo.jpg": (rgb, {"quality": 85}),
             "lossless.webp": (rgb, {"lossless": True}), "lossy.webp": (rgba, {"quality": 80}), "plain.bmp": (rgb, {}),
             "still.gif": (palette, {}), "scan.tif": (rgb, {}),
             "camera.jpg": (rgb, {"format": "MPO", "save_all": True, "append_images": [rgb.rotate(90)]}),
             "moving.png": (rgb, {"save_all": True, "append_images": [rgb.transpose(Image.FLIP_LEFT_RIGHT)]})}
    paths = []
    for name, (image, options) in saved.items():
        image.save(folder / name, **options)
        paths.append(folder / name)
    (folder / "rotated.jpg").write_bytes(rotated.getvalue())
    return [*paths, folder / "rotated.jpg"]


def test_normal_images_read_bit_identically_to_before(tmp_path):
    for path in sample_files(tmp_path):
        assert np.array_equal(np.asarray(load_rgb(path)), before_training(path)), path.name
        assert np.array_equal(np.asarray(load_image(path)), before_evaluation(path)), path.name
    with Image.open(tmp_path / "rotated.jpg") as image:
        assert image.size == (48, 20) and load_image(tmp_path / "rotated.jpg").size == (20, 48)  # EXIF applied
