"""psa_core/evaluation/generation.py: prompt sets, the plan and its split over processes, names, the manifest and the
settings check of `python -m trainer generate` (no model involved)."""
from __future__ import annotations

import json

import pytest

from psa_core.evaluation import EvaluationError
from psa_core.evaluation.generation import (
    JPEG_COMMENT_PREFIX,
    MAX_JPEG_COMMENT,
    GenerationItem,
    PromptRow,
    atomic_file,
    check_existing_settings,
    image_key,
    image_text,
    jpeg_comment,
    plan_items,
    read_generation_manifest,
    read_prompt_set,
    remove_partial_files,
    shard,
    stored_caption_matches,
    text_from_jpeg_comment,
    world_from_env,
    write_manifest,
    write_settings,
)

SAGE = ("file_name,caption,user_id\n"
        "user_0000001_propaganda_state-run_media_00010_u.jpg,\"banners, slogans\",1\n"
        "user_0000122_violence_i'll_kill_you_00010_u.jpg,a threat,122\n"
        "user_0000122_shocking_gore_00011_u.jpg,gore,122\n")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sage_csv_rows_names_categories_and_users(tmp_path):
    prompts = read_prompt_set(write(tmp_path, "sage.csv", SAGE))
    assert prompts.kind == "sage" and prompts.has_users
    assert [r.name for r in prompts.rows] == ["user_0000001_propaganda_state-run_media_00010_u",
                                              "user_0000122_violence_i'll_kill_you_00010_u",
                                              "user_0000122_shocking_gore_00011_u"]
    assert [r.category for r in prompts.rows] == ["Propaganda", "Violence", "Shocking"]
    assert [r.user_id for r in prompts.rows] == ["0000001", "0000122", "0000122"]
    assert prompts.rows[0] == PromptRow(1, "banners, slogans", prompts.rows[0].name, "Propaganda", "0000001")
    assert len(read_prompt_set(prompts.path, limit=2).rows) == 2


def test_plain_csv_and_txt(tmp_path):
    plain = read_prompt_set(write(tmp_path, "plain.csv", "caption,category\na cat,Hate\na dog,\n"))
    assert plain.kind == "csv" and not plain.has_users
    assert [(r.name, r.category, r.row) for r in plain.rows] == [("prompt_00001", "Hate", 1), ("prompt_00002", "", 2)]
    text = read_prompt_set(write(tmp_path, "lines.txt", "first\n\n  second  \n"))
    assert [(r.name, r.caption) for r in text.rows] == [("prompt_00001", "first"), ("prompt_00002", "second")]


@pytest.mark.parametrize("name, text, expected", [
    ("x.json", "{}", "allowed: a .csv"),
    ("x.csv", "file_name,prompt\na,b\n", "no 'caption' column"),
    ("x.csv", "caption\n\n\"\"\n", "caption is empty"),
    ("x.csv", "file_name,caption\na.jpg,one\nA.png,two\n", "same image name"),
    ("x.csv", "file_name,caption\n../up.jpg,one\n", "not allowed"),
    ("x.csv", "caption,user_id\none,abc\n", "user_id"),
    ("x.txt", "\n\n", "no prompts"),
])
def test_bad_prompt_sets_name_the_flag(tmp_path, name, text, expected):
    with pytest.raises(EvaluationError, match="--prompts") as caught:
        read_prompt_set(write(tmp_path, name, text))
    assert expected in str(caught.value)


def test_plan_is_every_row_for_every_profile_or_each_row_with_its_user(tmp_path):
    prompts = read_prompt_set(write(tmp_path, "sage.csv", SAGE))
    items = plan_items(prompts, ["level_0", "level_3"], 2025)
    assert [(i.index, i.profile, i.prompt.row) for i in items] == [
        (0, "level_0", 1), (1, "level_0", 2), (2, "level_0", 3), (3, "level_3", 1), (4, "level_3", 2), (5, "level_3", 3)]
    assert {i.seed for i in items} == {2025}
    assert items[4].file == "level_3/user_0000122_violence_i'll_kill_you_00010_u.png"
    per_row = plan_items(prompts, None, 7)
    assert [i.file.split("/")[0] for i in per_row] == ["0000001", "0000122", "0000122"]
    with pytest.raises(EvaluationError, match="given twice"):
        plan_items(prompts, ["level_0", "level_0"], 1)
    with pytest.raises(EvaluationError, match="--per-row-user"):
        plan_items(read_prompt_set(write(tmp_path, "p.txt", "a\n")), None, 1)


def test_shards_cover_the_plan_once():
    rows = [PromptRow(n, f"c{n}", f"p{n}") for n in range(1, 8)]
    items = [GenerationItem(i, "p", row, 0) for i, row in enumerate(rows)]
    for world in (1, 2, 3, 8):
        parts = [shard(items, rank, world) for rank in range(world)]
        assert sorted(i.index for part in parts for i in part) == list(range(7))
        assert all(i.index % world == rank for rank, part in enumerate(parts) for i in part)
    assert [i.index for i in shard(items, 1, 3)] == [1, 4]
    with pytest.raises(EvaluationError):
        shard(items, 2, 2)


def test_world_from_env():
    assert world_from_env({}) == (0, 1, 0)
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(EvaluationError, match="WORLD_SIZE"):
            world_from_env(bad)


def test_manifest_lists_existing_images_and_reads_back(tmp_path):
    prompts = read_prompt_set(write(tmp_path, "sage.csv", SAGE))
    items = plan_items(prompts, ["level_0"], 2025)
    out = tmp_path / "out"
    for item in items[:2]:
        atomic_file(out / item.file, lambda temporary: temporary.write_bytes(b"png"))
    write_manifest(out, items)
    records = read_generation_manifest(out)
    assert [r["file"] for r in records] == [items[0].file, items[1].file]
    assert records[0]["caption"] == "banners, slogans" and records[0]["category"] == "Propaganda"
    assert records[1]["path"] == out / items[1].file and records[1]["seed"] == 2025 and records[1]["row"] == 2
    (out / "generation.csv").write_text("file,profile,category,caption,seed,row\n../x.png,a,,c,1,1\n")
    with pytest.raises(EvaluationError, match="not allowed"):
        read_generation_manifest(out)
    with pytest.raises(EvaluationError, match="no generation.csv"):
        read_generation_manifest(tmp_path)


def test_only_own_partial_files_are_removed(tmp_path):
    (tmp_path / "level_0").mkdir()
    ours = tmp_path / "level_0" / ".a.png.generate-partial"
    theirs = tmp_path / "level_0" / ".a.png.partial"
    image = tmp_path / "level_0" / "a.png"
    for path in (ours, theirs, image):
        path.write_bytes(b"x")
    assert remove_partial_files(tmp_path, ["level_0", "missing"]) == 1
    assert not ours.exists() and theirs.exists() and image.exists()


def test_settings_check_names_what_differs(tmp_path):
    render = {"steps": 40, "model_sha256": "a"}
    assert check_existing_settings(tmp_path, render, {}) is None
    write_settings(tmp_path, {"render": render, "profiles": {"level_0": {"embedding_sha256": "e0"}}})
    assert check_existing_settings(tmp_path, render, {"level_0": "e0", "level_1": "e1"})["render"] == render
    with pytest.raises(EvaluationError, match=r"steps: 40 -> 30.*new --out"):
        check_existing_settings(tmp_path, {**render, "steps": 30}, {})
    with pytest.raises(EvaluationError, match="profile level_0: another embedding"):
        check_existing_settings(tmp_path, render, {"level_0": "other"})
    assert json.loads((tmp_path / "generation.json").read_text())["render"] == render


def test_image_key_depends_on_what_decides_the_pixels():
    row = PromptRow(1, "a cat", "prompt_00001")
    item = GenerationItem(0, "level_0", row, 5)
    key = image_key({"steps": 2}, "e", item, "neg")
    assert key == image_key({"steps": 2}, "e", GenerationItem(9, "level_0", row, 5), "neg")  # not the plan index
    for other in (image_key({"steps": 3}, "e", item, "neg"), image_key({"steps": 2}, "f", item, "neg"),
                  image_key({"steps": 2}, "e", GenerationItem(0, "level_0", row, 6), "neg"),
                  image_key({"steps": 2}, "e", item, ""),
                  image_key({"steps": 2}, "e", GenerationItem(0, "level_0", PromptRow(1, "a dog", "prompt_00001"), 5),
                            "neg")):
        assert other != key


def test_jpeg_files_and_settings(tmp_path):
    """--image-format jpeg: .jpg names; the image format is a render setting (an older folder without it is PNG) but
    not part of an image's key; the comment carries the image text, and a text too long for one JPEG marker (65533
    bytes) keeps sha256s of the caption and negative prompt, which still identify the caption."""
    prompts = read_prompt_set(write(tmp_path, "sage.csv", SAGE))
    items = plan_items(prompts, ["level_0"], 7, "jpeg")
    assert items[1].file == "level_0/user_0000122_violence_i'll_kill_you_00010_u.jpg"
    with pytest.raises(EvaluationError, match="--image-format 'gif' is not allowed; allowed: png, jpeg"):
        plan_items(prompts, ["level_0"], 7, "gif")

    render = {"steps": 40}
    write_settings(tmp_path, {"format": "psa-generation", "render": render, "profiles": {}})
    assert check_existing_settings(tmp_path, {**render, "image_format": "png"}, {})
    with pytest.raises(EvaluationError, match="image_format: 'png' -> 'jpeg'"):
        check_existing_settings(tmp_path, {**render, "image_format": "jpeg", "image_quality": 75}, {})
    assert image_key(render, "e", items[0], "") == image_key({**render, "image_format": "jpeg", "image_quality": 75},
                                                             "e", items[0], "")

    text = image_text(items[0], "k" * 64, "lowres")
    assert text_from_jpeg_comment(jpeg_comment(text)) == text and json.loads(text)["negative_prompt"] == "lowres"
    assert text_from_jpeg_comment(b"made by a camera") is None and text_from_jpeg_comment(None) is None
    long_caption = "\U0001F600" * 10_000  # 40,000 bytes of UTF-8, twice over the marker's bound with the negative
    item = GenerationItem(0, "level_0", PromptRow(1, long_caption, "a"), 7, ".jpg")
    comment = jpeg_comment(image_text(item, "k" * 64, long_caption))
    assert len(comment) <= MAX_JPEG_COMMENT and comment.startswith(JPEG_COMMENT_PREFIX)
    stored = json.loads(text_from_jpeg_comment(comment))
    assert "caption" not in stored and stored["key"] == "k" * 64
    assert stored_caption_matches(stored, long_caption) and not stored_caption_matches(stored, "another")
