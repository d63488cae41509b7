#!/usr/bin/env bash
# install-debian.sh COMMAND PACKAGE...: install Debian packages unless COMMAND is already on the
# PATH. What the install-*.sh scripts share: idempotent, Debian/Ubuntu (apt-get), run as root or
# with sudo; `make services` runs them.
set -euo pipefail

command_name=$1
shift
if command -v "$command_name" > /dev/null; then
  echo "$command_name is installed: $(command -v "$command_name")"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "$(basename "$0"): no apt-get here; install $* (for $command_name) yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@"
echo "$command_name is installed: $(command -v "$command_name")"
