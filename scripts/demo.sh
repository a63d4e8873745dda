#!/usr/bin/env bash
# The project's demo command (README): set up, then run the bundled PSA workflow in a headless ComfyUI and
# write its images and a profile-comparison grid to demo_output/ (the folder is printed).
# Arguments go to scripts/demo.py, e.g. scripts/demo.sh --checkpoint sd15.safetensors --adapter psa.bin --embeddings u.npy
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PSA_WITHOUT_BROWSER=1 bash "$ROOT/scripts/bootstrap.sh"
VENV="${PSA_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" "$ROOT/scripts/demo.py" "$@"
