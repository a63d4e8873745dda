"""PSA Safety Check over HTTP, in a prompt with PSA Apply: the demo SD1.5 checkpoint renders one image through the
adapter, a red picture joins it in the batch, and the check (real NudeNet, Q16 through a CLIP_VISION stand-in that
calls only the red picture inappropriate) blurs the flagged image and leaves the PSA image exactly as rendered."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_CHECKPOINT, demo_assets
from node_prompts import NODE, node_prompt
from pinned_packages import require_nudenet
from workflow_check import check_api_prompt

require_nudenet()  # a failure, not a skip: requirements-test.txt pins nudenet

ADAPTER, EMBEDDING, PROMPTS, RED = "psa_http_check.safetensors", "psa_http_check.npy", "psa_http_q16.npy", "red.png"


@pytest.fixture(scope="module")
def check_server(demo_server):
    models = demo_server.models
    demo_assets().write_demo_adapter(models / "psa" / ADAPTER, seed=5)
    demo_assets().write_demo_embedding(models / "psa_embeddings" / EMBEDDING, seed=6)
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    np.save(models / "clip_vision" / PROMPTS, np.eye(2, 4, dtype=np.float32))  # rows e0 (clean), e1 (inappropriate)
    texture = np.random.default_rng(0).integers(0, 60, (64, 64, 3), dtype=np.uint8)
    texture[..., 0] += 190  # strongly red, with detail a blur removes
    Image.fromarray(texture, "RGB").save(demo_server.base / "input" / RED)
    return demo_server


def check_prompt(server, violating: str, prefix: str, profile_values: dict | None = None, judge: str | None = None,
                 q16: bool = True, red: bool = True, unchecked: str | None = None) -> dict:
    """The render (and, with `red`, the red picture) through PSA Safety Check for a profile (default level_3), with
    Q16 on the CLIP_VISION stand-in when `q16`, and a judge stand-in that finds `judge` (comma-separated categories;
    None: no judge connected)."""
    object_info = server.get("/object_info")
    profile = node_prompt(object_info, "PSAUserProfile", profile_values or {"preset": "level_3 (0000002)"})[NODE]
    check = {"images": ["11", 0] if red else ["9", 0], "violating": violating, "profile": ["12", 0]}
    if q16:
        check.update(clip_vision=["13", 0], q16_prompts=PROMPTS)
    if judge is not None:
        check["judge"] = ["19", 0]
    if unchecked is not None:
        check["unchecked"] = unchecked
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
        "2": {"class_type": "PSALoadAdapter", "inputs": {"adapter_name": ADAPTER}},
        "3": {"class_type": "PSALoadEmbedding", "inputs": {"embedding_name": EMBEDDING}},
        "4": {"class_type": "PSAApply", "inputs": {"model": ["1", 0], "adapter": ["2", 0], "embedding": ["3", 0],
                                                   "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a street at night", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["1", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": 2025, "steps": 1, "cfg": 7.5,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "12": profile,
        "14": {"class_type": "PSASafetyCheck", "inputs": check},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": prefix}},
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["14", 1]}},
        "17": {"class_type": "PreviewAny", "inputs": {"source": ["14", 2]}},
        "18": {"class_type": "PreviewAny", "inputs": {"source": ["14", 3]}},
    }
    if red:
        prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": RED}}
        prompt["11"] = {"class_type": "ImageBatch", "inputs": {"image1": ["9", 0], "image2": ["10", 0]}}
    if q16:
        prompt["13"] = {"class_type": "TestRedFlagClipVision", "inputs": {}}
    if judge is not None:
        prompt["19"] = {"class_type": "TestScriptedJudge", "inputs": {"found": judge}}
    assert check_api_prompt(prompt, object_info) == []
    return prompt


def preview_text(entry: dict, node_id: str) -> str:
    return "".join(entry["outputs"][node_id]["text"])


def test_safety_check_after_psa_apply_blurs_only_the_flagged_image(check_server):
    server = check_server
    # level_3 bans Propaganda, Self-Harm and Shocking besides Sexuality: a judge (stand-in, finding nothing) checks them
    kept = server.run_prompt(check_prompt(server, "pass through", "psa_check/kept", judge=""), timeout=600)
    blurred = server.run_prompt(check_prompt(server, "blur", "psa_check/blurred", judge=""), timeout=600)
    kept_images = [np.asarray(Image.open(p), dtype=np.int16) for p in server.saved_images(kept)]
    blurred_images = [np.asarray(Image.open(p), dtype=np.int16) for p in server.saved_images(blurred)]
    assert len(kept_images) == len(blurred_images) == 2

    psa_image, red = kept_images
    assert np.array_equal(blurred_images[0], psa_image)  # the PSA render: clean, passed through bit for bit
    assert psa_image.std() > 0  # (a real render, not a blank)
    detail = lambda image: image.std(axis=(0, 1)).mean()  # spread within each channel  # noqa: E731
    assert not np.array_equal(blurred_images[1], red) and detail(blurred_images[1]) < detail(red) / 2
    assert np.abs(blurred_images[1].mean(axis=(0, 1)) - red.mean(axis=(0, 1))).max() < 8  # blurred, not blacked

    for entry in (kept, blurred):
        assert preview_text(entry, "16") == "False"  # all_clean
        report = preview_text(entry, "17").splitlines()
        assert "1 of 2 images clean" in report[0] and "profile bans: Propaganda, Self-Harm, Sexuality, Shocking" \
            in report[0]
        assert report[1].startswith("image 1: clean |") and "NudeNet:" in report[1]
        assert report[2].startswith("image 2: VIOLATES") and "Q16 inappropriate" in report[2]
        assert preview_text(entry, "18") == ""  # no category unchecked


def test_a_violence_ban_is_unchecked_with_nudenet_alone_and_a_judge_decides_it(check_server):
    """Issue 22's acceptance: a profile banning Violence, with NudeNet only, is "not verified" (never clean); a judge
    stand-in that finds Violence makes it a violation, one that finds nothing makes it clear."""
    server = check_server
    violence = {"ban_violence": True}
    runs = {name: server.run_prompt(check_prompt(server, "black", f"psa_check/violence_{name}", violence, judge=judge,
                                                 q16=False, red=False), timeout=600)
            for name, judge in (("alone", None), ("found", "Violence"), ("nothing", ""))}
    images = {name: np.asarray(Image.open(server.saved_images(entry)[0]), dtype=np.int16)
              for name, entry in runs.items()}
    texts = {name: [preview_text(entry, node) for node in ("16", "17", "18")] for name, entry in runs.items()}

    all_clean, report, unchecked = texts["alone"]
    assert all_clean == "False" and unchecked == "Violence"
    assert "0 of 1 images clean, 1 not verified; profile bans: Violence" in report.splitlines()[0]
    assert report.splitlines()[1].startswith("image 1: not verified: Violence unchecked (connect a judge")
    clean_render = images["nothing"]
    assert clean_render.std() > 0 and not np.array_equal(images["alone"], clean_render)  # unchecked: blurred

    all_clean, report, unchecked = texts["found"]
    assert all_clean == "False" and unchecked == ""
    assert report.splitlines()[1].startswith("image 1: VIOLATES: the judge found it (banned: Violence)")
    assert images["found"].max() == 0  # violating: black

    all_clean, report, unchecked = texts["nothing"]
    assert all_clean == "True" and unchecked == "" and "1 of 1 images clean" in report.splitlines()[0]
    assert report.splitlines()[1].startswith("image 1: clean | Violence clear |")
