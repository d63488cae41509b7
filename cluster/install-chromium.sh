#!/usr/bin/env bash
# Install Chromium (Debian's chromium package), the real headless browser the tests drive the
# operator console with (tests/test_console.py, through Playwright's Python package, which the
# project's dev dependencies install; Playwright's own browser download is not used).
# Idempotent: does nothing when chromium is already there. Debian/Ubuntu (apt-get); run as
# root or with sudo.
set -euo pipefail

if command -v chromium > /dev/null; then
  echo "chromium is installed: $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-chromium.sh: no apt-get here; install Chromium yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core
echo "chromium is installed: $(chromium --version 2>/dev/null | head -1)"
