"""Development-only fixtures for the tests, the benchmarks and the demo's embedded model: small random-weight
SD1.5 / SDXL models and synthetic preference data. Nothing here is shipped: `.comfyignore` keeps testkit/ out
of the registry archive, and no module of the pack, psa_core/ or trainer/ imports it.

- `layouts`: UNet layouts made from psa_core.families' block tables (the single statement of them), with the
  widths a test picks, as diffusers, ComfyUI and LDM checkpoints spell them.
- `ldm_shapes`: the tensors of LDM single-file checkpoints (names and shapes) and seeded values for
  them; torch only, so the demo can write a checkpoint in ComfyUI's own environment.
- `models`: diffusers UNet / VAE / CLIP text encoders and a byte-level tokenizer, written as single files or
  diffusers folders (needs diffusers and transformers).
- `preference_data`: safe/unsafe image pairs and two opposite profiles.
"""
