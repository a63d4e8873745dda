"""Packages requirements-test.txt pins for every ComfyUI environment of the tested matrix (scripts/bootstrap.sh):
a test that needs one fails, never skips, when it is missing or its import breaks, so an environment fault cannot
pass as a green run (issue 22)."""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest

NUDENET_PIN = "nudenet==3.4.2"  # requirements-test.txt; tests/test_pinned_packages.py checks it is still there


def require_nudenet() -> ModuleType:
    """The `nudenet` package, imported; a test failure naming the cause and the fix when it does not import."""
    try:
        return importlib.import_module("nudenet")
    except Exception as error:  # noqa: BLE001  ImportError, or whatever its own imports (onnxruntime, cv2) raise
        pytest.fail(f"nudenet does not import ({type(error).__name__}: {error}); requirements-test.txt pins "
                    f"{NUDENET_PIN} for every ComfyUI environment: run scripts/bootstrap.sh", pytrace=False)
