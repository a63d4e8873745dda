"""Pure-PyTorch core of the PSA pack: adapter maths, families, file formats. Knows nothing of ComfyUI."""
from .adapter import LoadedAdapter, PSAAdapter, UserValues, attn2_shift, null_user, project_users
from .adapter_file import load_adapter, reference_state_dicts, save_adapter
from .compatibility import check_embedding_fits
from .embedding import UserEmbedding, load_embedding, save_embedding
from .errors import AdapterFileError, CompatibilityError, EmbeddingFileError, PSAError
from .families import FAMILY_NAMES, Family, LayerSpec, get_family, recognise_family

__all__ = [
    "AdapterFileError", "CompatibilityError", "EmbeddingFileError", "FAMILY_NAMES", "Family", "LayerSpec",
    "LoadedAdapter", "PSAAdapter", "PSAError", "UserEmbedding", "UserValues", "attn2_shift", "check_embedding_fits",
    "get_family", "load_adapter", "load_embedding", "null_user", "project_users", "recognise_family",
    "reference_state_dicts", "save_adapter", "save_embedding",
]
