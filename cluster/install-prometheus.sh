#!/usr/bin/env bash
# Install promtool (Debian's prometheus package), which the tests use to check yunkai's alert
# rules and run their unit tests (cluster/monitoring/). Idempotent: does nothing when promtool
# is already there. Debian/Ubuntu (apt-get); run as root or with sudo. The package's own
# Prometheus server is not started or used by anything here.
set -euo pipefail

if command -v promtool > /dev/null; then
  echo "promtool is installed: $(promtool --version 2>&1 | head -1)"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-prometheus.sh: no apt-get here; install promtool (Prometheus 2.x) yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
# Only promtool is used. Without an init system (a container, a CI machine) the package's
# server is not started; where systemd starts it, `systemctl disable --now prometheus`.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
echo "promtool is installed: $(promtool --version 2>&1 | head -1)"
