"""The images a scoring or comparison run reads from a folder, and how two folders pair up (docs/evaluation.md §7,
§8).

A folder is either an output folder of `python -m trainer generate` (it holds `generation.csv`: each image's
path `<profile>/<name>.png` or `.jpg`, profile, category and caption come from it) or a flat folder of images, labelled by
the rules of labels.py. A `--labels` mapping row, looked up by the image's path in the folder and then by its file
name, overrides either.

Pairs (compare): between two `generate` folders, images of the same profile and image name (the file name without
its suffix, so a PNG run pairs with a JPEG run of `--image-format jpeg`); an image of a run
without adapter (generate's profile `base`) is every profile's baseline: it pairs with each profile's image of the
same name. Otherwise images pair by file name (a flat first folder's image is then the baseline of each profile's
image of that name in a `generate` second folder; a name that is not unique in the first folder pairs with
nothing). The labels are the second folder's image's.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from .errors import EvaluationError
from .generation import BASE_PROFILE, MANIFEST_NAME, read_generation_manifest
from .images import IMAGE_SUFFIXES, image_files
from .labels import UNKNOWN, canonical_category, check_label, label_for
from .scoring import ImageItem


def is_generation_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def folder_items(folder: str | Path, mapping: dict[str, dict] | None = None, profile: str | None = None,
                 flag: str = "--images") -> list[ImageItem]:
    """The images of `folder` as ImageItems (module docstring); EvaluationError naming `flag` when there are none or
    the manifest lists images that are not there."""
    folder = Path(folder)
    if is_generation_folder(folder):
        items = []
        missing = []
        for row in read_generation_manifest(folder):
            if not row["path"].is_file():
                missing.append(row["file"])
                continue
            listed = (mapping or {}).get(row["file"]) or (mapping or {}).get(PurePosixPath(row["file"]).name) or {}
            category = row["category"] and canonical_category(check_label(row["category"], MANIFEST_NAME))
            items.append(ImageItem(row["file"], row["path"], listed.get("profile") or row["profile"],
                                   listed.get("category") or category or UNKNOWN,
                                   listed.get("caption") or row["caption"]))
        if missing:
            raise EvaluationError(f"{flag} {folder}: {MANIFEST_NAME} lists {len(missing)} images that are not there "
                                  f"(e.g. {missing[0]}); finish the run with `python -m trainer generate` (it resumes) "
                                  f"or score a complete folder")
    else:
        items = [ImageItem(path.name, path, *label_for(path.name, mapping, profile),
                           (mapping or {}).get(path.name, {}).get("caption")) for path in image_files(folder)]
    if not items:
        raise EvaluationError(f"{flag} {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder, and no "
                              f"{MANIFEST_NAME} of `python -m trainer generate`")
    return items


def _name(item: ImageItem) -> str:
    return PurePosixPath(item.file).name


def _stem(item: ImageItem) -> str:
    return PurePosixPath(item.file).stem


def pair_items(a: list[ImageItem], b: list[ImageItem]) -> tuple[list[tuple[ImageItem, ImageItem]], list[str],
                                                                list[str]]:
    """(pairs of (A item, B item) in B's order, files only in A, files only in B), as the module docstring says."""
    by_key = {(item.profile, _stem(item)): item for item in a}
    baselines = {_stem(item): item for item in a if item.profile == BASE_PROFILE}
    counts = Counter(_name(item) for item in a)
    by_name = {_name(item): item for item in a if counts[_name(item)] == 1}
    grouped = any("/" in item.file for item in a) and any("/" in item.file for item in b)
    pairs, used = [], set()
    for item in b:
        partner = (by_key.get((item.profile, _stem(item))) or baselines.get(_stem(item))) if grouped else \
            by_name.get(_name(item))
        if partner is None:
            continue
        pairs.append((partner, item))
        used.add(partner.file)
    paired_b = {item.file for _, item in pairs}
    return pairs, [x.file for x in a if x.file not in used], [x.file for x in b if x.file not in paired_b]
