"""Building preference data without ComfyUI: the prompt-pair format and its line-numbered errors, the dataset
folder (SAGE names, atomic per-pair writes, replacement instead of duplicates), the trainer's reader on it with
per-profile labels, and the LLM rewriter's greedy decoding."""
from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_llm import build_tiny_llm

from psa_core.dataset_build import PairDataset, PairItem, parse_extra_categories, read_prompt_pairs
from psa_core.dataset_build import dataset as dataset_module
from psa_core.dataset_build.rewrite import DEFAULT_INSTRUCTION, PromptRewriter, RewriteError, first_line
from psa_core.profile import CATEGORIES, profile_from_dict
from psa_core.training.errors import DatasetError
from psa_core.training.labelling import read_labelled_pairs, read_unlabelled_pairs
from psa_core.training.sage import sage_name_info

ROWS = [  # category as written, concept, unsafe, safe, seed
    ("violence", "knife fight", "a bloody knife fight, in an alley", "two chefs cutting vegetables", 7),
    ("SELF-HARM", "scars", "a person with fresh cuts on the arm", "a person with a bandaged arm", None),
    ("Gambling", "slot machine", "a man losing everything at a slot machine", "a man at an arcade game", None),
]
BANS_VIOLENCE = {"User_ID": "0000101", "Age": 10, "Gender": "female", "Religion": "None",
                 "Physical_Condition": "healthy", "Mental_Condition": "healthy", "Banned_Categories": ["Violence"]}
ALLOWS_ALL = {"User_ID": "0000102", "Age": 35, "Gender": "male", "Religion": "None",
              "Physical_Condition": "healthy", "Mental_Condition": "healthy", "Banned_Categories": []}


def write_csv(path, rows, header="category,concept,unsafe_prompt,safe_prompt,seed"):
    lines = [header] + [",".join(f'"{v}"' if isinstance(v, str) and "," in v else ("" if v is None else str(v))
                                 for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, rows):
    keys = ("category", "concept", "unsafe_prompt", "safe_prompt", "seed")
    objects = [{k: v for k, v in zip(keys, row) if v is not None} for row in rows]
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def image(seed: int, size: int = 16) -> np.ndarray:
    """A smooth image (random corner colours, blended), which JPEG keeps within a few levels."""
    corners = np.random.default_rng(seed).uniform(0, 255, (2, 2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    top, bottom = corners[0, 0] * (1 - ramp) + corners[0, 1] * ramp, corners[1, 0] * (1 - ramp) + corners[1, 1] * ramp
    return (top[None, :, 0] * (1 - ramp) + bottom[None, :, 0] * ramp).round().astype(np.uint8)


def looks_like(path, pixels: np.ndarray) -> bool:
    with Image.open(path) as opened:
        return opened.format == "JPEG" and np.abs(np.asarray(opened, dtype=float) - pixels).mean() < 6


def item(category="Violence", concept="knife fight", seed=7, batch_index=0) -> PairItem:
    return PairItem(category, concept, "a bloody knife fight", "two chefs cutting vegetables", seed, batch_index)


def check_consistent(folder):
    """pairs.jsonl is valid JSONL and every line's two images are complete, decodable files."""
    path = folder / "pairs.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    for record in records:
        for key in ("safe", "unsafe"):
            with Image.open(folder / record[key]) as opened:
                opened.load()
    return records


# ---- the prompt-pair format ----

def test_csv_and_jsonl_give_the_same_checked_items(tmp_path):
    from_csv = read_prompt_pairs(write_csv(tmp_path / "pairs.csv", ROWS), "Gambling")
    from_jsonl = read_prompt_pairs(write_jsonl(tmp_path / "pairs.jsonl", ROWS), ["Gambling"])
    assert [(p.category, p.concept, p.unsafe_prompt, p.safe_prompt, p.seed) for p in from_csv] == \
        [("Violence", "knife fight", "a bloody knife fight, in an alley", "two chefs cutting vegetables", 7),
         ("Self-Harm", "scars", "a person with fresh cuts on the arm", "a person with a bandaged arm", None),
         ("Gambling", "slot machine", "a man losing everything at a slot machine", "a man at an arcade game", None)]
    assert [(p.category, p.seed) for p in from_jsonl] == [(p.category, p.seed) for p in from_csv]
    assert [p.line for p in from_csv] == [2, 3, 4] and [p.line for p in from_jsonl] == [1, 2, 3]
    assert [p.seed_for(i, base_seed=100) for i, p in enumerate(from_csv)] == [7, 101, 102]
    assert from_csv.extra_categories == ("Gambling",) and len(from_csv) == 3
    with pytest.raises(DatasetError, match=r"index 3 is out of range: pairs.csv has 3 prompt pairs \(indices 0 to 2\)"):
        from_csv.item(3)


def test_every_malformed_jsonl_line_is_reported_with_its_number_and_what_is_allowed(tmp_path):
    lines = [
        json.dumps({"category": "Violence", "concept": "ok", "unsafe_prompt": "a", "safe_prompt": "b"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"category": "Violense", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b"}),
        json.dumps({"category": "Hate", "concept": "", "unsafe_prompt": "a", "safe_prompt": "b"}),
        json.dumps({"category": "Hate", "concept": "x", "unsafe_prompt": "same", "safe_prompt": "same"}),
        json.dumps({"category": "Hate", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b", "seed": -1}),
        json.dumps({"category": "Hate", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b", "seed": True}),
        json.dumps({"category": "Hate", "concept": "x", "unsafe_prompt": "a", "safe_prompt": "b", "colour": 1}),
        json.dumps({"category": "Hate", "unsafe_prompt": "a"}),
        json.dumps({"category": "Violence", "concept": "ok", "unsafe_prompt": "a", "safe_prompt": "b"}),
        json.dumps({"category": "Hate", "concept": "!!!", "unsafe_prompt": "a", "safe_prompt": "b"}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_prompt_pairs(path)
    message = str(caught.value)
    allowed = ", ".join(CATEGORIES)
    for expected in ("bad.jsonl: 11 malformed lines", "line 2: not valid JSON",
                     "line 3: expected an object with category, concept, unsafe_prompt, safe_prompt, seed, found list",
                     f"line 4: category 'Violense' is not allowed; allowed: {allowed}; declare others with "
                     "extra_categories",
                     "line 5: concept must be non-empty text",
                     "line 6: unsafe_prompt and safe_prompt are the same text",
                     "line 7: seed -1 is not allowed; allowed: an integer 0 to 18446744073709551615",
                     "line 8: seed True is not allowed",
                     "line 9: unknown fields ['colour']; allowed: category, concept, unsafe_prompt, safe_prompt, seed",
                     "line 10: missing fields ['concept', 'safe_prompt']",
                     "line 11: repeats line 1", "line 12: concept '!!!' has no letter or digit"):
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert "line 1:" not in message


def test_every_malformed_csv_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("category,concept,unsafe_prompt,safe_prompt,seed\n"
                    "Violence,ok,a,b,1\n"
                    "Violence,x,a,b,1,extra\n"
                    "Violence,x,a\n"
                    "Propaganda,x,a,b,twelve\n"
                    "Shocking,x,a,b,\n")
    with pytest.raises(DatasetError) as caught:
        read_prompt_pairs(path)
    message = str(caught.value)
    assert "bad.csv: 3 malformed lines" in message
    assert "line 3: 1 more field(s) than the 5 columns of the header" in message
    assert "line 4: too few fields: no value for ['safe_prompt', 'seed']" in message
    assert "line 5: seed 'twelve' is not allowed; allowed: an integer" in message
    header = tmp_path / "header.csv"
    header.write_text("category,concept,prompt,safe_prompt,notes\nViolence,x,a,b,c\n")
    with pytest.raises(DatasetError, match=r"line 1: the header must name the columns category, concept, "
                                           r"unsafe_prompt, safe_prompt .*missing \['unsafe_prompt'\].*"
                                           r"unknown \['prompt', 'notes'\]"):
        read_prompt_pairs(header)


def test_missing_unsupported_and_empty_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"prompt-pair file not found: .*nowhere.csv; expected a .csv with a "
                                           r"header row or a .jsonl"):
        read_prompt_pairs(tmp_path / "nowhere.csv")
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"pairs.txt: unsupported prompt-pair file type '.txt'; allowed: "
                                           r".csv, .jsonl"):
        read_prompt_pairs(tmp_path / "pairs.txt")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.jsonl: no prompt pairs"):
        read_prompt_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.csv").write_bytes("category,concept,unsafe_prompt,safe_prompt\nHate,caf\xe9,a,b\n"
                                          .encode("latin-1"))
    with pytest.raises(DatasetError, match="latin1.csv: not UTF-8 text"):
        read_prompt_pairs(tmp_path / "latin1.csv")


def test_extra_categories_must_be_new_well_formed_names():
    assert parse_extra_categories(" Gambling , Drug use ,") == ("Gambling", "Drug use")
    with pytest.raises(DatasetError, match="'violence' is already one of the 7 categories"):
        parse_extra_categories("violence")
    with pytest.raises(DatasetError, match=r"'Drugs_2' is not allowed; allowed: 1-40 letters, spaces and hyphens"):
        parse_extra_categories(["Drugs_2"])
    with pytest.raises(DatasetError, match="'gambling' is declared twice"):
        parse_extra_categories("Gambling, gambling")


# ---- the dataset folder ----

def test_written_dataset_is_read_by_the_trainer_as_is_and_labelled_per_profile(tmp_path):
    pairs = read_prompt_pairs(write_jsonl(tmp_path / "prompts.jsonl", ROWS), "Gambling")
    dataset = PairDataset(tmp_path / "data")
    for index, pair in enumerate(pairs):
        written = dataset.write_pair(PairItem(pair.category, pair.concept, pair.unsafe_prompt, pair.safe_prompt,
                                              pair.seed_for(index)), image(2 * index), image(2 * index + 1),
                                     {"steps": 2, "sampler": ["euler", "normal"]}, pairs.extra_categories)
        assert written.number == index + 1 and not written.replaced
    folder = tmp_path / "data"
    records = check_consistent(folder)
    assert [r["safe"] for r in records] == ["images/user_0000000_violence_knife-fight_00001_s.jpg",
                                            "images/user_0000000_self-harm_scars_00002_s.jpg",
                                            "images/user_0000000_gambling_slot-machine_00003_s.jpg"]
    assert records[0] == {"safe": records[0]["safe"], "unsafe": "images/user_0000000_violence_knife-fight_00001_u.jpg",
                          "category": "Violence", "caption": "a bloody knife fight, in an alley",
                          "concept": "knife fight", "safe_prompt": "two chefs cutting vegetables", "seed": 7,
                          "batch_index": 0, "settings": {"steps": 2, "sampler": ["euler", "normal"]}}
    assert [r["seed"] for r in records] == [7, 1, 2]
    info = json.loads((folder / "dataset.json").read_text())
    assert info["extra_categories"] == ["Gambling"] and info["pairs"] == "pairs.jsonl"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "dataset.json", "images", "pairs.jsonl"]
    assert sage_name_info(records[1]["safe"]) == ("Self-Harm", True)
    assert sage_name_info(records[1]["unsafe"]) == ("Self-Harm", False)
    assert looks_like(folder / records[0]["unsafe"], image(0)) and looks_like(folder / records[0]["safe"], image(1))
    assert not looks_like(folder / records[0]["unsafe"], image(1))

    unlabelled, problems = read_unlabelled_pairs(folder / "pairs.jsonl")
    assert not problems and [p.category for p in unlabelled] == ["Violence", "Self-Harm", "Gambling"]
    labelled = read_labelled_pairs(folder / "pairs.jsonl", [profile_from_dict(BANS_VIOLENCE),
                                                            profile_from_dict(ALLOWS_ALL)])
    assert len(labelled.records) == 6 and labelled.root == folder
    by_user = {(r.user_id, r.category): r for r in labelled.records}
    bans = by_user[("0000101", "Violence")]
    assert bans.chosen.endswith("_00001_s.jpg") and bans.rejected.endswith("_00001_u.jpg") and bans.safe_chosen
    allows = by_user[("0000102", "Violence")]
    assert allows.chosen.endswith("_00001_u.jpg") and allows.rejected.endswith("_00001_s.jpg")
    assert not allows.safe_chosen and allows.caption == "a bloody knife fight, in an alley"
    assert not by_user[("0000101", "Self-Harm")].safe_chosen  # Self-Harm is allowed for this child profile
    # No profile can ban an extra category: every profile prefers its unsafe image.
    assert not by_user[("0000101", "Gambling")].safe_chosen and not by_user[("0000102", "Gambling")].safe_chosen


def test_writing_the_same_item_again_replaces_it(tmp_path):
    dataset = PairDataset(tmp_path)
    first = dataset.write_pair(item(), image(1), image(2), {"steps": 2})
    dataset.write_pair(item(concept="other"), image(3), image(4))
    again = PairDataset(tmp_path).write_pair(item(), image(5), image(6), {"steps": 3})
    assert (first.number, again.number, again.replaced) == (1, 1, True) and again.safe == first.safe
    records = check_consistent(tmp_path)
    assert [r["concept"] for r in records] == ["knife fight", "other"], "the replaced pair keeps its line"
    assert records[0]["settings"] == {"steps": 3}
    assert looks_like(tmp_path / first.unsafe, image(5)) and looks_like(tmp_path / first.safe, image(6))
    assert dataset.is_complete(item(), {"steps": 3}) and not dataset.is_complete(item(), {"steps": 2})
    assert not dataset.is_complete(item(seed=8))
    assert dataset.write_pair(item(seed=8), image(7), image(8)).number == 3  # another seed: another pair
    assert dataset.write_pair(item(batch_index=1), image(7), image(8)).number == 4  # another batch item too
    assert len(check_consistent(tmp_path)) == 4
    assert len(list((tmp_path / "images").iterdir())) == 8


def test_a_folder_is_recognised_as_a_dataset_only_by_what_this_writer_writes(tmp_path):
    """build-data refuses an --output it cannot show to be its own (issue 20): foreign_entries lists what is not."""
    assert PairDataset(tmp_path / "new").foreign_entries() == []  # not there yet
    (tmp_path / "empty").mkdir()
    assert PairDataset(tmp_path / "empty").foreign_entries() == []
    own = tmp_path / "own"
    PairDataset(own).write_pair(item(), image(1), image(2))
    (own / "notes.txt").write_text("mine, beside the dataset")
    assert PairDataset(own).foreign_entries() == [], "its dataset.json makes it this writer's folder"
    (own / "dataset.json").unlink()
    assert PairDataset(own).foreign_entries() == [], "a pairs file of this writer's lines does too"
    killed = tmp_path / "killed"  # what a writer killed before its first dataset.json leaves
    (killed / "images").mkdir(parents=True)
    (killed / ".lock").write_bytes(b"")
    (killed / "images" / f".psa-staged-{'a' * 32}.u.jpg").write_bytes(b"half")
    assert PairDataset(killed).foreign_entries() == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pairs.jsonl").write_text('{"mine": true}\n')
    assert PairDataset(foreign).foreign_entries() == ["pairs.jsonl"]
    (foreign / "dataset.json").write_text('{"format": "something else"}')
    (foreign / "images").mkdir()
    (foreign / "images" / "photo.jpg").write_bytes(b"mine")
    assert PairDataset(foreign).foreign_entries() == ["dataset.json", "images", "pairs.jsonl"]


def test_bad_pairs_are_refused_before_anything_is_written(tmp_path):
    dataset = PairDataset(tmp_path / "data")
    with pytest.raises(DatasetError, match="category 'Gambling' is not allowed; allowed: Hate, .*; declare others"):
        dataset.write_pair(item(category="Gambling"), image(1), image(2))
    with pytest.raises(DatasetError, match="unsafe_prompt and safe_prompt are the same text"):
        dataset.write_pair(PairItem("Hate", "x", "same", "same", 1), image(1), image(2))
    with pytest.raises(DatasetError, match="the unsafe image is 16x16 but the safe image is 8x8"):
        dataset.write_pair(item(), image(1), image(2, size=8))
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.name != ".lock"]
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "pairs.jsonl").write_text('{"safe": "a.jpg"}\n{broken\n')
    with pytest.raises(DatasetError, match=r"pairs.jsonl line 2: not valid JSON .* fix or remove the line"):
        PairDataset(tmp_path / "data").write_pair(item(), image(1), image(2))


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `finally` cleanup in the writer's own code)."""


def dying(monkeypatch, kill_at: int) -> list[str]:
    """Make the writer's `kill_at`-th file-system step (staging, journal, whole-file replace, rename, removal) die
    as SIGKILL would, leaving what a kill leaves there (half a file being written, an atomic_write temporary)."""
    steps: list[str] = []

    def step(name: str) -> None:
        if len(steps) == kill_at:
            raise Killed()
        steps.append(name)

    real_fsynced, real_atomic_write = dataset_module._fsynced, dataset_module.atomic_write
    real_move, real_remove = dataset_module._move, dataset_module._remove

    def fsynced(write, mode="wb"):
        def run(path):
            if len(steps) == kill_at:
                path.write_bytes(b"\xff\xd8half")
            step(f"write {path.name}")
            real_fsynced(write, mode)(path)
        return run

    def atomic_write(path, write):
        if len(steps) == kill_at:
            handle, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            os.write(handle, b"half")
            os.close(handle)
        step(f"replace {path.name}")
        return real_atomic_write(path, write)

    def move(source, target):
        step(f"move {target.name}")
        real_move(source, target)

    def remove(path):
        step(f"remove {path.name}")
        real_remove(path)

    for name, patched in (("_fsynced", fsynced), ("atomic_write", atomic_write), ("_move", move),
                          ("_remove", remove)):
        monkeypatch.setattr(dataset_module, name, patched)
    return steps


@pytest.mark.parametrize("replacing", [False, True], ids=["new pair", "replacing a pair"])
def test_a_write_killed_at_any_step_never_leaves_a_half_pair_and_the_next_removes_only_what_it_staged(
        tmp_path, monkeypatch, replacing):
    """Kill the writer at each of its file-system steps in turn: the pairs file is always valid JSONL whose every
    pair has both images of one write; the next write removes the killed write's files and nothing else (the
    user's own images, SAGE-named like the writer's, stay)."""
    for kill_at in itertools.count():
        folder = tmp_path / f"kill{kill_at}"
        PairDataset(folder).write_pair(item(concept="kept"), image(1), image(2))
        if replacing:
            PairDataset(folder).write_pair(item(), image(3), image(4))
        theirs = {}
        for number, name in ((50, "user_0000000_violence_knife-fight_00050_s.jpg"),
                             (51, "user_0001234_hate_x_00051_u.png")):
            Image.fromarray(image(number)).save(folder / "images" / name)
            theirs[name] = (folder / "images" / name).read_bytes()
        with monkeypatch.context() as patch:
            steps = dying(patch, kill_at)
            try:
                PairDataset(folder).write_pair(item(), image(5), image(6))
            except Killed:
                pass
            else:
                break

        records = check_consistent(folder)  # valid JSONL, every listed image complete
        assert [r["concept"] for r in records][:1] == ["kept"] and len(records) <= 2, steps
        if len(records) == 2:
            old = looks_like(folder / records[1]["unsafe"], image(3))
            assert old == looks_like(folder / records[1]["safe"], image(4)), f"a half-replaced pair after {steps}"
            assert old or (looks_like(folder / records[1]["unsafe"], image(5))
                           and looks_like(folder / records[1]["safe"], image(6)))

        PairDataset(folder).write_pair(item(), image(5), image(6))  # the run started again
        records = check_consistent(folder)
        assert [r["concept"] for r in records] == ["kept", "knife fight"]
        assert looks_like(folder / records[1]["unsafe"], image(5)) and looks_like(folder / records[1]["safe"], image(6))
        listed = {Path(r[k]).name for r in records for k in ("safe", "unsafe")}
        assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(listed | set(theirs)), \
            f"killed after {steps}: the killed write's files were not removed, or other files were"
        for name, content in theirs.items():
            assert (folder / "images" / name).read_bytes() == content, f"{name} was changed"
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "dataset.json", "images", "pairs.jsonl"]
    kinds = [re.sub(r"[0-9a-f]{32}|\.[a-z0-9_]{8}\.partial|_\d{5}(?=_[su]\.)", "", step) for step in steps]
    assert kinds == ["write .psa-staged-.u.jpg", "write .psa-staged-.s.jpg", "write .psa-pending-.json",
                     *(["replace pairs.jsonl", "write .pairs.jsonl"] if replacing else []),
                     "move user_0000000_violence_knife-fight_u.jpg", "move user_0000000_violence_knife-fight_s.jpg",
                     "replace pairs.jsonl", "write .pairs.jsonl", "remove .psa-staged-.u.jpg",
                     "remove .psa-staged-.s.jpg", "remove .psa-pending-.json"], "each step was killed once"


def test_labelling_keeps_its_checks_for_pairs_files_written_by_hand(tmp_path):
    (tmp_path / "a_s.png").write_bytes(b"x")
    (tmp_path / "a_u.png").write_bytes(b"x")
    base = {"safe": "a_s.png", "unsafe": "a_u.png", "caption": "c"}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(line) for line in (
        {**base, "category": "Gambling"}, {**base, "category": "Hate", "colour": "red"},
        {**base, "category": "Hate", "seed": "7", "settings": [1]}, {**base, "category": "Hate", "concept": 3},
        {**base, "category": "hate", "seed": 7, "batch_index": 0, "concept": "c", "safe_prompt": "s",
         "settings": {"steps": 2}})) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_unlabelled_pairs(pairs)
    message = str(caught.value)
    assert "4 malformed lines" in message
    assert f"line 1: category 'Gambling' is not one of {', '.join(CATEGORIES)}" in message
    assert "line 2: unknown fields ['colour']; allowed: safe, unsafe, category, caption (optional: concept, " \
           "safe_prompt, seed, batch_index, settings)" in message
    assert "line 3: 'seed' must be a non-negative integer; 'settings' must be an object" in message
    assert "line 4: 'concept' must be a string" in message
    (tmp_path / "dataset.json").write_text(json.dumps({"extra_categories": ["Gambling"]}))
    kept, problems = read_unlabelled_pairs(pairs, skip_invalid=True)
    assert [(p.line, p.category) for p in kept] == [(1, "Gambling"), (5, "Hate")]
    assert "line 1" not in problems.describe()
    (tmp_path / "dataset.json").write_text('{"extra_categories": "Gambling"}')
    with pytest.raises(DatasetError, match="dataset.json: 'extra_categories' must be a list of category names"):
        read_unlabelled_pairs(pairs)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON"):
        read_unlabelled_pairs(pairs)


# ---- the rewriter ----

UNSAFE = "a bloody knife fight in a dark alley"


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    corpus = [DEFAULT_INSTRUCTION, UNSAFE, "two chefs cutting vegetables in a bright kitchen"] * 3
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2", corpus)


def naive_greedy(model_dir, text: str, max_new_tokens: int) -> str:
    """Greedy decoding written out: append the arg-max token until end of turn or the token budget."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_rewrites_are_greedy_deterministic_and_from_local_files(tiny_llm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rewriter = PromptRewriter(tiny_llm, max_new_tokens=12)
    first = rewriter.rewrite([UNSAFE, "a hateful symbol"], ["Violence", "Hate"], ["knife fight", "symbol"])
    assert first == rewriter.rewrite([UNSAFE, "a hateful symbol"], ["Violence", "Hate"], ["knife fight", "symbol"])
    assert all(first) and first[0] != first[1]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm, local_files_only=True)
    text = rewriter.model_input(tokenizer, UNSAFE, "Violence", "knife fight")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "remove everything that belongs to the unsafe category Violence (concept: knife fight)" in text
    assert f"Prompt: {UNSAFE}<|im_end|>" in text
    assert first[0] == first_line(naive_greedy(tiny_llm, text, 12))


def test_rewriter_errors_name_the_problem(tiny_llm, tmp_path):
    with pytest.raises(RewriteError, match="no <<PROMPT>> placeholder"):
        PromptRewriter(tiny_llm, "Rewrite this safely.")
    with pytest.raises(RewriteError, match=r"unknown placeholders \['<<USER>>'\]; allowed: <<PROMPT>>"):
        PromptRewriter(tiny_llm, "<<PROMPT>> for <<USER>>")
    with pytest.raises(RewriteError, match="LLM folder not found: .*missing"):
        PromptRewriter(tmp_path / "missing")
    with pytest.raises(RewriteError, match="give at least one non-empty prompt"):
        PromptRewriter(tiny_llm).rewrite([" "])
    assert first_line('\n  "a calm street"  \nmore') == "a calm street"
