"""The one gate every image file of the pack passes before it is decoded (the training cache, score, compare,
generate, NudeNet, Q16, the judge, FID, CLIPScore, the Safety Check's scorer; docs/evaluation.md §7 "Images",
docs/training.md §7). build-data and the nodes read no image files.

A file is opened by PIL in one of the formats in IMAGE_FORMATS only (no other PIL plugin parses it), its pixel count
(width × height from the header, after PIL has read the first frame's descriptor) is checked against
`max_image_pixels()` before a single pixel is decoded, and then its first frame is decoded whole with truncated
files refused, whatever `ImageFile.LOAD_TRUNCATED_IMAGES` another part of the process has set. Only the first frame
of an animated PNG, GIF or WebP is read (its size is the canvas size, so the bound covers it). Every refusal is an
ImageReadError naming the file.

The bound is DEFAULT_MAX_PIXELS (8192 × 8192, "64 Mpx"); the environment variable PSA_MAX_IMAGE_PIXELS raises or
lowers it for the whole process (the trainer's commands and a ComfyUI server alike). PIL's own refusal of images
over twice `Image.MAX_IMAGE_PIXELS` (about 179 Mpx) still applies on top of it.
"""
from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import InputError, PSAError

MAX_PIXELS_ENV = "PSA_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192  # 67,108,864: an 8-bit RGBA image of this size decodes to 256 MiB
# PIL's names; a camera's multi-picture JPEG (PIL's MPO) opens as JPEG.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_SHOWN_FORMATS = "PNG, JPEG, WebP, BMP, GIF, TIFF"
# What PIL raises on a damaged or hostile file, by format plugin; DecompressionBombError is none of the others.
IMAGE_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, IndexError, KeyError,
                     Image.DecompressionBombError)
_TRUNCATION_LOCK = threading.RLock()


class ImageReadError(PSAError):
    """An image cannot be read: a damaged, truncated or unsupported file, one with more pixels than the bound, or an
    array that is not an image. The message names the file."""


def max_image_pixels() -> int:
    """The bound on width × height of an image file: PSA_MAX_IMAGE_PIXELS when set, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={text[:40]!r} is not allowed; allowed: a whole number of pixels of at "
                         f"least 1 (unset: {DEFAULT_MAX_PIXELS}, i.e. 8192x8192)")
    return value


def check_pixels(image: Image.Image, path: str | os.PathLike) -> None:
    """ImageReadError naming `path` when `image` (opened, not yet decoded) has more pixels than `max_image_pixels()`."""
    width, height = image.size
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageReadError(f"image {path}: {width}x{height} is {width * height} pixels, more than the {limit} "
                             f"allowed; allowed: at most {limit} pixels (the environment variable {MAX_PIXELS_ENV} "
                             f"sets the bound)")


def _refusal(path: str | os.PathLike, error: BaseException) -> ImageReadError:
    if isinstance(error, UnidentifiedImageError):
        return ImageReadError(f"image {path}: not an image file in a format the pack reads; allowed: "
                              f"{_SHOWN_FORMATS}")
    if isinstance(error, Image.DecompressionBombError):  # raised inside Image.open, before the size is known here
        return ImageReadError(f"image {path}: {str(error)[:200]}; allowed: at most {max_image_pixels()} pixels "
                              f"({MAX_PIXELS_ENV}), and never more than PIL's own bound")
    return ImageReadError(f"image {path}: cannot be read ({str(error)[:200] or type(error).__name__})")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the image file `path` from its header, nothing decoded; ImageReadError (naming the file)
    for a file that is no image of IMAGE_FORMATS or that has more pixels than `max_image_pixels()`."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            check_pixels(image, path)
            return image.size
    except PSAError:
        raise
    except IMAGE_READ_ERRORS as error:
        raise _refusal(path, error) from None


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """`with open_image(path) as image:` the first frame of the image file `path`, decoded whole, after the pixel
    bound was checked on its header. Anything PIL raises on the file, inside the `with` too (the caller's own
    conversion of the image), becomes an ImageReadError naming the file."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            check_pixels(image, path)
            # PIL fills a truncated file's missing rows with grey only when LOAD_TRUNCATED_IMAGES is set, which some
            # code in a ComfyUI process sets globally; it is held off while this file decodes.
            with _TRUNCATION_LOCK:
                previous = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    image.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = previous
            yield image
    except PSAError:
        raise
    except IMAGE_READ_ERRORS as error:
        raise _refusal(path, error) from None


__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_FORMATS", "IMAGE_READ_ERRORS", "MAX_PIXELS_ENV", "ImageReadError",
           "check_pixels", "image_size", "max_image_pixels", "open_image"]
