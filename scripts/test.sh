#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k patch -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
VENV="${PSA_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
