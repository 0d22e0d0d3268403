#!/usr/bin/env bash
# The console's browser tests (tests/console) drive a headless Chromium through
# Selenium; they need Debian's chromium and chromium-driver. Installs them when missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser: installing Debian's chromium and chromium-driver (the console's browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  exit 0
fi
echo "browser: the console tests need chromium and chromium-driver (Debian packages); install them" >&2
exit 1
