"""Pinned test packages fail, never skip (tests/pinned_packages.py, issue 22): `nudenet` imports in this ComfyUI's
environment, and a missing or broken import makes the Safety Check tests fail with a message naming the fix."""
from __future__ import annotations

import importlib.metadata
import sys

import pytest

from comfy_env import REPO
from pinned_packages import NUDENET_PIN, require_nudenet

TESTS = REPO / "tests"


@pytest.mark.comfyui  # kept in the 0.3.75 run too (PSA_TEST_SCOPE=comfyui): both environments must have it
def test_nudenet_imports_at_its_pinned_version_with_comfyui_first_on_the_path():
    assert NUDENET_PIN in (REPO / "requirements-test.txt").read_text(encoding="utf-8").splitlines()
    module = require_nudenet()  # conftest put this ComfyUI's folder first on sys.path, as the pack tests have it
    assert callable(module.NudeDetector)
    assert f"nudenet=={importlib.metadata.version('nudenet')}" == NUDENET_PIN


def test_a_missing_nudenet_is_a_failure_not_a_skip(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # `import nudenet` raises ImportError
    expected = r"nudenet does not import \(ModuleNotFoundError: .*run scripts/bootstrap\.sh"
    with pytest.raises(pytest.fail.Exception, match=expected):
        require_nudenet()


# A dependency missing inside nudenet raises ModuleNotFoundError, which pytest.importorskip of nudenet took for
# nudenet itself missing and skipped on; a shared library missing raises a plain ImportError.
@pytest.mark.parametrize(("body", "expected"), [
    ("import psa_no_such_cv2_module\n", r"ModuleNotFoundError: No module named 'psa_no_such_cv2_module'"),
    ('raise ImportError("libGL.so.1: cannot open shared object file")\n', r"ImportError: libGL\.so\.1: "),
])
def test_a_broken_nudenet_import_is_a_failure_not_a_skip(monkeypatch, tmp_path, body, expected):
    broken = tmp_path / "nudenet"
    broken.mkdir()
    (broken / "__init__.py").write_text(body)
    for name in [name for name in sys.modules if name == "nudenet" or name.startswith("nudenet.")]:
        monkeypatch.delitem(sys.modules, name)  # restored afterwards
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=expected + r".*pins nudenet==3\.4\.2"):
        require_nudenet()


def test_no_test_skips_when_nudenet_is_missing():
    calls = ("importorskip(" + '"nudenet")', "importorskip(" + "'nudenet')")  # split so this file does not match
    skipping = [path.name for path in TESTS.glob("*.py") if any(call in path.read_text(encoding="utf-8")
                                                                for call in calls)]
    assert skipping == []
