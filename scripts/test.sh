#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then run the suite against the tested ComfyUI matrix:
#   newest (0.28.2, or COMFYUI_PATH): the whole suite; its browser test also against the newer frontends;
#   oldest (0.3.75):                  the part that runs inside ComfyUI (the tests marked `comfyui`).
# Extra arguments go to pytest in every run, e.g. `scripts/test.sh -m "not slow"` (the fast tier) or `-k patch -x`.
# PSA_TEST_MATRIX="newest" (or "oldest") runs one entry only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
read -r -a entries <<< "${PSA_TEST_MATRIX:-newest oldest}"
matrix="$(bash scripts/bootstrap.sh "${entries[@]}")"

failed=0
summary=()
while read -r entry version tree python frontends; do
    scope=comfyui
    [ "$entry" = newest ] && scope=all
    extra=""
    [ "$frontends" != "-" ] && extra="${frontends//,/ }"
    echo "==== ComfyUI $version ($entry, $tree): tests in scope '$scope'${extra:+; extra frontends: $extra}"
    started=$SECONDS
    status=0
    COMFYUI_PATH="$tree" PSA_TEST_SCOPE="$scope" PSA_TEST_FRONTENDS="$extra" "$python" -m pytest "$@" || status=$?
    # pytest exits 5 when nothing was selected: a filter (-k, -m) that matches no test of this scope is no failure.
    if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
        failed=1
    fi
    summary+=("ComfyUI $version ($entry, scope $scope): pytest exit $status in $((SECONDS - started)) s")
done <<< "$matrix"
printf '%s\n' "==== tested matrix" "${summary[@]}"
exit "$failed"
