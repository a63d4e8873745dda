"""PSA Save Preference Pair / build-data never delete or reuse images they did not write (issue 12, finding 2):
a pairs file renamed away (kept as a backup), a folder holding the user's own SAGE-named images, and the same
through the node over HTTP. Only what a killed write of this writer staged is ever removed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from conftest import DEMO_CHECKPOINT
from PIL import Image

from psa_core.dataset_build import PairDataset, PairItem


def image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def item(number: int) -> PairItem:
    return PairItem("Violence", f"fight {number}", f"a bloody fight {number}", f"two chefs {number}", number)


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name → sha256)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_images(images: Path, numbers: range) -> dict[str, str]:
    """The user's own SAGE-named images (PNG and JPEG, other user ids), as a SAGE download holds them."""
    images.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        for side in "su":
            name = f"user_{number:07d}_violence_knife_{number:05d}_{side}.{'png' if number % 2 else 'jpg'}"
            Image.fromarray(image(number)).save(images / name)
    return digests(images)


def test_a_renamed_pairs_file_keeps_every_earlier_image_and_its_numbers(tmp_path):
    dataset = PairDataset(tmp_path)
    for number in range(1, 11):
        dataset.write_pair(item(number), image(2 * number), image(2 * number + 1))
    (tmp_path / "pairs.jsonl").rename(tmp_path / "pairs.jsonl.bak")
    before = digests(tmp_path / "images")

    written = PairDataset(tmp_path).write_pair(item(11), image(100), image(101))
    again = PairDataset(tmp_path).write_pair(item(3), image(102), image(103))  # an item the backup lists

    after = digests(tmp_path / "images")
    assert {name: after.get(name) for name in before} == before, "images the pairs file no longer lists were touched"
    backup = [json.loads(line) for line in (tmp_path / "pairs.jsonl.bak").read_text().splitlines()]
    backed_up = {Path(r[k]).name for r in backup for k in ("safe", "unsafe")}
    assert (written.number, again.number, again.replaced) == (11, 12, False)
    assert not {Path(w.safe).name for w in (written, again)} & backed_up, "a new pair reused a backed-up number"
    assert len(after) == 24


def test_the_users_own_sage_images_are_never_deleted_or_overwritten(tmp_path):
    before = user_images(tmp_path / "images", range(1, 41))
    written = PairDataset(tmp_path).write_pair(item(1), image(200), image(201))
    assert written.number == 41, "the number of an existing image was reused"
    after = digests(tmp_path / "images")
    assert {name: after.get(name) for name in before} == before
    assert sorted(set(after) - set(before)) == [Path(written.safe).name, Path(written.unsafe).name]


# ---- through the node, over HTTP ----

def save_graph(dataset: str, seed: int) -> dict:
    """Two samplers rendering one prompt pair (16 px, one step) into PSA Save Preference Pair."""
    text = {"unsafe": "a bloody knife fight", "safe": "two chefs cutting vegetables"}
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
        "2": {"class_type": "PrimitiveInt", "inputs": {"value": seed}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": text["unsafe"]}},
        "4": {"class_type": "PrimitiveString", "inputs": {"value": text["safe"]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "20": {"class_type": "PSASavePreferencePair", "inputs": {
            "unsafe_images": ["13", 0], "safe_images": ["14", 0], "unsafe_prompt": ["3", 0], "safe_prompt": ["4", 0],
            "category": ["21", 0], "concept": ["22", 0], "seed": ["2", 0], "dataset": dataset}},
        "21": {"class_type": "PrimitiveString", "inputs": {"value": "Violence"}},
        "22": {"class_type": "PrimitiveString", "inputs": {"value": "knife fight"}},
    }
    for offset, (side, prompt) in enumerate((("unsafe", "3"), ("safe", "4"))):
        encode, sample, decode = str(7 + offset), str(9 + offset), str(13 + offset)
        graph[encode] = {"class_type": "CLIPTextEncode", "inputs": {"text": [prompt, 0], "clip": ["1", 1]}}
        graph[sample] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": [encode, 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": ["2", 0], "steps": 1, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}}
        graph[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["1", 2]}}
    return graph


def test_the_node_over_http_keeps_the_users_images_and_a_backed_up_dataset(demo_server):
    folder = demo_server.output / "psa_writer_safety"
    before = user_images(folder / "images", range(1, 9))

    first = demo_server.run_prompt(save_graph("psa_writer_safety", 5))
    assert "added pair 00009" in json.dumps(first["outputs"]["20"]), first["outputs"]
    (folder / "pairs.jsonl").rename(folder / "pairs.jsonl.bak")
    kept = digests(folder / "images")
    second = demo_server.run_prompt(save_graph("psa_writer_safety", 6))
    assert "added pair 00010" in json.dumps(second["outputs"]["20"]), second["outputs"]

    after = digests(folder / "images")
    assert {name: after.get(name) for name in kept} == kept and set(before) < set(kept)
    assert len(after) == len(before) + 4
    records = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    assert [r["safe"] for r in records] == ["images/user_0000000_violence_knife-fight_00010_s.jpg"]
