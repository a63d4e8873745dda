"""The Diffusion-DPO training core shared by the standalone trainer and the ComfyUI training nodes.

Pure PyTorch (no ComfyUI, no diffusers): every setting of a run (`config`) and its assembly (`run`), the loss
(`loss`), noising (`noise`), the model-agnostic step (`step`) and optimizer step (`loop`), training data (`sage`,
`labelling`, `augment`, `embeddings`), the latent/text cache (`cache`), batch assembly with data-tied randomness
(`batches`), optimizer/schedule (`optim`) and checkpoints (`checkpoint`).
"""
from .errors import DatasetError, TrainingError
from .loss import BETA_HELP, DEFAULT_BETA, DPOOutput, dpo_loss, per_sample_mse
from .noise import DDPMSchedule, NoiseSchedule
from .step import PairBatch, Predict, StepResult, dpo_step

__all__ = [
           "BETA_HELP",
           "DEFAULT_BETA",
           "DDPMSchedule",
           "DPOOutput",
           "DatasetError",
           "NoiseSchedule",
           "PairBatch",
           "Predict",
           "StepResult",
           "TrainingError",
           "dpo_loss",
           "dpo_step",
           "per_sample_mse",
]
