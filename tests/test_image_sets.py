"""Which images a `score` or `compare` run reads from a folder, with which labels, and how two folders pair up
(psa_core/evaluation/image_sets.py): `generate` folders by their generation.csv, flat folders by the label rules."""
from __future__ import annotations

import csv

import pytest
from PIL import Image

from psa_core.evaluation import EvaluationError, read_label_mapping
from psa_core.evaluation.image_sets import folder_items, pair_items

NAMES = ["user_0000002_violence_knife_fight_00001_u.png", "prompt_00002.png"]


def generated(folder, profiles, captions=("a knife fight", "a quiet lake"), categories=("Violence", ""),
              suffix=".png"):
    """A folder as `generate` leaves it: <profile>/<name>.png (or `suffix`, .jpg of --image-format jpeg) and
    generation.csv."""
    rows = []
    names = [name.removesuffix(".png") + suffix for name in NAMES]
    for profile in profiles:
        (folder / profile).mkdir(parents=True)
        for row, (name, caption, category) in enumerate(zip(names, captions, categories), start=1):
            Image.new("RGB", (8, 8)).save(folder / profile / name)
            rows.append({"file": f"{profile}/{name}", "profile": profile, "category": category, "caption": caption,
                         "seed": 2025, "row": row})
    with (folder / "generation.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["file", "profile", "category", "caption", "seed", "row"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def flat(folder, names=NAMES):
    folder.mkdir()
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


def test_a_generate_folder_brings_its_profiles_categories_and_captions(tmp_path):
    items = folder_items(generated(tmp_path / "psa", ["level_0", "level_3"]), profile="level_5")
    assert [(i.file, i.profile, i.category, i.caption) for i in items] == [
        (f"level_0/{NAMES[0]}", "level_0", "Violence", "a knife fight"),
        (f"level_0/{NAMES[1]}", "level_0", "unknown", "a quiet lake"),
        (f"level_3/{NAMES[0]}", "level_3", "Violence", "a knife fight"),
        (f"level_3/{NAMES[1]}", "level_3", "unknown", "a quiet lake")]  # the manifest wins over --profile
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,category,caption\n{NAMES[1]},Shocking,a dark lake\n")
    relabelled = folder_items(tmp_path / "psa", read_label_mapping(labels))
    assert [(i.category, i.caption) for i in relabelled][1::2] == [("Shocking", "a dark lake")] * 2


def test_a_flat_folder_uses_the_label_rules_and_a_mappings_captions(tmp_path):
    folder = flat(tmp_path / "images")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file_name,caption,user_id\n{NAMES[0]},a knife fight,797\n")
    items = {i.file: i for i in folder_items(folder, read_label_mapping(labels), profile="level_1")}
    assert (items[NAMES[0]].profile, items[NAMES[0]].category, items[NAMES[0]].caption) == \
        ("0000797", "Violence", "a knife fight")
    assert (items[NAMES[1]].profile, items[NAMES[1]].caption) == ("level_1", None)


def test_missing_images_and_empty_folders_are_refused_naming_the_flag(tmp_path):
    folder = generated(tmp_path / "psa", ["level_0"])
    (folder / "level_0" / NAMES[1]).unlink()
    with pytest.raises(EvaluationError, match=r"--b .*generation\.csv lists 1 images that are not there .*resumes"):
        folder_items(folder, flag="--b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="--images .*empty: no image files"):
        folder_items(tmp_path / "empty")


def test_pairs_follow_profile_and_name_and_a_base_run_is_every_profiles_baseline(tmp_path):
    psa = folder_items(generated(tmp_path / "psa", ["level_0", "level_3"]))
    base = folder_items(generated(tmp_path / "base", ["base"]))
    pairs, only_a, only_b = pair_items(base, psa)
    assert [(a.file, b.file) for a, b in pairs] == [(f"base/{n}", f"{p}/{n}") for p in ("level_0", "level_3")
                                                    for n in NAMES]
    assert only_a == [] and only_b == []

    per_user = folder_items(generated(tmp_path / "other", ["level_3", "level_5"]))
    pairs, only_a, only_b = pair_items(per_user, psa)  # two PSA runs: the same profile and name only
    assert [(a.file, b.file) for a, b in pairs] == [(f"level_3/{n}", f"level_3/{n}") for n in NAMES]
    assert only_a == [f"level_5/{n}" for n in NAMES] and only_b == [f"level_0/{n}" for n in NAMES]

    reference = folder_items(flat(tmp_path / "flat", [NAMES[0], "extra.png"]))
    pairs, only_a, only_b = pair_items(reference, psa)  # a flat baseline folder: by file name, for every profile
    assert [(a.file, b.file) for a, b in pairs] == [(NAMES[0], f"level_0/{NAMES[0]}"),
                                                    (NAMES[0], f"level_3/{NAMES[0]}")]
    assert only_a == ["extra.png"] and len(only_b) == 2
    pairs, _, _ = pair_items(psa, reference)  # names that are not unique in the first folder pair with nothing
    assert pairs == []


def test_jpeg_generate_folders_are_read_and_pair_with_png_runs_by_image_name(tmp_path):
    """Issue 22 item 6: a run of `generate --image-format jpeg` (<profile>/<name>.jpg) is read through its manifest,
    and pairs with a PNG run's images of the same profile or base run and image name."""
    jpeg = folder_items(generated(tmp_path / "psa", ["level_0"], suffix=".jpg"))
    stems = [name.removesuffix(".png") for name in NAMES]
    assert [(i.file, i.category) for i in jpeg] == [(f"level_0/{stems[0]}.jpg", "Violence"),
                                                     (f"level_0/{stems[1]}.jpg", "unknown")]
    base = folder_items(generated(tmp_path / "base", ["base"]))
    pairs, only_a, only_b = pair_items(base, jpeg)
    assert [(a.file, b.file) for a, b in pairs] == [(f"base/{n}.png", f"level_0/{n}.jpg") for n in stems]
    assert only_a == [] and only_b == []
    pairs, _, _ = pair_items(jpeg, folder_items(generated(tmp_path / "other", ["level_0"])))
    assert [(a.file, b.file) for a, b in pairs] == [(f"level_0/{n}.jpg", f"level_0/{n}.png") for n in stems]
