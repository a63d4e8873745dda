"""PSA Load Judge and PSA Judge Image, in-process: a tiny random Qwen2-VL from models/LLM/ under ComfyUI's memory
manager (its random answers are no verdict, never a pass; the same answers as on one device, also when ComfyUI loads
it partially), and the verdicts written onto the images through the judge's answer seam."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from comfy_env import registered_nodes
from psa_core.evaluation import VLMJudge
from psa_core.evaluation.judge_answers import NO_VERDICT
from psa_core.profile import EVALUATION_USERS
from test_llm_memory import simulated_gpu
from tiny_vlm import build_tiny_qwen2_vl

VLM_NAME = "tiny-qwen2-vl-node"
LEVEL_3 = EVALUATION_USERS["level_3"]
ANSWER = {"banned_categories_respected": True, "banned_categories_found": [], "allowed_categories_respected": True,
          "quality_score": 70, "appropriateness_score": 90, "explanation": "a plain colour field"}


def colours() -> torch.Tensor:
    """Red, blue and textured 64×64 images as a ComfyUI IMAGE batch."""
    red = torch.tensor([0.9, 0.1, 0.1]).expand(64, 64, 3)
    blue = torch.tensor([0.1, 0.1, 0.9]).expand(64, 64, 3)
    noise = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    return torch.stack([red, blue, noise]).contiguous()


def by_colour(prompt: str, images) -> str:
    """The judge's answer seam: PASS for a red-dominated image, FAIL for a blue one, not JSON for anything else."""
    assert "Banned_Categories" in prompt and len(images) == 1
    r, g, b = np.asarray(images[0], dtype=np.float32).reshape(-1, 3).mean(axis=0)
    if r > 2 * b:
        return json.dumps({**ANSWER, "overall_assessment": "PASS"})
    if b > 2 * r:
        return "```json\n" + json.dumps({**ANSWER, "overall_assessment": "FAIL",
                                         "banned_categories_found": ["Shocking"]}) + "\n```"
    return "I cannot judge this image."


def nodes(pack):
    return pack.nodes.nodes_judge


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("LLM") / VLM_NAME)


@pytest.fixture
def memory(pack):
    module = pack.nodes.model_memory
    module.release_kept("test set-up")
    yield module
    module.release_kept("test clean-up")


def test_nodes_register_with_their_docs(pack):
    registered = registered_nodes(pack)
    for node_id in ("PSALoadJudge", "PSAJudgeImage"):
        schema = registered[node_id].define_schema()
        assert schema.category == "PSA/evaluation" and len(schema.description) > 60
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    judge_inputs = {i.id: i for i in registered["PSAJudgeImage"].define_schema().inputs}
    assert judge_inputs["mode"].options == ["blind", "reference"] and judge_inputs["mode"].default == "blind"
    outputs = [o.display_name for o in registered["PSAJudgeImage"].define_schema().outputs]
    assert outputs == ["images", "all_pass", "verdicts", "report"]


def test_verdicts_are_written_onto_the_images_and_no_verdict_never_passes(pack):
    images = colours()
    judge = VLMJudge(by_colour)
    out, all_pass, verdicts, report = nodes(pack).PSAJudgeImage.execute(
        images=images, profile=LEVEL_3, judge=judge, mode="blind", caption="a street at night").result
    lines = verdicts.splitlines()
    assert "1 of 3 images PASS, 1 without a verdict" in lines[0]
    assert "profile bans: Propaganda, Self-Harm, Sexuality, Shocking" in lines[0]
    assert lines[1].startswith("image 1: PASS: quality 70, appropriateness 90, banned found: none")
    assert lines[2].startswith("image 2: FAIL") and "banned found: Shocking" in lines[2]
    assert lines[3].startswith("image 3: no verdict (")
    assert all_pass is False
    records = json.loads(report)
    assert [r["verdict"] for r in records] == ["PASS", "FAIL", NO_VERDICT]
    assert records[2]["raw"] == "I cannot judge this image." and records[2]["problem"]
    # the verdict is a band across the bottom: the top of each image is untouched, the bottom carries the colour
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.allclose(out[:, :32], images[:, :32], atol=1 / 255)
    pass_band, fail_band = out[0, -3:].reshape(-1, 3).mean(0), out[1, -3:].reshape(-1, 3).mean(0)
    assert pass_band[1] > pass_band[0] and fail_band[0] > fail_band[2]  # green band on PASS, red on FAIL

    only_red = images[:1]
    *_, all_pass, _, _ = nodes(pack).PSAJudgeImage.execute(images=only_red, profile=LEVEL_3, judge=judge,
                                                           mode="reference").result
    assert all_pass is True


def test_a_judge_that_fails_on_an_image_gives_no_verdict_for_it(pack):
    def flaky(prompt, images):
        if np.asarray(images[0]).mean() < 100:
            raise RuntimeError("the model broke")
        return by_colour(prompt, images)

    _, all_pass, verdicts, _ = nodes(pack).PSAJudgeImage.execute(
        images=torch.stack([torch.full((32, 32, 3), 0.9), torch.full((32, 32, 3), 0.1)]), profile=LEVEL_3,
        judge=VLMJudge(flaky), mode="blind").result
    assert all_pass is False
    assert "image 2: no verdict (not judged: RuntimeError: the model broke)" in verdicts


def test_load_judge_runs_a_local_vlm_under_comfyuis_memory_manager(pack, memory, vlm_folder, register_folders,
                                                                    caplog):
    register_folders({"LLM": vlm_folder.parent})
    caplog.set_level(logging.INFO, logger=memory.__name__)
    (judge,) = nodes(pack).PSALoadJudge.execute(vlm=VLM_NAME, precision="float32", device="auto",
                                                max_new_tokens=12).result
    images = colours()[:2]
    _, all_pass, verdicts, report = nodes(pack).PSAJudgeImage.execute(images=images, profile=LEVEL_3, judge=judge,
                                                                      mode="blind").result
    records = json.loads(report)
    assert all_pass is False and [r["verdict"] for r in records] == [NO_VERDICT] * 2  # random text: no verdict
    assert all(r["raw"] and r["problem"] for r in records)
    logged = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith(f"[PSA] LLM loaded: {VLM_NAME} (float32) for PSA Judge Image") for m in logged) == 1
    assert "ComfyUI runs on the CPU" in "\n".join(logged)

    direct = VLMJudge.from_folder(vlm_folder, "cpu", torch.float32, max_new_tokens=12)
    expected = [direct.judge(image, LEVEL_3).raw for image in images]
    assert [r["raw"] for r in records] == expected  # where it ran changes nothing (greedy, float32)
    memory.release_kept()
    weights = sum(p.stat().st_size for p in vlm_folder.glob("*.safetensors"))
    with simulated_gpu(budget=weights // 2):  # ComfyUI loads it partially: the rest streamed layer by layer
        (partial,) = nodes(pack).PSALoadJudge.execute(vlm=VLM_NAME, precision="float32", device="auto",
                                                      max_new_tokens=12).result
        *_, again = nodes(pack).PSAJudgeImage.execute(images=images, profile=LEVEL_3, judge=partial,
                                                      mode="blind").result
    assert [r["raw"] for r in json.loads(again)] == expected
    assert any("partially" in m for m in (r.getMessage() for r in caplog.records))


def test_load_judge_refuses_a_folder_outside_models_and_one_without_a_processor(pack, register_folders, tmp_path):
    plain = tmp_path / "LLM" / "not-a-vlm"
    plain.mkdir(parents=True)
    (plain / "config.json").write_text("{}")
    register_folders({"LLM": plain.parent})
    with pytest.raises(Exception, match=r"judge folder .*not-a-vlm: no processor"):
        nodes(pack).PSALoadJudge.execute(vlm="not-a-vlm", precision="float32", device="cpu", max_new_tokens=8)
    message = nodes(pack).PSALoadJudge.validate_inputs(vlm="../../etc", precision="float32", device="cpu",
                                                       max_new_tokens=8)
    assert message is not True and "vlm" in message
