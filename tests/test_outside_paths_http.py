"""Paths outside ComfyUI's folders: refused by default, read only when the server owner starts ComfyUI with
PSA_ALLOW_OUTSIDE_PATHS=1; what the pack writes stays inside its folders either way."""
from __future__ import annotations

import json

import pytest

from http_server import ComfyServer, ServerError
from node_prompts import errors_of, names_the_input, node_prompt, text_of, write_assets
from testkit.preference_data import write_pairs, write_profiles


@pytest.fixture(scope="module")
def opted_in_server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PSA_ALLOW_OUTSIDE_PATHS", "1")  # read by the server process
        server = ComfyServer(tmp_path_factory.mktemp("opted_in_base")).start()
    write_assets(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outside_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outside_comfyui")
    return write_pairs(folder, 2, size=16), write_profiles(folder)


def dataset_prompt(server, pairs, profiles) -> dict:
    return node_prompt(server.get("/object_info"), "PSALoadSageDataset",
                       {"path": str(pairs), "profiles": str(profiles), "resolution": 16})


def test_outside_paths_are_refused_unless_the_owner_opts_in(comfy_server, opted_in_server, outside_data):
    pairs, profiles = outside_data
    status, body = comfy_server.request("/prompt", {"prompt": dataset_prompt(comfy_server, pairs, profiles)})
    assert status == 400 and all(any(names_the_input(e, name) for e in errors_of(body)) for name in ("path",
                                                                                                   "profiles"))
    assert f"path '{pairs}' is not allowed (outside ComfyUI's folders)" in text_of(body)
    assert "paths elsewhere only when the server owner sets PSA_ALLOW_OUTSIDE_PATHS=1" in text_of(body)

    entry = opted_in_server.run_prompt(dataset_prompt(opted_in_server, pairs, profiles), timeout=120)
    assert f"{pairs} (all, 4 labelled pairs)" in json.dumps(entry["outputs"]["out"])


def test_the_opt_in_allows_no_traversal_and_no_writes_outside(opted_in_server, outside_data, tmp_path):
    object_info = opted_in_server.get("/object_info")
    pairs, _ = outside_data
    for node, name, value in (("PSALoadSageDataset", "path", f"../../{pairs.parent.name}/pairs.jsonl"),
                              ("PSASaveAdapter", "filename_prefix", str(tmp_path / "adapter")),
                              ("PSASavePreferencePair", "dataset", str(tmp_path / "dataset"))):
        status, body = opted_in_server.request("/prompt", {"prompt": node_prompt(object_info, node, {name: value})})
        assert status == 400 and any(names_the_input(e, name) for e in errors_of(body)), text_of(body)
    assert list(tmp_path.iterdir()) == []


def test_data_inside_comfyui_cannot_point_its_images_outside_by_default(comfy_server, outside_data):
    pairs, profiles = outside_data
    folder = comfy_server.output / "psa_outside_images"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    lines[0]["safe"] = str(pairs.parent / lines[0]["safe"])  # an absolute image name outside the output folder
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (folder / "profiles.json").write_text(profiles.read_text())
    prompt = dataset_prompt(comfy_server, "psa_outside_images/pairs.jsonl", "psa_outside_images/profiles.json")
    with pytest.raises(ServerError, match=r"line 1: 'safe' leaves the data folder"):
        comfy_server.run_prompt(prompt, timeout=120)
