#!/usr/bin/env bash
# Debian's Chromium and its WebDriver (/usr/bin/chromium, /usr/bin/chromedriver), which the browser test of
# crobim-serve's page drives (tests/test_serve_browser.py). Installed through apt when missing; nothing
# downloads a browser of its own.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
fail() {
    echo "tools/install_browser.sh: $1; install Debian's chromium and chromium-driver packages" \
        "(apt-get install chromium chromium-driver), which the browser test needs." >&2
    exit 1
}
command -v apt-get >/dev/null || fail "apt-get not found"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || fail "not root, and sudo needs a password"
    SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver; }
# Stale or missing package lists (a fresh container) need an update first.
apt_install || { "${SUDO[@]}" apt-get update -q && apt_install; } || fail "apt-get could not install them"
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || fail "apt-get ran, but they are still missing"
