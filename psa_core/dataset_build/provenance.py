"""What rendered a preference pair, read from the queued graph: a pure function over ComfyUI's API-prompt dict.

The API prompt maps node ids to `{"class_type": ..., "inputs": {...}}`, where an input is a literal or a link
`[node_id, output_index]`. `rendered_settings` follows the links upstream of the unsafe and the safe images of
the save node, checks that both were rendered by the same nodes and settings apart from their prompts, with the
prompts and the seed the save node was given, and returns those settings, which the dataset keeps with each pair
(docs/training.md §6, "Dataset folders"). Nothing here knows ComfyUI beyond the shape of that dict.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..training.errors import DatasetError

PROMPT_MARK, SEED_MARK = "<prompt>", "<seed>"
MAX_SHOWN_CHARS = 60

ApiPrompt = Mapping[str, Mapping[str, Any]]
# (mark, value to replace by the mark, input-name fragment a literal value must be found under, or None)
Mark = tuple[str, object, str | None]


def is_link(value: object) -> bool:
    """True for an API-prompt link `[node_id, output_index]`."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _matches(value: object, mark: Mark, input_name: str) -> bool:
    _, target, fragment = mark
    if value != target or is_link(value) != is_link(target) or type(value) is not type(target):
        return False
    return is_link(value) or fragment is None or fragment in input_name


def upstream(prompt: ApiPrompt, source: object, marks: list[Mark]) -> object:
    """The graph that produced `source` (a link or a value) as nested data: each node as {node, output, inputs}.

    Values matching a mark are replaced by the mark's name; a literal only matches where the input's name contains
    the mark's fragment (so a seed of 5 does not mark steps=5). A node reached twice is one shared dict."""
    memo: dict[tuple, dict] = {}

    def expand(value: object, input_name: str) -> object:
        for mark in marks:
            if _matches(value, mark, input_name):
                return mark[0]
        if not is_link(value):
            return value
        key = tuple(value)
        if key not in memo:
            node = prompt.get(value[0])
            if node is None:
                raise DatasetError(f"the queued graph links to a missing node {value[0]}")
            memo[key] = {"node": node.get("class_type"), "output": value[1],
                         "inputs": {k: expand(v, k) for k, v in sorted(node.get("inputs", {}).items())}}
        return memo[key]

    return expand(source, "")


def _is_node(value: object) -> bool:
    return isinstance(value, dict) and "node" in value


def _short(value: object) -> str:
    if _is_node(value):
        return f"the output of {value['node']}"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 3] + "..."


def first_difference(unsafe: object, safe: object, where: str = "", compared: set | None = None) -> str | None:
    """Where two upstream graphs differ first, as `Node.input <- Node.input: a (unsafe) vs b (safe)`, or None.

    Each pair of shared sub-graphs is compared once, so long chains of nodes that feed each other twice stay cheap."""
    compared = set() if compared is None else compared
    if _is_node(unsafe) and _is_node(safe):
        if (id(unsafe), id(safe)) in compared:
            return None
        compared.add((id(unsafe), id(safe)))
        if (unsafe["node"], unsafe["output"]) != (safe["node"], safe["output"]):
            return f"{where or 'image'}: {_short(unsafe)} vs {_short(safe)}"
        for name in sorted(set(unsafe["inputs"]) | set(safe["inputs"])):
            found = first_difference(unsafe["inputs"].get(name, "(absent)"), safe["inputs"].get(name, "(absent)"),
                                     f"{where + ' <- ' if where else ''}{unsafe['node']}.{name}", compared)
            if found:
                return found
        return None
    if unsafe == safe:
        return None
    return f"{where}: {_short(unsafe)} (unsafe) vs {_short(safe)} (safe)"


def _contains(graph: object, mark: str, visited: set | None = None) -> bool:
    visited = set() if visited is None else visited
    if graph == mark:
        return True
    if _is_node(graph) and id(graph) not in visited:
        visited.add(id(graph))
        return any(_contains(value, mark, visited) for value in graph["inputs"].values())
    return False


def flatten(graph: object) -> list[dict]:
    """The upstream nodes, image first, with their literal inputs (each different entry once): what the record
    keeps as settings."""
    nodes: list[dict] = []
    seen: set[int] = set()

    def walk(value: object) -> None:
        if not _is_node(value) or id(value) in seen:
            return
        seen.add(id(value))
        entry = {"class_type": value["node"], **{k: v for k, v in value["inputs"].items() if not _is_node(v)}}
        if entry not in nodes:
            nodes.append(entry)
        for child in value["inputs"].values():
            walk(child)

    walk(graph)
    return nodes


def rendered_settings(prompt: ApiPrompt | None, node_id: str | None, seed: int) -> list[dict] | None:
    """Check that the save node `node_id`'s two images come from the same graph apart from their prompts, with
    that node's prompts and `seed`, and return that graph flattened. None when the queued graph is not available
    (the node was called outside an executed graph). Raises DatasetError naming the first difference."""
    if not prompt or node_id not in prompt:
        return None
    inputs = prompt[node_id].get("inputs", {})
    seed_marks: list[Mark] = [(SEED_MARK, seed, "seed")]
    if is_link(inputs.get("seed")):
        seed_marks.append((SEED_MARK, inputs["seed"], None))
    graphs = {}
    for side in ("unsafe", "safe"):
        marks = [(PROMPT_MARK, inputs.get(f"{side}_prompt"), None), *seed_marks]
        graphs[side] = upstream(prompt, inputs.get(f"{side}_images"), marks)
        if not _contains(graphs[side], PROMPT_MARK):
            raise DatasetError(f"the {side} images were not rendered from the {side}_prompt given to this node; link "
                               f"the same prompt to the {side} sampler's text encoder and to {side}_prompt here")
    difference = first_difference(graphs["unsafe"], graphs["safe"])
    if difference:
        raise DatasetError("the unsafe and safe images must be rendered with the same seed, model and settings, "
                           f"differing only in their prompts; they differ at {difference}")
    if not _contains(graphs["unsafe"], SEED_MARK):
        raise DatasetError(f"the images were not rendered with the seed given to this node ({seed}); link the same "
                           "seed to both samplers and to this node's seed")
    return flatten(graphs["unsafe"])
