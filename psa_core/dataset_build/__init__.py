"""Building personalized preference data: prompt-pair files in, a dataset folder of unlabelled image pairs out.

Shared by the ComfyUI nodes (nodes/nodes_dataset.py) and `python -m trainer build-data`: the prompt-pair
format and its checks (`prompt_pairs`), the dataset folder with atomic per-pair writes (`dataset`), what
rendered a pair according to ComfyUI's queued graph (`provenance`, a pure function over the API-prompt dict),
and safe rewrites of unsafe prompts with a local LLM (`rewrite`, imported on use: it needs transformers).
"""
from .dataset import (IMAGES_DIR, PAIRS_NAME, UNLABELLED_USER, PairDataset, PairItem, WrittenPair,
                      as_rgb_image)
from .prompt_pairs import (FIELDS, REQUIRED_FIELDS, PromptPair, PromptPairs, canonical_category,
                           parse_extra_categories, read_prompt_pairs, slug)

__all__ = ["FIELDS", "IMAGES_DIR", "PAIRS_NAME", "REQUIRED_FIELDS", "UNLABELLED_USER", "PairDataset", "PairItem",
           "PromptPair", "PromptPairs", "WrittenPair", "as_rgb_image", "canonical_category",
           "parse_extra_categories", "read_prompt_pairs", "slug"]
