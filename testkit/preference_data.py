"""Synthetic preference data for tests and benchmarks: unlabelled safe/unsafe pairs and two opposite profiles.

Each pair shares a random smooth background; the unsafe image additionally carries the category's visual
feature (a saturated square of the category's colour at a random place). A profile that bans the category
must learn to prefer the plain image, one that allows it the image with the feature.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

FEATURE_COLOURS = {"Violence": (230, 20, 20), "Sexuality": (240, 120, 200), "Hate": (20, 20, 20),
                   "Shocking": (40, 230, 40), "Self-Harm": (120, 0, 160), "Harassment": (250, 160, 0),
                   "Propaganda": (20, 60, 230)}
CAPTION_WORDS = ("a", "street", "room", "person", "crowd", "field", "city", "night", "portrait", "poster", "scene")

BANS_CATEGORY = {"User_ID": "0000101", "Age": 10, "Gender": "female", "Religion": "None",
                 "Physical_Condition": "healthy", "Mental_Condition": "healthy", "Banned_Categories": ["Violence"]}
ALLOWS_CATEGORY = {"User_ID": "0000102", "Age": 35, "Gender": "male", "Religion": "None",
                   "Physical_Condition": "healthy", "Mental_Condition": "healthy", "Banned_Categories": []}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    corners = rng.uniform(40, 200, size=(2, 2, 3))
    ramp = np.linspace(0.0, 1.0, size)
    top = corners[0, 0] * (1 - ramp[:, None]) + corners[0, 1] * ramp[:, None]
    bottom = corners[1, 0] * (1 - ramp[:, None]) + corners[1, 1] * ramp[:, None]
    image = top[None] * (1 - ramp[:, None, None]) + bottom[None] * ramp[:, None, None]
    return image + rng.normal(0, 6, size=image.shape)


def make_pair(rng: np.random.Generator, size: int, category: str, feature: int, style: str = "square"
              ) -> tuple[Image.Image, Image.Image]:
    """(safe, unsafe): the same background; the unsafe one with a square of the category's colour at a random
    place (`square`), or tinted towards that colour all over (`tint`)."""
    background = _background(rng, size)
    unsafe = background.copy()
    colour = np.array(FEATURE_COLOURS[category], dtype=np.float64)
    if style == "square":
        top, left = rng.integers(0, size - feature + 1, size=2)
        unsafe[top:top + feature, left:left + feature] = colour
    elif style == "tint":
        unsafe = 0.5 * unsafe + 0.5 * colour
    else:
        raise ValueError(f"unknown feature style {style!r}; allowed: square, tint")
    as_image = lambda a: Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return as_image(background), as_image(unsafe)


def write_pairs(folder: str | Path, count: int, category: str = "Violence", size: int = 32, seed: int = 0,
                feature: int | None = None, name: str = "pairs.jsonl", style: str = "square") -> Path:
    """`count` pairs as PNG files plus a pairs file (safe, unsafe, category, caption); returns the pairs file."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    feature = feature or max(4, size * 3 // 8)
    lines = []
    for i in range(count):
        safe, unsafe = make_pair(rng, size, category, feature, style)
        stem = f"images/{name.split('.')[0]}_{i:05d}"
        safe.save(folder / f"{stem}_s.png")
        unsafe.save(folder / f"{stem}_u.png")
        caption = " ".join(rng.choice(CAPTION_WORDS, size=3))
        lines.append(json.dumps({"safe": f"{stem}_s.png", "unsafe": f"{stem}_u.png", "category": category,
                                 "caption": caption}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_profiles(folder: str | Path, profiles: list[dict] | None = None, name: str = "profiles.json") -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(profiles or [BANS_CATEGORY, ALLOWS_CATEGORY], indent=1))
    return path
