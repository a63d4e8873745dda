"""Bounded inputs (issue 20): every text input of every node has a length bound (psa_core/text_limits.py), stated in
its tooltip, checked at validation and again when the node runs (a linked text arrives only then); the command
line's texts that reach a model (flags, rows of prompt files, captions, templates) have the same bounds; the judge
and the prompt rewriter ask `should_stop` between generated tokens and stop with `Interrupted`, which the nodes turn
into ComfyUI's own interrupt."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from comfy_env import REPO, registered_nodes
from tiny_llm import build_tiny_llm
from tiny_vlm import build_tiny_qwen2_vl

from psa_core.dataset_build.prompt_pairs import read_prompt_pairs
from psa_core.dataset_build.rewrite import PromptRewriter
from psa_core.encoders.template import load_template
from psa_core.errors import PSAError
from psa_core.evaluation import VLMJudge
from psa_core.evaluation.generation import read_prompt_set
from psa_core.evaluation.judged_images import judge_batch
from psa_core.evaluation.labels import read_label_mapping
from psa_core.interrupt import Interrupted, check_stop
from psa_core.profile import EVALUATION_USERS
from psa_core.text_limits import MAX_NAME_CHARS, MAX_PROMPT_CHARS, TextTooLong, check_text, limit_text

LEVEL_3 = EVALUATION_USERS["level_3"]
LONG = "x" * (MAX_PROMPT_CHARS + 1)


def too_long(where: str, length: int, limit: int) -> str:
    return f"{where} is {length} characters long; allowed: at most {limit} characters"


def test_check_text_takes_the_limit_and_refuses_one_more_without_echoing_it():
    assert check_text("a" * MAX_PROMPT_CHARS, "caption") == "a" * MAX_PROMPT_CHARS
    with pytest.raises(TextTooLong) as refused:
        check_text("a" * 1_000_000, "caption")
    assert str(refused.value) == too_long("caption", 1_000_000, MAX_PROMPT_CHARS)
    with pytest.raises(TextTooLong):
        check_text("a" * (MAX_NAME_CHARS + 1), "concept", MAX_NAME_CHARS)
    with pytest.raises(PSAError, match="concept: expected text, got int"):
        check_text(3, "concept")


def test_every_text_input_of_every_node_is_bounded_and_its_tooltip_says_so(pack):
    from comfy_api.latest import io

    checked = 0
    for node_id, node in registered_nodes(pack).items():
        for spec in node.define_schema().inputs:
            if not isinstance(spec, io.String.Input):
                continue
            limit = node.text_limit(spec.id)
            assert limit_text(limit) in spec.tooltip, f"{node_id}.{spec.id}: the tooltip does not state {limit}"
            assert spec.id in node._CHECKED_INPUTS, f"{node_id}.{spec.id} is not checked at validation"
            for length in (limit + 1, 1_000_000):
                message = node.validate_inputs(**{spec.id: "a" * length})
                assert isinstance(message, str) and too_long(spec.id, length, limit) in message, (node_id, message)
            at_limit = node.validate_inputs(**{spec.id: "a" * limit})
            assert at_limit is True or "characters long" not in at_limit, (node_id, at_limit)
            checked += 1
    declared = sum(path.read_text().count("io.String.Input(") for path in (REPO / "nodes").glob("*.py"))
    assert checked == declared > 20  # every text widget the sources declare was seen


def test_a_linked_text_is_checked_when_the_node_runs(pack):
    """A link arrives as None at validation; the node checks the text it is given before any work (the LLM
    folder does not exist: a missing-folder error would mean the node went further)."""
    rewrite = pack.nodes.nodes_dataset.PSARewritePrompt
    with pytest.raises(PSAError) as refused:
        rewrite.execute(prompt=LONG, llm="no-such-llm", instruction="Rewrite: <<PROMPT>>", max_new_tokens=8,
                        precision="auto", device="cpu", category="Hate", concept="c" * (MAX_NAME_CHARS + 1))
    assert too_long("prompt", len(LONG), MAX_PROMPT_CHARS) in str(refused.value)
    assert too_long("concept", MAX_NAME_CHARS + 1, MAX_NAME_CHARS) in str(refused.value)
    assert "no-such-llm" not in str(refused.value)


@pytest.mark.parametrize("kind", ["csv", "txt", "pairs", "labels", "template"])
def test_texts_read_from_files_are_bounded_naming_the_file_and_row(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "prompts.csv"
        path.write_text(f"caption\na cat\n{LONG}\n")
        read, expected = read_prompt_set, too_long("--prompts prompts.csv row 2: the caption", len(LONG),
                                                   MAX_PROMPT_CHARS)
    elif kind == "txt":
        path = tmp_path / "prompts.txt"
        path.write_text(f"a cat\n\n{LONG}\n")
        read, expected = read_prompt_set, too_long("--prompts prompts.txt row 2: the caption", len(LONG),
                                                   MAX_PROMPT_CHARS)
    elif kind == "pairs":
        path = tmp_path / "pairs.jsonl"
        path.write_text(json.dumps({"category": "Hate", "concept": "sign", "unsafe_prompt": LONG,
                                    "safe_prompt": "a sign"}) + "\n")
        read, expected = read_prompt_pairs, too_long("unsafe_prompt", len(LONG), MAX_PROMPT_CHARS)
    elif kind == "labels":
        path = tmp_path / "labels.csv"
        path.write_text(f"file,caption\na.png,a cat\nb.png,{LONG}\n")
        read, expected = read_label_mapping, too_long("labels.csv line 3: caption", len(LONG), MAX_PROMPT_CHARS)
    else:
        path = tmp_path / "template.txt"
        path.write_text("<<AGE>> " + LONG)
        read, expected = load_template, too_long("template template.txt", len(LONG) + 8, MAX_PROMPT_CHARS)
    with pytest.raises(PSAError) as refused:
        read(path)
    assert expected in str(refused.value)
    if kind == "pairs":
        assert "line 1" in str(refused.value)


def test_an_overlong_negative_prompt_exits_2_naming_the_flag(tmp_path):
    """A real command line (10001 characters: one argument may hold at most 128 KiB on Linux)."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("caption\na cat\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "trainer", "generate", "--prompts", str(prompts), "--base-model",
                           str(tmp_path), "--out", str(out), "--levels", "level_0", "--device", "cpu",
                           "--negative-prompt", LONG], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert too_long("--negative-prompt", len(LONG), MAX_PROMPT_CHARS) in done.stderr
    assert len(done.stderr) < 1000 and "Traceback" not in done.stderr
    assert not out.exists()


# ---- stopping between tokens ----

@pytest.fixture(scope="module")
def slow_vlm(tmp_path_factory):
    """The tiny Qwen2-VL with 16 text layers and its end of answer suppressed, so it always generates
    max_new_tokens: measured on the test machine (one thread) about 7 ms a token, so 8192 tokens take a minute."""
    folder = build_tiny_qwen2_vl(tmp_path_factory.mktemp("LLM") / "slow-vlm", text_layers=16)
    suppress_end_of_answer(folder)
    return folder


def suppress_end_of_answer(folder) -> None:
    path = folder / "generation_config.json"
    config = json.loads(path.read_text())
    config["suppress_tokens"] = [config["eos_token_id"]]
    path.write_text(json.dumps(config))


class StopAfter:
    """`should_stop`: False until `seconds` after its first call (made just before the first answer)."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def __call__(self) -> bool:
        self.calls.append(time.monotonic())
        return self.calls[-1] - self.calls[0] > self.seconds


def test_the_judge_stops_between_tokens_and_no_image_is_counted_as_judged(slow_vlm, one_thread):
    stop = StopAfter(0.5)
    judge = VLMJudge.from_folder(slow_vlm, max_new_tokens=8192, should_stop=stop)
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(Interrupted):  # not recorded as one image's failure (judge.attempt lets it through)
        judge_batch(judge, images, LEVEL_3, "blind")
    # Asked after every token (a minute of tokens uninterrupted); stopped at the first True, 0.5 s in.
    assert len(stop.calls) > 10
    assert stop.calls[-1] - stop.calls[0] < 0.5 + 0.5


def test_the_rewriter_stops_between_tokens(tmp_path, one_thread):
    folder = build_tiny_llm(tmp_path / "llm", ["a calm street at night, a quiet park"] * 3)
    calls = []

    def stop_at_third_call() -> bool:  # once before the prompt, then after the first and second tokens
        calls.append(1)
        return len(calls) >= 3

    rewriter = PromptRewriter(folder, max_new_tokens=64, should_stop=stop_at_third_call)
    with pytest.raises(Interrupted):
        rewriter.rewrite(["a violent street fight"])
    assert len(calls) == 3


@pytest.mark.parametrize("where", ["should_stop", "comfy layer"])
def test_the_nodes_end_an_interrupted_run_as_comfyuis_interrupt(pack, where):
    """Seen by the judge's should_stop (psa_core's Interrupted), or raised by ComfyUI's own check in the forward of
    a comfy.ops layer (an Exception in ComfyUI 0.3.x, which the judge must not take for one image's failure)."""
    import comfy.model_management as mm

    checked_node = pack.nodes.checked_node

    def interrupted_answer(prompt, images):
        mm.interrupt_current_processing(True)  # what POST /interrupt does
        if where == "should_stop":
            check_stop(checked_node.comfy_should_stop)
        else:
            mm.throw_exception_if_processing_interrupted()
        raise AssertionError("the interrupt flag was not seen")

    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack.nodes.nodes_judge.PSAJudgeImage.execute(images=torch.rand(2, 16, 16, 3), profile=LEVEL_3,
                                                         judge=VLMJudge(interrupted_answer), mode="blind")
        assert not mm.processing_interrupted()  # spent, as ComfyUI's own check leaves it: the next prompt runs
    finally:
        mm.interrupt_current_processing(False)


def test_safety_check_lets_comfyuis_interrupt_through(pack):
    """The scorer's CLIP vision model runs comfy.ops layers, whose forward raises ComfyUI's interrupt: the prompt
    stops, rather than every image being reported as not scored."""
    import comfy.model_management as mm

    from psa_core.evaluation.guard import check_images

    def interrupted_scorer(batch):
        mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    try:
        with pytest.raises(mm.InterruptProcessingException):
            check_images(torch.rand(2, 16, 16, 3), ["Hate"], scorer=interrupted_scorer)
    finally:
        mm.interrupt_current_processing(False)
