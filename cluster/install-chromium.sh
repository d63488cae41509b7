#!/usr/bin/env bash
# Install Chromium (Debian's chromium package), the real headless browser the tests drive the
# operator console with (tests/test_console.py, through Playwright's Python package, which the
# project's dev dependencies install; Playwright's own browser download is not used).
set -euo pipefail
exec bash "$(dirname "$0")/install-debian.sh" chromium chromium fonts-dejavu-core
