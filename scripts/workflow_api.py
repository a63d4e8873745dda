"""UI-format workflows (what the ComfyUI page saves) to API-format prompts (what /prompt runs), and a check of
an API prompt against a server's /object_info as ComfyUI's own validation would make it.

The conversion is comfy-cli's (`comfy_cli.workflow_to_api`, installed with requirements-test.txt); used by
scripts/demo.py and, loaded by path, by the tests (tests/workflow_check.py).
"""
from __future__ import annotations

# Frontend-only node types, which never reach /prompt (as comfy-cli and the frontend skip them).
UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "GetNode", "SetNode", "Reroute"})


class WorkflowError(RuntimeError):
    """A workflow did not convert, or its prompt does not fit the server's nodes."""


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI workflow; every active node must convert."""
    try:
        from comfy_cli.workflow_to_api import WorkflowConversionError, convert_ui_to_api
    except ImportError as error:
        raise WorkflowError(f"comfy-cli is not installed ({error}): run `bash scripts/bootstrap.sh`") from error
    try:
        prompt = convert_ui_to_api(workflow, object_info)
    except WorkflowConversionError as error:
        raise WorkflowError(f"the workflow did not convert to an API prompt: {error}") from error
    active = [node for node in workflow.get("nodes", []) if node.get("mode", 0) == 0
              and node.get("type") not in UI_ONLY_NODE_TYPES]
    unknown = sorted({str(node.get("type")) for node in active if node.get("type") not in object_info})
    if unknown:
        raise WorkflowError(f"the server has no node type {', '.join(unknown)}: is the node pack that provides "
                            "it installed and did it load (see the server log)?")
    missing = [f"{node.get('id')} ({node.get('type')})" for node in active if str(node.get("id")) not in prompt]
    if missing:
        raise WorkflowError(f"nodes that did not convert to the API prompt: {', '.join(missing)}")
    return prompt


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _combo_options(spec) -> list | None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return options.get("options", [])
    return None


def check_api_prompt(prompt: dict, object_info: dict) -> list[str]:
    """Every problem ComfyUI's validation would find in `prompt` (missing nodes and inputs, wrong link types,
    combo values not offered, numbers out of range); empty when there is none."""
    problems = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"node {node_id}: missing node type {class_type!r}")
            continue
        required = info["input"].get("required", {})
        specs = {**required, **info["input"].get("optional", {})}
        for name in required:
            if name not in node["inputs"]:
                problems.append(f"node {node_id} ({class_type}): required input {name!r} has no value")
        for name, value in node["inputs"].items():
            spec = specs.get(name)
            if spec is None:
                problems.append(f"node {node_id} ({class_type}): unknown input {name!r}")
                continue
            options = spec[1] if len(spec) > 1 else {}
            if _is_link(value):
                source = prompt.get(value[0])
                if source is None:
                    problems.append(f"node {node_id} ({class_type}): input {name!r} links to missing node {value[0]}")
                    continue
                produced = object_info.get(source["class_type"], {}).get("output", [])
                produced_type = produced[value[1]] if value[1] < len(produced) else None
                wanted = "COMBO" if _combo_options(spec) is not None else spec[0]
                if produced_type not in (wanted, "*") and wanted != "*":
                    problems.append(f"node {node_id} ({class_type}): input {name!r} wants {wanted}, "
                                    f"gets {produced_type} from node {value[0]}")
                continue
            combo = _combo_options(spec)
            if combo is not None:
                if value not in combo:
                    problems.append(f"node {node_id} ({class_type}): {name}={value!r} is not one of {combo[:10]}")
            elif spec[0] in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"node {node_id} ({class_type}): {name}={value!r} is not a number")
                elif ("min" in options and value < options["min"]) or ("max" in options and value > options["max"]):
                    problems.append(f"node {node_id} ({class_type}): {name}={value} outside "
                                    f"[{options.get('min')}, {options.get('max')}]")
            elif spec[0] == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"node {node_id} ({class_type}): {name}={value!r} is not a boolean")
            elif spec[0] == "STRING" and not isinstance(value, str):
                problems.append(f"node {node_id} ({class_type}): {name}={value!r} is not a string")
    return problems
