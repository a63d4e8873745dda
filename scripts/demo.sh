#!/usr/bin/env bash
# The project's demo command (README): set up, then run the bundled PSA workflow in a headless ComfyUI (the newest
# tested one, or COMFYUI_PATH) and write its images and a profile-comparison grid to demo_output/ (the folder is printed).
# Arguments go to scripts/demo.py, e.g. scripts/demo.sh --checkpoint sd15.safetensors --adapter psa.bin --embeddings u.npy
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r _ _ tree python _ <<< "$(PSA_WITHOUT_BROWSER=1 bash "$ROOT/scripts/bootstrap.sh" newest)"
cd "$ROOT"
COMFYUI_PATH="$tree" exec "$python" "$ROOT/scripts/demo.py" "$@"
