#!/usr/bin/env bash
# Install promtool (Debian's prometheus package), which the tests use to check yunkai's alert
# rules and run their unit tests (cluster/monitoring/). Only promtool is used: without an init
# system (a container, a CI machine) the package's server is not started; where systemd starts
# it, `systemctl disable --now prometheus`.
set -euo pipefail
exec bash "$(dirname "$0")/install-debian.sh" promtool prometheus
