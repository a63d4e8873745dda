"""`python -m trainer encode-profiles`: {User_ID}.npy embeddings from a local LLM outside ComfyUI, the same as the
in-process encoder's (equal: the same float32 computation), resumable, bad flags refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_llm import build_tiny_llm

from psa_core.encoders import LLMEncoder, load_template, render_prompt
from psa_core.profile import read_users_table
from psa_core.training.errors import TrainingError
from trainer.__main__ import EXIT_BAD_INPUT, main
from trainer.profile_embeddings import encode_profiles

USERS = ("0000001", "0000003", "0000501")


@pytest.fixture(scope="module")
def llm(tmp_path_factory, reference):
    template = load_template(reference / "get_embeds.txt")
    profiles = read_users_table(reference / "users.csv")
    corpus = [template.text] * 3 + [render_prompt(template, profiles[u]) for u in USERS]
    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2", corpus)


def test_writes_the_reference_layout_equal_to_the_in_process_encoder(llm, reference, tmp_path, capsys):
    args = ["--llm", str(llm), "--template", str(reference / "get_embeds.txt"), "--profiles",
            str(reference / "users.csv"), "--users", ",".join(USERS), "--out", str(tmp_path / "out"),
            "--dtype", "float32", "--device", "cpu", "--batch-size", "2"]
    assert main(["encode-profiles", *args]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"{u}.npy" for u in USERS]
    profiles = read_users_table(reference / "users.csv")
    direct = LLMEncoder(llm, load_template(reference / "get_embeds.txt"), dtype="float32", batch_size=2)
    expected = direct.encode_uncached([profiles[u] for u in USERS])
    for user, row in zip(USERS, expected, strict=True):
        stored = np.load(tmp_path / "out" / f"{user}.npy", allow_pickle=False)
        assert stored.dtype == np.float32 and stored.shape == (row.numel(),)
        assert torch.equal(torch.from_numpy(stored), row.float())  # the same computation, the same batches
    assert "on the CPU" in capsys.readouterr().err

    before = (tmp_path / "out" / f"{USERS[0]}.npy").stat().st_mtime_ns
    assert encode_profiles(args) == []  # every file is there: nothing recomputed
    assert (tmp_path / "out" / f"{USERS[0]}.npy").stat().st_mtime_ns == before
    assert len(encode_profiles([*args, "--overwrite"])) == 3


def test_bad_flags_are_refused_by_name(llm, reference, tmp_path):
    base = ["--llm", str(llm), "--template", str(reference / "get_embeds.txt"), "--profiles",
            str(reference / "users.csv"), "--out", str(tmp_path / "out")]
    with pytest.raises(TrainingError, match="--batch-size 0 is not allowed"):
        encode_profiles([*base, "--batch-size", "0"])
    with pytest.raises(TrainingError, match="--memory-budget -1.0 is not allowed"):
        encode_profiles([*base, "--memory-budget", "-1"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingError, match="a file is there"):
        encode_profiles([*base[:-1], str(tmp_path / "file")])
    assert main(["encode-profiles", *base[:-2], "--out", str(tmp_path / "o"), "--llm", str(tmp_path / "none")]) \
        == EXIT_BAD_INPUT
