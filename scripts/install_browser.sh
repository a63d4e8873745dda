#!/usr/bin/env bash
# Install headless Chromium and its matching WebDriver from Debian's packages, for tests/test_browser.py.
# Idempotent: does nothing when both binaries are already there. Needs root (CI runs as root) and apt access.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser.sh: chromium/chromedriver missing and not root; run: sudo $0" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
/usr/bin/chromedriver --version
