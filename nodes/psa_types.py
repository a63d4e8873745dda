"""The pack's custom socket types. Values travel by reference inside one ComfyUI process."""
from comfy_api.latest import io

# A psa_core.LoadedAdapter: projection plus per-layer value weights, family and metadata.
PSAAdapterType = io.Custom("PSA_ADAPTER")
# A psa_core.UserEmbedding: [N, E] vectors; N > 1 gives item i of the sampler batch profile i.
PSAEmbeddingType = io.Custom("PSA_EMBEDDING")
# A nodes.training_run.PSADataset: labelled preference pairs, their profiles file and the training resolution.
PSADatasetType = io.Custom("PSA_DATASET")
# A psa_core.evaluation.VLMJudge (PSA Load Judge): for PSA Judge Image and PSA Safety Check.
PSAJudgeType = io.Custom("PSA_JUDGE")
