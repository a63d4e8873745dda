"""The README's demo command, minus the set-up: scripts/demo.py runs the bundled SD1.5 workflow in a headless
ComfyUI on the embedded random-weight model, once without PSA and once per demo profile, and writes the images,
the profile-comparison grid and demo.json into the output folder it names."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_env import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.http, pytest.mark.slow]  # the demo starts its own ComfyUI server

DEMO = REPO / "scripts" / "demo.py"
PSA_COLUMNS = 3  # the demo profiles: level_0, level_3, level_5


def run_demo(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    # One OpenMP thread: on the small shared CPUs the tests run on, two threads spin against each other.
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(DEMO), *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=timeout, check=False)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    output = tmp_path_factory.mktemp("demo") / "out"
    result = run_demo("--output", str(output), "--threads", "1")
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return output, result


def test_demo_names_its_output_folder_and_writes_one_image_per_column(demo_output):
    output, result = demo_output
    assert f"output folder: {output}" in result.stdout, result.stdout
    summary = json.loads((output / "demo.json").read_text())
    assert summary["embedded_demo"] is True and summary["workflow"] == "psa_sd15_text_to_image.json"
    columns = summary["columns"]
    assert len(columns) == 1 + PSA_COLUMNS
    assert columns[0]["strength"] == 0 and all(c["strength"] == 1 for c in columns[1:])
    assert len({c["embedding"] for c in columns[1:]}) == PSA_COLUMNS, "each PSA column has its own profile"
    size = (summary["width"], summary["height"])
    for column in columns:
        with Image.open(output / column["image"]) as image:
            assert image.size == size and image.mode == "RGB", (column["image"], image.size, image.mode)
    assert (output / "server.log").is_file()


def test_grid_holds_the_column_images_side_by_side(demo_output):
    output, _ = demo_output
    summary = json.loads((output / "demo.json").read_text())
    layout, columns = summary["grid_layout"], summary["columns"]
    grid = pixels(output / summary["grid"])
    assert layout["columns"] == len(columns) and (layout["width"], layout["height"]) == (summary["width"],
                                                                                         summary["height"])
    margin = (grid.shape[1] - len(columns) * layout["width"]) / (len(columns) + 1)
    assert margin == int(margin) and margin >= 0, f"grid width {grid.shape[1]} is not {len(columns)} columns"
    for index, column in enumerate(columns):
        left = int(margin) + index * (layout["width"] + int(margin))
        crop = grid[layout["top"]:layout["top"] + layout["height"], left:left + layout["width"]]
        assert np.array_equal(crop, pixels(output / column["image"])), f"grid column {index} is not {column['image']}"


def test_psa_columns_differ_from_the_baseline_and_from_each_other(demo_output):
    output, result = demo_output
    columns = json.loads((output / "demo.json").read_text())["columns"]
    images = [pixels(output / column["image"]) for column in columns]
    baseline, profiles = images[0], images[1:]
    for column, image in zip(columns[1:], profiles):
        assert np.abs(image - baseline).mean() > 1.0, f"{column['label']} looks like the no-PSA image"
    for i in range(len(profiles)):
        for j in range(i + 1, len(profiles)):
            assert np.abs(profiles[i] - profiles[j]).mean() > 1.0, f"profiles {i + 1} and {j + 1} give one image"
    assert "mean pixel difference from the no-PSA column" in result.stdout


def test_incomplete_real_run_options_say_what_is_missing(tmp_path):
    result = run_demo("--output", str(tmp_path), "--checkpoint", str(tmp_path / "missing.safetensors"), timeout=60)
    assert result.returncode == 1
    assert "missing: --adapter, --embeddings" in result.stderr, result.stderr
