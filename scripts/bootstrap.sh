#!/usr/bin/env bash
# Set up what the tests and the demo need, for each ComfyUI of the tested matrix named in the arguments
# ("newest", "oldest"; default both): the ComfyUI tree (scripts/fetch_comfyui.py; for "newest", COMFYUI_PATH
# names another checkout) and an environment of its own in .venvs/comfyui-<version>/, with that ComfyUI's own
# requirements.txt (torch lines removed), requirements-test.txt and tests/constraints.txt, all pinned.
# For "newest" it also installs the newer frontends the browser test runs against (EXTRA_FRONTENDS, each into
# .cache/frontends/<version>/, served with --front-end-root).
# Prints one line per entry on stdout, "<entry> <version> <tree> <python> <frontends>", where <frontends> is
# "-" or a comma-separated list of <version>=<static folder>; everything else goes to stderr.
# A second run reuses what is there: pip runs again only when one of those requirement files changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# PyPI has no torchaudio built for torch 2.14.1; this one, installed without its dependencies, imports beside it.
# ComfyUI >= 0.28 imports torchaudio at start; SD1.5 and SDXL never call it.
TORCHAUDIO="torchaudio==2.11.1"
EXTRA_FRONTENDS=(1.58.1)
TORCH_LINE='^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$'

comfyui_tree() {  # newest|oldest -> the tree's folder
    if [ "$1" = newest ] && [ -n "${COMFYUI_PATH:-}" ]; then
        [ -f "$COMFYUI_PATH/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
        (cd "$COMFYUI_PATH" && pwd)
    else
        "$PYTHON" "$ROOT/scripts/fetch_comfyui.py" --version "$1"
    fi
}

comfyui_version() {  # tree -> the version its comfyui_version.py states
    sed -n 's/^__version__ *= *"\(.*\)".*/\1/p' "$1/comfyui_version.py"
}

pip_install() {  # venv pip-arguments...; pip's notes about index folders this machine lacks are dropped
    local venv="$1"; shift
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
    return "${PIPESTATUS[0]}"
}

ensure_env() {  # tree venv
    local tree="$1" venv="$2"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    local own="$venv/.comfyui-requirements.txt"
    grep -vE "$TORCH_LINE" "$tree/requirements.txt" > "$own.new"
    local audio=""
    grep -qE '^[[:space:]]*torchaudio' "$tree/requirements.txt" && audio="$TORCHAUDIO"
    local wanted
    wanted="$( (cat "$ROOT/requirements-test.txt" "$ROOT/tests/constraints.txt" "$own.new"; echo "$audio") | sha256sum | cut -d' ' -f1)"
    mv "$own.new" "$own"
    if [ "$(cat "$venv/.psa-requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        echo "Installing the environment for ComfyUI $(comfyui_version "$tree") into $venv" >&2
        pip_install "$venv" -c "$ROOT/tests/constraints.txt" -r "$ROOT/requirements-test.txt" -r "$own"
        if [ -n "$audio" ]; then
            pip_install "$venv" --no-deps "$audio"
        fi
        echo "$wanted" > "$venv/.psa-requirements.sha256"
    fi
}

ensure_frontends() {  # venv -> prints the "-" or "<version>=<static folder>,..." field
    local venv="$1" listed=()
    for version in "${EXTRA_FRONTENDS[@]}"; do
        local target="$ROOT/.cache/frontends/$version"
        if [ ! -f "$target/.installed" ]; then
            rm -rf "$target"
            pip_install "$venv" --no-deps --target "$target" "comfyui-frontend-package==$version"
            touch "$target/.installed"
        fi
        listed+=("$version=$target/comfyui_frontend_package/static")
    done
    local IFS=,
    echo "${listed[*]:--}"
}

# Debian's Chromium and chromedriver, for the real-browser test of the web UI (the demo needs no browser).
if [ -z "${PSA_WITHOUT_BROWSER:-}" ]; then
    bash "$ROOT/scripts/install_browser.sh" >&2
fi

entries=("$@")
[ ${#entries[@]} -gt 0 ] || entries=(newest oldest)
for entry in "${entries[@]}"; do
    case "$entry" in newest|oldest) ;; *) echo "bootstrap.sh: unknown entry '$entry' (newest, oldest)" >&2; exit 2;; esac
    tree="$(comfyui_tree "$entry")"
    version="$(comfyui_version "$tree")"
    venv="$ROOT/.venvs/comfyui-$version"
    ensure_env "$tree" "$venv"
    frontends="-"
    [ "$entry" = newest ] && frontends="$(ensure_frontends "$venv")"
    echo "$entry $version $tree $venv/bin/python $frontends"
done
