"""Cache of VAE latents and text-encoder outputs, computed once and reused across runs.

For DPO on an adapter the frozen encoders are pure overhead (docs/training.md §8), so before training every
distinct image of the data is VAE-encoded once (the latent distribution: scaled mean and std, plus the
horizontally flipped variant when flips are on) and every distinct caption, and the empty caption for
caption dropout, is text-encoded once. Training then samples latents from the stored distribution.

The cache lives in `<cache root>/psa-<key>/`, where the key hashes the base-model fingerprint, the resolution,
the flip setting, the storage dtype, and the data: every image's content hash and the size it is resized to,
and every caption. Change any of these and the old entry is simply no longer found (it is invalidated); the
new one is built beside it. A cache folder is complete only once `manifest.json` exists: it is built under a
temporary name and renamed in one step, so a killed build is never mistaken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..images import image_size
from .augment import PairGeometry, load_rgb, prepare_cached_image
from .errors import DatasetError
from ..fingerprint import HashMemo
from .records import LabelledData

CACHE_FORMAT = "1"
MANIFEST = "manifest.json"
EMPTY_CAPTION = ""
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}

ImageEncoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Pixels `[N, 3, H, W]` in [−1, 1] → scaled latent mean and std `[N, C, h, w]`."""
TextEncoder = Callable[[list[str]], dict[str, torch.Tensor]]
"""Captions → batch-first conditioning tensors by name (e.g. encoder_hidden_states, text_embeds)."""


@dataclass(frozen=True)
class CacheSettings:
    model_fingerprint: str
    resolution: int
    hflip: bool = False
    storage_dtype: str = "float16"
    encoder_description: str = ""  # what the image/text encoders compute (family, hidden-state choice)

    def __post_init__(self) -> None:
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype {self.storage_dtype!r} is not supported; allowed: "
                             f"{', '.join(STORAGE_DTYPES)}")


@dataclass(frozen=True)
class ImageEntry:
    """One image as it is encoded: its file and the (width, height) its pair resizes it to first."""

    path: str
    pair_size: tuple[int, int]


def image_entries(data: LabelledData) -> tuple[list[ImageEntry], list[tuple[int, int]]]:
    """Distinct image entries and, per record, the (winner entry, loser entry) indices."""
    sizes: dict[str, tuple[int, int]] = {}

    def size_of(name: str) -> tuple[int, int]:
        if name not in sizes:
            sizes[name] = image_size(data.image_path(name))  # the pixel bound is checked here, before any decoding
        return sizes[name]

    index: dict[ImageEntry, int] = {}
    pairs = []
    for record in data.records:
        winner_size = size_of(record.chosen)
        size_of(record.rejected)
        ids = []
        for name in (record.chosen, record.rejected):
            entry = ImageEntry(name, winner_size)
            ids.append(index.setdefault(entry, len(index)))
        pairs.append((ids[0], ids[1]))
    return list(index), pairs


def caption_list(data: LabelledData) -> list[str]:
    """The empty caption first (for dropout), then every distinct caption in order of appearance."""
    captions = [EMPTY_CAPTION]
    seen = {EMPTY_CAPTION}
    for record in data.records:
        if record.caption not in seen:
            seen.add(record.caption)
            captions.append(record.caption)
    return captions


def cache_key(settings: CacheSettings, data: LabelledData, entries: Sequence[ImageEntry], captions: Sequence[str],
              memo: HashMemo) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "settings": asdict(settings)}, sort_keys=True).encode())
    for entry in entries:
        content = memo.sha256(data.image_path(entry.path))
        digest.update(f"\nimage {content} {entry.pair_size[0]}x{entry.pair_size[1]}".encode())
    for caption in captions:
        digest.update(b"\ncaption " + json.dumps(caption).encode())
    return digest.hexdigest()


@dataclass
class LatentCache:
    """An opened cache: latent distributions per image entry and text conditioning per caption (memory-mapped)."""

    directory: Path
    key: str
    entries: list[ImageEntry]
    captions: list[str]
    means: np.ndarray  # [M, V, C, h, w]; V = 2 with the flipped variant at index 1
    stds: np.ndarray
    geometry: list[PairGeometry]  # per entry, unflipped
    text: dict[str, np.ndarray]  # name → [K, ...]
    built: bool = False  # True when this call computed it

    @property
    def has_flipped(self) -> bool:
        return self.means.shape[1] == 2

    def entry_indices(self) -> dict[ImageEntry, int]:
        return {entry: i for i, entry in enumerate(self.entries)}

    def caption_indices(self) -> dict[str, int]:
        return {caption: i for i, caption in enumerate(self.captions)}


def _open(directory: Path) -> LatentCache:
    manifest = json.loads((directory / MANIFEST).read_text())
    entries = [ImageEntry(e["path"], tuple(e["pair_size"])) for e in manifest["entries"]]
    geometry = [PairGeometry(tuple(g[0]), tuple(g[1]), False) for g in manifest["geometry"]]
    text = {name: np.load(directory / f"text_{name}.npy", mmap_mode="r") for name in manifest["text_names"]}
    return LatentCache(directory, manifest["key"], entries, manifest["captions"],
                       np.load(directory / "latent_mean.npy", mmap_mode="r"),
                       np.load(directory / "latent_std.npy", mmap_mode="r"), geometry, text)


def _batches(count: int, size: int):
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


def _build(directory: Path, key: str, settings: CacheSettings, data: LabelledData, entries: list[ImageEntry],
           captions: list[str], encode_images: ImageEncoder, encode_texts: TextEncoder, batch_size: int,
           progress: Callable[[int], None] | None) -> None:
    dtype = STORAGE_DTYPES[settings.storage_dtype]
    variants = (False, True) if settings.hflip else (False,)
    means = stds = None
    geometry: list[tuple] = []
    for chunk in _batches(len(entries), batch_size):
        for flip_index, flip in enumerate(variants):
            pixels = []
            for i in chunk:
                image = load_rgb(data.image_path(entries[i].path))
                tensor, where = prepare_cached_image(image, entries[i].pair_size, settings.resolution, flip)
                pixels.append(tensor)
                if not flip:
                    geometry.append((list(where.original_size), list(where.crop_top_left)))
            mean, std = encode_images(torch.stack(pixels))
            if means is None:
                shape = (len(entries), len(variants)) + tuple(mean.shape[1:])
                means = np.lib.format.open_memmap(directory / "latent_mean.npy", "w+", dtype, shape)
                stds = np.lib.format.open_memmap(directory / "latent_std.npy", "w+", dtype, shape)
            means[chunk.start:chunk.stop, flip_index] = mean.float().cpu().numpy()
            stds[chunk.start:chunk.stop, flip_index] = std.float().cpu().numpy()
        if progress:
            progress(len(chunk))
    means.flush()
    stds.flush()
    del means, stds
    text_files: dict[str, np.ndarray] = {}
    for chunk in _batches(len(captions), batch_size):
        outputs = encode_texts([captions[i] for i in chunk])
        for name, value in outputs.items():
            if name not in text_files:
                text_files[name] = np.lib.format.open_memmap(directory / f"text_{name}.npy", "w+", dtype,
                                                             (len(captions),) + tuple(value.shape[1:]))
            text_files[name][chunk.start:chunk.stop] = value.float().cpu().numpy()
    for array in text_files.values():
        array.flush()
    manifest = {"format": CACHE_FORMAT, "key": key, "settings": asdict(settings), "data_root": str(data.root),
                "entries": [{"path": e.path, "pair_size": list(e.pair_size)} for e in entries],
                "geometry": geometry, "captions": captions, "text_names": sorted(text_files)}
    (directory / MANIFEST).write_text(json.dumps(manifest))


def describe_miss(root: Path, settings: CacheSettings, data: LabelledData) -> str:
    """Why no cache matched: compare with caches of the same data folder (model, resolution, data)."""
    reasons = set()
    for manifest_path in root.glob(f"psa-*/{MANIFEST}"):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("data_root") != str(data.root):
            continue
        old = manifest.get("settings", {})
        changed = [name for name in ("model_fingerprint", "resolution", "hflip", "storage_dtype",
                                     "encoder_description") if old.get(name) != getattr(settings, name)]
        reasons.add(", ".join(changed) + " changed" if changed else "the images or captions changed")
    if not reasons:
        return "no cache for this data yet"
    return "existing caches do not match: " + "; ".join(sorted(reasons))


def open_or_build_cache(root: str | Path, settings: CacheSettings, data: LabelledData,
                        encode_images: ImageEncoder, encode_texts: TextEncoder, batch_size: int = 8,
                        progress: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
                        build: bool = True) -> LatentCache:
    """Return the cache for (settings, data), computing it first if no complete one exists.

    With `build=False` (processes other than the main one) a missing cache is an error instead.
    """
    root = Path(root)
    memo = HashMemo(root / "file_hashes.json")
    entries, _ = image_entries(data)
    captions = caption_list(data)
    key = cache_key(settings, data, entries, captions, memo)
    if build:
        memo.save()
    directory = root / f"psa-{key[:24]}"
    if (directory / MANIFEST).is_file():
        cache = _open(directory)
        if cache.key == key:
            return cache
        raise DatasetError(f"cache folder {directory} holds a different key; delete it")
    if not build:
        raise DatasetError(f"cache {directory} is missing; the main process builds it first")
    root.mkdir(parents=True, exist_ok=True)
    log(f"building the latent/text cache in {directory} ({len(entries)} images, {len(captions)} captions): "
        f"{describe_miss(root, settings, data)}")
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=root))
    try:
        _build(temporary, key, settings, data, entries, captions, encode_images, encode_texts, batch_size, progress)
        os.replace(temporary, directory)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    cache = _open(directory)
    cache.built = True
    return cache
