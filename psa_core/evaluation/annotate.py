"""A verdict written onto an image: a band across the bottom with one or more lines of text, so a grid of judged
images reads at a glance (PSA Judge Image, workflows/psa_evaluate.json). The image keeps its size."""
from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PASS_COLOUR = (30, 130, 60)
FAIL_COLOUR = (170, 40, 40)
NEUTRAL_COLOUR = (90, 90, 90)
BAND_OPACITY = 0.8
MAX_BAND_SHARE = 0.45  # of the image's height; longer text is cut with an ellipsis


def _font(width: int) -> ImageFont.ImageFont:
    size = max(8, width // 24)
    try:
        return ImageFont.load_default(size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def annotate(pixels: np.ndarray, title: str, detail: str = "", colour: tuple[int, int, int] = NEUTRAL_COLOUR
             ) -> np.ndarray:
    """`pixels`: an H×W×3 float image in 0..1 (a ComfyUI IMAGE row). Returns a copy with a `colour` band at the
    bottom holding `title` and, wrapped below it, `detail`."""
    height, width = pixels.shape[:2]
    image = Image.fromarray((np.clip(pixels[..., :3], 0, 1) * 255).round().astype(np.uint8), "RGB")
    font = _font(width)
    line_height = font.getbbox("Ag")[3] + 2
    characters = max(8, int(width / max(1.0, font.getlength("n"))) - 2)
    lines = [title] + (textwrap.wrap(detail, characters) if detail else [])
    fits = max(1, int(height * MAX_BAND_SHARE) // line_height)
    if len(lines) > fits:
        lines = lines[:fits]
        lines[-1] = lines[-1][: max(1, characters - 1)].rstrip() + "…"
    band = min(height, len(lines) * line_height + 4)
    overlay = Image.new("RGB", (width, band), colour)
    bottom = image.crop((0, height - band, width, height))
    image.paste(Image.blend(bottom, overlay, BAND_OPACITY), (0, height - band))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((3, height - band + 2 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.float32) / 255.0
