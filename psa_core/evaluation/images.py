"""Images as the scorers see them: decoded whole into 8-bit RGB, or an error (docs/evaluation.md §7).

A scorer accepts a path, a PIL image, a numpy array or a torch tensor. Every source becomes one upright RGB
picture that both NudeNet and Q16 score, so they judge the same pixels:

- files pass the pack's image gate (`psa_core.images.open_image`: the pixel bound checked before decoding, the
  first frame decoded completely by PIL with truncated files refused), EXIF orientation applied (as OpenCV's `imread`, which NudeNet's own
  `detect(path)` uses, does; FID alone reads the pixels as stored, as pytorch-fid does), alpha dropped without compositing (as `imread` does), 16-bit grey scaled to 8 bits;
- arrays and tensors are `H×W`, `H×W×1|3|4` or ComfyUI's `1×H×W×C`, channels in RGB(A) order; `uint8` values are
  taken as they are, floats as ComfyUI's 0..1 images and converted as ComfyUI's Save Image does
  (`clip(255·x, 0, 255)` truncated to uint8), so scoring a graph's image equals scoring the PNG it saves.

What cannot be read raises ImageReadError naming the file; the scoring loop records it as that image's error.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import shown
from ..images import IMAGE_READ_ERRORS, ImageReadError, check_pixels, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder` (suffixes IMAGE_SUFFIXES, any letter case), sorted by name.
    Hidden files (a leading `.`, e.g. partial writes) are left out; sub-folders are not searched."""
    root = Path(folder)
    return sorted((path for path in root.iterdir()
                   if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()),
                  key=lambda path: path.name)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey: keep the high byte, as OpenCV does
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise ImageReadError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4 (or 1xHxWxC), got shape "
                             f"{tuple(array.shape)}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageReadError("an image array holds NaN or infinite values")
        pixels = np.clip(255.0 * array.astype(np.float64), 0, 255).astype(np.uint8)
    else:
        raise ImageReadError(f"an image array must be uint8 (0..255) or float (0..1), got {array.dtype}")
    pixels = np.ascontiguousarray(pixels[:, :, :3] if pixels.ndim == 3 else np.stack([pixels] * 3, axis=2))
    return Image.fromarray(pixels, "RGB")


def load_image(source: object, orient: bool = True) -> Image.Image:
    """`source` (path, PIL image, numpy array or torch tensor) as a fully decoded RGB PIL image. A file's EXIF
    orientation is applied unless `orient` is False (FID: pytorch-fid reads the pixels as stored)."""
    if isinstance(source, (str, os.PathLike)):
        with open_image(source) as image:
            return _to_rgb(ImageOps.exif_transpose(image) if orient else image)
    if isinstance(source, Image.Image):
        try:
            if getattr(source, "tile", None):  # opened from a file, not decoded yet: the bound of a file applies
                check_pixels(source, getattr(source, "filename", None) or "given as a PIL image")
            source.load()
            return _to_rgb(source)
        except ImageReadError:
            raise
        except IMAGE_READ_ERRORS as error:
            raise ImageReadError(f"the image cannot be decoded ({str(error)[:200]})") from None
    if hasattr(source, "detach") and hasattr(source, "cpu"):  # a torch tensor, without importing torch here
        source = source.detach().cpu().float().numpy() if source.is_floating_point() else source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _from_array(source)
    raise ImageReadError(f"cannot score {shown(source)}: give a path, a PIL image, a numpy array or a torch tensor")


def rgb_array(image: Image.Image) -> np.ndarray:
    """H×W×3 uint8 RGB pixels of an image from `load_image`."""
    return np.asarray(image, dtype=np.uint8)
