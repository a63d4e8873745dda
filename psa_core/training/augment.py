"""Image preparation for a preference pair: the same geometry for winner and loser.

The reference transform is: resize the shorter side to `res` (bilinear), centre or random crop to
`res`×`res`, optional horizontal flip, then map to [−1, 1] (docs/training.md §7). The reference flips
winner and loser independently, a bug; here one crop box and one flip decision serve both images.
When the two images differ in size the loser is first resized to the winner's size (as diffusers does),
and SDXL's `time_ids` use the winner's original size and the crop's top-left corner.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import open_image

CROPS = ("center", "random")


@dataclass(frozen=True)
class PairGeometry:
    """Where the training crop came from: original (height, width) and crop top-left (y, x) after resizing."""

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    flipped: bool

    def time_ids(self, resolution: int) -> list[float]:
        """SDXL micro-conditioning: original size, crop top-left, target size."""
        return [float(v) for v in (*self.original_size, *self.crop_top_left, resolution, resolution)]


def load_rgb(path: str | Path) -> Image.Image:
    """The image file `path` as RGB, through the pack's image gate (`psa_core.images`: pixel bound, truncated and
    damaged files refused naming the file)."""
    with open_image(path) as image:
        return image.convert("RGB")


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to `resolution` (torchvision's Resize(int) rule)."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def center_crop_box(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Top-left (y, x) of a centred `resolution` square (torchvision's CenterCrop rounding)."""
    return round((height - resolution) / 2.0), round((width - resolution) / 2.0)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image → float tensor `[3, H, W]` in [−1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() * 2.0 - 1.0


def _resize_flip_crop(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int],
                      flip: bool) -> torch.Tensor:
    image = image.resize(size, Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(image.crop(box))


def prepare_pair(winner: Image.Image, loser: Image.Image, resolution: int, crop: str = "center",
                 flip: bool = False, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, PairGeometry]:
    """Apply one resize, one crop box and one flip decision to both images of a pair."""
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r} is not supported; allowed: {', '.join(CROPS)}")
    original = (winner.height, winner.width)
    if loser.size != winner.size:
        loser = loser.resize(winner.size, Image.BILINEAR)
    width, height = resized_size(winner.width, winner.height, resolution)
    if crop == "center":
        top, left = center_crop_box(width, height, resolution)
    else:
        if generator is None:
            raise ValueError("random crop needs a generator")
        top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    box = (left, top, left + resolution, top + resolution)
    return (_resize_flip_crop(winner, (width, height), box, flip), _resize_flip_crop(loser, (width, height), box, flip),
            PairGeometry(original, (top, left), flip))


def prepare_cached_image(image: Image.Image, pair_size: tuple[int, int], resolution: int, flip: bool
                         ) -> tuple[torch.Tensor, PairGeometry]:
    """One image of a pair as the cache stores it: resized to the winner's size `pair_size` (width, height),
    then exactly what `prepare_pair` does with a centre crop. Equal to either output of `prepare_pair`."""
    if image.size != tuple(pair_size):
        image = image.resize(tuple(pair_size), Image.BILINEAR)
    width, height = resized_size(image.width, image.height, resolution)
    top, left = center_crop_box(width, height, resolution)
    box = (left, top, left + resolution, top + resolution)
    return _resize_flip_crop(image, (width, height), box, flip), PairGeometry((image.height, image.width),
                                                                               (top, left), flip)


def random_pair_transform(winner: Image.Image, loser: Image.Image, resolution: int, generator: torch.Generator,
                          crop: str = "center", hflip: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor, PairGeometry]:
    """The on-the-fly transform: one flip draw (p = 0.5 when `hflip`) and one crop box, shared by the pair."""
    flip = bool(hflip and torch.rand((), generator=generator) < 0.5)
    return prepare_pair(winner, loser, resolution, crop, flip, generator)
