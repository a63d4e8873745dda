"""`psa-trainer evaluate`: held-out implicit accuracy of a trained adapter, per user and adapter-off."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from psa_core.adapter import PSAAdapter
from psa_core.adapter_file import load_adapter
from psa_core.training.config import TrainingConfig
from psa_core.training.errors import TrainingError
from psa_core.training.evaluate import evaluate
from psa_core.training.run import evaluation_pairs

from .data import base_fingerprint, open_cache, read_data, user_table
from .hook import DiffusersPSAPredictor
from .models import load_base_model


def evaluate_adapter(config: TrainingConfig, adapter_path: str | Path, draws: int = 8, seed: int = 1234,
                     device: str = "cpu") -> dict:
    """Accuracy of the adapter at `adapter_path` on the pairs of `config.data` (no dropout, no flips)."""
    config = replace(config, hflip=False)
    data = read_data(config)
    users = user_table(config, data)
    base = load_base_model(config.base_model, config.family, config.tokenizer)
    resolution = config.resolution_for(base.family_name)
    cache = open_cache(config, base, data, base_fingerprint(config, data), resolution, device, build=True,
                       log=lambda text: None)
    pairs = evaluation_pairs(config, base.family, data, cache, users)
    loaded = load_adapter(adapter_path)
    if loaded.embedding_dim != users.dim:
        raise TrainingError(f"adapter expects {loaded.embedding_dim}-d embeddings, the data's users have {users.dim}")
    adapter = PSAAdapter.from_loaded(loaded).to(device).eval()
    predict = DiffusersPSAPredictor(base.unet.to(device), base.family)
    trained = evaluate(predict, adapter, pairs, base.schedule, draws, config.batch, seed, config.beta, device)
    off = evaluate(predict, None, pairs, base.schedule, draws, config.batch, seed, config.beta, device)
    by_user = trained.accuracy_by_user()
    return {"pairs": len(pairs), "draws": draws, "accuracy": trained.accuracy,
            "accuracy_by_user": {users.user_ids[u]: a for u, a in by_user.items()},
            "adapter_off_accuracy": off.accuracy, "adapter_off_tie_split_accuracy": off.tie_split_accuracy,
            "adapter_off_max_abs_inside": off.inside.abs().max().item(),
            "mean_inside": trained.inside.mean().item()}
