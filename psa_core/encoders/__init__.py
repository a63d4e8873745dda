"""Profile encoders: profile → the embedding a PSA adapter is conditioned on. No ComfyUI here."""
from .base import EncoderError, ProfileEncoder, encode_profiles
from .cache import EmbeddingCache
from .llm import (
    DTYPE_CHOICES,
    LLMEncoder,
    encoder_name_for,
    masked_mean,
    model_fingerprint,
)
from .placement import AccelerateOffload, ModelRequest, Placed, Placement, SingleDevice
from .registry import ENCODER_CHOICES, LLM, STRUCTURED, make_encoder
from .structured import (
    STRUCTURED_DIM,
    STRUCTURED_ENCODER,
    STRUCTURED_FEATURES,
    StructuredEncoder,
    structured_vector,
)
from .template import (
    PLACEHOLDERS,
    PromptTemplate,
    load_template,
    reference_values,
    render_prompt,
)

__all__ = [
    "DTYPE_CHOICES",
    "ENCODER_CHOICES",
    "LLM",
    "PLACEHOLDERS",
    "STRUCTURED",
    "STRUCTURED_DIM",
    "STRUCTURED_ENCODER",
    "STRUCTURED_FEATURES",
    "AccelerateOffload",
    "EmbeddingCache",
    "EncoderError",
    "LLMEncoder",
    "ModelRequest",
    "Placed",
    "Placement",
    "ProfileEncoder",
    "PromptTemplate",
    "SingleDevice",
    "StructuredEncoder",
    "encode_profiles",
    "encoder_name_for",
    "load_template",
    "make_encoder",
    "masked_mean",
    "model_fingerprint",
    "reference_values",
    "render_prompt",
    "structured_vector",
]
