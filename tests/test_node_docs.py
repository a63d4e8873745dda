"""Every node the pack registers explains itself: a description, a display name and a category, and a tooltip
on every input and output (issue 6), and the node ids the shipped workflows use are the registered ones."""
from __future__ import annotations

import json

from comfy_env import REPO, registered_nodes

EXPECTED_IDS = {
    "PSALoadAdapter", "PSALoadEmbedding", "PSAApply",
    "PSAUserProfile", "PSAProfileFromJSON", "PSAEncodeProfile", "PSASaveEmbedding", "PSAEmbeddingBatch",
    "PSALoadPromptPairs", "PSASavePreferencePair", "PSARewritePrompt",
    "PSALoadSageDataset", "PSATrainAdapter", "PSASaveAdapter",
    "PSASafetyCheck", "PSALoadJudge", "PSAJudgeImage",
}


def test_every_node_has_a_description_and_every_socket_a_tooltip(pack):
    nodes = registered_nodes(pack)
    assert set(nodes) == EXPECTED_IDS
    for node_id, node in nodes.items():
        schema = node.define_schema()
        assert schema.description and len(schema.description) > 40, node_id
        assert schema.display_name and schema.category.startswith("PSA"), node_id
        missing = [i.id for i in schema.inputs if not i.tooltip] + [o.display_name for o in schema.outputs
                                                                     if not o.tooltip]
        assert not missing, f"{node_id}: no tooltip on {missing}"


def test_workflows_use_only_registered_or_core_nodes(pack):
    ours = set(registered_nodes(pack))
    for path in sorted((REPO / "workflows").glob("*.json")):
        types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
        psa = {t for t in types if t.startswith("PSA")}
        assert psa <= ours, f"{path.name}: {psa - ours}"
