"""Check an API-format prompt against a server's /object_info, as ComfyUI's validation would.

The check lives in scripts/workflow_api.py (shared with scripts/demo.py), loaded by path.
"""
from __future__ import annotations

from script_modules import load_script

_shared = load_script("workflow_api")
check_api_prompt = _shared.check_api_prompt
ui_to_api = _shared.ui_to_api
WorkflowError = _shared.WorkflowError
