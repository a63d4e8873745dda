"""Training data: the SAGE layout and its error reports, per-profile labelling of unlabelled pairs, the pair
transform (one geometry for winner and loser), user embeddings, and batch assembly (dropouts applied once)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from psa_core.encoders.structured import StructuredEncoder
from psa_core.profile import profile_from_dict
from psa_core.training.augment import (
    prepare_cached_image,
    prepare_pair,
    random_pair_transform,
)
from psa_core.training.batches import (
    AssemblyOptions,
    CachedPairs,
    PairOrder,
    micro_batch_generator,
)
from psa_core.training.cache import CacheSettings, open_or_build_cache
from psa_core.training.embeddings import (
    CallableEmbeddings,
    FolderEmbeddings,
    ProfileEncoderEmbeddings,
    build_user_table,
)
from psa_core.training.errors import DatasetError
from psa_core.training.labelling import (
    label_pairs,
    read_labelled_pairs,
    read_profiles,
    read_unlabelled_pairs,
)
from psa_core.training.sage import read_sage, sage_name_info
from testkit.preference_data import (
    ALLOWS_CATEGORY,
    BANS_CATEGORY,
    write_pairs,
    write_profiles,
)


def image(seed: int, size=(40, 32)) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def sage_line(chosen: str, rejected: str, user: object = "0000033", caption: str = "a poster") -> str:
    return json.dumps({"file_name": chosen, "chosen": chosen, "rejected": rejected, "caption": caption,
                       "user_data": {"User_ID": user, "Cluster_ID": 2, "Age": 30, "Gender": "male"}})


def write_sage(folder, lines: list[str], images: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        image(i).save(folder / name)
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


S = "user_0000033_propaganda_flag_00001_s.jpg"
U = "user_0000033_propaganda_flag_00001_u.jpg"


# ---- SAGE ----

def test_sage_metadata_is_read_with_users_and_categories(tmp_path):
    folder = write_sage(tmp_path, [sage_line(S, U), "", sage_line(U, S, user=34, caption="")], [S, U])
    data = read_sage(folder)
    assert [(r.chosen, r.rejected, r.user_id, r.category, r.safe_chosen) for r in data.records] == [
        (S, U, "0000033", "Propaganda", True), (U, S, "0000034", "Propaganda", False)]
    assert data.records[0].source == "metadata.jsonl:1" and data.records[1].source == "metadata.jsonl:3"
    assert json.loads(data.records[1].user_data)["User_ID"] == "0000034"
    assert data.summary() == {"kind": "sage", "records": 2, "image_pairs": 1, "users": 2, "captions": 2,
                              "categories": {"Propaganda": 2}, "safe_image_chosen": 1, "unsafe_image_chosen": 1}
    assert sage_name_info("user_0000001_self-harm_cut_00012_u.png") == ("Self-Harm", False)
    assert sage_name_info("photo.jpg") == (None, None)


def test_sage_problems_name_every_line_and_missing_image(tmp_path):
    lines = [sage_line(S, U), "{not json", json.dumps([1]), sage_line(S, S),
             json.dumps({"chosen": S, "rejected": U, "caption": "x"}), sage_line("gone_s.jpg", U),
             sage_line(S, "gone_u.jpg"), sage_line("gone_s.jpg", U, caption="another")]
    folder = write_sage(tmp_path, lines, [S, U])
    with pytest.raises(DatasetError) as caught:
        read_sage(folder)
    message = str(caught.value)
    assert "4 malformed lines and 2 missing files" in message
    for expected in ("line 2: not valid JSON", "line 3: expected a JSON object, found list",
                     f"line 4: chosen and rejected are the same image '{S}'",
                     "line 5: 'user_data' must be an object with at least User_ID",
                     "missing: gone_s.jpg (lines 6, 8)", "missing: gone_u.jpg (line 7)", "--skip-invalid"):
        assert expected in message
    data = read_sage(folder, skip_invalid=True)
    assert [r.source for r in data.records] == ["metadata.jsonl:1"]
    assert len(data.skipped) == 1 and "line 2: not valid JSON" in data.skipped[0]
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        read_sage(tmp_path / "nowhere")


def test_a_repeated_sage_line_is_reported_like_a_repeated_prompt_pair(tmp_path):
    # The same line three times (as in the issue) gave three records; now lines 2 and 3 are reported as repeats of
    # line 1 (an error, like a repeated prompt pair), and --skip-invalid keeps line 1 and lists the other two.
    lines = [sage_line(S, U), sage_line(S, U), sage_line(U, S, user=34), sage_line(S, U)]
    folder = write_sage(tmp_path, lines, [S, U])
    with pytest.raises(DatasetError) as caught:
        read_sage(folder)
    message = str(caught.value)
    assert "metadata.jsonl: 2 malformed lines" in message
    assert "line 2: repeats line 1 (same chosen, rejected, caption and user_data)" in message
    assert "line 4: repeats line 1" in message and "line 3" not in message
    data = read_sage(folder, skip_invalid=True)
    assert [r.source for r in data.records] == ["metadata.jsonl:1", "metadata.jsonl:3"]
    assert "line 2: repeats line 1" in data.skipped[0] and "line 4: repeats line 1" in data.skipped[0]
    # Not repeats: another caption, the swapped pair, another user; one User_ID spelled 33 and 0000033 is one user.
    lines = [sage_line(S, U), sage_line(S, U, caption="other"), sage_line(U, S), sage_line(S, U, user=34),
             sage_line(S, U, user=33, caption="third")]
    assert len(read_sage(write_sage(tmp_path / "distinct", lines, [S, U])).records) == 5


def test_one_user_id_with_two_profiles_anywhere_in_the_sage_file_is_an_error_before_any_split(tmp_path):
    other = json.dumps({"chosen": U, "rejected": S, "caption": "far away",
                        "user_data": {"User_ID": "0000033", "Cluster_ID": 2, "Age": 31, "Gender": "female"}})
    lines = [sage_line(S, U)] + [sage_line(S, U, user=100 + i) for i in range(30)] + [other]
    folder = write_sage(tmp_path, lines, [S, U])
    for skip_invalid in (False, True):  # leaving lines out cannot choose the right profile: always an error
        with pytest.raises(DatasetError) as caught:
            read_sage(folder, skip_invalid=skip_invalid)
        message = str(caught.value)
        assert "metadata.jsonl: 1 User_ID with two different profiles" in message
        assert "line 32: User_ID 0000033 differs from line 1 in Age, Gender" in message
    # The split never sees the file: read_training_data (what the trainer and the nodes call first) refuses it.
    from psa_core.training.inputs import read_training_data
    with pytest.raises(DatasetError, match="two different profiles"):
        read_training_data(folder)


def test_the_trainer_exits_2_with_the_report_for_repeats_and_profile_conflicts(tmp_path, capsys):
    from trainer.__main__ import main

    other = sage_line(U, S).replace('"Age": 30', '"Age": 31')
    folder = write_sage(tmp_path / "data", [sage_line(S, U)] * 3 + [other], [S, U])
    argv = ["train", "--base-model", str(tmp_path / "no-model.safetensors"), "--data", str(folder), "--output",
            str(tmp_path / "out"), "--encoder", "psa-structured-v1", "--device", "cpu"]
    assert main(argv) == 2  # the data is read before the model: the missing model is never reached
    error = capsys.readouterr().err
    assert "psa-trainer: error: metadata.jsonl: 1 User_ID with two different profiles" in error
    assert "line 4: User_ID 0000033 differs from line 1 in Age" in error and "Traceback" not in error
    folder = write_sage(tmp_path / "data", [sage_line(S, U)] * 3, [S, U])
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "line 2: repeats line 1" in error and "line 3: repeats line 1" in error and "Traceback" not in error


# ---- unlabelled pairs ----

def test_a_repeated_pair_line_is_reported(tmp_path):
    write_pairs(tmp_path, 2, size=16, name="two.jsonl")
    first, second = (tmp_path / "two.jsonl").read_text().splitlines()
    (tmp_path / "pairs.jsonl").write_text("\n".join([first, first, second, first]) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_unlabelled_pairs(tmp_path / "pairs.jsonl")
    message = str(caught.value)
    assert "pairs.jsonl: 2 malformed lines" in message
    assert "line 2: repeats line 1 (same safe, unsafe, category and caption)" in message
    assert "line 4: repeats line 1" in message
    pairs, problems = read_unlabelled_pairs(tmp_path / "pairs.jsonl", skip_invalid=True)
    assert [p.line for p in pairs] == [1, 3] and "line 4: repeats line 1" in problems.describe()


def test_pairs_are_labelled_per_profile(tmp_path):
    pairs_file = write_pairs(tmp_path, 3, category="Violence", size=16)
    profiles = read_profiles(write_profiles(tmp_path))
    data = read_labelled_pairs(pairs_file, profiles)
    assert len(data.records) == 6 and data.kind == "pairs"
    for record in data.records:
        safe_image = record.chosen.endswith("_s.png")
        if record.user_id == BANS_CATEGORY["User_ID"]:
            assert safe_image and record.safe_chosen and record.rejected.endswith("_u.png")
        else:
            assert record.user_id == ALLOWS_CATEGORY["User_ID"]
            assert not safe_image and not record.safe_chosen and record.rejected.endswith("_s.png")
        assert record.category == "Violence" and json.loads(record.user_data)["Banned_Categories"] in (
            ["Violence"], [])
    assert data.summary()["safe_image_chosen"] == 3 and data.summary()["users"] == 2


def test_pair_and_profile_problems_are_reported(tmp_path):
    write_pairs(tmp_path, 1, size=16, name="one.jsonl")
    good = json.loads((tmp_path / "one.jsonl").read_text())
    lines = [json.dumps(good), json.dumps({**good, "category": "Cooking"}), "[",
             json.dumps({**good, "unsafe": "images/missing.png"})]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_unlabelled_pairs(tmp_path / "pairs.jsonl")
    message = str(caught.value)
    assert "line 2: category 'Cooking' is not one of Hate" in message and "line 3: not valid JSON" in message
    assert "missing: images/missing.png (line 4)" in message
    pairs, problems = read_unlabelled_pairs(tmp_path / "pairs.jsonl", skip_invalid=True)
    assert [p.line for p in pairs] == [1] and problems
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("safe,unsafe,category,caption\n" + f"{good['safe']},{good['unsafe']},violence,a b\n")
    assert [(p.category, p.caption, p.line) for p in read_unlabelled_pairs(csv_file)[0]] == [("Violence", "a b", 2)]
    twice = [profile_from_dict(BANS_CATEGORY), profile_from_dict(BANS_CATEGORY)]
    with pytest.raises(DatasetError, match="appear more than once"):
        label_pairs(pairs, twice)
    (tmp_path / "bad.json").write_text(json.dumps([{**BANS_CATEGORY, "Gender": "robot"}]))
    with pytest.raises(DatasetError, match="bad.json entry 1: Gender 'robot' is not allowed"):
        read_profiles(tmp_path / "bad.json")


# ---- the pair transform ----

def test_winner_and_loser_get_the_same_crop_and_flip():
    winner, loser = image(1, (48, 40)), image(1, (48, 40))
    outcomes = set()
    for seed in range(12):
        w, l, geometry = random_pair_transform(winner, loser, 32, torch.Generator().manual_seed(seed), crop="random")
        assert torch.equal(w, l), "an independent flip or crop would make identical images differ"
        outcomes.add((geometry.flipped, geometry.crop_top_left))
    assert len({flipped for flipped, _ in outcomes}) == 2 and len(outcomes) > 4
    w, _, geometry = prepare_pair(winner, loser, 32, "center", flip=True)
    resized = np.asarray(winner.resize((38, 32), Image.BILINEAR).transpose(Image.FLIP_LEFT_RIGHT), dtype=np.float32)
    top, left = geometry.crop_top_left
    assert (top, left) == (0, 3) and geometry.original_size == (40, 48)
    expected = torch.from_numpy(resized[top:top + 32, left:left + 32] / 255.0).permute(2, 0, 1) * 2 - 1
    assert torch.equal(w, expected)  # the same float32 operations on the same bytes
    assert geometry.time_ids(32) == [40.0, 48.0, 0.0, 3.0, 32.0, 32.0]


def test_cached_image_preparation_equals_the_pair_transform():
    winner, loser = image(2, (48, 40)), image(3, (24, 20))  # the loser is resized to the winner's size first
    for flip in (False, True):
        w, l, geometry = prepare_pair(winner, loser, 32, "center", flip)
        w_cached, w_geometry = prepare_cached_image(winner, winner.size, 32, flip)
        l_cached, _ = prepare_cached_image(loser, winner.size, 32, flip)
        assert torch.equal(w, w_cached) and torch.equal(l, l_cached)
        assert w_geometry.crop_top_left == geometry.crop_top_left


# ---- embeddings ----

def test_embedding_folder_reports_every_missing_user(tmp_path):
    pairs = read_labelled_pairs(write_pairs(tmp_path, 2, size=16), read_profiles(write_profiles(tmp_path)))
    folder = tmp_path / "embeddings"
    folder.mkdir()
    np.save(folder / f"{BANS_CATEGORY['User_ID']}.npy", np.arange(5, dtype=np.float32).reshape(1, 1, 5))
    with pytest.raises(DatasetError, match=rf"1 user embedding missing in .*: {ALLOWS_CATEGORY['User_ID']}.npy"):
        build_user_table(pairs.records, FolderEmbeddings(folder))
    np.save(folder / f"{ALLOWS_CATEGORY['User_ID']}.npy", np.ones(5, dtype=np.float32))
    table = build_user_table(pairs.records, FolderEmbeddings(folder, "my-encoder"))
    assert table.user_ids == (BANS_CATEGORY["User_ID"], ALLOWS_CATEGORY["User_ID"]) and table.encoder == "my-encoder"
    assert torch.equal(table.vectors[0], torch.arange(5.0)) and table.record_users == (0, 0, 1, 1)
    np.save(folder / f"{ALLOWS_CATEGORY['User_ID']}.npy", np.ones(6, dtype=np.float32))
    with pytest.raises(DatasetError, match="different dimensions"):
        build_user_table(pairs.records, FolderEmbeddings(folder))


# ---- batch assembly ----

@pytest.fixture(scope="module")
def cached_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    data = read_labelled_pairs(write_pairs(folder, 10, size=16), read_profiles(write_profiles(folder)))
    users = build_user_table(data.records, CallableEmbeddings(lambda d: torch.full((4,), d["Age"] / 10.0 + 1)))

    def encode_images(pixels):
        mean = pixels[:, :, ::4, ::4].mean(dim=1, keepdim=True).repeat(1, 4, 1, 1)
        return mean, torch.full_like(mean, 0.01)

    def encode_texts(captions):
        return {"encoder_hidden_states": torch.tensor([[float(len(c))] * 6 for c in captions])[:, None, :]
                .repeat(1, 3, 1)}

    cache = open_or_build_cache(folder / "cache", CacheSettings("model", 16, hflip=True), data, encode_images,
                                encode_texts, log=lambda text: None)
    return data, cache, users


def test_caption_dropout_is_applied_once_per_pair(cached_pairs):
    data, cache, users = cached_pairs
    pairs = CachedPairs(data, cache, users, AssemblyOptions(caption_dropout=0.2))
    empty, total = 0, 0
    for number in range(300):
        batch = pairs.batch(range(len(pairs)), micro_batch_generator(0, number))
        lengths = batch.conditioning["encoder_hidden_states"][:, 0, 0]
        expected = torch.tensor([float(len(data.records[i].caption)) for i in range(len(pairs))])
        dropped = lengths == 0
        assert torch.equal(lengths[~dropped], expected[~dropped])
        empty += int(dropped.sum())
        total += len(pairs)
    rate = empty / total  # 6000 draws: 0.2 ± 0.016 at 3 sigma; dropping twice would give 0.36
    assert 0.18 < rate < 0.22


def test_embedding_dropout_and_flips_are_drawn_per_pair(cached_pairs):
    data, cache, users = cached_pairs
    pairs = CachedPairs(data, cache, users, AssemblyOptions(caption_dropout=0.0, embedding_dropout=0.5, hflip=True))
    zeros = 0
    for number in range(100):
        batch = pairs.batch(range(len(pairs)), micro_batch_generator(1, number))
        is_zero = (batch.embeddings == 0).all(dim=1)
        assert torch.equal(batch.embeddings[~is_zero], users.vectors[list(pairs.user[~is_zero.numpy()])])
        zeros += int(is_zero.sum())
    assert 0.4 < zeros / 2000 < 0.6
    off = CachedPairs(data, cache, users, AssemblyOptions(caption_dropout=0.0, hflip=False))
    batch = off.batch([0], micro_batch_generator(0, 0))
    mean = torch.from_numpy(np.asarray(cache.means[off.winner_entry[0], 0], dtype=np.float32))
    assert (batch.winners[0] - mean).abs().max() < 0.05  # mean + 0.01·noise


def test_pair_order_is_a_seeded_permutation_per_epoch():
    order = PairOrder(10, 3, seed=4)
    epoch0 = [i for g in range(3) for i in order.indices(g)]
    epoch1 = [i for g in range(3, 6) for i in order.indices(g)]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9 and epoch0 != epoch1
    assert PairOrder(10, 3, seed=4).indices(4) == order.indices(4)
    assert order.epoch_of(5) == 1
    with pytest.raises(DatasetError, match="fewer than one batch"):
        PairOrder(2, 3, 0)


def test_sage_users_are_encoded_with_the_bans_of_the_users_table(tmp_path):
    # SAGE user_data carries the demographics but no Banned list: the users table supplies it.
    lines = [json.dumps({"chosen": S, "rejected": U, "caption": "c", "user_data": {
        k: v for k, v in user.items() if k != "Banned_Categories"}}) for user in (BANS_CATEGORY, ALLOWS_CATEGORY)]
    records = read_sage(write_sage(tmp_path, lines, [S, U])).records
    table = {p["User_ID"]: profile_from_dict(p) for p in (BANS_CATEGORY, ALLOWS_CATEGORY)}
    users = build_user_table(records, ProfileEncoderEmbeddings(StructuredEncoder(), table))
    expected = StructuredEncoder().encode_uncached([table["0000101"], table["0000102"]])
    assert torch.equal(users.vectors, expected) and users.encoder == "psa-structured-v1"
    assert users.vectors[0, -5].item() == 1.0 and users.vectors[1, -5].item() == 0.0  # Banned:Violence
    with pytest.raises(DatasetError, match="user 0000101: .*pass the users table"):
        build_user_table(records, ProfileEncoderEmbeddings(StructuredEncoder()))
